"""The store's attempt policy (store/retry.py), driven by a simulated clock: every attempt's
timeout stays in [floor, cap], no attempt runs past the call's budget, attempts are short
while an election may be running, and a call that keeps failing ends."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.store import Store, StoreError, StoreUnavailable
from controlplane.store.retry import AttemptPolicy


@st.composite
def policies(draw: st.DrawFn) -> AttemptPolicy:
    floor = draw(st.floats(0.001, 0.2))
    first = draw(st.floats(floor, 2.0))
    cap = draw(st.floats(first, 10.0))
    pause_base = draw(st.floats(0.001, 0.2))
    return AttemptPolicy(first=first, cap=cap, hold=draw(st.floats(0.0, 5.0)), floor=floor,
                         pause_base=pause_base, pause_cap=draw(st.floats(pause_base, 1.0)),
                         jitter=draw(st.floats(0.0, 0.2)))


def simulate(policy: AttemptPolicy, budget: float, outcomes: list[tuple[bool, float, float]]
             ) -> tuple[list[tuple[float, float]], float]:
    """Run a failing call: outcome (timed out?, fraction of the deadline a fast failure
    took, rnd) per attempt. Returns the attempts (start, timeout) and the end time."""
    clock, fast = 0.0, 0
    timeout = policy.timeout(0.0, budget, first_attempt=True)
    attempts: list[tuple[float, float]] = []
    for timed_out, fraction, rnd in outcomes:
        assert timeout is not None
        attempts.append((clock, timeout))
        took = timeout if timed_out else fraction * 0.85 * timeout
        clock += took
        fast = 0 if policy.timed_out(took, timeout) else fast + 1
        step = policy.next_attempt(clock, budget, fast, rnd)
        if step is None:
            break
        pause, timeout = step
        clock += pause
    return attempts, clock


outcome = st.tuples(st.booleans(), st.floats(0.0, 1.0), st.floats(0.0, 0.999))


@given(policies(), st.floats(0.0, 30.0), st.lists(outcome, min_size=1, max_size=300))
def test_attempts_stay_in_bounds_and_in_the_budget(policy: AttemptPolicy, budget: float,
                                                   outcomes: list) -> None:
    attempts, end = simulate(policy, budget, outcomes)
    limit = max(budget, policy.floor) + 1e-9
    for start, timeout in attempts:
        assert policy.floor <= timeout <= policy.cap
        assert start + timeout <= limit  # no attempt runs past the budget
        if start < policy.hold:
            assert timeout <= policy.first  # short while an election may be running
    assert end <= limit  # the whole call, pauses included


@given(policies(), st.floats(0.0, 30.0), st.booleans())
def test_a_call_that_keeps_failing_ends(policy: AttemptPolicy, budget: float,
                                        timing_out: bool) -> None:
    # the worst case for termination: fast failures that take no time at all
    bound = int(budget / min(policy.pause_base, 0.9 * policy.floor)) + 2
    attempts, end = simulate(policy, budget, [(timing_out, 0.0, 0.0)] * (bound + 1))
    assert len(attempts) <= bound
    assert end <= max(budget, policy.floor) + 1e-9


@given(policies(), st.floats(0.0, 30.0))
def test_after_the_hold_an_attempt_gets_the_cap_or_what_is_left(policy: AttemptPolicy,
                                                                budget: float) -> None:
    start = policy.hold
    timeout = policy.timeout(start, budget)
    if budget - start < policy.floor:
        assert timeout is None
    else:
        assert timeout == min(policy.cap, budget - start)


@given(policies(), st.floats(0.01, 20.0), st.floats(0.0, 30.0), st.floats(0.0, 30.0))
def test_a_fixed_timeout_is_kept_for_every_attempt(policy: AttemptPolicy, fixed: float,
                                                   elapsed: float, budget: float) -> None:
    """Big range reads name their own timeout: no short first attempt for them."""
    timeout = policy.fixed(fixed).timeout(elapsed, budget, first_attempt=elapsed == 0)
    if timeout is not None and budget - elapsed >= fixed:
        assert timeout == fixed


def test_the_store_default_is_half_a_second_for_two_seconds_then_the_full_timeout() -> None:
    policy = AttemptPolicy.short_first(0.5, 3.0)
    assert [policy.timeout(e, 5.0, e == 0) for e in (0.0, 0.55, 1.9, 2.0, 3.0, 4.9)] == \
        pytest.approx([0.5, 0.5, 0.5, 3.0, 2.0, 0.1])
    assert policy.timeout(4.99, 5.0) is None  # less than the floor left: give up
    assert policy.timeout(0.0, 0.0, first_attempt=True) == 0.05  # the first always runs
    # no pause after a timed-out attempt beyond the jitter; fast failures back off
    assert policy.pause(0, 0.0) == 0.0
    assert [policy.pause(n, 0.0) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.5])
    # a first timeout above the cap is lowered to it
    assert AttemptPolicy.short_first(5.0, 1.0).first == 1.0


@pytest.mark.parametrize("kwargs", [dict(floor=0.0), dict(first=0.01, floor=0.05),
                                    dict(first=4.0, cap=3.0), dict(pause_base=0.0),
                                    dict(hold=-1.0)])
def test_bad_policies_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AttemptPolicy(**kwargs)


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "details", "retried"), [
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True),
    # etcd's side of the same deadline, seen under leader kills with 0.5 s attempts
    (grpc.StatusCode.UNKNOWN, "context deadline exceeded", True),
    (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", True),
    (grpc.StatusCode.UNKNOWN, "something else", False),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", False),
])
def test_which_etcd_answers_are_retried(code: grpc.StatusCode, details: str,
                                        retried: bool) -> None:
    store = Store("127.0.0.1:1")  # never connects: channels are lazy
    try:
        error = store.translate(_RpcError(code, details))
    finally:
        store.close()
    assert isinstance(error, StoreError)
    assert isinstance(error, StoreUnavailable) is retried
