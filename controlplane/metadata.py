"""The gRPC metadata keys of this project, in one place: the router, the client library and
the server builder all read or write them.

- FORWARDED_BY: set on a call a node forwards to the owner (the receiver never forwards
  again).
- CALLER: on a forwarded call, the original caller's identity (`Identity.header()`): the
  owner applies the access policy to it, and believes it only from a node certificate.
- EPOCH: the ring epoch of the node that answers, in trailing metadata: on a forwarded call
  (the sender's epoch), on FAILED_PRECONDITION "not the owner", and on an answer a node
  forwarded for a caller (a client routing on a stale ring learns it is stale).
- UNREACHABLE: on an UNAVAILABLE answer that means "something this call needs (an agent,
  etcd, an MDS) cannot be reached", as opposed to "this node cannot serve now": the call may
  have had effects, and another node would meet the same dependency, so neither the router
  nor the client library retries it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["CALLER", "EPOCH", "FORWARDED_BY", "UNREACHABLE", "epoch_in", "has", "value_of"]

FORWARDED_BY = "x-controlplane-forwarded-by"
CALLER = "x-controlplane-caller"
EPOCH = "x-controlplane-epoch"
UNREACHABLE = "x-controlplane-unreachable"


def epoch_in(metadata: Iterable[tuple[str, Any]] | None) -> int:
    """The EPOCH value in `metadata` (0 when absent or not a number)."""
    for key, value in metadata or ():
        if key == EPOCH:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


def has(metadata: Iterable[tuple[str, Any]] | None, key: str) -> bool:
    return any(k == key for k, _ in metadata or ())


def value_of(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    """The first str value of `key` in `metadata`, None when absent."""
    for k, value in metadata or ():
        if k == key and isinstance(value, str):
            return value
    return None
