"""HA retries, the pure parts: the backoff (attempts / last attempt -> due or not), the retry
state read from audit records, and the planner's retry of a failed HA start."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from controlplane.config.live import SETTINGS
from controlplane.vm import ha
from controlplane.vm.ha import NO_HOST, RESTART, RESTART_FAILED, STOP_STRAY, AttemptRecord
from controlplane.vm.sync import (
    Report,
    ReportedVm,
    Restart,
    SetState,
    VmRecordView,
    awaits_ha,
    needs_fence,
    plan_sync,
)

bases = st.floats(0.1, 3600.0)
caps = st.floats(0.1, 86400.0)
attempt_counts = st.integers(-3, 10_000)


# -- the backoff -------------------------------------------------------------------------------


@given(attempt_counts, bases, caps)
def test_delay_is_exponential_from_base_and_capped(attempts, base, cap) -> None:
    delay = ha.retry_delay(attempts, base, cap)
    if attempts <= 0:
        assert delay == 0.0
        return
    assert 0 < delay <= cap and math.isfinite(delay)
    assert delay >= min(base, cap)
    if attempts < 60 and base * 2 ** (attempts - 1) <= cap:
        assert math.isclose(delay, base * 2 ** (attempts - 1))
    else:
        assert delay == cap or math.isclose(delay, base * 2 ** (attempts - 1))


@given(st.integers(0, 10_000), bases, caps)
def test_delay_never_shrinks_with_more_failures(attempts, base, cap) -> None:
    assert ha.retry_delay(attempts + 1, base, cap) >= ha.retry_delay(attempts, base, cap)


@given(attempt_counts, st.floats(0, 1e9), st.floats(0, 1e6), st.floats(0, 1e6), bases, caps)
def test_once_due_stays_due_and_the_cap_is_the_longest_wait(attempts, last, wait, more, base,
                                                          cap) -> None:
    now = last + wait
    if ha.retry_due(attempts, last, now, base, cap):
        assert ha.retry_due(attempts, last, now + more, base, cap)
    if now - last >= cap:  # (the float difference, not `wait`: the sum rounds)
        assert ha.retry_due(attempts, last, now, base, cap)  # never waits beyond the cap


@given(st.integers(1, 10_000), st.floats(0, 1e9), st.floats(0, 1), bases, caps)
def test_a_failure_is_not_retried_before_the_base_delay(attempts, last, fraction, base,
                                                        cap) -> None:
    wait = fraction * min(base, cap) * 0.999
    assert not ha.retry_due(attempts, last, last + wait, base, cap)


@given(st.floats(0, 1e9), st.floats(-1e6, 1e6), bases, caps)
def test_no_failure_means_no_wait(last, offset, base, cap) -> None:
    assert ha.retry_due(0, last, last + offset, base, cap)


@given(st.integers(1, 100), st.floats(1e3, 1e9), bases, caps)
def test_a_clock_far_behind_the_writer_does_not_block_ha(attempts, last, base, cap) -> None:
    # the last attempt was stamped by a node whose clock is ahead of ours by more than the cap
    assert ha.retry_due(attempts, last, last - cap - 1.0, base, cap)


def test_backoff_settings_are_live_and_bounded() -> None:
    base, cap = SETTINGS["ha.retryDelay"], SETTINGS["ha.retryMaxDelay"]
    assert (base.kind, base.default) == (float, 10.0)
    assert (cap.kind, cap.default) == (float, 300.0)
    assert base.minimum > 0 and cap.minimum > 0


# -- the retry state, from audit records ------------------------------------------------------

EVENTS = st.sampled_from(["no-host", "failed-start", "success", "user-start", "stray"])


@given(st.lists(EVENTS, max_size=30))
def test_failed_attempts_counts_the_current_run_of_failures(events) -> None:
    """A model of a VM's history: the count is the failures since the last success or user
    start, whatever came before, and stray records change nothing."""
    generation, records, expected, last, t = 1, [], 0, 0.0, 0.0
    for i, event in enumerate(events):
        t += 1.0
        op_id = f"op{i}"
        if event == "no-host":
            records.append(AttemptRecord(NO_HOST, t, generation, f"n{i}"))
            expected, last = expected + 1, t
        elif event == "failed-start":
            generation += 1
            records.append(AttemptRecord(RESTART, t, generation, op_id))
            t += 0.5
            records.append(AttemptRecord(RESTART_FAILED, t, generation, op_id))
            expected, last = expected + 1, t
        elif event == "success":
            generation += 1
            records.append(AttemptRecord(RESTART, t, generation, op_id))
            expected, last = 0, 0.0
        elif event == "user-start":  # bumps the generation, writes no audit record
            generation += 1
            expected, last = 0, 0.0
        else:
            records.append(AttemptRecord(STOP_STRAY, t, generation + 7, op_id))
    assert ha.failed_attempts(records, generation) == (expected, last)


def test_a_start_in_flight_or_settled_by_sync_ends_the_run() -> None:
    records = [AttemptRecord(NO_HOST, 1.0, 1), AttemptRecord(RESTART, 2.0, 2, "x")]
    assert ha.failed_attempts(records, 2) == (0, 0.0)
    assert ha.failed_attempts([], 5) == (0, 0.0)


# -- the planner: a failed HA start is retried on the same proof --------------------------------


def vm(state="Stopped", ha_on=True, start_failed=True, host="h1", generation=2):
    return VmRecordView("v1", state, host, generation, ha_on, 5, start_failed)


def plan(report, records, ha_allowed=True):
    return plan_sync(report, records, {r.vm_id: r for r in records}, {}, {}, 1000.0, 600.0,
                     ha_allowed)


def test_a_vm_stopped_by_a_failed_start_is_retried_when_its_host_reports_it_absent() -> None:
    (restart,) = plan(Report("h1", {}, {}), [vm()]).of(Restart)
    assert restart.retry and restart.from_host == "h1"
    assert any("after a failed start" in e for e in restart.evidence)
    # reported stopped: the same proof
    stopped = {"v1": ReportedVm("v1", "stopped", 2)}
    assert plan(Report("h1", stopped, {}), [vm()]).of(Restart)
    # a fenced host: nothing runs there
    (restart,) = plan(Report("h1", {}, {}, fenced=True), [vm()]).of(Restart)
    assert restart.retry and "fenced" in restart.evidence[0]


def test_no_retry_without_proof_permission_or_ha() -> None:
    running = {"v1": ReportedVm("v1", "running", 2)}
    p = plan(Report("h1", running, {}), [vm()])
    assert not p.of(Restart) and [s.state for s in p.of(SetState)] == ["Running"]
    assert plan(Report("h1", {}, {}), [vm()], ha_allowed=False).actions == []
    assert plan(Report("h1", {}, {}), [vm(ha_on=False)]).actions == []
    # a user's stop (its last op is a stop) is never undone
    assert plan(Report("h1", {}, {}), [vm(start_failed=False)]).actions == []
    # the agent still works on the VM: no decision
    assert not plan(Report("h1", {}, {"v1": "op"}), [vm()]).of(Restart)


def test_a_fenced_host_awaits_ha_while_it_has_vms_to_place() -> None:
    assert awaits_ha([vm("Unknown", start_failed=False)], "h1")
    assert awaits_ha([vm()], "h1")
    assert not awaits_ha([vm(start_failed=False)], "h1")  # stopped by a user
    assert not awaits_ha([vm("Unknown", ha_on=False)], "h1")
    assert not awaits_ha([vm("Unknown", host="h2")], "h1")
    # fencing still needs a VM that may be running: a Stopped one is not a reason
    assert not needs_fence([vm()], "h1")
