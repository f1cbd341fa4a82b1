"""The VM state table against the reference, and property tests of the pure functions."""

from __future__ import annotations

from collections import deque
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.vm.states import (
    CALLABLE_FROM,
    EVENTS,
    INTERMEDIATE,
    OPERATIONS,
    STATES,
    TABLE,
    TERMINAL,
    InvalidTransition,
    allowed,
    apply,
    event_for_report,
    events_from,
    next_state,
)

# Transcribed line by line from shared/reference/vm-states.md, independently of the module
# (one "event->State" string per edge, as the reference writes them), so a typo on either
# side fails test_table_equals_reference.
_SAME_NAME = "running->Running unknown->Unknown stopping->Stopping stopped->Stopped " \
    "rebooting->Rebooting crashed->Crashed destroyed->Destroyed noState->NoState " \
    "destroying->Destroying"
REFERENCE_ROWS = {
    "Created": "starting->Starting destroying->Destroying destroyed->Destroyed",
    "Starting": "running->Running stopped->Stopped paused->Paused destroying->Destroying "
    "unknown->Unknown",
    "Running": "running->Running destroying->Destroying stopping->Stopping stopped->Stopped "
    "rebooting->Rebooting migrating->Migrating volumeMigrating->VolumeMigrating "
    "volumeRecovering->VolumeRecovering pausing->Pausing paused->Paused crashed->Crashed "
    "noState->NoState unknown->Unknown",
    "Stopping": "stopped->Stopped destroying->Destroying running->Running unknown->Unknown",
    "Stopped": "starting->Starting stopped->Stopped running->Running paused->Paused "
    "destroying->Destroying volumeMigrating->VolumeMigrating "
    "volumeRecovering->VolumeRecovering noState->NoState unknown->Unknown",
    "Migrating": "migrated->Running volumeMigrated->Running running->Running paused->Paused "
    "stopped->Stopped noState->NoState unknown->Unknown destroying->Destroying",
    "VolumeMigrating": "volumeMigrated->Stopped stopped->Stopped noState->NoState "
    "unknown->Unknown destroying->Destroying",
    "VolumeRecovering": "starting->VolumeRecovering running->VolumeRecovering "
    "volumeRecovering->VolumeRecovering volumeRecovered->Running stopping->Stopping "
    "stopped->Stopped noState->NoState unknown->Unknown destroying->Destroying",
    "Rebooting": "running->Running stopped->Stopped noState->NoState unknown->Unknown "
    "destroying->Destroying",
    "Paused": "resuming->Resuming stopped->Stopped running->Running stopping->Stopping "
    "destroying->Destroying noState->NoState unknown->Unknown migrating->Migrating "
    "volumeMigrated->Running",
    "Pausing": "paused->Paused destroying->Destroying running->Running noState->NoState "
    "unknown->Unknown",
    "Resuming": "running->Running destroying->Destroying paused->Paused noState->NoState "
    "unknown->Unknown",
    "Unknown": "destroying->Destroying stopping->Stopping unknown->Unknown paused->Paused "
    "running->Running migrating->Migrating noState->NoState stopped->Stopped",
    "Destroying": "unknown->Unknown destroyed->Destroyed destroying->Destroying "
    "running->Running expunging->Expunging stopped->Stopped",
    "Destroyed": "stopped->Stopped",
    "Crashed": _SAME_NAME,
    "NoState": _SAME_NAME,
    "Expunging": "",
    "Error": "",
}
REFERENCE_EVENTS = {
    "starting", "running", "stopped", "destroying", "destroyed", "unknown", "paused",
    "stopping", "rebooting", "migrating", "migrated", "volumeMigrating", "volumeMigrated",
    "volumeRecovering", "volumeRecovered", "pausing", "resuming", "crashed", "noState",
    "expunging",
}


def _parse_row(text: str) -> dict[str, str]:
    row: dict[str, str] = {}
    for edge in text.split():
        event, target = edge.split("->")
        assert event not in row, f"duplicate event {event} in the transcription"
        row[event] = target
    return row


REFERENCE = {state: _parse_row(text) for state, text in REFERENCE_ROWS.items()}


def _reachable(start: str) -> set[str]:
    seen, todo = {start}, deque([start])
    while todo:
        for target in TABLE[todo.popleft()].values():
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


state_names = st.sampled_from(sorted(STATES))
event_names = st.sampled_from(sorted(EVENTS))
any_state = st.one_of(state_names, st.text(max_size=12))
any_event = st.one_of(event_names, st.text(max_size=12))


# --- the table is the reference -------------------------------------------------------------

def test_table_equals_reference() -> None:
    assert {state: dict(row) for state, row in TABLE.items()} == REFERENCE


def test_name_sets_match_reference() -> None:
    assert set(STATES) == set(REFERENCE)
    assert len(STATES) == 19
    assert set(EVENTS) == REFERENCE_EVENTS
    assert set(INTERMEDIATE) == {
        "Starting", "Stopping", "Rebooting", "Destroying", "Migrating", "Pausing", "Resuming",
        "VolumeMigrating", "VolumeRecovering",
    }
    assert set(TERMINAL) == {"Expunging", "Error"}
    # every event of the reference is used by some edge
    assert {event for row in TABLE.values() for event in row} == REFERENCE_EVENTS


def test_table_is_immutable() -> None:
    assert isinstance(TABLE, MappingProxyType)
    with pytest.raises(TypeError):
        TABLE["Running"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        TABLE["Running"]["running"] = "Stopped"  # type: ignore[index]
    assert isinstance(OPERATIONS, MappingProxyType)


def test_destroying_stopped_goes_to_stopped_regression_2026_fix() -> None:
    """Regression test for the 2026 fix: an MN restarted during a destroy, the hypervisor
    reports the VM stopped; without this edge the VM stayed Destroying forever."""
    assert next_state("Destroying", "stopped") == "Stopped"
    assert allowed("Destroying", "stopped")
    # the whole story: destroy begins, the MN dies, sync feeds in the agent's report
    assert apply("Running", ["destroying", event_for_report("stopped")]) == "Stopped"
    assert apply("Running", ["destroying", event_for_report("absent")]) == "Stopped"


def test_volume_migrating_is_its_own_state_not_migrating() -> None:
    assert next_state("Running", "volumeMigrating") == "VolumeMigrating"
    assert next_state("Stopped", "volumeMigrating") == "VolumeMigrating"


def test_error_message_names_state_and_event() -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state("Stopped", "rebooting")
    assert str(info.value) == "no transition from Stopped on event 'rebooting'"
    assert (info.value.state, info.value.event) == ("Stopped", "rebooting")
    assert isinstance(info.value, ValueError)

    with pytest.raises(InvalidTransition, match="unknown VM state 'Bogus'.*'running'"):
        next_state("Bogus", "running")
    with pytest.raises(InvalidTransition, match="unknown VM event 'reboot'.*Running"):
        next_state("Running", "reboot")
    with pytest.raises(InvalidTransition, match="unknown VM state 'Bogus'"):
        events_from("Bogus")


def test_state_names_are_case_sensitive() -> None:
    assert not allowed("running", "stopped")
    assert not allowed("Running", "Stopped")


# --- properties -----------------------------------------------------------------------------

@given(any_state, any_event)
@settings(max_examples=400)
def test_next_state_is_a_state_or_a_named_error(state: str, event: str) -> None:
    try:
        result = next_state(state, event)
    except InvalidTransition as error:
        assert state in str(error) and event in str(error)
        assert (error.state, error.event) == (state, event)
        assert not allowed(state, event)
        assert REFERENCE.get(state, {}).get(event) is None
    else:
        assert result in STATES
        assert allowed(state, event)
        assert REFERENCE[state][event] == result


@given(state_names)
def test_events_from_agrees_with_allowed(state: str) -> None:
    assert events_from(state) == {event for event in EVENTS if allowed(state, event)}


def test_terminal_states_have_no_edges() -> None:
    for state in TERMINAL:
        assert events_from(state) == frozenset()
        for event in EVENTS:
            with pytest.raises(InvalidTransition):
                next_state(state, event)


def test_every_state_but_error_is_reachable_from_created() -> None:
    # Error has no incoming edge in the reference (ZStack sets it directly, Error(null)).
    assert _reachable("Created") == STATES - {"Error"}
    assert all("Error" not in row.values() for row in TABLE.values())


def test_no_trap_state() -> None:
    """From every non-terminal state some path leads to Destroyed or Stopped."""
    for state in STATES - TERMINAL:
        assert _reachable(state) & {"Destroyed", "Stopped"}, state


def test_unknown_is_the_way_out_of_every_intermediate_state() -> None:
    # An operation whose outcome is not known can always be parked in Unknown for sync.
    for state in INTERMEDIATE:
        assert next_state(state, "unknown") == "Unknown"


@given(state_names, st.lists(event_names, max_size=30))
@settings(max_examples=300)
def test_apply_stays_inside_states(state: str, events: list[str]) -> None:
    current = state
    for event in events:
        following = REFERENCE[current].get(event)
        if following is None:
            with pytest.raises(InvalidTransition) as info:
                apply(state, events)
            assert (info.value.state, info.value.event) == (current, event)
            return
        current = following
    result = apply(state, events)
    assert result in STATES
    assert result == current


@given(state_names, st.lists(event_names, max_size=30))
@settings(max_examples=200)
def test_apply_of_only_allowed_events_is_total(state: str, events: list[str]) -> None:
    # a walk that only takes allowed edges never raises and never leaves STATES
    walked = state
    taken = []
    for event in events:
        if allowed(walked, event):
            walked = next_state(walked, event)
            taken.append(event)
    assert apply(state, taken) == walked
    assert walked in STATES


def test_apply_of_nothing_is_identity_even_for_terminal() -> None:
    for state in STATES:
        assert apply(state, []) == state


# --- agent reports --------------------------------------------------------------------------

def test_event_for_report() -> None:
    assert event_for_report("running") == "running"
    assert event_for_report("paused") == "paused"
    assert event_for_report("crashed") == "crashed"
    assert event_for_report("stopped") == "stopped"
    assert event_for_report("absent") == "stopped"
    for bad in ("Running", "unknown", "", "destroyed", "migrating"):
        with pytest.raises(ValueError, match=repr(bad)):
            event_for_report(bad)


def test_every_report_is_accepted_from_running_and_unknown() -> None:
    # sync must be able to apply whatever a reachable agent says about a Running VM or one
    # whose host was unreachable
    for report in ("running", "paused", "crashed", "stopped", "absent"):
        assert allowed("Running", event_for_report(report)), report
    for report in ("running", "paused", "stopped", "absent"):
        assert allowed("Unknown", event_for_report(report)), report
    # the reference has no Paused --paused--> edge: sync treats "report = record" as no change
    assert not allowed("Paused", event_for_report("paused"))


# --- operations -----------------------------------------------------------------------------

def test_operations_are_the_six_kinds() -> None:
    assert set(OPERATIONS) == {"start", "stop", "reboot", "pause", "resume", "destroy", "migrate"}
    assert set(CALLABLE_FROM) == set(OPERATIONS)
    begin, success, failure = OPERATIONS["start"]
    assert (begin, success, failure) == ("starting", "running", "stopped")
    assert OPERATIONS["stop"][:2] == ("stopping", "stopped")
    assert OPERATIONS["pause"] == ("pausing", "paused", "running")
    assert OPERATIONS["resume"] == ("resuming", "running", "paused")
    assert OPERATIONS["reboot"][:2] == ("rebooting", "running")
    assert OPERATIONS["destroy"][:2] == ("destroying", "destroyed")


SUCCESS_STATE = {
    "start": "Running", "stop": "Stopped", "reboot": "Running", "pause": "Paused",
    "resume": "Running", "destroy": "Destroyed", "migrate": "Running",
}
IN_FLIGHT = {
    "start": "Starting", "stop": "Stopping", "reboot": "Rebooting", "pause": "Pausing",
    "resume": "Resuming", "destroy": "Destroying", "migrate": "Migrating",
}


@pytest.mark.parametrize("kind", sorted(OPERATIONS))
def test_operation_events_are_valid_paths(kind: str) -> None:
    op = OPERATIONS[kind]
    assert CALLABLE_FROM[kind], kind
    for state in CALLABLE_FROM[kind]:
        in_flight = next_state(state, op.begin)
        assert in_flight == IN_FLIGHT[kind] and in_flight in INTERMEDIATE
        assert apply(state, [op.begin, op.success]) == SUCCESS_STATE[kind]
        after_failure = apply(state, [op.begin, op.failure])
        assert after_failure not in INTERMEDIATE and after_failure not in TERMINAL


def test_operation_failure_never_claims_stopped_without_the_agent() -> None:
    # reboot and destroy may fail with the guest still up: their failure must not say Stopped
    for kind in ("reboot", "destroy"):
        assert apply("Running", [OPERATIONS[kind].begin, OPERATIONS[kind].failure]) == "Unknown"


def test_operations_not_callable_outside_their_states() -> None:
    assert not allowed("Stopped", OPERATIONS["reboot"].begin)
    assert not allowed("Running", OPERATIONS["start"].begin)
    assert not allowed("Paused", OPERATIONS["pause"].begin)
    assert not allowed("Destroyed", OPERATIONS["destroy"].begin)
    for kind, op in OPERATIONS.items():
        for state in TERMINAL:
            assert not allowed(state, op.begin), (kind, state)

