"""SimBackend semantics in-process (no gRPC): the rules the management plane's tests rely on.

Blocking operations run in threads; the tests wait on what the backend reports (an op in
ListVms, a thread's result), never on sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.agent.backend import (
    Aborted,
    Backend,
    BadState,
    CallerGone,
    HostCondition,
    HostUnreachable,
    InjectedFailure,
    InvalidArgument,
    NotServed,
    StaleGeneration,
    VmInfo,
    VmNotFound,
    VmState,
)
from controlplane.agent.server import AgentServicer
from controlplane.agent.sim import SimBackend, SimSettings, sim_devices
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2

H = "host-0"
RUNNING, PAUSED, CRASHED, STOPPED = (VmState.RUNNING, VmState.PAUSED, VmState.CRASHED,
                                     VmState.STOPPED)


class Call:
    """A backend call running in a thread: ``result()`` returns its value or raises."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            self.value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.done.set()

    def result(self, timeout: float = 5.0) -> Any:
        assert self.done.wait(timeout), "call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def sim(hosts: int = 2, **settings: Any) -> SimBackend:
    return SimBackend([f"host-{i}" for i in range(hosts)], SimSettings(**settings), seed=7)


def ops_of(backend: SimBackend, host: str = H) -> list[tuple[str, str, str, int]]:
    return [(o.op_id, o.vm_id, o.kind, o.generation) for o in backend.list_vms(host).ops]


def vms_of(backend: SimBackend, host: str = H) -> dict[str, tuple[VmState, int]]:
    return {v.vm_id: (v.state, v.generation) for v in backend.list_vms(host).vms}


def test_enums_match_the_proto() -> None:
    for state in VmState:
        assert agent_pb2.AgentVmState.Value(f"AGENT_VM_STATE_{state.name}") == state
    for cond in HostCondition:
        assert agent_pb2.HostCondition.Value(f"HOST_CONDITION_{cond.name}") == cond
    assert isinstance(sim(), Backend)


def test_start_list_stop_round_trip() -> None:
    b = sim()
    vm = b.start_vm(H, "vm-1", generation=3, op_id="op-1")
    assert vm == VmInfo("vm-1", RUNNING, 3)
    listing = b.list_vms(H)
    assert list(listing.vms) == [vm] and not listing.ops and listing.reports_ops
    assert b.ping(H).vm_count == 1 and b.ping("host-1").vm_count == 0
    assert b.device_info(H, "vm-1") == sim_devices("vm-1")
    assert b.stop_vm(H, "vm-1") == VmInfo("vm-1", STOPPED, 3)
    assert vms_of(b) == {}
    # a VM that is not there is already stopped
    assert b.stop_vm(H, "vm-1").state == STOPPED
    assert b.destroy_vm(H, "never").state == STOPPED


def test_generation_rules() -> None:
    b = sim()
    b.start_vm(H, "vm-1", generation=5)
    # same generation while it runs: answered at once, nothing changes
    assert b.start_vm(H, "vm-1", generation=5) == VmInfo("vm-1", RUNNING, 5)
    with pytest.raises(StaleGeneration, match=r"generation 4 .* generation 5"):
        b.start_vm(H, "vm-1", generation=4)
    with pytest.raises(BadState, match="generation 5.*generation 6"):
        b.start_vm(H, "vm-1", generation=6)  # another generation while one runs
    # the high-water mark outlives the VM, and a fence, and a power cycle
    b.stop_vm(H, "vm-1")
    b.fence(H)
    b.set_condition(H, HostCondition.UP)
    with pytest.raises(StaleGeneration):
        b.start_vm(H, "vm-1", generation=4)
    assert b.start_vm(H, "vm-1", generation=5).generation == 5
    # marks are per host: another host has never seen the VM
    assert b.start_vm("host-1", "vm-1", generation=1).generation == 1
    # seeding raises the mark too
    b.seed_vms("host-1", [VmInfo("vm-9", VmState.RUNNING, 8)])
    b.destroy_vm("host-1", "vm-9")
    with pytest.raises(StaleGeneration):
        b.start_vm("host-1", "vm-9", generation=7)


def test_a_start_nobody_waits_for_is_not_begun() -> None:
    b = sim(start_delay=0.2)
    with pytest.raises(CallerGone):
        b.start_vm(H, "vm-1", generation=9, caller_active=lambda: False)
    assert vms_of(b) == {} and ops_of(b) == []
    # nor did it raise the high-water mark
    assert b.start_vm(H, "vm-1", generation=1, caller_active=lambda: True).generation == 1


def test_a_begun_start_completes_though_the_caller_leaves() -> None:
    b = sim(start_delay=0.3)
    caller = {"active": True}
    call = Call(b.start_vm, H, "vm-1", generation=2, op_id="op-s",
                caller_active=lambda: caller["active"])
    wait_until(lambda: ops_of(b), 2.0)
    assert ops_of(b) == [("op-s", "vm-1", "start", 2)]
    assert vms_of(b) == {}  # not yet
    caller["active"] = False
    assert call.result() == VmInfo("vm-1", RUNNING, 2)
    assert vms_of(b) == {"vm-1": (RUNNING, 2)} and ops_of(b) == []


def test_fence_aborts_a_waiting_start() -> None:
    b = sim(start_delay=30)  # would time the test out if the fence did not wake it
    b.seed_vms(H, [VmInfo("vm-old", RUNNING, 1)])
    call = Call(b.start_vm, H, "vm-1", generation=1, op_id="op-f")
    wait_until(lambda: ops_of(b), 2.0)
    started = time.monotonic()
    assert b.fence(H) == ["vm-old"]
    with pytest.raises(Aborted, match="fenced"):
        call.result()
    assert time.monotonic() - started < 2.0
    assert b.condition(H) == HostCondition.DOWN
    assert b.fence(H) == []  # fencing a host that is down succeeds, killing nothing
    with pytest.raises(HostUnreachable, match="DOWN"):
        b.list_vms(H)
    b.set_condition(H, HostCondition.UP)
    assert vms_of(b) == {} and ops_of(b) == []  # the start never completed


def test_power_off_aborts_every_operation_in_progress() -> None:
    b = sim(start_delay=30, stop_delay=30)
    b.seed_vms(H, [VmInfo("vm-a", RUNNING, 1)])
    stop = Call(b.stop_vm, H, "vm-a")
    start = Call(b.start_vm, H, "vm-b", generation=1)
    wait_until(lambda: len(ops_of(b)) == 2, 2.0)
    assert b.set_condition(H, HostCondition.DOWN) == HostCondition.DOWN
    for call in (stop, start):
        with pytest.raises(Aborted, match="powered off"):
            call.result()
    with pytest.raises(HostUnreachable):
        b.start_vm(H, "vm-b", generation=1)
    b.set_condition(H, HostCondition.UP)
    assert vms_of(b) == {}


def test_partitioned_host_keeps_running_and_finishes_its_start() -> None:
    b = sim(start_delay=0.3)
    b.seed_vms(H, [VmInfo("vm-a", RUNNING, 1)])
    call = Call(b.start_vm, H, "vm-b", generation=4)
    wait_until(lambda: ops_of(b), 2.0)
    b.set_condition(H, HostCondition.PARTITIONED)
    for fn in (lambda: b.list_vms(H), lambda: b.ping(H),
               lambda: b.stop_vm(H, "vm-a"), lambda: b.device_info(H, "vm-a")):
        with pytest.raises(HostUnreachable, match="PARTITIONED"):
            fn()
    with pytest.raises(HostUnreachable, match="answer was lost"):
        call.result()  # it ran, but its answer did not get through
    b.set_condition(H, HostCondition.UP)  # healed: everything still there
    assert vms_of(b) == {"vm-a": (RUNNING, 1), "vm-b": (RUNNING, 4)}
    b.set_condition(H, HostCondition.PARTITIONED)
    assert sorted(b.fence(H)) == ["vm-a", "vm-b"]  # fence works while cut off


def test_repeated_start_joins_the_one_in_progress() -> None:
    b = sim(start_delay=0.3)
    first = Call(b.start_vm, H, "vm-1", generation=2, op_id="op-1")
    wait_until(lambda: ops_of(b), 2.0)
    second = Call(b.start_vm, H, "vm-1", generation=2, op_id="op-1-retry")
    with pytest.raises(BadState, match="start in progress"):
        b.start_vm(H, "vm-1", generation=3)
    with pytest.raises(BadState, match="start in progress"):
        b.stop_vm(H, "vm-1")
    assert first.result() == second.result() == VmInfo("vm-1", RUNNING, 2)
    assert [op[0] for op in ops_of(b)] == []


def test_destroy_and_forced_stop_pull_the_plug() -> None:
    b = sim(start_delay=30, stop_delay=30)
    start = Call(b.start_vm, H, "vm-1", generation=1)
    wait_until(lambda: ops_of(b), 2.0)
    assert b.destroy_vm(H, "vm-1") == VmInfo("vm-1", STOPPED, 0)
    with pytest.raises(Aborted):
        start.result()
    b.seed_vms(H, [VmInfo("vm-2", RUNNING, 1)])
    slow_stop = Call(b.stop_vm, H, "vm-2")
    wait_until(lambda: ops_of(b), 2.0)
    assert b.stop_vm(H, "vm-2", force=True) == VmInfo("vm-2", STOPPED, 1)
    with pytest.raises(Aborted):
        slow_stop.result()
    assert vms_of(b) == {}


def test_reboot_pause_resume_and_crash() -> None:
    b = sim(reboot_delay=0.2)
    b.start_vm(H, "vm-1", generation=1)
    reboot = Call(b.reboot_vm, H, "vm-1", op_id="op-r")
    wait_until(lambda: ops_of(b), 2.0)
    assert ops_of(b) == [("op-r", "vm-1", "reboot", 1)]
    assert reboot.result() == VmInfo("vm-1", RUNNING, 1)
    assert b.pause_vm(H, "vm-1").state == PAUSED
    assert b.pause_vm(H, "vm-1").state == PAUSED  # idempotent
    with pytest.raises(BadState, match="PAUSED"):
        b.reboot_vm(H, "vm-1")
    assert b.resume_vm(H, "vm-1").state == RUNNING
    assert b.crash_vm(H, "vm-1") == VmInfo("vm-1", CRASHED, 1)
    assert vms_of(b) == {"vm-1": (CRASHED, 1)}
    with pytest.raises(BadState, match="CRASHED"):
        b.reboot_vm(H, "vm-1")
    with pytest.raises(BadState, match="CRASHED"):
        b.start_vm(H, "vm-1", generation=1)
    assert b.stop_vm(H, "vm-1").state == STOPPED
    with pytest.raises(VmNotFound):
        b.crash_vm(H, "vm-1")
    with pytest.raises(VmNotFound):
        b.reboot_vm(H, "vm-1")


def test_crash_aborts_a_reboot_in_progress() -> None:
    b = sim(reboot_delay=30)
    b.seed_vms(H, [VmInfo("vm-1", RUNNING, 1)])
    reboot = Call(b.reboot_vm, H, "vm-1")
    wait_until(lambda: ops_of(b), 2.0)
    b.crash_vm(H, "vm-1")
    with pytest.raises(Aborted, match="crashed"):
        reboot.result()
    assert vms_of(b) == {"vm-1": (CRASHED, 1)}


def test_stop_with_delay_reports_its_op_unless_told_not_to() -> None:
    b = sim(stop_delay=0.3)
    b.seed_vms(H, [VmInfo("vm-1", RUNNING, 6)])
    stop = Call(b.stop_vm, H, "vm-1", op_id="op-stop")
    wait_until(lambda: ops_of(b), 2.0)
    assert ops_of(b) == [("op-stop", "vm-1", "stop", 6)]
    b.configure(report_ops=False)
    listing = b.list_vms(H)
    assert listing.ops == () and listing.reports_ops is False
    assert stop.result() == VmInfo("vm-1", STOPPED, 6)


def test_device_info_failure_injection_is_seedable() -> None:
    def failures(seed: int) -> list[bool]:
        b = SimBackend([H], SimSettings(device_info_failure_rate=0.5), seed=seed)
        b.seed_vms(H, [VmInfo("vm-1", RUNNING, 1)])
        out = []
        for _ in range(200):
            try:
                b.device_info(H, "vm-1")
                out.append(False)
            except InjectedFailure as exc:
                assert "injected failure" in str(exc)
                out.append(True)
        return out

    assert failures(1) == failures(1)
    assert 60 < sum(failures(1)) < 140
    b = sim(device_info_failure_rate=1.0)
    with pytest.raises(VmNotFound):
        b.device_info(H, "absent")  # absence is reported before any injection
    b.seed_vms(H, [VmInfo("vm-1", RUNNING, 1)])
    with pytest.raises(InjectedFailure):
        b.device_info(H, "vm-1")
    b.configure(device_info_failure_rate=0.0)
    assert [d.name for d in b.device_info(H, "vm-1")] == ["disk0", "nic0"]


def test_configure_validates_and_keeps_unset_fields() -> None:
    b = sim(start_delay=1.0)
    assert b.configure(stop_delay=0.5) == SimSettings(start_delay=1.0, stop_delay=0.5)
    for bad in ({"start_delay": -1.0}, {"device_info_failure_rate": 1.5},
                {"pause_delay": float("nan")}, {"bogus": 1.0}):
        with pytest.raises(InvalidArgument):
            b.configure(**bad)
    assert b.settings == SimSettings(start_delay=1.0, stop_delay=0.5)


def test_bad_arguments() -> None:
    b = sim()
    with pytest.raises(NotServed):
        b.list_vms("host-99")
    with pytest.raises(NotServed):
        b.fence("host-99")
    for bad in ("", "a/b", " vm", "-vm", "x" * 200):
        with pytest.raises(InvalidArgument):
            b.start_vm(H, bad, generation=1)
    with pytest.raises(InvalidArgument):
        b.start_vm(H, "vm-1", generation=-1)
    with pytest.raises(InvalidArgument):
        b.seed_vms(H, [VmInfo("vm-1", STOPPED, 1)])
    with pytest.raises(InvalidArgument):
        b.set_condition(H, 0)
    b.fence(H)
    with pytest.raises(BadState, match="DOWN"):
        b.seed_vms(H, [VmInfo("vm-1", RUNNING, 1)])


def test_seed_and_list_at_fleet_scale() -> None:
    hosts = [f"host-{i}" for i in range(1000)]
    b = SimBackend(hosts)
    started = time.perf_counter()
    for h in hosts:
        assert b.seed_vms(h, [VmInfo(f"{h}-vm-{j}", 0, 1) for j in range(100)]) == 100
    seeded_in = time.perf_counter() - started
    assert seeded_in < 10, seeded_in  # ~0.3 s here; generous for a loaded CI machine
    servicer = AgentServicer(b)
    request = agent_pb2.AgentServiceListVmsRequest(host_id="host-500")
    timings = []
    for _ in range(50):
        t = time.perf_counter()
        resp = servicer.ListVms(request, None)  # type: ignore[arg-type]
        timings.append(time.perf_counter() - t)
    assert len(resp.vms) == 100 and resp.vms[0].state == agent_pb2.AGENT_VM_STATE_RUNNING
    timings.sort()
    assert timings[len(timings) // 2] < 0.005, timings  # ~0.1 ms here
