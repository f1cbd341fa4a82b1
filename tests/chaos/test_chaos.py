"""Slow tier: etcd losing its leader, and repeated cut/heal cycles."""

from __future__ import annotations

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2 as pb

pytestmark = pytest.mark.slow
TTL = 3
ALL = {"node-0", "node-1", "node-2"}


def test_etcd_leader_killed_under_the_nodes(etcd3: EtcdCluster, nodes: NodeFactory) -> None:
    trio = [nodes.start(f"node-{i}", etcd3.endpoints, wait=False, lease_ttl=TTL)
            for i in range(3)]
    for n in trio:
        n.wait_ready(30)
    wait_until(lambda: c.converged(trio, ALL), timeout=15)
    pids = [n.pid for n in trio]
    for _ in range(2):
        leader = etcd3.leader_index()
        etcd3.members[leader].kill()
        # a new leader is elected in ~1.5 s; nodes keep (or regain) their membership
        wait_until(lambda: c.converged(trio, ALL), timeout=30)
        wait_until(lambda: all(n.health() == "SERVING" for n in trio), timeout=15)
        etcd3.members[leader].restart()
    assert [n.pid for n in trio] == pids


def test_repeated_cut_and_heal(etcd: EtcdCluster, nodes: NodeFactory, proxy_factory) -> None:
    proxy = proxy_factory(etcd.endpoints)
    a = nodes.start("node-0", etcd.endpoints, wait=False, lease_ttl=2)
    b = nodes.start("node-1", etcd.endpoints, wait=False, lease_ttl=2)
    cut = nodes.start("node-2", proxy.address, wait=False, lease_ttl=2)
    for n in (a, b, cut):
        n.wait_ready(30)
    incarnations = []
    for mode in ("blackhole", "drop", "blackhole"):
        wait_until(lambda: c.converged([a, b, cut], ALL), timeout=20)
        wait_until(lambda: cut.health() == "SERVING", timeout=5)
        incarnations.append(c.ring_members(a)["node-2"])
        getattr(proxy, mode)()
        wait_until(lambda: cut.health() == "NOT_SERVING", timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            c.stub(cut).Locate(pb.LocateRequest(resource_id="vm-1"), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_until(lambda: "node-2" not in c.ring_members(a), timeout=8)
        proxy.heal()
    wait_until(lambda: c.converged([a, b, cut], ALL), timeout=20)
    incarnations.append(c.ring_members(a)["node-2"])
    assert incarnations == sorted(set(incarnations))  # a new incarnation every time


def test_paused_node_is_evicted_and_comes_back_fenced_first(
    etcd: EtcdCluster, nodes: NodeFactory
) -> None:
    """SIGSTOP longer than the TTL (a GC pause, a frozen VM): the others evict the node; on
    SIGCONT it must not act on its stale ring, and it rejoins with a new incarnation."""
    trio = [nodes.start(f"node-{i}", etcd.endpoints, wait=False, lease_ttl=2) for i in range(3)]
    for n in trio:
        n.wait_ready(30)
    wait_until(lambda: c.converged(trio, ALL), timeout=15)
    before = c.ring_members(trio[0])["node-2"]
    trio[2].pause()
    wait_until(lambda: "node-2" not in c.ring_members(trio[0]), timeout=10)
    trio[2].resume()
    wait_until(lambda: c.converged(trio, ALL), timeout=20)
    assert c.ring_members(trio[0])["node-2"] > before
    log = trio[2].log_text()
    assert "fenced" in log and "registered node-2 as incarnation" in log
