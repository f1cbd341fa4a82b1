"""The client library against real etcd and real management-node processes."""

from __future__ import annotations

import grpc
import pytest

from controlplane.client import Client
from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2, config_pb2, vm_pb2


def converged_three(nodes, etcd) -> list:
    started = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(3)]
    wait_until(lambda: c.converged(started, {"mn-0", "mn-1", "mn-2"}), 15,
               message="three nodes agree on the ring")
    return started


def locate(client: Client, resource_id: str) -> cluster_pb2.LocateResponse:
    return client.cluster.Locate(cluster_pb2.LocateRequest(resource_id=resource_id))


def test_unary_calls_and_errors(etcd, nodes) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    with Client(node.address, timeout=5) as client:
        ring = client.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert [m.node_id for m in ring.members] == ["mn-0"]
        assert client.endpoint == node.address
        entry = client.config.GetConfig(config_pb2.ConfigKey(key="vm.syncInterval"))
        assert entry.key == "vm.syncInterval"
        with pytest.raises(grpc.RpcError) as info:
            client.vms.GetVm(vm_pb2.VmRef(vm_id="nope"))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert client.retries == 0  # NOT_FOUND is an answer, not a reason to retry
