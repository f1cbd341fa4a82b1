"""Pure pieces of the libvirt backend: libvirt's domain states onto the agent's VmState, and
what to do, at agent start, with an operation the previous agent process left unfinished.

No libvirt import here: the numbers are libvirt's stable ABI (virDomainState,
virDomainShutoffReason), copied so that these rules are unit-tested where the binding is
not installed.
"""

from __future__ import annotations

import enum

from controlplane.agent.backend import VmState

__all__ = ["Resolution", "event_state", "resolve_op", "vm_state"]

# virDomainState
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
# virDomainShutoffReason
(SHUTOFF_UNKNOWN, SHUTOFF_SHUTDOWN, SHUTOFF_DESTROYED, SHUTOFF_CRASHED, SHUTOFF_MIGRATED,
 SHUTOFF_SAVED, SHUTOFF_FAILED, SHUTOFF_FROM_SNAPSHOT, SHUTOFF_DAEMON) = range(9)

# A shut-off domain that did not stop because someone asked: its QEMU died (kill -9, OOM,
# a QEMU abort), it failed to start, or libvirtd found it gone when it reconnected.
_DIED = frozenset({SHUTOFF_CRASHED, SHUTOFF_FAILED, SHUTOFF_DAEMON})


def vm_state(state: int, reason: int, stopped: bool = False) -> VmState | None:
    """The VmState of a domain in libvirt ``state`` (with its ``reason``); None when the VM is
    not on the host (shut off: a stopped VM is not listed, as with the sim).

    - running, blocked (waiting on I/O), shutting down (still runs), no state: RUNNING;
    - paused, and pmsuspended (the guest suspended itself to RAM: not running, and resumed by
      a wake-up, the closest the agent's states have is PAUSED): PAUSED;
    - crashed (on_crash=preserve), and shut off because QEMU died: CRASHED, until the agent
      stopped it (``stopped``: the crash was acknowledged by a stop, kept in the metadata);
    - shut off otherwise (shut down, destroyed, never started, saved, migrated): None.
    """
    if state in (RUNNING, BLOCKED, SHUTDOWN, NOSTATE):
        return VmState.RUNNING
    if state in (PAUSED, PMSUSPENDED):
        return VmState.PAUSED
    if state == CRASHED:
        return None if stopped else VmState.CRASHED
    if state == SHUTOFF:
        return VmState.CRASHED if reason in _DIED and not stopped else None
    return VmState.RUNNING  # a state newer than this table: it exists, so it is on the host


class Resolution(enum.Enum):
    """What the agent does at start with an op found in a domain's metadata."""

    CLEAR = "clear"        # the op is over: forget it (the domain state is the outcome)
    CREATE = "create"      # a start that had defined but not yet booted the domain: boot it
    DESTROY = "destroy"    # a stop that had not finished: power off (keep the definition)
    UNDEFINE = "undefine"  # a destroy that had not finished: power off and undefine


def resolve_op(kind: str, active: bool) -> Resolution:
    """Resolve an operation left unfinished by an agent that died, from the domain's state.

    The rules keep the sim's promises: a start once begun completes even when its caller has
    gone (so an agent killed between define and boot boots it when it comes back: the VM is
    not lost, and no second copy can exist because the domain name is the VM id); a stop or
    a destroy that was asked for is carried out; reboot, pause and resume are single libvirt
    calls, whose outcome is whatever state the domain is in. Unknown kinds are cleared.
    """
    if kind == "start":
        return Resolution.CLEAR if active else Resolution.CREATE
    if kind == "stop":
        return Resolution.DESTROY if active else Resolution.CLEAR
    if kind == "destroy":
        return Resolution.UNDEFINE
    return Resolution.CLEAR


# virDomainEventType and the details that matter
(EV_DEFINED, EV_UNDEFINED, EV_STARTED, EV_SUSPENDED, EV_RESUMED, EV_STOPPED, EV_SHUTDOWN,
 EV_PMSUSPENDED, EV_CRASHED) = range(9)
EV_STOPPED_CRASHED, EV_STOPPED_FAILED = 2, 5
_EVENT_NAMES = ("defined", "undefined", "started", "suspended", "resumed", "stopped",
                "shutdown", "pmsuspended", "crashed")


def event_state(event: int, detail: int) -> tuple[int, str]:
    """A lifecycle event (virDomainEventType, its detail) as (VmState number or 0, reason):
    the state the VM is in after it, as far as the event says (0: not on the host / not
    known). Only a hint for the owner's pull, which reads the real state."""
    name = _EVENT_NAMES[event] if 0 <= event < len(_EVENT_NAMES) else f"event {event}"
    if event in (EV_STARTED, EV_RESUMED, EV_SHUTDOWN):
        return int(VmState.RUNNING), name
    if event in (EV_SUSPENDED, EV_PMSUSPENDED):
        return int(VmState.PAUSED), name
    if event == EV_CRASHED:
        return int(VmState.CRASHED), name
    if event == EV_STOPPED:
        if detail in (EV_STOPPED_CRASHED, EV_STOPPED_FAILED):
            return int(VmState.CRASHED), "stopped: crashed" if detail == EV_STOPPED_CRASHED \
                else "stopped: failed"
        return 0, name
    return 0, name
