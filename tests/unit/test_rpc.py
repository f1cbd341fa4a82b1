"""The server builder: domain errors become their status (the one table), health watchers
never take the workers that calls and probes need, and the admission budgets (streams,
unary calls, health) hold whatever the callers do. Over mutual TLS, as every server serves
(the harness PKI's certificates), so the budgets are proven with TLS on."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from controlplane import errors, rpc
from controlplane.channels import open_channel
from controlplane.metadata import UNREACHABLE
from controlplane.store.errors import StoreError
from controlplane.testing.pki import harness_pki
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc


class Refusing(cluster_pb2_grpc.ClusterServiceServicer):
    """WhoOwns raises whatever `raise_` says: a domain error as domain code raises it."""

    def __init__(self) -> None:
        self.raise_: BaseException = errors.NotFound("no such thing")
        self.hold = threading.Event()  # resource_id "hold": wait for it to be set
        self.held = threading.Semaphore(0)

    def WhoOwns(self, request, context):  # type: ignore[no-untyped-def]
        if request.resource_id == "hold":
            self.held.release()
            self.hold.wait(30)
        raise self.raise_


@pytest.fixture
def served():  # type: ignore[no-untyped-def]
    servicer = Refusing()
    server = rpc.RpcServer("127.0.0.1:0", tls=harness_pki().node("unit"), max_workers=2,
                           max_unary=3, max_streams=4)
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, servicer,
               "controlplane.v1.ClusterService")
    port = server.start()
    channel = open_channel(f"127.0.0.1:{port}", tls=harness_pki().admin())
    servicer.server = server
    yield servicer, channel
    servicer.hold.set()
    channel.close()
    server.stop(0)


@pytest.mark.parametrize("exc, code, marked", [
    (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND, False),
    (errors.Invalid("x"), grpc.StatusCode.INVALID_ARGUMENT, False),
    (errors.Refused("x"), grpc.StatusCode.FAILED_PRECONDITION, False),
    (errors.Busy("x"), grpc.StatusCode.ABORTED, False),
    (errors.Unreachable("agent down"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.NotServing("fenced"), grpc.StatusCode.UNAVAILABLE, False),
    (StoreError("etcd down"), grpc.StatusCode.UNAVAILABLE, True),
])
def test_a_domain_error_answers_its_status(served, exc, code, marked) -> None:  # type: ignore[no-untyped-def]
    servicer, channel = served
    servicer.raise_ = exc
    with pytest.raises(grpc.RpcError) as err:
        cluster_pb2_grpc.ClusterServiceStub(channel).WhoOwns(
            cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
    assert err.value.code() == code
    assert any(k == UNREACHABLE for k, _ in err.value.trailing_metadata() or ()) == marked


def test_details_are_bounded(served) -> None:  # type: ignore[no-untyped-def]
    servicer, channel = served
    servicer.raise_ = errors.Invalid("x" * 100_000)
    with pytest.raises(grpc.RpcError) as err:
        cluster_pb2_grpc.ClusterServiceStub(channel).WhoOwns(
            cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details()) <= rpc.MAX_DETAILS


def test_health_watchers_do_not_take_the_workers(served) -> None:  # type: ignore[no-untyped-def]
    """With 2 workers, 4 open Health.Watch streams (the stream cap); a Check and a call
    still answer, and a fifth stream is refused at once."""
    _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=30)
               for _ in range(4)]
    try:
        for watch in watches:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        answer = health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=3)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            cluster_pb2_grpc.ClusterServiceStub(channel).WhoOwns(
                cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=3)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        fifth = health.Watch(health_pb2.HealthCheckRequest(service="liveness"), timeout=3)
        with pytest.raises(grpc.RpcError) as err:
            next(fifth)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for watch in watches:
            watch.cancel()
    # the permits come back when the watches end
    wait_until(lambda: served[0].server.streams.held == 0, 5, message="permits back")


def test_busy_workers_queue_a_bounded_number_and_health_still_answers(served) -> None:  # type: ignore[no-untyped-def]
    """2 workers held, 1 call queued (max_unary 3): the next call is refused at once, the
    probe answers on its own threads, and a queued call cancelled by its client leaks
    nothing (the count is of pool tasks, which end whether or not the handler ran)."""
    servicer, channel = served
    stub = cluster_pb2_grpc.ClusterServiceStub(channel)
    hold = cluster_pb2.WhoOwnsRequest(resource_id="hold")
    running = [stub.WhoOwns.future(hold, timeout=30) for _ in range(2)]
    for _ in running:
        assert servicer.held.acquire(timeout=5)
    queued = stub.WhoOwns.future(hold, timeout=30)
    pool = servicer.server.unary_pool
    wait_until(lambda: pool.tasks == 3, 5, message="third call queued")
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("liveness", "readiness"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    queued.cancel()
    servicer.hold.set()
    for call in running:
        assert call.exception(timeout=5).code() == grpc.StatusCode.NOT_FOUND
    wait_until(lambda: pool.tasks == 0, 5, message="every task counted out")
    servicer.hold.clear()
    # the whole unary budget is back: 3 calls in, the 4th refused
    calls = [stub.WhoOwns.future(hold, timeout=30) for _ in range(3)]
    wait_until(lambda: pool.tasks == 3, 5, message="three calls admitted")
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=3)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    servicer.hold.set()
    for call in calls:
        assert call.exception(timeout=5).code() == grpc.StatusCode.NOT_FOUND


class BudgetMachine(RuleBasedStateMachine):
    """StreamBudget against a plain count: a permit is granted iff fewer than cap are held,
    and a release without a permit is refused (it would silently raise the cap)."""

    def __init__(self) -> None:
        super().__init__()
        self.budget: rpc.StreamBudget | None = None
        self.held = 0

    @precondition(lambda self: self.budget is None)
    @rule(cap=st.integers(1, 5))
    def make(self, cap: int) -> None:
        self.budget = rpc.StreamBudget(cap)

    @precondition(lambda self: self.budget is not None)
    @rule()
    def acquire(self) -> None:
        assert self.budget is not None
        granted = self.budget.try_acquire()
        assert granted == (self.held < self.budget.cap)
        self.held += granted

    @precondition(lambda self: self.budget is not None)
    @rule()
    def release(self) -> None:
        assert self.budget is not None
        if self.held:
            self.budget.release()
            self.held -= 1
        else:
            with pytest.raises(RuntimeError):
                self.budget.release()

    @invariant()
    def counts_agree(self) -> None:
        if self.budget is not None:
            assert self.budget.held == self.held <= self.budget.cap


TestStreamBudget = BudgetMachine.TestCase
TestStreamBudget.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_a_budget_needs_a_cap() -> None:
    with pytest.raises(ValueError):
        rpc.StreamBudget(0)


def test_request_checks_name_the_field_and_the_bounds() -> None:
    with pytest.raises(errors.Invalid, match=r"cpus must be in 0\.\.1024, got 2000"):
        rpc.check_range(2000, "cpus", 0, 1024)
    assert rpc.check_range(0, "cpus", 0, 1024) == 0
    with pytest.raises(errors.Invalid, match="vm_id is 300 bytes; the limit is 256"):
        rpc.check_id("v" * 300, "vm_id")
    with pytest.raises(errors.Invalid, match="must be printable"):
        rpc.check_id("a/b", "vm_id")
    with pytest.raises(errors.Invalid, match=r"agent address 'x{64}\.\.\.'"):
        rpc.check_address("x" * 1000, "agent address")  # never echoes unbounded input


class Clock(cluster_pb2_grpc.ClusterServiceServicer):
    """WhoOwns answers what `rpc.remaining` reads from the call: owner = its value without a
    default, epoch = its value with the server's cap."""

    def WhoOwns(self, request, context):  # type: ignore[no-untyped-def]
        return cluster_pb2.WhoOwnsResponse(owner=repr(rpc.remaining(context, None)),
                                           epoch=int(rpc.remaining(context)))


def test_remaining_tells_a_call_without_a_deadline_from_one_with() -> None:
    """A real gRPC server shows a call without a deadline as ~9.2e18 s left, not None
    (issue 11, item 1): `remaining` gives the default (the cap, or None) for it."""
    server = rpc.RpcServer("127.0.0.1:0", tls=harness_pki().node("unit"), max_workers=2)
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, Clock(),
               "controlplane.v1.ClusterService")
    port = server.start()
    channel = open_channel(f"127.0.0.1:{port}", tls=harness_pki().admin())
    try:
        stub = cluster_pb2_grpc.ClusterServiceStub(channel)
        unbounded = stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"))  # no deadline
        assert unbounded.owner == "None" and unbounded.epoch == int(rpc.NO_DEADLINE_CAP)
        bounded = stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
        assert 0 < float(bounded.owner) <= 5.5 and bounded.epoch <= 5  # clocks: not exact
    finally:
        channel.close()
        server.stop(0)


def test_health_list_answers_every_service() -> None:
    """grpc.health.v1 Health/List (the fuzzer met UNIMPLEMENTED there first): every service
    the server reports, with its status."""
    server = rpc.RpcServer("127.0.0.1:0", tls=harness_pki().node("unit"))
    server.add(lambda servicer, s: None, object(), "test.v1.Thing")
    port = server.start(ready=False)
    try:
        with open_channel(f"127.0.0.1:{port}", tls=harness_pki().admin()) as channel:
            answer = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(),
                                                               timeout=5)
        statuses = {name: s.status for name, s in answer.statuses.items()}
        assert statuses["liveness"] == health_pb2.HealthCheckResponse.SERVING
        assert statuses["readiness"] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert "test.v1.Thing" in statuses
    finally:
        server.stop(0)
