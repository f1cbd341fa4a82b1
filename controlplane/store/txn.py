"""Transaction building blocks: compare-and-swap on mod_revision and the fencing compare.

Why CAS everywhere: per-resource decisions are settled in etcd, not in memory. A writer
states the revision it read; if someone wrote meanwhile the txn fails and the writer re-reads.
Why the fencing compare: an owner's write also requires its member key to still carry the
create_revision (incarnation) it registered with, so a node that was cut off and evicted
cannot write, even if it has not noticed yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyetcd import etcdrpc

_C = etcdrpc.Compare


def mod_revision_is(key: str, revision: int) -> etcdrpc.Compare:
    """Key unchanged since it was read at mod_revision `revision` (0: key absent)."""
    return _C(key=key.encode(), result=_C.EQUAL, target=_C.MOD, mod_revision=revision)


def create_revision_is(key: str, revision: int) -> etcdrpc.Compare:
    """Key exists with this create_revision (0: key absent)."""
    return _C(key=key.encode(), result=_C.EQUAL, target=_C.CREATE, create_revision=revision)


def absent(key: str) -> etcdrpc.Compare:
    return create_revision_is(key, 0)


def put(key: str, value: bytes, lease: int = 0) -> etcdrpc.RequestOp:
    return etcdrpc.RequestOp(
        request_put=etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
    )


def delete(key: str) -> etcdrpc.RequestOp:
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))


def get(key: str) -> etcdrpc.RequestOp:
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key.encode()))


@dataclass(frozen=True)
class Fence:
    """Proof of ownership to attach to an owner's write: 'my member key still has the
    incarnation I registered with'."""

    member_key: str
    incarnation: int

    def compare(self) -> etcdrpc.Compare:
        return create_revision_is(self.member_key, self.incarnation)
