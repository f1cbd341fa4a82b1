"""The client's retry and ring-refresh rules against in-process fake nodes, where a test
decides exactly what each node answers (real nodes never answer a direct call with a
stale-epoch refusal, so that path is driven here)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2

from controlplane.client import Client
from controlplane.cluster.ring import Ring
from controlplane.metadata import EPOCH, UNREACHABLE
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc


class FakeNode(pb_grpc.ClusterServiceServicer):
    """One fake member: answers GetRing with the shared `world`, Locate as told."""

    def __init__(self, node_id: str, world: dict) -> None:
        self.node_id = node_id
        self.world = world
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.locates = 0
        self.rings = 0  # GetRing calls answered
        self.refuse_with_epoch = 0  # > 0: answer the next Locate FAILED_PRECONDITION
        self.unavailable = 0  # answer the next n calls UNAVAILABLE
        self.unreachable = 0  # answer the next n calls UNAVAILABLE marked UNREACHABLE
        self.answer_epoch = 0  # > 0: answer Locate with this EPOCH (as a forwarder does)
        self.aborted = 0  # answer the next n calls ABORTED (lost a race: nothing done)
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_ClusterServiceServicer_to_server(self, self.server)
        self.server.add_secure_port(self.address, harness_pki().server_credentials())

    def GetRing(self, request, context):
        with self.lock:
            self.rings += 1
        members = [pb.Member(node_id=n, address=a) for n, a in self.world["members"].items()]
        return pb.GetRingResponse(epoch=self.world["epoch"], members=members, vnodes=16,
                                  node_id=self.node_id)

    def Locate(self, request, context):
        with self.lock:
            self.locates += 1
            if self.aborted:
                self.aborted -= 1
                context.abort(grpc.StatusCode.ABORTED, "kept changing; retry")
            if self.unavailable:
                self.unavailable -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.node_id} is draining")
            if self.unreachable:
                self.unreachable -= 1
                context.set_trailing_metadata(((UNREACHABLE, "1"),))
                context.abort(grpc.StatusCode.UNAVAILABLE, "cannot reach the agent")
            if self.refuse_with_epoch:
                epoch, self.refuse_with_epoch = self.refuse_with_epoch, 0
                context.set_trailing_metadata(((EPOCH, str(epoch)),))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the owner")
            if self.answer_epoch:
                context.set_trailing_metadata(((EPOCH, str(self.answer_epoch)),))
        return pb.LocateResponse(resource_id=request.resource_id, served_by=self.node_id)


@pytest.fixture
def fakes():
    world: dict = {"epoch": 10, "members": {}}
    made = [FakeNode(f"n{i}", world) for i in range(3)]
    world["members"] = {f.node_id: f.address for f in made}
    for fake in made:
        fake.server.start()
    yield world, {f.node_id: f for f in made}
    for fake in made:
        fake.server.stop(0)


def owned_by(world: dict, node_id: str) -> str:
    ring = Ring.build(world["members"], world["epoch"], 16)
    return next(f"r{i}" for i in range(1000) if ring.owner(f"r{i}") == node_id)


def test_a_refusal_with_a_newer_epoch_refreshes_the_ring_and_retries(fakes) -> None:
    world, nodes = fakes
    with Client(nodes["n0"].address, timeout=5, ring_max_age=3600) as client:
        resource = owned_by(world, "n1")
        assert client.cluster.Locate(pb.LocateRequest(resource_id=resource)).served_by == "n1"
        assert client.ring.epoch == 10
        # Membership changes: n1 leaves; n1 (still up) refuses with the newer epoch.
        world["members"] = {k: v for k, v in world["members"].items() if k != "n1"}
        world["epoch"] = 11
        nodes["n1"].refuse_with_epoch = 11
        answer = client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert answer.served_by in {"n0", "n2"}
        assert client.ring.epoch == 11 and "n1" not in client.ring.addresses
        assert client.retries == 1


def test_a_refusal_without_a_newer_epoch_is_the_answer(fakes) -> None:
    world, nodes = fakes
    with Client(nodes["n0"].address, timeout=5, ring_max_age=3600) as client:
        resource = owned_by(world, "n2")
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        nodes["n2"].refuse_with_epoch = 10  # the epoch we hold: nothing to learn
        with pytest.raises(grpc.RpcError) as info:
            client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert client.retries == 0


def test_an_aborted_call_is_retried_on_the_same_owner(fakes) -> None:
    """ABORTED means the node lost a race and did nothing (errors.Busy: "kept changing;
    retry"); the client library is the higher level that retries it, with backoff, within
    the deadline (before: the caller got ABORTED, e.g. 1-2 of 192 starts onto a contended
    fleet in `bench placement`)."""
    world, nodes = fakes
    with Client(nodes["n0"].address, timeout=5, ring_max_age=3600) as client:
        resource = owned_by(world, "n2")
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        nodes["n2"].aborted = 2
        answer = client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert answer.served_by == "n2" and client.retries == 2


def test_an_unavailable_owner_is_skipped_for_an_endpoint(fakes) -> None:
    world, nodes = fakes
    with Client(nodes["n0"].address, timeout=5, ring_max_age=3600) as client:
        resource = owned_by(world, "n2")
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        nodes["n2"].unavailable = 1
        answer = client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        # The fake endpoint serves it itself (a real node would forward it to the owner).
        assert answer.served_by == "n0" and client.endpoint == nodes["n0"].address
        assert client.retries == 1


def test_a_newer_epoch_on_an_answer_marks_the_ring_stale_for_the_next_call(fakes) -> None:
    """The answer is returned without a GetRing inside that call; the next routed call
    refreshes (ring_max_age is an hour: only the epoch can have asked for it)."""
    world, nodes = fakes
    with Client(nodes["n0"].address, timeout=5, ring_max_age=3600) as client:
        resource = owned_by(world, "n1")
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        rings = sum(n.rings for n in nodes.values())
        world["epoch"] = 11
        nodes["n1"].answer_epoch = 11
        assert client.cluster.Locate(pb.LocateRequest(resource_id=resource)).served_by == "n1"
        assert sum(n.rings for n in nodes.values()) == rings  # no refresh inside the call
        assert client.ring.epoch == 10 and client.ring.fetched_at == float("-inf")
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert sum(n.rings for n in nodes.values()) == rings + 1
        assert client.ring.epoch == 11
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert sum(n.rings for n in nodes.values()) == rings + 1  # fresh again


@pytest.mark.parametrize("route", [True, False])
def test_an_unreachable_dependency_is_not_retried(fakes, route) -> None:
    """UNAVAILABLE marked UNREACHABLE: the node answered, what the call needs is out of reach
    and the call may have had effects: raised at once, to nobody else."""
    world, nodes = fakes
    resource = owned_by(world, "n1")
    endpoints = [nodes["n1"].address, nodes["n2"].address, nodes["n0"].address]
    with Client(endpoints, timeout=5, route=route) as client:
        for node in nodes.values():
            node.unreachable = 100
        with pytest.raises(grpc.RpcError) as info:
            client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(n.locates for n in nodes.values()) == 1  # exactly one call reached a node
        assert nodes["n1"].locates == 1 and client.retries == 0
        # Neither the owner nor the endpoint is taken for down: the next call goes there.
        for node in nodes.values():
            node.unreachable = 0
        assert client.cluster.Locate(pb.LocateRequest(resource_id=resource)).served_by == "n1"
        assert client.retries == 0


def test_without_routing_calls_go_to_the_endpoints_only(fakes) -> None:
    world, nodes = fakes
    with Client([nodes["n1"].address, nodes["n2"].address], timeout=5, route=False) as client:
        for i in range(5):
            assert client.cluster.Locate(pb.LocateRequest(resource_id=f"r{i}")).served_by \
                == "n1"
        nodes["n1"].unavailable = 100
        assert client.cluster.Locate(pb.LocateRequest(resource_id="r0")).served_by == "n2"
        assert nodes["n0"].locates == 0


GRPC_DEFAULT_CONNECT = [("grpc.enable_http_proxy", 0)]


@pytest.fixture
def silent_address():
    """A port that takes TCP connections and never says a word (a connect that hangs, as a
    filtered address does)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("kind", ["silent", "refusing"])
def test_an_owner_address_the_client_cannot_reach_is_not_waited_on(fakes, silent_address,
                                                                   kind) -> None:
    """A client behind a port-forward sees member addresses it cannot reach: the call goes
    to the endpoint (which would forward) after one short connect check, not at the
    deadline."""
    world, nodes = fakes
    resource = owned_by(world, "n1")
    world["members"]["n1"] = (silent_address if kind == "silent"
                              else f"127.0.0.1:{free_port()}")
    with Client(nodes["n0"].address, timeout=20, connect_timeout=0.5) as client:
        started = time.monotonic()
        assert client.cluster.Locate(pb.LocateRequest(resource_id=resource)).served_by == "n0"
        assert time.monotonic() - started < 5
        started = time.monotonic()
        client.cluster.Locate(pb.LocateRequest(resource_id=resource))
        assert time.monotonic() - started < 0.3  # remembered: no second connect check


def test_a_stream_opens_on_the_first_endpoint_that_connects(fakes, silent_address) -> None:
    world, nodes = fakes
    dead = f"127.0.0.1:{free_port()}"
    with Client([dead, silent_address, nodes["n2"].address], timeout=5,
                connect_timeout=0.3) as client:
        # ClusterService has no stream; the health Watch of a fake is UNIMPLEMENTED, which
        # proves where it went without a stream of our own.
        events = client.health.Watch(health_pb2.HealthCheckRequest(service=""))
        with pytest.raises(grpc.RpcError) as info:
            next(iter(events))
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert client.endpoint == nodes["n2"].address


@pytest.mark.parametrize("route", [True, False])
def test_a_black_holed_first_endpoint_costs_a_connect_check_not_the_deadline(
        fakes, silent_address, route) -> None:
    """The first endpoint accepts TCP and never answers: without a connect check the call
    would wait there until its deadline (a connect that hangs is not UNAVAILABLE).

    With gRPC's own connect timeout (20 s), i.e. options without the project's
    min_reconnect_backoff_ms (which also bounds a connect attempt, to 100 ms): the client
    must not depend on the options it was given to get past a black hole."""
    world, nodes = fakes
    with Client([silent_address, nodes["n0"].address], timeout=10, connect_timeout=0.5,
                route=route, options=GRPC_DEFAULT_CONNECT) as client:
        started = time.monotonic()
        assert client.cluster.GetRing(pb.GetRingRequest()).node_id == "n0"
        assert time.monotonic() - started < 3
        assert client.endpoint == nodes["n0"].address
        started = time.monotonic()
        resource = owned_by(world, "n2")
        assert client.cluster.Locate(pb.LocateRequest(resource_id=resource)).served_by \
            == ("n2" if route else "n0")
        assert time.monotonic() - started < 3
        started = time.monotonic()
        client.cluster.GetRing(pb.GetRingRequest())  # the endpoint that answered comes first
        assert time.monotonic() - started < 0.3
