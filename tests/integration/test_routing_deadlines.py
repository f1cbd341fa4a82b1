"""Routed calls as clients we did not write make them: with no deadline at all (grpcurl, Go
clients), and while the owner has just been killed (-9) and the ring still lists it.

Issue 11, items 1 and 2: a call without a deadline shows the server ~9.2e18 s left, which the
router passed on as the forward's timeout (DEADLINE_EXCEEDED in ~2 ms) and the owner as
`future.result(timeout=...)` (UNKNOWN, "timestamp out of range"); and a forward to a dead
owner gave up after four quick retries, long before the ring dropped the owner.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import pytest

from controlplane.client import Client
from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2, config_pb2, host_pb2, vm_pb2

T = TypeVar("T")
# How long the test waits on a call that carries no deadline (the call itself has none).
PATIENCE = 60.0


def no_deadline(call: Callable[[], T]) -> T:
    """Run a call that sends no deadline, waiting for it at most PATIENCE seconds here."""
    with futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=PATIENCE)


def owned_by(node, owner_id: str, prefix: str) -> str:
    """A resource id the cluster's ring gives to `owner_id`."""
    for i in range(1000):
        rid = f"{prefix}-{i}"
        if c.owners(node, [rid]) == [owner_id]:
            return rid
    raise AssertionError(f"no id owned by {owner_id}")


@pytest.fixture
def cluster(etcd, nodes, agents):
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=2) for i in range(3)]
    wait_until(lambda: c.converged(mns, {n.node_id for n in mns}), 15,
               message="the nodes agree on the ring")
    agent = agents.start("ag", hosts=2)
    for key, value in {"vm.syncInterval": "0.3", "host.pingTimeout": "1"}.items():
        c.config(mns[0]).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                      timeout=5)
    for host_id in agent.host_ids:
        c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                                timeout=10)
    return mns, agent


def create_vm(node, vm_id: str) -> None:
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id=vm_id, image=vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30,
                                            actual_size=1 << 28)), timeout=10)


@pytest.mark.parametrize("where", ["non-owner", "owner"])
def test_routed_calls_without_a_deadline_through_the_client_library(cluster, where) -> None:
    """Locate, StartVm(wait) and StopVm(wait) with no deadline, asked of a node that must
    forward (and of the owner itself): each answers as with a deadline."""
    mns, _ = cluster
    owner, other = mns[1], mns[0]
    vm_id = owned_by(other, owner.node_id, "nd-vm")
    create_vm(other, vm_id)
    asked = other if where == "non-owner" else owner
    with Client(asked.address, timeout=None, route=False) as client:
        located = no_deadline(lambda: client.cluster.Locate(
            cluster_pb2.LocateRequest(resource_id=vm_id)))
        assert located.served_by == owner.node_id
        assert located.forwarded is (where == "non-owner")
        started = no_deadline(lambda: client.vms.StartVm(vm_pb2.StartVmRequest(vm_id=vm_id,
                                                                           wait=True)).vm)
        assert started.state == "Running" and not started.op.op_id
        stopped = no_deadline(lambda: client.vms.StopVm(vm_pb2.StopVmRequest(vm_id=vm_id,
                                                                          wait=True)).vm)
        assert stopped.state == "Stopped" and not stopped.op.op_id
        assert client.retries == 0


def test_routed_stop_without_a_deadline_on_a_raw_stub(cluster) -> None:
    """The same with a bare generated stub and no timeout, as any other gRPC client sends it;
    and the client library routing to the owner itself with no deadline."""
    mns, _ = cluster
    owner, other = mns[2], mns[0]
    vm_id = owned_by(other, owner.node_id, "raw-vm")
    create_vm(other, vm_id)
    started = no_deadline(lambda: c.vms(other).StartVm(vm_pb2.StartVmRequest(vm_id=vm_id,
                                                                          wait=True)).vm)
    assert started.state == "Running"
    stopped = no_deadline(lambda: c.vms(other).StopVm(vm_pb2.StopVmRequest(vm_id=vm_id,
                                                                         wait=True)).vm)
    assert stopped.state == "Stopped"
    with Client([n.address for n in mns], timeout=None) as client:
        again = no_deadline(lambda: client.vms.StartVm(vm_pb2.StartVmRequest(vm_id=vm_id,
                                                                         wait=True)).vm)
        assert again.state == "Running"
        assert client.routed_calls == 1 and client.unrouted_calls == 0  # sent to the owner


def test_a_call_whose_owner_was_just_killed_goes_to_the_new_owner(cluster) -> None:
    """The owner is killed -9; the node asked still has it in its ring for ~2 s (TTL 2).
    The forward waits for the view to drop it, then the new owner serves the call, well
    within the caller's 10 s."""
    mns, _ = cluster
    victim, asked = mns[2], mns[0]
    rid = owned_by(asked, victim.node_id, "dead-res")
    vm_id = owned_by(asked, victim.node_id, "dead-vm")
    create_vm(asked, vm_id)
    with Client(asked.address, timeout=10, route=False) as client, \
            futures.ThreadPoolExecutor(2) as pool:
        victim.kill()
        assert victim.node_id in c.ring_members(asked)  # the ring has not dropped it yet
        locate = pool.submit(client.cluster.Locate, cluster_pb2.LocateRequest(resource_id=rid))
        start = pool.submit(client.vms.StartVm, vm_pb2.StartVmRequest(vm_id=vm_id, wait=True))
        located = locate.result()
        assert located.served_by != victim.node_id
        assert located.retries >= 1  # the asked node did meet the dead owner first
        assert start.result().vm.state == "Running"
        assert client.retries == 0  # the node asked waited; the client had nothing to retry
