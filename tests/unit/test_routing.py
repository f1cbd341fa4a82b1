"""The forwarding helper's decisions, with a stand-in view and channel (no I/O)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import MappingProxyType

import grpc
import pytest

from controlplane.cluster.ring import Ring
from controlplane.cluster.routing import (
    PROBE_INTERVAL,
    ROUTE_CAP,
    RouteError,
    Router,
    Step,
    next_step,
    view_moved,
)
from controlplane.cluster.routing import Failure as RouteFailure
from controlplane.cluster.table import MemberInfo, MemberTable
from controlplane.metadata import EPOCH, FORWARDED_BY, UNREACHABLE
from controlplane.security.tls import PLAINTEXT

MEMBERS = ["a", "b", "c"]


class View:
    """Holds a ring; catching up (wait_for) swaps in `next_ring` like the applier would, and
    answers the predicate on the new table; `waited` adds up the timeouts it was given."""

    def __init__(self, ring: Ring, next_ring: Ring | None = None) -> None:
        self.ring = ring
        self.next_ring = next_ring
        self.table = self._table(ring)
        self.refreshes = 0
        self.waited = 0.0

    @staticmethod
    def _table(ring: Ring) -> MemberTable:
        return MemberTable(MappingProxyType(
            {m: MemberInfo(m, f"{m}:1", 1, 1) for m in ring.members}), ring.epoch, ring.epoch)

    def wait_for(self, predicate, timeout: float) -> bool:  # noqa: ANN001
        self.refreshes += 1
        self.waited += timeout
        if self.next_ring is not None:
            self.ring = self.next_ring
            self.table = self._table(self.next_ring)
        return predicate(self.table)

    def reconcile_now(self, wait: float | None = None) -> bool:
        self.refreshes += 1
        return True


class Context:
    def __init__(self, metadata: tuple = (), active: bool = True,
                 remaining: float = 5.0) -> None:
        self.metadata = metadata
        self.active = active
        self.remaining = remaining
        self.trailing: tuple = ()

    def is_active(self) -> bool:
        return self.active

    def invocation_metadata(self) -> tuple:
        return self.metadata

    def auth_context(self) -> dict:
        return {}  # a plaintext caller: no identity to pass on

    def time_remaining(self) -> float:
        return self.remaining

    def set_trailing_metadata(self, md: tuple) -> None:
        self.trailing = md


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, epoch: int | None = None) -> None:
        self._code, self._epoch = code, epoch

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name} from the owner"

    def trailing_metadata(self) -> tuple:
        return ((EPOCH, str(self._epoch)),) if self._epoch is not None else ()


def resource_owned_by(ring: Ring, node: str) -> str:
    return next(r for r in (f"vm-{i}" for i in range(1000)) if ring.owner(r) == node)


def failing_remote(code: grpc.StatusCode, times: int = 1_000) -> tuple[Callable, list[int]]:
    """A forwarded call that fails with `code` `times` times, then answers "remote"; the list
    counts the calls."""
    calls: list[int] = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        calls.append(1)
        if len(calls) <= times:
            raise Failure(code)
        return "remote"

    return remote, calls


def router(view: View, me: str = "a", fenced: bool = False) -> Router:
    r = Router(me, view, lambda: fenced, max_retries=3, tls=PLAINTEXT)  # type: ignore[arg-type]
    r.channel = lambda address: address  # type: ignore[method-assign]
    return r


def test_owner_serves_locally() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "a")
    resp, retries = router(View(ring)).route(rid, Context(), lambda r, fwd: ("local", fwd),
                                             lambda *a: pytest.fail("forwarded"))
    assert resp == ("local", False) and retries == 0


def test_forwards_with_sender_and_epoch() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    seen = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        seen.append((channel, dict(metadata)))
        return "remote"

    resp, _ = router(View(ring)).route(rid, Context(), lambda r, f: "local", remote)
    assert resp == "remote"
    assert seen == [("b:1", {FORWARDED_BY: "a", EPOCH: "5"})]


def test_refused_by_newer_epoch_refreshes_then_serves() -> None:
    old = Ring.build(MEMBERS, 5)
    new = Ring.build(["a", "c"], 9)  # b left: at epoch 9 the resource is ours or c's
    rid = next(r for r in (f"vm-{i}" for i in range(1000))
               if old.owner(r) == "b" and new.owner(r) == "a")
    view = View(old, new)

    def remote(channel, metadata, timeout):  # noqa: ANN001
        raise Failure(grpc.StatusCode.FAILED_PRECONDITION, epoch=9)

    resp, retries = router(view).route(rid, Context(), lambda r, f: ("local", r.epoch), remote)
    assert resp == ("local", 9) and retries == 1 and view.refreshes >= 1


def test_an_unreachable_owner_is_waited_for_until_the_view_drops_it() -> None:
    """The owner was killed: the ring still names it until its lease expires. The forward
    waits for the view to drop it and then goes to the new owner (the old router gave up
    after four quick retries, long before the ring moved)."""
    old = Ring.build(MEMBERS, 5)
    new = Ring.build(["a", "b"], 9)  # c's lease expired
    rid = next(r for r in (f"vm-{i}" for i in range(1000))
               if old.owner(r) == "c" and new.owner(r) == "b")
    seen: list[str] = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        seen.append(channel)
        if channel == "c:1":
            raise Failure(grpc.StatusCode.UNAVAILABLE)
        return "served by b"

    resp, retries = router(View(old, new)).route(rid, Context(), lambda r, f: "local", remote)
    assert resp == "served by b" and retries == 1 and seen == ["c:1", "b:1"]


def test_an_unreachable_owner_is_retried_until_the_deadline_not_a_count() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "c")
    remote, calls = failing_remote(grpc.StatusCode.UNAVAILABLE)

    class SlowView(View):  # the view never moves: each wait lasts its whole timeout
        def wait_for(self, predicate, timeout: float) -> bool:  # noqa: ANN001
            time.sleep(timeout)
            return super().wait_for(predicate, timeout)

    view = SlowView(ring)
    with pytest.raises(RouteError) as err:
        router(view).route(rid, Context(remaining=1.3), lambda r, f: "local", remote)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "could not be reached" in err.value.details
    # tried every PROBE_INTERVAL while the deadline lasted: more than max_retries + 1
    assert len(calls) >= 3 and view.waited <= 1.3


def test_an_owner_that_comes_back_is_served_by_it() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "c")
    remote, calls = failing_remote(grpc.StatusCode.UNAVAILABLE, times=6)  # then it is back
    resp, retries = router(View(ring)).route(rid, Context(), lambda r, f: "local", remote)
    assert resp == "remote" and retries == 6 and len(calls) == 7


def test_a_stale_epoch_is_retried_a_bounded_number_of_times() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    calls: list[int] = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        calls.append(1)
        raise Failure(grpc.StatusCode.FAILED_PRECONDITION, epoch=5)  # b disagrees, always

    with pytest.raises(RouteError) as err:
        router(View(ring)).route(rid, Context(), lambda r, f: "local", remote)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(calls) == 4  # 1 + max_retries


@pytest.mark.parametrize("left", [None, 9.2e18, float("nan")])
def test_a_call_without_a_deadline_is_forwarded_with_the_routing_cap(left) -> None:
    """gRPC shows a call that set no deadline as ~9.2e18 s left: passed on as the forward's
    timeout it failed at once with DEADLINE_EXCEEDED (issue 11, item 1)."""
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    timeouts: list[float] = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        timeouts.append(timeout)
        return "remote"

    resp, _ = router(View(ring)).route(rid, Context(remaining=left), lambda r, f: "local",
                                       remote)
    assert resp == "remote" and 0 < timeouts[0] <= ROUTE_CAP


def test_next_step_waits_for_an_unreachable_owner_while_time_is_left() -> None:
    down = RouteFailure("unreachable", "refused", "c", "c:1", 1)
    stale = RouteFailure("stale", "not mine", epoch=9)
    for retries in (0, 10, 1000):  # no count for an unreachable owner
        assert next_step(down, retries, 4, 3.0) == Step(False, PROBE_INTERVAL)
    assert next_step(down, 0, 4, 0.1) == Step(False, 0.1)
    assert next_step(down, 0, 4, 0.0).give_up
    assert not next_step(stale, 3, 4, 3.0).give_up
    assert next_step(stale, 4, 4, 3.0).give_up


def test_view_moved_when_the_owner_changes_or_restarts() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "c")
    table = View._table(ring)
    down = RouteFailure("unreachable", "refused", "c", "c:1", 1)
    assert not view_moved(down, table, ring, rid)  # the ring still names c, as it was
    without_c = Ring.build(["a", "b"], 9)
    assert view_moved(down, View._table(without_c), without_c, rid)
    restarted = MemberTable(MappingProxyType({**table.members, "c": MemberInfo("c", "c:1", 7, 7)}),
                            7, 7)
    assert view_moved(down, restarted, ring, rid)  # a new incarnation: worth a try now
    assert not view_moved(down, table, Ring.build((), 9), rid)  # no ring: nothing to try
    stale = RouteFailure("stale", "not mine", epoch=9)
    assert not view_moved(stale, table, ring, rid)
    assert view_moved(stale, View._table(without_c), without_c, rid)


@pytest.mark.parametrize("caller_waits", [True, False])
def test_cancelled_by_the_owner_is_retried_only_while_our_caller_waits(
    caller_waits: bool,
) -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "c")
    # the owner's server stopped under the first call
    remote, calls = failing_remote(grpc.StatusCode.CANCELLED, times=1)
    route = router(View(ring)).route
    if caller_waits:
        assert route(rid, Context(), lambda r, f: "local", remote) == ("remote", 1)
    else:  # our caller cancelled: nobody is waiting, nothing to retry
        with pytest.raises(RouteError) as err:
            route(rid, Context(active=False), lambda r, f: "local", remote)
        assert err.value.code == grpc.StatusCode.CANCELLED and len(calls) == 1


def test_other_errors_pass_through_without_retry() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    remote, calls = failing_remote(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(RouteError) as err:
        router(View(ring)).route(rid, Context(), lambda r, f: "local", remote)
    assert err.value.code == grpc.StatusCode.NOT_FOUND and len(calls) == 1


def test_forwarded_call_to_non_owner_is_refused_never_forwarded_again() -> None:
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    ctx = Context(((FORWARDED_BY, "c"), (EPOCH, "4")))
    with pytest.raises(RouteError) as err:
        router(View(ring)).route(rid, ctx, lambda r, f: pytest.fail("served"),
                                 lambda *a: pytest.fail("forwarded twice"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert ctx.trailing == ((EPOCH, "5"),)
    mine = resource_owned_by(ring, "a")
    resp, _ = router(View(ring)).route(mine, ctx, lambda r, f: ("local", f), lambda *a: None)
    assert resp == ("local", True)


def test_fenced_node_does_no_owner_work() -> None:
    ring = Ring.build(MEMBERS, 5)
    with pytest.raises(RouteError) as err:
        router(View(ring), fenced=True).route(resource_owned_by(ring, "a"), Context(),
                                              lambda r, f: pytest.fail("served"),
                                              lambda *a: pytest.fail("forwarded"))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


class UnreachableDependency(Failure):
    """The owner answered UNAVAILABLE because what the call needs (its agent) is down."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE)

    def trailing_metadata(self) -> tuple:
        return ((UNREACHABLE, "1"),)


def test_an_owner_whose_dependency_is_unreachable_is_not_retried() -> None:
    """The owner is up and answered: retrying would repeat a call that may have had effects
    (the old router took it for the owner being down and retried four times)."""
    ring = Ring.build(MEMBERS, 5)
    rid = resource_owned_by(ring, "b")
    calls: list[int] = []

    def remote(channel, metadata, timeout):  # noqa: ANN001
        calls.append(1)
        raise UnreachableDependency()

    context = Context()
    with pytest.raises(RouteError) as err:
        router(View(ring)).route(rid, context, lambda r, f: "local", remote)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and calls == [1]
    assert dict(context.trailing) == {UNREACHABLE: "1"}  # passed on to our caller
