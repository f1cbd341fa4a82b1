"""The member table: the pure core of membership.

Every input (a watch put, a watch delete, the result of a reconcile list) is a function
from one immutable table to the next plus the changes it made. One thread applies them in
order; nothing here does I/O, so the rules can be property-tested.

The rules that close the seed races:
- A put or list entry older than what we already know (by mod_revision, or older than a
  delete we saw) is ignored: events and lists may arrive out of order.
- A member missing from a list is only *suspected*; it is evicted when it is missing from
  `confirm_rounds` consecutive successful lists, and only lists whose revision is >= the
  revision at which we last saw the member written count. A list read before a member
  joined cannot evict it, however late it is applied. A failed list is not an empty list:
  it never reaches this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

ChangeKind = Literal["join", "rejoin", "update", "leave", "evict"]


@dataclass(frozen=True)
class MemberInfo:
    """One member key as read from etcd."""

    node_id: str
    address: str
    incarnation: int  # create_revision of the member key
    mod_revision: int  # revision of the last write of the key we have seen
    started_at: float = 0.0
    version: str = ""


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    node_id: str
    revision: int


def _frozen(d: dict) -> Mapping:
    return MappingProxyType(d)


@dataclass(frozen=True)
class MemberTable:
    members: Mapping[str, MemberInfo] = field(default_factory=lambda: _frozen({}))
    # etcd revision of the last membership change applied: the ring epoch.
    epoch: int = 0
    # highest etcd revision this table reflects (events or lists).
    seen: int = 0
    # node_id -> consecutive successful lists (valid for it) that missed it
    suspects: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    # node_id -> revision at which we saw it deleted or evicted it
    tombstones: Mapping[str, int] = field(default_factory=lambda: _frozen({}))

    # -- inputs -------------------------------------------------------------------------

    def on_put(self, info: MemberInfo) -> tuple[MemberTable, tuple[Change, ...]]:
        """A member key was written (watch event or list entry)."""
        seen = max(self.seen, info.mod_revision)
        current = self.members.get(info.node_id)
        stale = (current is not None and info.mod_revision <= current.mod_revision) or (
            self.tombstones.get(info.node_id, -1) >= info.mod_revision
        )
        if stale:
            return replace(self, seen=seen), ()
        if current is None:
            kind: ChangeKind = "join"
        elif current.incarnation != info.incarnation:
            kind = "rejoin"
        else:
            kind = "update"
        members = dict(self.members)
        members[info.node_id] = info
        suspects = {k: v for k, v in self.suspects.items() if k != info.node_id}
        tombstones = {k: v for k, v in self.tombstones.items() if k != info.node_id}
        epoch = max(self.epoch, info.mod_revision) if kind != "update" else self.epoch
        table = MemberTable(_frozen(members), epoch, seen, _frozen(suspects), _frozen(tombstones))
        return table, (Change(kind, info.node_id, info.mod_revision),)

    def on_delete(self, node_id: str, revision: int) -> tuple[MemberTable, tuple[Change, ...]]:
        """A member key was deleted at `revision` (lease expired or revoked)."""
        seen = max(self.seen, revision)
        tombstones = dict(self.tombstones)
        tombstones[node_id] = max(tombstones.get(node_id, -1), revision)
        current = self.members.get(node_id)
        if current is None or current.mod_revision >= revision:
            return replace(self, seen=seen, tombstones=_frozen(tombstones)), ()
        return self._without(node_id, revision, seen, tombstones), (
            Change("leave", node_id, revision),
        )

    def on_list(
        self, listed: Mapping[str, MemberInfo], revision: int, confirm_rounds: int = 2
    ) -> tuple[MemberTable, tuple[Change, ...]]:
        """A successful list of every member key, read at etcd revision `revision`."""
        if confirm_rounds < 1:
            raise ValueError("confirm_rounds must be >= 1")
        table, changes = self, []
        for info in listed.values():
            table, found = table.on_put(info)
            changes.extend(found)
        suspects = dict(table.suspects)
        evict = []
        for node_id, info in table.members.items():
            if node_id in listed:
                suspects.pop(node_id, None)
            elif info.mod_revision > revision:
                # Written after this list was read: the list cannot speak for it.
                suspects.pop(node_id, None)
            else:
                suspects[node_id] = suspects.get(node_id, 0) + 1
                if suspects[node_id] >= confirm_rounds:
                    evict.append(node_id)
        seen = max(table.seen, revision)
        tombstones = dict(table.tombstones)
        table = replace(table, suspects=_frozen(suspects), seen=seen)
        for node_id in sorted(evict):
            suspects.pop(node_id, None)
            tombstones[node_id] = max(tombstones.get(node_id, -1), revision)
            table = table._without(node_id, revision, seen, tombstones, suspects)
            changes.append(Change("evict", node_id, revision))
        return table, tuple(changes)

    # -- helpers ------------------------------------------------------------------------

    def _without(
        self,
        node_id: str,
        revision: int,
        seen: int,
        tombstones: dict[str, int],
        suspects: dict[str, int] | None = None,
    ) -> MemberTable:
        members = {k: v for k, v in self.members.items() if k != node_id}
        sus = suspects if suspects is not None else dict(self.suspects)
        sus.pop(node_id, None)
        return MemberTable(
            _frozen(members),
            max(self.epoch, revision),
            seen,
            _frozen(dict(sus)),
            _frozen(dict(tombstones)),
        )
