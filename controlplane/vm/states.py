"""The VM state machine as one pure table (ZStack's VmInstanceState, plus its 2026 fix).

Why the table is data, not code: it is the one place the rules live (the VM service, VM sync
and HA all ask it, none of them carries its own if/else on states); being plain data it can
be compared row by row with the reference and property-tested (reachability, no trap state,
terminal states stay terminal); and a fix is a one-line change that a reviewer can see. The
2026 fix is exactly that: the line ``"stopped": "Stopped"`` in the Destroying row. Without
it a VM whose destroy was cut short (its management node restarted mid-destroy, the
hypervisor then reports the VM stopped) stayed Destroying forever.

No I/O here: the services call these functions and store the result with a compare-and-swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

# Row: current state -> {event: next state}. A pair that is not listed is invalid.
# Transcribed from shared/reference/vm-states.md; tests/unit/test_vm_states.py holds an
# independent transcription and compares the two.
_ROWS: dict[str, dict[str, str]] = {
    "Created": {
        "starting": "Starting",
        "destroying": "Destroying",
        "destroyed": "Destroyed",
    },
    "Starting": {
        "running": "Running",
        "stopped": "Stopped",
        "paused": "Paused",
        "destroying": "Destroying",
        "unknown": "Unknown",
    },
    "Running": {
        "running": "Running",
        "destroying": "Destroying",
        "stopping": "Stopping",
        "stopped": "Stopped",
        "rebooting": "Rebooting",
        "migrating": "Migrating",
        # ZStack maps this event to Migrating (a known oddity); here it is its own state.
        "volumeMigrating": "VolumeMigrating",
        "volumeRecovering": "VolumeRecovering",
        "pausing": "Pausing",
        "paused": "Paused",
        "crashed": "Crashed",
        "noState": "NoState",
        "unknown": "Unknown",
    },
    "Stopping": {
        "stopped": "Stopped",
        "destroying": "Destroying",
        "running": "Running",
        "unknown": "Unknown",
    },
    "Stopped": {
        "starting": "Starting",
        "stopped": "Stopped",
        "running": "Running",
        "paused": "Paused",
        "destroying": "Destroying",
        "volumeMigrating": "VolumeMigrating",
        "volumeRecovering": "VolumeRecovering",
        "noState": "NoState",
        "unknown": "Unknown",
    },
    "Migrating": {
        "migrated": "Running",
        "volumeMigrated": "Running",
        "running": "Running",
        "paused": "Paused",
        "stopped": "Stopped",
        "noState": "NoState",
        "unknown": "Unknown",
        "destroying": "Destroying",
    },
    "VolumeMigrating": {
        "volumeMigrated": "Stopped",
        "stopped": "Stopped",
        "noState": "NoState",
        "unknown": "Unknown",
        "destroying": "Destroying",
    },
    "VolumeRecovering": {
        "starting": "VolumeRecovering",
        "running": "VolumeRecovering",
        "volumeRecovering": "VolumeRecovering",
        "volumeRecovered": "Running",
        "stopping": "Stopping",
        "stopped": "Stopped",
        "noState": "NoState",
        "unknown": "Unknown",
        "destroying": "Destroying",
    },
    "Rebooting": {
        "running": "Running",
        "stopped": "Stopped",
        "noState": "NoState",
        "unknown": "Unknown",
        "destroying": "Destroying",
    },
    "Paused": {
        "resuming": "Resuming",
        "stopped": "Stopped",
        "running": "Running",
        "stopping": "Stopping",
        "destroying": "Destroying",
        "noState": "NoState",
        "unknown": "Unknown",
        "migrating": "Migrating",
        "volumeMigrated": "Running",
    },
    "Pausing": {
        "paused": "Paused",
        "destroying": "Destroying",
        "running": "Running",
        "noState": "NoState",
        "unknown": "Unknown",
    },
    "Resuming": {
        "running": "Running",
        "destroying": "Destroying",
        "paused": "Paused",
        "noState": "NoState",
        "unknown": "Unknown",
    },
    "Unknown": {
        "destroying": "Destroying",
        "stopping": "Stopping",
        "unknown": "Unknown",
        "paused": "Paused",
        "running": "Running",
        "migrating": "Migrating",
        "noState": "NoState",
        "stopped": "Stopped",
    },
    "Destroying": {
        "unknown": "Unknown",
        "destroyed": "Destroyed",
        "destroying": "Destroying",
        "running": "Running",
        "expunging": "Expunging",
        "stopped": "Stopped",  # the 2026 fix: a destroy cut short must not stay Destroying
    },
    "Destroyed": {
        "stopped": "Stopped",  # recover
    },
    "Crashed": {
        "running": "Running",
        "unknown": "Unknown",
        "stopping": "Stopping",
        "stopped": "Stopped",
        "rebooting": "Rebooting",
        "crashed": "Crashed",
        "destroyed": "Destroyed",
        "noState": "NoState",
        "destroying": "Destroying",
    },
    "NoState": {
        "running": "Running",
        "unknown": "Unknown",
        "stopping": "Stopping",
        "stopped": "Stopped",
        "rebooting": "Rebooting",
        "crashed": "Crashed",
        "destroyed": "Destroyed",
        "noState": "NoState",
        "destroying": "Destroying",
    },
    "Expunging": {},
    "Error": {},  # no event leads here either: Error is set directly, as in ZStack
}

TABLE: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {state: MappingProxyType(dict(row)) for state, row in _ROWS.items()}
)
del _ROWS

STATES: frozenset[str] = frozenset(TABLE)
EVENTS: frozenset[str] = frozenset(
    {
        "starting", "running", "stopped", "destroying", "destroyed", "unknown", "paused",
        "stopping", "rebooting", "migrating", "migrated", "volumeMigrating", "volumeMigrated",
        "volumeRecovering", "volumeRecovered", "pausing", "resuming", "crashed", "noState",
        "expunging",
    }
)
# An operation is in progress: VM sync leaves such a VM to the operation's owner.
INTERMEDIATE: frozenset[str] = frozenset(
    {
        "Starting", "Stopping", "Rebooting", "Destroying", "Migrating", "Pausing", "Resuming",
        "VolumeMigrating", "VolumeRecovering",
    }
)
# No way out: nothing may change a VM in these states any more.
TERMINAL: frozenset[str] = frozenset({"Expunging", "Error"})

# Fail at import, not in a sync loop, if the table and the name sets ever disagree.
assert all(set(row) <= EVENTS and set(row.values()) <= STATES for row in TABLE.values())
assert INTERMEDIATE <= STATES and TERMINAL <= STATES
assert all(not TABLE[state] for state in TERMINAL)


class InvalidTransition(ValueError):
    """A (state, event) pair the table does not allow; the message names both.

    `event` is None when the question was about a state alone (events_from).
    """

    def __init__(self, state: str, event: str | None) -> None:
        self.state = state
        self.event = event
        if state not in TABLE:
            where = f" (on event '{event}')" if event is not None else ""
            message = f"unknown VM state '{state}'{where}"
        elif event not in EVENTS:
            message = f"unknown VM event '{event}' (in state {state})"
        else:
            message = f"no transition from {state} on event '{event}'"
        super().__init__(message)


def next_state(state: str, event: str) -> str:
    """The state `event` leads to from `state`; InvalidTransition when the table has no edge."""
    try:
        return TABLE[state][event]
    except (KeyError, TypeError):
        raise InvalidTransition(state, event) from None


def allowed(state: str, event: str) -> bool:
    """Whether next_state(state, event) would succeed (never raises)."""
    try:
        return event in TABLE[state]
    except (KeyError, TypeError):
        return False


def events_from(state: str) -> frozenset[str]:
    """The events allowed in `state` (empty for a terminal state)."""
    try:
        return frozenset(TABLE[state])
    except (KeyError, TypeError):
        raise InvalidTransition(state, None) from None


def apply(state: str, events: Sequence[str]) -> str:
    """Apply `events` in order; raises InvalidTransition on the first one not allowed."""
    for event in events:
        state = next_state(state, event)
    return state


# What a host agent reports (its AgentVmState, lower-cased) -> the event VM sync feeds in.
# A VM the agent does not know ("absent") is not running there: for the record it is stopped.
_REPORT_EVENTS: Mapping[str, str] = MappingProxyType(
    {
        "running": "running",
        "paused": "paused",
        "crashed": "crashed",
        "stopped": "stopped",
        "absent": "stopped",
    }
)


def event_for_report(agent_state: str) -> str:
    """The event for a state a host agent reports; ValueError for anything else."""
    try:
        return _REPORT_EVENTS[agent_state]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REPORT_EVENTS))
        raise ValueError(
            f"unknown agent VM state {agent_state!r}; expected one of {known}"
        ) from None


class Operation(NamedTuple):
    """The three events of one VM operation the owner runs (a plain 3-tuple as well).

    begin: written with the op record, before the agent is called.
    success: the agent says the operation is done.
    failure: the agent answered that it could not do it.

    Where failure goes, and why. The rule: a failure never claims the VM is not running
    unless the agent said so, because a record that says Stopped while the VM still runs
    invites a second copy (a start elsewhere). A wrong "running" is only cosmetic: the next
    sync report corrects it.
    - start -> stopped: the agent reports the VM did not come up, so it is not running.
      (From Created too: the VM has now been placed once, ZStack does the same.)
    - stop -> running: the agent refused or the guest did not shut down, so it still runs.
      Stopping has no edge to Paused, so a paused VM whose stop failed reads Running until
      the next sync report moves it (Running --paused--> Paused).
    - reboot -> unknown: the hypervisor may have failed before or after the guest went down,
      so neither Running nor Stopped is known; the next sync report settles it
      (Unknown --running/stopped/paused-->). ZStack does this for hypervisor failures.
    - pause -> running: the guest was not paused, it still runs.
    - resume -> paused: the guest was not resumed, it stays paused.
    - destroy -> unknown: the VM may still run, be stopped or be gone; Unknown lets the user
      retry (Unknown --destroying--> Destroying) and sync settle it. Stopped would risk the
      double copy above; ZStack also puts a failed destroy in Unknown.
    An outcome that is not known at all (deadline passed, agent unreachable) is not a
    failure: the op stays in flight or orphaned until the agent is asked, and "unknown" is
    allowed from every intermediate state as the last resort.
    """

    begin: str
    success: str
    failure: str


OPERATIONS: Mapping[str, Operation] = MappingProxyType(
    {
        "start": Operation("starting", "running", "stopped"),
        "stop": Operation("stopping", "stopped", "running"),
        "reboot": Operation("rebooting", "running", "unknown"),
        "pause": Operation("pausing", "paused", "running"),
        "resume": Operation("resuming", "running", "paused"),
        "destroy": Operation("destroying", "destroyed", "unknown"),
        # migrate: the outcome is settled from both hosts' reports (vm/migration.py), never
        # from the source's answer alone; an abort leaves it Running on the source.
        "migrate": Operation("migrating", "migrated", "running"),
    }
)

# The stable states a user may call each operation in (the VM service answers
# FAILED_PRECONDITION elsewhere). The table allows each begin event from each of these
# (tested); it allows a few more pairs that only sync or internal flows use, such as
# VolumeRecovering --starting-->, or destroying from an in-flight state.
CALLABLE_FROM: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "start": frozenset({"Created", "Stopped"}),
        "stop": frozenset({"Running", "Paused", "Unknown", "Crashed", "NoState"}),
        "reboot": frozenset({"Running", "Crashed", "NoState"}),
        "pause": frozenset({"Running"}),
        "resume": frozenset({"Paused"}),
        "destroy": frozenset(
            {"Created", "Running", "Stopped", "Paused", "Unknown", "Crashed", "NoState"}
        ),
        "migrate": frozenset({"Running"}),
    }
)
assert set(CALLABLE_FROM) == set(OPERATIONS)
