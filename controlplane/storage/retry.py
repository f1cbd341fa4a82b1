"""The MDS try-next policy, pure: which MDS to try in which order, and whether to go on.

Seed: ZStack's ZBS client (tryNext). A distributed block store runs several metadata servers
(MDS) that answer for the same metadata; when one does not answer, another may. But going on
is only safe when a second attempt cannot do the operation twice:

- a *transport error* (UNAVAILABLE: connection refused, an MDS not serving) means the request
  was not executed: go on to the next MDS, whatever the call;
- a *timeout* (DEADLINE_EXCEEDED) or an *operation error* (INTERNAL, FAILED_PRECONDITION, ...)
  leaves it open whether the MDS applied the request: go on only when the call is idempotent
  (read-only calls are), else stop and let the caller find out what happened;
- a *rejection* is the store's answer about the request itself (NOT_FOUND, ALREADY_EXISTS,
  INVALID_ARGUMENT, ...): every MDS answers for the same metadata and would say the same, so
  stop at once, idempotent or not. (This category is ours, not ZStack's: asking three MDS
  whether a missing volume exists only turns one clear NOT_FOUND into three.)

No I/O here (``grpc`` is imported only for its StatusCode enum), so hypothesis can check the
rules; :mod:`controlplane.storage.mds` applies them with tenacity and real channels.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

__all__ = [
    "REJECTIONS",
    "TRANSPORT_ERRORS",
    "Decision",
    "MdsEndpoint",
    "Outcome",
    "attempt_order",
    "classify",
    "decide",
    "not_tried",
]


@dataclass(frozen=True)
class MdsEndpoint:
    """One MDS as a primary storage record lists it: its gRPC address and whether the last
    health check found it healthy (only healthy ones are tried)."""

    address: str
    healthy: bool = True


class Outcome(enum.Enum):
    """What one attempt on one MDS came to."""

    OK = "ok"
    TRANSPORT = "transport error"  # not executed: safe to try the next MDS
    TIMEOUT = "timeout"  # maybe executed
    OPERATION = "operation error"  # maybe executed (or half executed)
    REJECTED = "rejected"  # the store's answer about the request: any MDS would say the same


class Decision(enum.Enum):
    """What the caller does after an attempt."""

    DONE = "done"  # the call succeeded
    NEXT = "next"  # try the next MDS (if any is left and the budget allows)
    STOP = "stop"  # raise now with the errors collected so far


# UNAVAILABLE is what gRPC gives for connection refused / reset and for a channel in
# reconnect backoff, and what an MDS that is not serving answers: the request never ran.
TRANSPORT_ERRORS: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

# Answers about the request, the same from every MDS (see the module docstring).
REJECTIONS: frozenset[grpc.StatusCode] = frozenset({
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
})


def classify(code: grpc.StatusCode | None) -> Outcome:
    """The outcome of an attempt that ended with ``code`` (``None`` or OK: it answered).

    Everything that is not a transport error, a timeout or a rejection is an operation error:
    an unknown code must not be taken for "not executed"."""
    if code is None or code == grpc.StatusCode.OK:
        return Outcome.OK
    if code in TRANSPORT_ERRORS:
        return Outcome.TRANSPORT
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.TIMEOUT
    if code in REJECTIONS:
        return Outcome.REJECTED
    return Outcome.OPERATION


def decide(outcome: Outcome, idempotent: bool) -> Decision:
    """Go on to the next MDS, stop, or done: the whole try-next rule."""
    if outcome is Outcome.OK:
        return Decision.DONE
    if outcome is Outcome.TRANSPORT:
        return Decision.NEXT
    if outcome is Outcome.REJECTED:
        return Decision.STOP
    return Decision.NEXT if idempotent else Decision.STOP


def attempt_order(endpoints: Iterable[MdsEndpoint], rng: random.Random) -> list[MdsEndpoint]:
    """The healthy endpoints in a random order drawn from ``rng``.

    Shuffled so that every caller does not hammer the first MDS of the list (and a hanging
    first MDS does not cost every call a full deadline); ``rng`` is passed in so that tests
    (and a reproduction of an incident) choose the order. Endpoints marked unhealthy are left
    out: their health check already failed, trying them costs a deadline for nothing."""
    order = [e for e in endpoints if e.healthy]
    rng.shuffle(order)
    return order


def not_tried(order: Sequence[MdsEndpoint], tried: int) -> list[str]:
    """Addresses of the endpoints of ``order`` after the first ``tried`` (for error messages)."""
    return [e.address for e in order[tried:]]
