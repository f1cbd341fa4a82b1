"""Volume chains and their reconcile, pure: what to change in the stored chain so that it says
what the files on disk say.

Seed: vdsm's ``reconcileVolumeChain`` and ``syncVolumeChain``. An image is a chain of qcow2
volumes (base first, each later one backed by the one before). A merge changes the files and
the stored metadata in separate steps (commit data into the parent, re-point the child's
backing file, update the metadata, delete the merged file); a crash between two steps leaves
the metadata saying something the files no longer say. The files are the truth about which
volume backs which, so reconcile reads the real chain from disk (one ``qemu-img info
--backing-chain``, see :mod:`controlplane.storage.qemuimg`) and brings the metadata to it.

Nothing here does I/O, so hypothesis can check the rules against every interleaving of a
chain; the caller reads the disk, holds the image lock and writes the changes in one txn.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "Change",
    "ChainError",
    "Legality",
    "MarkIllegal",
    "MarkLegal",
    "ReconcilePlan",
    "Relink",
    "Vol",
    "apply",
    "chain_of",
    "plan_reconcile",
]


class ChainError(ValueError):
    """The stored chain is broken, or the real chain contradicts it in a way reconcile must not
    guess about (a volume it does not know, or volumes in another order)."""


class Legality(enum.Enum):
    """Whether a volume's file may be used. ILLEGAL means "do not trust this file as the top of
    a chain": a leaf whose data was mirrored into its parent just before pivot, or a leaf whose
    file is gone."""

    LEGAL = "LEGAL"
    ILLEGAL = "ILLEGAL"


@dataclass(frozen=True)
class Vol:
    """A volume as the metadata stores it; ``parent_id`` is "" for a base volume."""

    volume_id: str
    parent_id: str
    legality: Legality = Legality.LEGAL


@dataclass(frozen=True)
class MarkIllegal:
    """Set the volume ILLEGAL."""

    volume_id: str


@dataclass(frozen=True)
class MarkLegal:
    """Set the volume LEGAL."""

    volume_id: str


@dataclass(frozen=True)
class Relink:
    """Set the volume's parent to ``new_parent_id`` ("" makes it a base)."""

    volume_id: str
    new_parent_id: str


Change = MarkIllegal | MarkLegal | Relink


@dataclass(frozen=True)
class ReconcilePlan:
    """What reconcile found and what it will write.

    ``chain`` is the true chain (volume ids, base first) once the changes are applied;
    ``dropped_leaf`` is the ILLEGAL leaf that was still on disk but left out of it (its data is
    already in its parent; the caller may delete it)."""

    chain: tuple[str, ...]
    changes: tuple[Change, ...]
    dropped_leaf: str | None = None

    @property
    def leaf_id(self) -> str:
        """The true chain's leaf: the volume a VM should run on."""
        return self.chain[-1]


def chain_of(volumes: Mapping[str, Vol], leaf_id: str) -> tuple[Vol, ...]:
    """The stored chain ending at ``leaf_id``, base first, following ``parent_id``.

    Raises :class:`ChainError` for an unknown leaf, a parent that is not stored, or a cycle:
    each of them means the metadata is already broken, and reconciling against a broken chain
    would only spread the damage."""
    if leaf_id not in volumes:
        raise ChainError(f"unknown volume {leaf_id!r}")
    chain: list[Vol] = []
    seen: set[str] = set()
    vol_id = leaf_id
    while vol_id:
        if vol_id in seen:
            raise ChainError(f"cycle in the chain of {leaf_id!r} at {vol_id!r}")
        vol = volumes.get(vol_id)
        if vol is None:
            raise ChainError(
                f"volume {chain[-1].volume_id!r} has parent {vol_id!r}, which is not stored"
            )
        seen.add(vol_id)
        chain.append(vol)
        vol_id = vol.parent_id
    chain.reverse()
    return tuple(chain)


def _check_stored(stored: Sequence[Vol]) -> None:
    if not stored:
        raise ChainError("empty stored chain")
    parent = ""
    for vol in stored:
        if vol.parent_id != parent:
            raise ChainError(
                f"stored chain is not linked: {vol.volume_id!r} has parent "
                f"{vol.parent_id!r}, expected {parent!r}"
            )
        parent = vol.volume_id


def _check_real(stored_ids: Sequence[str], real: Sequence[str]) -> None:
    if not real:
        raise ChainError("empty real chain: no file of the chain could be read")
    position = {vol_id: i for i, vol_id in enumerate(stored_ids)}
    last = -1
    for vol_id in real:
        i = position.get(vol_id)
        if i is None:
            raise ChainError(
                f"volume {vol_id!r} is in the real chain but not in the stored chain "
                f"{list(stored_ids)}: refusing to guess where it belongs"
            )
        if i <= last:
            raise ChainError(
                f"real chain {list(real)} is not in the stored order {list(stored_ids)}"
            )
        last = i


def plan_reconcile(stored: Sequence[Vol], real: Sequence[str]) -> ReconcilePlan:
    """Diff the stored chain against the real one read from disk and say what to change.

    ``stored`` is the stored chain base first (as :func:`chain_of` gives it); ``real`` the volume
    ids base first as read from disk starting at the stored leaf's file, or, when that file is
    missing, at the nearest existing ancestor's (so ``real`` lacks the leaf). The rules, after
    vdsm's reconcileVolumeChain and syncVolumeChain:

    1. Every id in ``real`` must be in ``stored``, in the same relative order, else
       :class:`ChainError`: a file we do not know is in the chain, and placing it would be a
       guess. An empty ``real`` is a ChainError too.
    2. If the stored leaf is ILLEGAL and ``real`` has more than one volume and ends with that
       leaf, drop the leaf from ``real`` (``dropped_leaf``). vdsm marks a leaf ILLEGAL only
       once its data has been mirrored into its parent, just before pivot, so the chain
       ending at the parent holds every byte and the leaf is safe to drop.
    3. For each stored volume absent from the real chain (after the drop):

       - the stored leaf: MarkIllegal (unless already ILLEGAL), so nothing runs on it again;
       - an inner volume: its data was merged away and the child's backing file re-pointed
         (a rebase that the metadata did not record yet), so the first present volume after
         it gets Relink to the last present volume before it ("" if none). A run of missing
         inner volumes gives one Relink for the child.
    4. If the true chain's leaf (the last of ``real`` after the drop) is ILLEGAL, MarkLegal:
       its file is whole and at the top of the real chain (the only volume of an image, or a
       merge base marked ILLEGAL during a commit).
    5. Otherwise nothing changes.

    Changes come in stored order (base first), any MarkLegal last.
    """
    _check_stored(stored)
    stored_ids = [vol.volume_id for vol in stored]
    _check_real(stored_ids, real)
    by_id = {vol.volume_id: vol for vol in stored}
    leaf = stored[-1]

    true_chain = list(real)
    dropped: str | None = None
    if (
        leaf.legality is Legality.ILLEGAL
        and len(true_chain) > 1
        and true_chain[-1] == leaf.volume_id
    ):
        dropped = true_chain.pop()

    present = set(true_chain)
    changes: list[Change] = []
    last_present = ""
    gap = False
    for vol in stored:
        if vol.volume_id in present:
            if gap:
                changes.append(Relink(vol.volume_id, last_present))
                gap = False
            last_present = vol.volume_id
        elif vol is leaf:
            if vol.legality is not Legality.ILLEGAL:
                changes.append(MarkIllegal(vol.volume_id))
        else:
            gap = True

    new_leaf = by_id[true_chain[-1]]
    if new_leaf.legality is Legality.ILLEGAL:
        changes.append(MarkLegal(new_leaf.volume_id))
    return ReconcilePlan(chain=tuple(true_chain), changes=tuple(changes), dropped_leaf=dropped)


def apply(volumes: Mapping[str, Vol], changes: Iterable[Change]) -> dict[str, Vol]:
    """The volumes after ``changes``, as a new dict (``volumes`` is left alone), so the caller
    can check the result before writing it and tests can compare before and after."""
    result = dict(volumes)
    for change in changes:
        vol = result.get(change.volume_id)
        if vol is None:
            raise ChainError(f"change {change!r} names unknown volume {change.volume_id!r}")
        match change:
            case MarkIllegal():
                vol = dataclasses.replace(vol, legality=Legality.ILLEGAL)
            case MarkLegal():
                vol = dataclasses.replace(vol, legality=Legality.LEGAL)
            case Relink(new_parent_id=parent):
                vol = dataclasses.replace(vol, parent_id=parent)
            case _:
                raise TypeError(f"not a chain change: {change!r}")
        result[change.volume_id] = vol
    return result
