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
from controlplane.metadata import EPOCH
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
        self.refuse_with_epoch = 0  # > 0: answer the next Locate FAILED_PRECONDITION
        self.unavailable = 0  # answer the next n calls UNAVAILABLE
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_ClusterServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(self.address)

    def GetRing(self, request, context):
        members = [pb.Member(node_id=n, address=a) for n, a in self.world["members"].items()]
        return pb.GetRingResponse(epoch=self.world["epoch"], members=members, vnodes=16,
                                  node_id=self.node_id)

    def Locate(self, request, context):
        with self.lock:
            self.locates += 1
            if self.unavailable:
                self.unavailable -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.node_id} is draining")
            if self.refuse_with_epoch:
                epoch, self.refuse_with_epoch = self.refuse_with_epoch, 0
                context.set_trailing_metadata(((EPOCH, str(epoch)),))
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the owner")
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


def test_without_routing_calls_go_to_the_endpoints_only(fakes) -> None:
    world, nodes = fakes
    with Client([nodes["n1"].address, nodes["n2"].address], timeout=5, route=False) as client:
        for i in range(5):
            assert client.cluster.Locate(pb.LocateRequest(resource_id=f"r{i}")).served_by \
                == "n1"
        nodes["n1"].unavailable = 100
        assert client.cluster.Locate(pb.LocateRequest(resource_id="r0")).served_by == "n2"
        assert nodes["n0"].locates == 0


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
