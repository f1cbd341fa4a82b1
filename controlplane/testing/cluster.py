"""Questions a test asks a running cluster, over the public gRPC API.

Calls present the harness's admin identity (controlplane.testing.pki), or, given a
NodeProcess, whatever that node's own channel presents (PLAINTEXT to an --insecure node)."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Sequence

import grpc

from controlplane.channels import ChannelPool, reconnect_options
from controlplane.security.tls import Transport
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import harness_pki
from controlplane.v1 import (
    audit_pb2_grpc,
    config_pb2_grpc,
    host_pb2_grpc,
    storage_pb2_grpc,
    vm_pb2_grpc,
    volume_pb2_grpc,
)
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc

# One pool per transport for every test of the process (thread-safe: tests start threads
# that ask nodes); a short reconnect backoff, since nodes restart in tests.
_pools: dict[Transport, ChannelPool] = {}
_pools_lock = threading.Lock()


def _pool_for(address: str | NodeProcess) -> ChannelPool:
    tls = address.client_tls if isinstance(address, NodeProcess) else harness_pki().admin()
    pool = _pools.get(tls)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(tls, ChannelPool(reconnect_options(500), tls=tls))
    return pool


def _address(address: str | NodeProcess) -> str:
    return address.address if isinstance(address, NodeProcess) else address


def _stub(stub_class, address: str | NodeProcess):  # type: ignore[no-untyped-def]
    return _pool_for(address).stub(stub_class, _address(address))


def channel(address: str | NodeProcess) -> grpc.Channel:
    """The shared channel to a node."""
    return _pool_for(address).get(_address(address))


def stub(address: str | NodeProcess) -> pb_grpc.ClusterServiceStub:
    """A ClusterService stub on the shared channel to a node."""
    return _stub(pb_grpc.ClusterServiceStub, address)


def vms(address: str | NodeProcess) -> vm_pb2_grpc.VmServiceStub:
    return _stub(vm_pb2_grpc.VmServiceStub, address)


def hosts(address: str | NodeProcess) -> host_pb2_grpc.HostServiceStub:
    return _stub(host_pb2_grpc.HostServiceStub, address)


def audit(address: str | NodeProcess) -> audit_pb2_grpc.AuditServiceStub:
    return _stub(audit_pb2_grpc.AuditServiceStub, address)


def config(address: str | NodeProcess) -> config_pb2_grpc.ConfigServiceStub:
    return _stub(config_pb2_grpc.ConfigServiceStub, address)


def storage(address: str | NodeProcess) -> storage_pb2_grpc.StorageServiceStub:
    return _stub(storage_pb2_grpc.StorageServiceStub, address)


def volumes(address: str | NodeProcess) -> volume_pb2_grpc.VolumeServiceStub:
    return _stub(volume_pb2_grpc.VolumeServiceStub, address)


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
