"""The consistent hash ring: a pure, immutable snapshot.

Why immutable: the seed bug was a ring mutated by two threads while a third looked up an
owner. Here the membership thread builds a new Ring and swaps one reference; readers hold
whatever snapshot they got and never lock. Why a stable hash: Python's hash() is salted per
process, so two nodes would build different rings from the same members.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_VNODES = 256
_SPACE = 1 << 64


def stable_hash(data: str) -> int:
    """64-bit blake2b of the UTF-8 bytes: identical on every node, every run."""
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Ring:
    """Owner lookup over a fixed member set at one epoch.

    `epoch` is the etcd revision of the membership change the ring reflects, so two nodes
    whose rings have the same epoch have the same members and answer the same owner.
    """

    members: frozenset[str]
    epoch: int = 0
    vnodes: int = DEFAULT_VNODES
    _points: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _owners: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, members: Iterable[str], epoch: int = 0, vnodes: int = DEFAULT_VNODES) -> Ring:
        """Place `vnodes` points per member; ties (astronomically rare) break by name."""
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        names = frozenset(members)
        placed = sorted(
            (stable_hash(f"{name}#{i}"), name) for name in names for i in range(vnodes)
        )
        ring = cls(names, epoch, vnodes)
        object.__setattr__(ring, "_points", tuple(p for p, _ in placed))
        object.__setattr__(ring, "_owners", tuple(n for _, n in placed))
        return ring

    def __len__(self) -> int:
        return len(self.members)

    def owner(self, resource_id: str) -> str:
        """The member owning resource_id: the first point clockwise from its hash."""
        if not self._points:
            raise LookupError("the ring has no members")
        i = bisect.bisect_right(self._points, stable_hash(resource_id))
        return self._owners[i % len(self._owners)]

    def shares(self) -> Mapping[str, float]:
        """Fraction of the hash space each member owns (sums to 1.0)."""
        if not self._points:
            return MappingProxyType({})
        owned = dict.fromkeys(self.members, 0)
        prev = self._points[-1] - _SPACE
        for point, name in zip(self._points, self._owners, strict=True):
            owned[name] += point - prev
            prev = point
        return MappingProxyType({name: span / _SPACE for name, span in owned.items()})

    def with_members(self, members: Iterable[str], epoch: int) -> Ring:
        """A new ring for another member set (same vnodes)."""
        return Ring.build(members, epoch, self.vnodes)
