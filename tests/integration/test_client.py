"""The client library against real etcd and real management-node processes."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from controlplane.client import Client
from controlplane.testing import cluster as c
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2, config_pb2, vm_pb2

IDS = [f"res-{i}" for i in range(40)]


def start_nodes(nodes, etcd, count: int) -> list:
    started = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(count)]
    names = {n.node_id for n in started}
    wait_until(lambda: c.converged(started, names), 15, message="the nodes agree on the ring")
    return started


def locate(client: Client, resource_id: str) -> cluster_pb2.LocateResponse:
    return client.cluster.Locate(cluster_pb2.LocateRequest(resource_id=resource_id))


def test_unary_calls_stream_and_errors(etcd, nodes) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    with Client(node.address, timeout=5) as client:
        ring = client.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert [m.node_id for m in ring.members] == ["mn-0"]
        assert client.endpoint == node.address
        entry = client.config.GetConfig(config_pb2.GetConfigRequest(key="vm.syncInterval")).entry
        assert entry.key == "vm.syncInterval"
        health = client.health.Check(health_pb2.HealthCheckRequest(service="readiness"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            client.vms.GetVm(vm_pb2.GetVmRequest(vm_id="nope"))
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert client.retries == 0  # NOT_FOUND is an answer, not a reason to retry
        client.vms.CreateVm(vm_pb2.CreateVmRequest(
            vm_id="vm-1", image=vm_pb2.ImageInfo(virtual_size=1 << 30, actual_size=1 << 28)))
        events = client.vms.WatchVms(vm_pb2.WatchVmsRequest(vm_id="vm-1", initial=True),
                                     timeout=5)
        first = next(iter(events))
        events.cancel()
        assert first.vm.vm_id == "vm-1"


def test_unavailable_endpoint_is_skipped_within_the_deadline(etcd, nodes) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, node.address], timeout=5, route=False) as client:
        reply = client.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert reply.node_id == "mn-0"
        # The dead endpoint failed its connect check: skipped before any call was made.
        assert client.endpoint == node.address and client.retries == 0
        client.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert client.retries == 0  # the next call starts at the endpoint that answered
        assert client.unrouted_calls == 2
    with Client(dead, timeout=0.6) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                     grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - started < 3.0  # the deadline bounds the retries
        assert client.retries >= 1


def test_a_black_holed_first_endpoint_does_not_eat_the_deadline(etcd, nodes,
                                                                 proxy_factory) -> None:
    """The first endpoint takes connections and never answers (a black-holed proxy to the
    node itself); the call is served by the second well within its deadline, with gRPC's own
    20 s connect timeout as well as with the project's channel options."""
    node = nodes.start("mn-0", etcd.endpoints)
    hole = proxy_factory(node.address)
    hole.blackhole()
    for options in (None, [("grpc.enable_http_proxy", 0)]):
        for route in (False, True):
            with Client([hole.address, node.address], timeout=10, route=route,
                        options=options) as client:
                started = time.monotonic()
                assert locate(client, "vm-1").served_by == "mn-0"
                assert time.monotonic() - started < 4, (options, route)
                assert client.endpoint == node.address


def test_retry_on_a_killed_node(etcd, nodes) -> None:
    first, second = start_nodes(nodes, etcd, 2)
    owned_by_first = next(r for r in IDS if c.owners(second, [r])[0] == "mn-0")
    endpoints = [first.address, second.address]
    with Client(endpoints, timeout=10, route=False) as plain, \
            Client(endpoints, timeout=10) as routed:
        assert plain.cluster.GetRing(cluster_pb2.GetRingRequest()).node_id == "mn-0"
        assert locate(routed, owned_by_first).served_by == "mn-0"
        first.kill()
        reply = plain.cluster.GetRing(cluster_pb2.GetRingRequest())
        assert reply.node_id == "mn-1" and plain.endpoint == second.address
        assert plain.retries >= 1
        # The owner is gone: the routed client cannot reach it and sends the call to the
        # survivor, which serves it once its ring has dropped the dead member.
        answer = locate(routed, owned_by_first)
        assert answer.served_by == "mn-1" and routed.endpoint == second.address
        assert routed.retries >= 1


def test_calls_go_straight_to_the_owner(etcd, nodes) -> None:
    started = start_nodes(nodes, etcd, 3)
    owners = dict(zip(IDS, c.owners(started[0], IDS), strict=True))
    assert len(set(owners.values())) == 3
    with Client([n.address for n in started], timeout=5) as client:
        for resource_id, owner in owners.items():
            answer = locate(client, resource_id)
            assert answer.served_by == owner and not answer.forwarded, resource_id
            assert client.endpoint == nodes.get(owner).address
        assert client.ring.ring.owner(IDS[0]) == owners[IDS[0]]
    # The same calls to one node, without routing: those it does not own are forwarded.
    with Client(started[0].address, timeout=5, route=False) as client:
        for resource_id, owner in owners.items():
            answer = locate(client, resource_id)
            assert answer.served_by == owner
            assert answer.forwarded == (owner != "mn-0"), resource_id


def test_ring_refresh_after_a_member_joins_and_leaves(etcd, nodes) -> None:
    started = start_nodes(nodes, etcd, 2)
    with Client([started[0].address], timeout=5, ring_max_age=0.5) as client:
        locate(client, IDS[0])
        before = client.ring.epoch
        assert set(client.ring.addresses) == {"mn-0", "mn-1"}
        joined = nodes.start("mn-2", etcd.endpoints)
        everyone = [*started, joined]
        wait_until(lambda: c.converged(everyone, {"mn-0", "mn-1", "mn-2"}), 15)
        owned = [r for r in IDS if c.owners(joined, [r])[0] == "mn-2"]
        assert owned

        def routed_to_newcomer() -> bool:
            answer = locate(client, owned[0])
            return answer.served_by == "mn-2" and not answer.forwarded

        wait_until(routed_to_newcomer, 10, message="the client routes to the new member")
        assert client.ring.epoch > before and "mn-2" in client.ring.addresses
        # A graceful leave: the survivors drop it at once; the client's next refresh does.
        joined.terminate()
        wait_until(lambda: c.converged(started, {"mn-0", "mn-1"}), 15)
        answer = locate(client, owned[0])
        assert answer.served_by in {"mn-0", "mn-1"}
        wait_until(lambda: locate(client, owned[0]) and "mn-2" not in client.ring.addresses,
                   10, message="the client's ring drops the member that left")
        assert not locate(client, owned[0]).forwarded


def test_a_forwarded_answer_tells_a_stale_client_its_ring_is_old(etcd, nodes) -> None:
    """The node a stale client routed to forwards the call and answers with its epoch in
    the trailing metadata, so the client's next call refreshes the ring and goes straight to
    the owner (ring_max_age is an hour: only the epoch can have made it refresh). Fails if
    the router does not send its epoch back on a forwarded answer."""
    started = start_nodes(nodes, etcd, 2)
    with Client([n.address for n in started], timeout=5, ring_max_age=3600) as client:
        locate(client, IDS[0])
        before = client.ring.epoch
        joined = nodes.start("mn-2", etcd.endpoints)
        wait_until(lambda: c.converged([*started, joined], {"mn-0", "mn-1", "mn-2"}), 15)
        owned = [r for r in IDS if c.owners(joined, [r])[0] == "mn-2"]
        assert owned and "mn-2" not in client.ring.addresses
        first = locate(client, owned[0])  # routed by the stale ring: forwarded
        assert first.served_by == "mn-2" and first.forwarded
        second = locate(client, owned[0])  # the ring refreshed first: served by the owner
        assert second.served_by == "mn-2" and not second.forwarded
        assert client.endpoint == joined.address
        assert client.ring.epoch > before and "mn-2" in client.ring.addresses
