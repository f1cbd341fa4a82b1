"""The libvirt backend's pure pieces: libvirt states onto VmState, lifecycle events, the
resolution of an op a dead agent left, and the domain metadata/device readers. No libvirt
import: these run where the binding is not installed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent.backend import VmState
from controlplane.agent.libvirt import states
from controlplane.agent.libvirt.domain import (
    VmMeta,
    build_domain,
    devices_of,
    mac_of,
    meta_xml,
    read_meta,
)
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


ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=40)


@given(st.integers(0, 2**62), ids | st.just(""), st.sampled_from(["", "start", "stop"]),
       st.floats(0, 2e9, allow_nan=False), st.booleans())
def test_metadata_round_trips_alone_and_inside_a_domain(gen, op_id, kind, started, stopped):
    meta = VmMeta(gen, op_id, kind, started, stopped)
    assert read_meta(meta_xml(meta).replace("<vm ", "<vm xmlns='urn:controlplane:vm:1' ")) \
        == meta
    assert read_meta(meta_xml(meta)) == meta  # as virDomainGetMetadata answers it
    xml = build_domain("vm-1", cpus=2, memory_mb=256, meta=meta, disks=("/d/a.qcow2",))
    assert read_meta(xml) == meta


def test_a_domain_without_our_metadata_is_not_ours():
    assert read_meta("<domain><name>x</name><metadata/></domain>") is None


def test_devices_from_live_xml():
    xml = """<domain><devices>
      <disk type='file' device='disk'><target dev='vda'/>
        <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/></disk>
      <disk type='file' device='cdrom'><target dev='sda'/></disk>
      <interface type='user'><mac address='52:54:00:aa:bb:cc'/>
        <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></interface>
    </devices></domain>"""
    assert [tuple(d) for d in devices_of(xml)] == [
        ("disk0", "0000:04:00.0", ""), ("nic0", "0000:01:00.0", "52:54:00:aa:bb:cc")]


def test_mac_is_stable_and_local():
    assert mac_of("vm-1") == mac_of("vm-1") != mac_of("vm-2")
    assert mac_of("vm-1").startswith("52:54:00:")
