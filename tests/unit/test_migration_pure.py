"""resolve_migration, the pure decision over both hosts' reports: property tests.

The world model: the target's switchover (activation) is the commit point; AbortIncomingVm
on the target, atomic with it, destroys a copy that has not switched over and fences the
generation. Whatever the reports, acting on the decision must leave at most one running
copy, on the host the record then names, with the generation it names; and never a copy
destroyed that is the VM."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane.vm.migration import (
    Abort,
    Complete,
    Copy,
    MigrationView,
    SideReport,
    Wait,
    resolve_migration,
)

G = 5
OP = MigrationView("vm", "src", "dst", G, G + 1, deadline=100.0)



def copies(generations: list[int]) -> st.SearchStrategy[Copy | None]:
    return st.one_of(st.none(), st.builds(
        Copy, st.sampled_from(["running", "paused", "crashed"]), st.sampled_from(generations),
        st.booleans()))


# The source never holds the target generation (the target's high-water mark gave it out).
source_sides = st.one_of(st.none(), st.builds(SideReport, copies([G - 1, G]), st.booleans()))
sides = st.one_of(st.none(), st.builds(SideReport, copies([G - 1, G, G + 1]), st.booleans()))
times = st.sampled_from([0.0, 99.0, 100.0, 500.0])


def activated(side: SideReport | None) -> bool:
    return (side is not None and side.copy is not None and not side.copy.incoming
            and side.copy.generation == G + 1)


@given(sides, sides, times)
def test_complete_only_on_the_targets_own_word(source, target, now) -> None:  # type: ignore[no-untyped-def]
    decision = resolve_migration(source, target, OP, now)
    if isinstance(decision, Complete):
        assert activated(target)
    if activated(target):
        assert isinstance(decision, Complete)  # never aborted, never waited for


@given(sides, times)
def test_an_unanswering_target_is_never_guessed(source, now) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(resolve_migration(source, None, OP, now), Wait)


@given(sides, sides)
def test_after_the_deadline_an_answering_target_always_decides(source, target) -> None:  # type: ignore[no-untyped-def]
    decision = resolve_migration(source, target, OP, now=OP.deadline)
    assert (target is None) == isinstance(decision, Wait)


@given(sides, sides, times)
def test_busy_agents_are_waited_for_before_the_deadline(source, target, now) -> None:  # type: ignore[no-untyped-def]
    decision = resolve_migration(source, target, OP, now)
    busy = (target is not None and target.busy) or source is None or source.busy
    if busy and now < OP.deadline and not activated(target):
        assert isinstance(decision, Wait)


@given(source_sides, sides, times)
def test_acting_on_the_decision_leaves_one_copy_where_the_record_says(source, target, now) -> None:  # type: ignore[no-untyped-def]
    # A protocol world: the source never runs after the target activated (it paused first).
    if activated(target) and source is not None and source.copy is not None \
            and source.copy.state == "running" and source.copy.generation == G:
        source = SideReport(Copy("paused", G), source.busy)
    decision = resolve_migration(source, target, OP, now)
    if isinstance(decision, Wait):
        return
    src = source.copy if source is not None else None
    dst = target.copy if target is not None else None
    if isinstance(decision, Complete):
        record = ("dst", G + 1)
        if decision.stop_source:
            src = None
    else:
        assert isinstance(decision, Abort)
        record = ("src", G)
        if dst is not None and dst.incoming and dst.generation <= G + 1:
            dst = None  # AbortIncomingVm
        if decision.resume_source:
            assert src is not None and src.state == "paused" and src.generation == G
            src = Copy("running", G)
    running = [(h, c.generation) for h, c in (("src", src), ("dst", dst))
               if c is not None and c.state == "running" and not c.incoming]
    the_vm = [r for r in running if r == record]
    assert len(the_vm) <= 1
    # anything else running is an older generation, a stray VM sync stops by generation
    for host, generation in running:
        if (host, generation) != record:
            assert generation < G + 1 and (host, record[0]) != ("dst", "dst")
    if isinstance(decision, Abort) and decision.state == "Running":
        assert src is not None and src.generation == G  # the record's copy exists


def test_examples() -> None:
    running_src = SideReport(Copy("running", G))
    incoming = SideReport(Copy("paused", G + 1, incoming=True))
    assert isinstance(resolve_migration(running_src, incoming, OP, 0.0), Abort)
    assert resolve_migration(running_src, SideReport(None), OP, 0.0) == Abort(
        "Running", False, ("host src reports running generation 5", "host dst runs no copy"))
    done = resolve_migration(None, SideReport(Copy("running", G + 1)), OP, 0.0)
    assert isinstance(done, Complete) and done.state == "Running" and not done.stop_source
    paused_src = SideReport(Copy("paused", G))
    assert resolve_migration(paused_src, SideReport(None), OP, 0.0).resume_source  # type: ignore[union-attr]
    assert isinstance(resolve_migration(SideReport(Copy("running", G), busy=True), incoming,
                                        OP, 0.0), Wait)
