"""Domain errors: what the caller did wrong, or why the system refused, in plain words.

Domain code (VM operations, images, storage, routing decisions) raises these and never
imports gRPC to say how a refusal travels: `controlplane.rpc` maps each kind to a status code
in ONE table (`rpc.STATUS`) and its server interceptor answers with it. A kind says what the
caller can do about it, the way gRPC's canonical codes do:

- Invalid       the request itself is wrong: fix it (INVALID_ARGUMENT)
- NotFound      no such resource (NOT_FOUND)
- Exists        the id is taken (ALREADY_EXISTS)
- Refused       not allowed in the resource's current state: change the state first
                (FAILED_PRECONDITION)
- Busy          lost a race or the resource is locked: retry (ABORTED)
- Unreachable   something the answer needs (etcd, an agent, an MDS) cannot be reached
                now; the call may have had effects (UNAVAILABLE, marked so that nobody
                retries it blindly: `controlplane.metadata.UNREACHABLE`)
- NotServing    this node cannot serve now, nothing was done: another node can
                (UNAVAILABLE, retried elsewhere)
- Exhausted     no capacity or over a limit (RESOURCE_EXHAUSTED)
- Unsupported   not implemented by this backend (UNIMPLEMENTED)
- TimedOut      the work outlived its deadline (DEADLINE_EXCEEDED)
- Cancelled     the caller left before the work began (CANCELLED)
- Failed        our side failed doing the work, e.g. a qemu-img call (INTERNAL)

The message is shown to the caller as is: never put unbounded input in it (`shown` cuts
what it quotes of the caller's input).
"""

from __future__ import annotations

SHOWN = 64  # characters of the caller's input a message quotes, at most


def shown(value: str, limit: int = SHOWN) -> str:
    """``value`` quoted for a message, cut to ``limit`` characters with a marker ('...' and
    the full length): status details travel as trailing metadata (a 1 MiB address echoed
    into them overflowed the metadata limit), and logs should not carry megabytes either."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit] + '...'!r} ({len(value)} characters)"


class DomainError(Exception):
    """Base of every refusal the caller should see (never a bug of ours)."""


class Invalid(DomainError, ValueError):
    pass


class NotFound(DomainError):
    pass


class Exists(DomainError):
    pass


class Refused(DomainError):
    pass


class Busy(DomainError):
    pass


class Unreachable(DomainError):
    pass


class NotServing(Unreachable):
    """This node cannot serve the call now (fenced, stopping before any effect): another
    node can, so unlike a plain Unreachable the call may be retried elsewhere."""


class Exhausted(DomainError):
    pass


class Unsupported(DomainError):
    pass


class TimedOut(DomainError):
    pass


class Cancelled(DomainError):
    """The caller went away before the work began: nothing was done for nobody."""


class Failed(DomainError):
    """Our side failed doing the work (a qemu-img call, say); the message says how."""


__all__ = ["Busy", "Cancelled", "DomainError", "Exhausted", "Exists", "Failed", "Invalid",
           "NotFound", "NotServing", "Refused", "TimedOut", "Unreachable", "Unsupported", "shown"]
