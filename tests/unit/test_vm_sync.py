"""The pure VM sync planner, HA breaker, placement and root disk rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.vm import ha, states
from controlplane.vm.records import root_disk_size
from controlplane.vm.sync import (
    SHOULD_RUN,
    MarkOrphan,
    OpView,
    Report,
    ReportedVm,
    Restart,
    SetState,
    Skip,
    StopStray,
    VmRecordView,
    needs_fence,
    op_status,
    plan_sync,
    plan_unreachable,
)

NOW = 1_000.0
MEMBERS = {"mn-0": 10, "mn-1": 20}


def vm(vm_id="v1", state="Running", host="h1", generation=1, ha_on=False, rev=5,
       start_failed=False):
    return VmRecordView(vm_id, state, host, generation, ha_on, rev, start_failed)


def op(vm_id="v1", node="mn-0", incarnation=10, orphaned_at=0.0, rev=6, op_id="op1"):
    return OpView(vm_id, op_id, "start", node, incarnation, orphaned_at, rev)


def report(vms=(), agent_ops=None, host="h1", reports_ops=True, fenced=False):
    return Report(host, {v.vm_id: v for v in vms}, agent_ops or {}, reports_ops, fenced)


def plan(rep, records, ops=None, ha_allowed=True, timeout=600.0, by_id=None):
    by_id = by_id if by_id is not None else {r.vm_id: r for r in records}
    return plan_sync(rep, records, by_id, ops or {}, MEMBERS, NOW, timeout, ha_allowed)


def test_op_status_live_orphan_expired() -> None:
    assert op_status(op(), MEMBERS, NOW, 600) == "live"
    assert op_status(op(incarnation=9), MEMBERS, NOW, 600) == "orphan-new"
    assert op_status(op(node="gone"), MEMBERS, NOW, 600) == "orphan-new"
    assert op_status(op(node="gone", orphaned_at=NOW - 10), MEMBERS, NOW, 600) == "orphan"
    assert op_status(op(node="gone", orphaned_at=NOW - 600), MEMBERS, NOW, 600) == "expired"


def test_a_vm_with_a_live_op_is_skipped_whatever_the_report() -> None:
    p = plan(report([]), [vm(state="Starting", ha_on=True)], {"v1": op()})
    assert [type(a) for a in p.actions] == [Skip]


def test_a_new_orphan_is_stamped_and_skipped() -> None:
    p = plan(report([]), [vm(state="Starting", ha_on=True)], {"v1": op(node="gone")})
    assert [type(a) for a in p.actions] == [MarkOrphan, Skip]


def test_an_orphan_is_skipped_while_the_agent_still_works_on_it() -> None:
    p = plan(report([], agent_ops={"v1": "op1"}), [vm(state="Starting", ha_on=True)],
             {"v1": op(node="gone", orphaned_at=NOW - 1)})
    assert not p.of(Restart) and not p.of(SetState)


def test_an_orphan_from_an_agent_that_cannot_report_ops_waits_for_the_timeout() -> None:
    p = plan(report([], reports_ops=False), [vm(state="Starting", ha_on=True)],
             {"v1": op(node="gone", orphaned_at=NOW - 1)})
    assert not p.of(Restart) and not p.of(SetState)


def test_an_orphan_the_agent_finished_is_resolved_with_the_reported_state() -> None:
    orphan = op(node="gone", orphaned_at=NOW - 1)
    p = plan(report([ReportedVm("v1", "running", 1)]), [vm(state="Starting")], {"v1": orphan})
    (action,) = p.of(SetState)
    assert (action.state, action.op, action.op_outcome) == ("Running", orphan, "orphan-resolved")


def test_an_expired_orphan_is_removed_but_an_agent_op_still_protects_the_vm() -> None:
    orphan = op(node="gone", orphaned_at=NOW - 700)
    p = plan(report([], agent_ops={"v1": "op1"}), [vm(state="Starting", ha_on=True)],
             {"v1": orphan})
    (action,) = p.of(SetState)
    assert (action.state, action.op_outcome) == ("Starting", "orphan-expired")
    assert not p.of(Restart)


def test_ha_restart_needs_a_reachable_report_of_not_running() -> None:
    p = plan(report([]), [vm(ha_on=True)])
    (restart,) = p.of(Restart)
    assert restart.from_host == "h1" and "reachable" in restart.evidence[0]
    # not allowed (guard/breaker): only the state is written
    p = plan(report([]), [vm(ha_on=True)], ha_allowed=False)
    assert not p.of(Restart) and p.of(SetState)[0].state == "Stopped"
    # not an HA VM
    assert not plan(report([]), [vm()]).of(Restart)


def test_a_user_stopped_ha_vm_is_not_restarted() -> None:
    assert plan(report([]), [vm(state="Stopped", ha_on=True)]).actions == []


def test_an_older_generation_is_a_stray_and_does_not_count_as_running() -> None:
    p = plan(report([ReportedVm("v1", "running", 1)]), [vm(generation=2, ha_on=True)])
    (stray,) = p.of(StopStray)
    assert (stray.vm_id, stray.generation) == ("v1", 1)
    assert p.of(Restart)


def test_a_copy_on_a_host_the_record_does_not_name_is_stopped() -> None:
    elsewhere = vm(host="h2")
    p = plan(report([ReportedVm("v1", "running", 1)]), [], by_id={"v1": elsewhere})
    assert [a.vm_id for a in p.of(StopStray)] == ["v1"]


def test_a_vm_with_no_record_is_left_alone() -> None:
    p = plan(report([ReportedVm("ghost", "running", 1)]), [])
    assert p.strangers == ["ghost"] and p.actions == []


def test_a_fenced_host_restarts_its_ha_vms_and_stops_the_others() -> None:
    records = [vm("a", "Unknown", ha_on=True), vm("b", "Unknown")]
    p = plan(report([], fenced=True), records)
    assert [r.vm.vm_id for r in p.of(Restart)] == ["a"]
    assert [(s.vm.vm_id, s.state) for s in p.of(SetState)] == [("b", "Stopped")]
    assert "fenced" in p.of(Restart)[0].evidence[0]


def test_destroying_without_an_op_recovers_to_stopped() -> None:
    """The 2026 fix: a node restarted during a destroy; the host reports it stopped."""
    (action,) = plan(report([]), [vm(state="Destroying")]).of(SetState)
    assert action.state == "Stopped"


def test_paused_reported_paused_is_no_change() -> None:
    assert plan(report([ReportedVm("v1", "paused", 1)]), [vm(state="Paused")]).actions == []


def test_unreachable_host_makes_vms_unknown_except_those_with_ops() -> None:
    records = [vm("a"), vm("b"), vm("c", "Stopped"), vm("d", "Created")]
    out = plan_unreachable("h1", records, {"b": op("b")})
    assert [(a.vm.vm_id, a.state) for a in out] == [("a", "Unknown"), ("c", "Unknown")]
    assert needs_fence([vm(ha_on=True)], "h1") and not needs_fence([vm()], "h1")


reported_states = st.sampled_from(["running", "paused", "crashed", "stopped"])
record_states = st.sampled_from(sorted(states.STATES))


@given(
    st.lists(st.tuples(record_states, st.integers(1, 3), st.booleans(),
                       st.sampled_from(["none", "live", "orphan", "expired"]), st.booleans(),
                       st.one_of(st.none(), st.tuples(reported_states, st.integers(1, 3))),
                       st.booleans()),
             max_size=8),
    st.booleans(),
    st.booleans(),
)
def test_planner_invariants(rows, ha_allowed, reports_ops) -> None:
    records, ops, vms, agent_ops = [], {}, [], {}
    for i, (state, gen, ha_on, op_kind, agent_busy, seen, start_failed) in enumerate(rows):
        vm_id = f"v{i}"
        records.append(vm(vm_id, state, "h1", gen, ha_on, rev=100 + i,
                          start_failed=start_failed))
        if op_kind == "live":
            ops[vm_id] = op(vm_id)
        elif op_kind == "orphan":
            ops[vm_id] = op(vm_id, node="gone", orphaned_at=NOW - 1)
        elif op_kind == "expired":
            ops[vm_id] = op(vm_id, node="gone", orphaned_at=NOW - 10_000)
        if agent_busy:
            agent_ops[vm_id] = "x"
        if seen is not None:
            vms.append(ReportedVm(vm_id, seen[0], seen[1]))
    p = plan(report(vms, agent_ops, reports_ops=reports_ops), records, ops, ha_allowed)
    by_id = {r.vm_id: r for r in records}
    for action in p.actions:
        if isinstance(action, Restart):
            # never restart without permission, with a live op, or while the agent works
            assert ha_allowed and action.vm.ha
            assert action.vm.vm_id not in agent_ops
            assert ops.get(action.vm.vm_id) is None or ops[action.vm.vm_id].node_id == "gone"
            seen = next((v for v in vms if v.vm_id == action.vm.vm_id), None)
            assert seen is None or seen.state in ("stopped", "crashed") \
                or seen.generation < action.vm.generation
            # a retry only of a failed start that left the VM Stopped, on a report of absent
            if action.retry:
                assert action.vm.state == "Stopped" and action.vm.start_failed
                assert seen is None or seen.state == "stopped" \
                    or seen.generation < action.vm.generation
            else:
                assert action.vm.state in SHOULD_RUN
        if isinstance(action, SetState):
            record = by_id[action.vm.vm_id]
            assert action.state == record.state or states.allowed(record.state, action.event)
            assert ops.get(record.vm_id, None) is None or \
                op_status(ops[record.vm_id], MEMBERS, NOW, 600) != "live"


@given(st.lists(st.floats(0, 100), max_size=30), st.floats(0.1, 50))
def test_largest_burst_matches_brute_force(times, window) -> None:
    brute = max((sum(1 for u in times if t <= u <= t + window) for t in times), default=0)
    assert ha.largest_burst(times, window) == brute


def test_breaker_opens_only_for_a_burst_of_a_majority() -> None:
    assert ha.breaker_open([10, 11, 12], total_hosts=4, window=5)
    assert not ha.breaker_open([10, 11], total_hosts=4, window=5)  # half is not more than half
    assert not ha.breaker_open([10, 100, 200], total_hosts=4, window=5)  # a slow trickle
    assert not ha.breaker_open([10], total_hosts=1, window=5)


def test_pick_host_least_loaded_other_host_deterministic() -> None:
    assert ha.pick_host({"a": 3, "b": 1, "c": 1}) == "b"
    assert ha.pick_host({"a": 0, "b": 5}, exclude="a") == "b"
    assert ha.pick_host({"a": 0}, exclude="a") == "a"
    assert ha.pick_host({}) is None


def test_root_disk_size_rule() -> None:
    assert root_disk_size(0, 10, 20) == 20
    assert root_disk_size(0, 30, 20) == 30
    assert root_disk_size(5, None, None) == 5
    with pytest.raises(ValueError, match="virtual_size"):
        root_disk_size(0, None, 20)
    with pytest.raises(ValueError, match="negative"):
        root_disk_size(0, -1, 20)
