"""Management node processes on a real etcd: convergence, failover, leave, cut-off, restart."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from controlplane.channels import open_channel
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc

TTL = 2
IDS = [f"vm-{i}" for i in range(60)]


def start_three(nodes: NodeFactory, etcd: str, **kwargs: object) -> list[NodeProcess]:
    started = [nodes.start(f"node-{i}", etcd, wait=False, lease_ttl=TTL, **kwargs)
               for i in range(3)]
    for node in started:
        node.wait_ready(30)
    wait_until(lambda: c.converged(started, {"node-0", "node-1", "node-2"}), timeout=15,
               message="three nodes did not converge")
    return started


def dropped(survivors: list[NodeProcess], node_id: str) -> bool:
    return all(node_id not in c.ring_members(n) for n in survivors)


def test_three_nodes_converge_on_epoch_and_owners(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    trio = start_three(nodes, etcd.endpoints)
    epoch = c.converged(trio, {"node-0", "node-1", "node-2"})
    assert epoch and epoch > 0
    answers = [c.owners(n, IDS) for n in trio]
    assert answers[0] == answers[1] == answers[2]
    assert set(answers[0]) == {"node-0", "node-1", "node-2"}
    shares = c.ring(trio[0]).shares
    assert sum(shares.values()) == pytest.approx(1.0)
    # Routed calls are served by the owner, whichever node is asked.
    for node in trio:
        for rid, owner in zip(IDS[:10], answers[0], strict=False):
            loc = c.stub(node).Locate(pb.LocateRequest(resource_id=rid), timeout=5)
            assert loc.served_by == owner
            assert loc.forwarded == (owner != node.node_id)


def test_kill_9_is_dropped_within_ttl_plus_margin(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    trio = start_three(nodes, etcd.endpoints)
    killed_at = time.monotonic()
    trio[2].kill()
    wait_until(lambda: dropped(trio[:2], "node-2"), timeout=TTL + 5)
    elapsed = time.monotonic() - killed_at
    assert elapsed <= TTL + 1.5, f"dropped after {elapsed:.2f}s"
    # survivors agree again, and every resource has a live owner
    wait_until(lambda: c.converged(trio[:2], {"node-0", "node-1"}), timeout=5)
    assert set(c.owners(trio[0], IDS)) == {"node-0", "node-1"}


def test_sigterm_leaves_within_1_5_s(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    trio = start_three(nodes, etcd.endpoints)
    started = time.monotonic()
    trio[1]._signal(15)
    wait_until(lambda: dropped([trio[0], trio[2]], "node-1"), timeout=5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5, f"graceful leave took {elapsed:.2f}s"
    wait_until(lambda: not trio[1].is_running(), timeout=15)
    assert trio[1].returncode == 0
    assert "lease" in trio[1].log_text() and "revoked" in trio[1].log_text()


def test_cut_off_node_fences_itself_before_eviction_and_rejoins(
    etcd: EtcdCluster, nodes: NodeFactory, proxy_factory
) -> None:
    proxy = proxy_factory(etcd.endpoints)
    a = nodes.start("node-0", etcd.endpoints, wait=False, lease_ttl=TTL)
    b = nodes.start("node-1", etcd.endpoints, wait=False, lease_ttl=TTL)
    cut = nodes.start("node-2", proxy.address, wait=False, lease_ttl=TTL)
    for n in (a, b, cut):
        n.wait_ready(30)
    wait_until(lambda: c.converged([a, b, cut], {"node-0", "node-1", "node-2"}), timeout=15)
    first = c.ring_members(a)["node-2"]

    proxy.blackhole()
    # The cut node goes NOT_SERVING while the others still count it as a member.
    wait_until(lambda: cut.health() == "NOT_SERVING", timeout=TTL + 2)
    assert "node-2" in c.ring_members(a) and "node-2" in c.ring_members(b), \
        "evicted before the cut-off node fenced itself"
    assert c.ring(cut).fenced
    with pytest.raises(grpc.RpcError) as err:
        c.stub(cut).WhoOwns(pb.WhoOwnsRequest(resource_id="vm-1"), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        c.stub(cut).ListMembers(pb.ListMembersRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2.5  # never hangs past its deadline
    # Then the others evict it (etcd expires its lease).
    wait_until(lambda: dropped([a, b], "node-2"), timeout=TTL + 5)

    proxy.heal()
    wait_until(lambda: c.converged([a, b, cut], {"node-0", "node-1", "node-2"}), timeout=20,
               message="cut-off node did not rejoin")
    assert c.ring_members(a)["node-2"] > first  # a new incarnation
    wait_until(lambda: cut.health() == "SERVING", timeout=5)
    assert cut.is_running()


def test_etcd_restart_under_the_nodes(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    trio = start_three(nodes, etcd.endpoints)
    pids = [n.pid for n in trio]
    etcd.members[0].stop()
    etcd.members[0].restart()
    wait_until(lambda: c.converged(trio, {"node-0", "node-1", "node-2"}), timeout=30,
               message="nodes did not regain membership after the etcd restart")
    wait_until(lambda: all(n.health() == "SERVING" for n in trio), timeout=10)
    assert [n.pid for n in trio] == pids  # no node restarted itself


def test_bad_input_and_forwarding_refusal(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    node = nodes.start("node-0", etcd.endpoints, lease_ttl=TTL)
    other = nodes.start("node-1", etcd.endpoints, lease_ttl=TTL)
    wait_until(lambda: c.converged([node, other], {"node-0", "node-1"}), timeout=15)
    for bad in ("", "x" * 257, "a/b"):
        with pytest.raises(grpc.RpcError) as err:
            c.stub(node).WhoOwns(pb.WhoOwnsRequest(resource_id=bad), timeout=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            c.stub(node).Locate(pb.LocateRequest(resource_id=bad), timeout=2)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A forwarded call that reaches a non-owner is refused, with the receiver's epoch,
    # and is never forwarded again. (Forwarded-call metadata is believed only from a node
    # certificate: tests/integration/test_access.py.)
    rid = next(r for r in IDS if c.owners(node, [r])[0] == "node-1")
    with pytest.raises(grpc.RpcError) as err, \
            open_channel(node.address, tls=harness_pki().node("node-9")) as as_node:
        pb_grpc.ClusterServiceStub(as_node).Locate(
            pb.LocateRequest(resource_id=rid),
            metadata=(("x-controlplane-forwarded-by", "node-9"), ("x-controlplane-epoch", "1")),
            timeout=2,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailing = dict(err.value.trailing_metadata())
    assert int(trailing["x-controlplane-epoch"]) == c.ring(node).epoch
    members = c.stub(node).ListMembers(pb.ListMembersRequest(), timeout=2)
    assert [m.node_id for m in members.members] == ["node-0", "node-1"]


def test_duplicate_node_id_waits_instead_of_stealing(etcd: EtcdCluster, nodes: NodeFactory
                                                     ) -> None:
    first = nodes.start("node-0", etcd.endpoints, lease_ttl=TTL)
    incarnation = c.ring(first).incarnation
    second = nodes.start("node-0", etcd.endpoints, lease_ttl=TTL, wait=False)
    wait_until(lambda: second.log_text().count("is held by 127.0.0.1:") >= 3, timeout=20)
    assert c.ring(first).incarnation == incarnation and not c.ring(first).fenced
    assert first.health() == "SERVING" and second.health() == "NOT_SERVING"
    first.kill()  # now the id is free once the dead process's lease expires
    wait_until(lambda: second.health() == "SERVING", timeout=TTL + 10)
    members = c.stub(second).ListMembers(pb.ListMembersRequest(), timeout=2).members
    assert [(m.node_id, m.address) for m in members] == [("node-0", second.address)]


def test_cold_start_waits_for_etcd_instead_of_crashing(tmp_path, nodes: NodeFactory) -> None:
    etcd = EtcdCluster(str(tmp_path / "late-etcd"), size=1)  # ports chosen, not started
    try:
        node = nodes.start("node-0", etcd.endpoints, lease_ttl=TTL, wait=False)
        wait_until(lambda: "retrying" in node.log_text(), timeout=15)
        assert node.is_running() and node.health("liveness") == "SERVING"
        assert node.health() == "NOT_SERVING"
        etcd.start()
        node.wait_ready(30)
        assert c.ring_members(node) == {"node-0": c.ring(node).incarnation}
    finally:
        nodes.kill_all()
        etcd.stop()


def test_sigterm_drains_a_call_in_flight(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    """SIGTERM while a call is in flight: the node leaves the ring at once (lease revoked),
    yet the call completes within the drain grace."""
    metrics_port = free_port()
    a = nodes.start("node-0", etcd.endpoints, lease_ttl=5, metrics_port=metrics_port)
    b = nodes.start("node-1", etcd.endpoints, lease_ttl=5)
    watcher = nodes.start("node-2", etcd.endpoints, lease_ttl=5)
    wait_until(lambda: c.converged([a, b, watcher], {"node-0", "node-1", "node-2"}), timeout=15)
    rid = next(r for r in IDS if c.owners(a, [r])[0] == "node-1")
    b.pause()  # the owner stalls: the forwarded call stays in flight on node-0
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["ok"] = c.stub(a).Locate(pb.LocateRequest(resource_id=rid), timeout=15)
        except grpc.RpcError as err:
            result["err"] = err

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(lambda: "controlplane_rpcs_in_flight 1.0" in c.scrape_metrics(metrics_port),
               timeout=5)
    a._signal(15)
    wait_until(lambda: "node-0" not in c.ring_members(watcher), timeout=3)
    assert thread.is_alive()  # left the ring, still serving the call
    b.resume()
    thread.join(10)
    assert "ok" in result, result.get("err")
    assert result["ok"].served_by == "node-1"
    wait_until(lambda: not a.is_running(), timeout=15)
    assert a.returncode == 0

