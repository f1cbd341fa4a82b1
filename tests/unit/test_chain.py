"""Volume chain reconcile (pure): hypothesis over every stored chain of up to 8 volumes and
every real chain a crash could leave (an order-preserving subsequence of it), plus one example
per merge step a crash can interrupt.

The property that matters: after the plan is applied, the stored chain ending at the plan's
leaf is exactly the chain on disk, its leaf is usable (LEGAL), and a second reconcile finds
nothing to do.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.storage.chain import (
    ChainError,
    Legality,
    MarkIllegal,
    MarkLegal,
    ReconcilePlan,
    Relink,
    Vol,
    apply,
    chain_of,
    plan_reconcile,
)

L, X = Legality.LEGAL, Legality.ILLEGAL  # X: ILLEGAL


def make_chain(*legalities: Legality) -> tuple[Vol, ...]:
    """v0 <- v1 <- ... with the given legalities, base first."""
    return tuple(
        Vol(f"v{i}", f"v{i - 1}" if i else "", legality) for i, legality in enumerate(legalities)
    )


def ids(vols: tuple[Vol, ...]) -> list[str]:
    return [v.volume_id for v in vols]


@st.composite
def stored_and_real(draw: st.DrawFn) -> tuple[tuple[Vol, ...], list[str]]:
    legalities = draw(st.lists(st.sampled_from([L, X]), min_size=1, max_size=8))
    stored = make_chain(*legalities)
    keep = draw(
        st.lists(st.booleans(), min_size=len(stored), max_size=len(stored)).filter(any)
    )
    real = [v.volume_id for v, kept in zip(stored, keep, strict=True) if kept]
    return stored, real


def expected_true_chain(stored: tuple[Vol, ...], real: list[str]) -> list[str]:
    leaf = stored[-1]
    if leaf.legality is X and len(real) > 1 and real[-1] == leaf.volume_id:
        return real[:-1]
    return list(real)


# -- properties -------------------------------------------------------------------------


@given(stored_and_real())
def test_plan_brings_the_stored_chain_to_the_real_one(case) -> None:
    stored, real = case
    volumes = {v.volume_id: v for v in stored}
    before = dict(volumes)

    plan = plan_reconcile(stored, real)
    applied = apply(volumes, plan.changes)

    assert volumes == before, "apply must not change its input"
    assert list(plan.chain) == expected_true_chain(stored, real)
    assert ids(chain_of(applied, plan.leaf_id)) == list(plan.chain)
    assert applied[plan.leaf_id].legality is L
    assert {c.volume_id for c in plan.changes} <= set(volumes)
    assert set(applied) == set(volumes)
    leaf_id = stored[-1].volume_id
    if leaf_id not in real:
        assert applied[leaf_id].legality is X
    if plan.dropped_leaf is not None:
        assert plan.dropped_leaf == leaf_id
        assert applied[leaf_id].legality is X
    # Only the stored leaf is ever marked ILLEGAL, only volumes of the true chain relinked.
    for change in plan.changes:
        if isinstance(change, MarkIllegal):
            assert change.volume_id == leaf_id
        if isinstance(change, Relink):
            assert change.volume_id in plan.chain


@given(stored_and_real())
def test_reconcile_is_idempotent(case) -> None:
    stored, real = case
    volumes = {v.volume_id: v for v in stored}
    plan = plan_reconcile(stored, real)
    applied = apply(volumes, plan.changes)

    again = plan_reconcile(chain_of(applied, plan.leaf_id), plan.chain)
    assert again == ReconcilePlan(chain=plan.chain, changes=(), dropped_leaf=None)
    # Also from the old leaf (the caller may reconcile the image's stored leaf again).
    if stored[-1].volume_id in applied and stored[-1].volume_id not in plan.chain:
        old = chain_of(applied, stored[-1].volume_id)
        real_again = [v for v in ids(old) if v in plan.chain]
        assert plan_reconcile(old, real_again).changes == ()


@given(stored_and_real(), st.data())
def test_an_unknown_volume_in_the_real_chain_is_refused(case, data) -> None:
    stored, real = case
    at = data.draw(st.integers(0, len(real)))
    with pytest.raises(ChainError, match="not in the stored chain"):
        plan_reconcile(stored, [*real[:at], "stranger", *real[at:]])


@given(stored_and_real(), st.data())
def test_a_reordered_real_chain_is_refused(case, data) -> None:
    stored, real = case
    if len(real) < 2:
        real = ids(stored)
    if len(real) < 2:
        real = [real[0], real[0]]  # a duplicate is out of order too
    else:
        i = data.draw(st.integers(0, len(real) - 2))
        j = data.draw(st.integers(i + 1, len(real) - 1))
        real = list(real)
        real[i], real[j] = real[j], real[i]
    with pytest.raises(ChainError, match="not in the stored order"):
        plan_reconcile(stored, real)


# -- one example per interrupted merge step ------------------------------------------------


def test_after_commit_before_rebase_nothing_changes() -> None:
    # s1 committed into base, s2 still backed by s1: files and metadata agree.
    stored = make_chain(L, L, L)
    assert plan_reconcile(stored, ["v0", "v1", "v2"]) == ReconcilePlan(
        chain=("v0", "v1", "v2"), changes=()
    )


def test_after_rebase_before_metadata_update_the_child_is_relinked() -> None:
    # s2 rebased onto base, metadata still says s2 -> s1.
    stored = make_chain(L, L, L)
    plan = plan_reconcile(stored, ["v0", "v2"])
    assert plan == ReconcilePlan(chain=("v0", "v2"), changes=(Relink("v2", "v0"),))


def test_consecutive_missing_inner_volumes_give_one_relink() -> None:
    stored = make_chain(L, L, L, L, L)
    plan = plan_reconcile(stored, ["v0", "v3", "v4"])
    assert plan.changes == (Relink("v3", "v0"),)


def test_a_missing_base_makes_its_child_a_base() -> None:
    plan = plan_reconcile(make_chain(L, L, L), ["v1", "v2"])
    assert plan.changes == (Relink("v1", ""),)


def test_leaf_marked_illegal_before_pivot_is_dropped() -> None:
    # s2's data mirrored into s1 and s2 marked ILLEGAL; pivot never happened.
    stored = make_chain(L, L, X)
    plan = plan_reconcile(stored, ["v0", "v1", "v2"])
    assert plan == ReconcilePlan(chain=("v0", "v1"), changes=(), dropped_leaf="v2")
    assert plan.leaf_id == "v1"


def test_a_missing_leaf_is_marked_illegal() -> None:
    # The leaf's file is gone; the caller read the chain from its parent.
    plan = plan_reconcile(make_chain(L, L, L), ["v0", "v1"])
    assert plan == ReconcilePlan(chain=("v0", "v1"), changes=(MarkIllegal("v2"),))


def test_a_missing_leaf_already_illegal_is_left_alone() -> None:
    plan = plan_reconcile(make_chain(L, L, X), ["v0", "v1"])
    assert plan == ReconcilePlan(chain=("v0", "v1"), changes=())


def test_single_illegal_base_is_marked_legal() -> None:
    plan = plan_reconcile(make_chain(X), ["v0"])
    assert plan == ReconcilePlan(chain=("v0",), changes=(MarkLegal("v0"),))


def test_illegal_merge_base_under_a_dropped_leaf_is_marked_legal() -> None:
    plan = plan_reconcile(make_chain(L, X, X), ["v0", "v1", "v2"])
    assert plan == ReconcilePlan(chain=("v0", "v1"), changes=(MarkLegal("v1"),), dropped_leaf="v2")


def test_empty_real_chain_is_refused() -> None:
    with pytest.raises(ChainError, match="empty real chain"):
        plan_reconcile(make_chain(L), [])


def test_an_unlinked_stored_chain_is_refused() -> None:
    with pytest.raises(ChainError, match="not linked"):
        plan_reconcile((Vol("a", ""), Vol("b", "x")), ["a", "b"])


# -- chain_of and apply ---------------------------------------------------------------------


def test_chain_of_follows_parents_base_first() -> None:
    volumes = {v.volume_id: v for v in make_chain(L, L, L)}
    volumes["other"] = Vol("other", "v0")
    assert ids(chain_of(volumes, "v2")) == ["v0", "v1", "v2"]
    assert ids(chain_of(volumes, "other")) == ["v0", "other"]


@pytest.mark.parametrize("volumes, leaf, message", [
    ({"a": Vol("a", "")}, "b", "unknown volume"),
    ({"a": Vol("a", "gone")}, "a", "not stored"),
    ({"a": Vol("a", "b"), "b": Vol("b", "a")}, "a", "cycle"),
    ({"a": Vol("a", "a")}, "a", "cycle"),
])
def test_chain_of_refuses_broken_chains(volumes, leaf, message) -> None:
    with pytest.raises(ChainError, match=message):
        chain_of(volumes, leaf)


def test_apply_refuses_an_unknown_volume() -> None:
    with pytest.raises(ChainError, match="unknown volume"):
        apply({"a": Vol("a", "")}, [MarkLegal("b")])
