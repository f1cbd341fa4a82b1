"""The libvirt backend's pure pieces: libvirt states onto VmState, lifecycle events, the
resolution of an op a dead agent left, and the device list from a live domain's XML. No libvirt
import: these run where the binding is not installed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent.backend import VmState
from controlplane.agent.domainxml import agent_devices
from controlplane.agent.libvirt import states
from controlplane.agent.libvirt.states import Resolution, event_state, resolve_op, vm_state

ACTIVE = (states.NOSTATE, states.RUNNING, states.BLOCKED, states.SHUTDOWN)


@given(st.integers(0, 20), st.integers(0, 20), st.booleans())
def test_vm_state_is_total_and_running_domains_are_always_listed(state, reason, stopped):
    got = vm_state(state, reason, stopped)
    assert got is None or isinstance(got, VmState)
    assert got != VmState.STOPPED  # a stopped VM is absent, never listed as stopped
    if state in ACTIVE:
        assert got == VmState.RUNNING  # whatever the reason: it runs
    if state in (states.PAUSED, states.PMSUSPENDED):
        assert got == VmState.PAUSED
    if stopped and got is not None:
        assert state not in (states.SHUTOFF, states.CRASHED)  # an acknowledged crash is gone


def test_a_qemu_that_died_is_crashed_until_stopped():
    for reason in (states.SHUTOFF_CRASHED, states.SHUTOFF_FAILED, states.SHUTOFF_DAEMON):
        assert vm_state(states.SHUTOFF, reason) == VmState.CRASHED
        assert vm_state(states.SHUTOFF, reason, stopped=True) is None
    assert vm_state(states.CRASHED, 0) == VmState.CRASHED
    for reason in (states.SHUTOFF_SHUTDOWN, states.SHUTOFF_DESTROYED, states.SHUTOFF_UNKNOWN,
                   states.SHUTOFF_SAVED):
        assert vm_state(states.SHUTOFF, reason) is None


@given(st.sampled_from(["start", "stop", "destroy", "reboot", "pause", "resume", "other"]),
       st.booleans())
def test_resolve_op_never_leaves_a_half_done_start_or_destroy(kind, active):
    action = resolve_op(kind, active)
    if kind == "start":
        # a start once begun completes: never lost, and nothing to do when it already runs
        assert action == (Resolution.CLEAR if active else Resolution.CREATE)
    elif kind == "destroy":
        assert action == Resolution.UNDEFINE
    elif kind == "stop":
        assert action == (Resolution.DESTROY if active else Resolution.CLEAR)
    else:
        assert action == Resolution.CLEAR
    assert not (action == Resolution.CREATE and active)  # never a second boot


@given(st.integers(0, 10), st.integers(0, 10))
def test_event_state(event, detail):
    state, reason = event_state(event, detail)
    assert reason
    assert state in (0, *map(int, VmState))
    if event == states.EV_STOPPED and detail == states.EV_STOPPED_CRASHED:
        assert state == VmState.CRASHED
    if event == states.EV_STARTED:
        assert state == VmState.RUNNING


def test_devices_from_live_xml():
    xml = """<domain><devices>
      <disk type='file' device='disk'><target dev='vda'/>
        <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk>
      <disk type='file' device='cdrom'><target dev='sda'/></disk>
      <interface type='user'><mac address='52:54:00:aa:bb:cc'/>
        <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></interface>
    </devices></domain>"""
    assert [tuple(d) for d in agent_devices(xml)] == [
        ("disk0", "0000:04:00.0", ""), ("nic0", "0000:01:00.0", "52:54:00:aa:bb:cc")]
