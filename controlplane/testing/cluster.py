"""Questions a test asks a running cluster, over the public gRPC API."""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence

import grpc

from controlplane.channels import reconnect_options
from controlplane.testing.nodes import NodeProcess
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc
from controlplane.v1 import (
    config_pb2_grpc,
    host_pb2_grpc,
    storage_pb2_grpc,
    vm_pb2_grpc,
    volume_pb2_grpc,
)

_channels: dict[str, grpc.Channel] = {}


def channel(address: str | NodeProcess) -> grpc.Channel:
    """A cached channel to a node (short reconnect backoff: nodes restart in tests)."""
    addr = address.address if isinstance(address, NodeProcess) else address
    chan = _channels.get(addr)
    if chan is None:
        chan = _channels[addr] = grpc.insecure_channel(addr, options=reconnect_options(500))
    return chan


def stub(address: str | NodeProcess) -> pb_grpc.ClusterServiceStub:
    """A ClusterService stub on a cached channel to a node."""
    return pb_grpc.ClusterServiceStub(channel(address))


def vms(address: str | NodeProcess) -> vm_pb2_grpc.VmServiceStub:
    return vm_pb2_grpc.VmServiceStub(channel(address))


def hosts(address: str | NodeProcess) -> host_pb2_grpc.HostServiceStub:
    return host_pb2_grpc.HostServiceStub(channel(address))


def config(address: str | NodeProcess) -> config_pb2_grpc.ConfigServiceStub:
    return config_pb2_grpc.ConfigServiceStub(channel(address))


def storage(address: str | NodeProcess) -> storage_pb2_grpc.StorageServiceStub:
    return storage_pb2_grpc.StorageServiceStub(channel(address))


def volumes(address: str | NodeProcess) -> volume_pb2_grpc.VolumeServiceStub:
    return volume_pb2_grpc.VolumeServiceStub(channel(address))


def ring(node: str | NodeProcess, timeout: float = 1.0) -> pb.GetRingResponse:
    return stub(node).GetRing(pb.GetRingRequest(), timeout=timeout)


def ring_members(node: str | NodeProcess, timeout: float = 1.0) -> dict[str, int]:
    """node_id -> incarnation, as the node's ring has them."""
    return {m.node_id: m.incarnation for m in ring(node, timeout).members}


def converged(nodes: Sequence[NodeProcess], expected: set[str]) -> int | None:
    """The common epoch when every node's ring has exactly `expected`, else None."""
    epochs = set()
    for node in nodes:
        try:
            r = ring(node)
        except grpc.RpcError:
            return None
        if {m.node_id for m in r.members} != expected or r.fenced:
            return None
        epochs.add(r.epoch)
    return epochs.pop() if len(epochs) == 1 else None


def owners(node: str | NodeProcess, resource_ids: Sequence[str]) -> list[str]:
    s = stub(node)
    return [s.WhoOwns(pb.WhoOwnsRequest(resource_id=r), timeout=2).owner for r in resource_ids]


def scrape_metrics(port: int, timeout: float = 2.0) -> str:
    """A node's Prometheus text (never through an HTTP proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return resp.read().decode()
