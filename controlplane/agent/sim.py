"""The sim backend: an in-memory hypervisor for many hosts, with fault injection.

Why it exists: the management plane's sync, HA and fencing logic must be tested against the
nasty sequences real hosts produce (a start still running when its caller dies, a host that
keeps running its VMs while cut off, a power-off in the middle of a start, a stale start from
an old owner) and at fleet sizes (1,000 hosts x 100 VMs in one process) that real qemu cannot
give a test machine. The sim reproduces those sequences exactly and on demand.

Model, per host: a condition (UP, DOWN, PARTITIONED), the VMs it runs {vm_id: VmInfo}, a
generation high-water mark per VM (the highest generation it was ever asked to start; a start
below it is stale), and the operations in progress (at most one per VM). Each host has its
own lock; no lock is held while an operation waits out its delay, and a waiting operation is
woken at once by a fence or power-off through its ``abort`` event.

Rules beyond the obvious ones (tests of the management plane rely on them):
- A start, once begun, completes even if its caller has gone, and completes while the host is
  PARTITIONED (the host runs; only the network is cut). While PARTITIONED the *answer* is
  lost: the waiting call gets HostUnreachable although the VM now runs.
- A call that repeats the operation in progress on a VM (same kind; for a start, the same
  generation) joins it and gets its outcome: retries are idempotent. Any other call on a VM
  with an operation in progress is BadState, except a destroy or a forced stop, which pull
  the plug and abort it.
- Fence and DOWN abort every operation in progress (their callers get Aborted) and remove
  every VM; the high-water marks survive (they are what makes a later stale start visible).
- What changes out of band is published on ``events`` (WatchHostEvents, see
  ``agent/events.py``), as libvirt's lifecycle events are by the libvirt backend: a crash
  (vm_id, CRASHED), a condition change and a fence (the host as a whole). Changes a caller
  asked for are not: the caller has the answer, and the owner pulls on its own schedule.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace

from controlplane.agent.backend import (
    Aborted,
    BadState,
    CallerGone,
    Device,
    HostCondition,
    HostInfo,
    HostUnreachable,
    InjectedFailure,
    InvalidArgument,
    NotServed,
    OpInfo,
    StaleGeneration,
    VmInfo,
    VmListing,
    VmNotFound,
    VmState,
    check_vm_id,
)
from controlplane.agent.events import EventHub
from controlplane.agent.simmigrate import SimMigration
from controlplane.agent.simstate import StateFile

__all__ = ["SimBackend", "SimSettings", "sim_devices"]

log = logging.getLogger(__name__)

RUNNING = VmState.RUNNING
PAUSED = VmState.PAUSED
CRASHED = VmState.CRASHED
STOPPED = VmState.STOPPED


DURATION_SETTINGS = ("start_delay", "stop_delay", "reboot_delay", "pause_delay",
                     "migrate_prepare_delay", "migrate_transfer_delay", "migrate_answer_delay",
                     "migrate_downtime")


@dataclass(frozen=True)
class SimSettings:
    """Delays (seconds) and fault injection; an immutable snapshot swapped by ``configure``."""

    start_delay: float = 0.0
    stop_delay: float = 0.0
    reboot_delay: float = 0.0
    pause_delay: float = 0.0
    device_info_failure_rate: float = 0.0
    report_ops: bool = True
    # Live migration (see agent/simmigrate.py): phases and a fault on demand.
    migrate_prepare_delay: float = 0.0
    migrate_transfer_delay: float = 0.0
    migrate_answer_delay: float = 0.0
    migrate_downtime: float = 0.0
    migrate_fail: bool = False

    def __post_init__(self) -> None:
        for name in DURATION_SETTINGS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{name} must be a finite number >= 0, got {value}")
        rate = self.device_info_failure_rate
        if not 0.0 <= rate <= 1.0:  # also refuses NaN
            raise InvalidArgument(f"device_info_failure_rate must be in [0, 1], got {rate}")


SETTING_NAMES = tuple(f.name for f in fields(SimSettings))


def sim_devices(vm_id: str) -> list[Device]:
    """The devices the sim 'assigns' a VM: fixed PCI slots, a MAC derived from the VM id
    (stable across restarts and hosts, like a MAC kept in the VM record)."""
    digest = hashlib.blake2b(vm_id.encode(), digest_size=3).hexdigest()
    mac = "52:54:00:" + ":".join(digest[i:i + 2] for i in range(0, 6, 2))
    return [Device("disk0", "0000:00:04.0"), Device("nic0", "0000:00:03.0", mac)]


class _Op:
    """An operation in progress; finished exactly once, by the thread that began it."""

    __slots__ = ("info", "abort", "done", "reason", "result", "error")

    def __init__(self, info: OpInfo) -> None:
        self.info = info
        self.abort = threading.Event()  # set (under the host lock) by fence / DOWN / destroy
        self.done = threading.Event()
        self.reason = ""
        self.result: VmInfo | None = None
        self.error: tuple[type[Exception], str] | None = None


class _Host:
    __slots__ = ("host_id", "lock", "condition", "vms", "hwm", "ops", "fenced_in")

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.lock = threading.Lock()
        self.condition = HostCondition.UP
        self.vms: dict[str, VmInfo] = {}
        self.hwm: dict[str, int] = {}
        self.ops: dict[str, _Op] = {}  # by vm_id: at most one operation per VM
        # vm_id -> the highest incoming generation aborted here: never accepted again
        self.fenced_in: dict[str, int] = {}


def _persists(fn: Callable) -> Callable:
    """Save the sim's state (``state_file``) after the call, whatever its outcome."""

    def wrapper(self: SimBackend, *args: object, **kwargs: object) -> object:
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.save()

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class SimBackend(SimMigration):
    """Simulated hypervisor for ``host_ids``; thread-safe, one lock per host.

    ``state_file``: the VMs, generation high-water marks and incoming fences of every host
    are saved there after each change and loaded at start, so a restarted agent finds the
    VMs its "hypervisor" still runs (an agent restart, not a host reboot); None: memory only
    (a restart is a power cycle of every host)."""

    name = "sim"

    def __init__(
        self,
        host_ids: Sequence[str],
        settings: SimSettings | None = None,
        *,
        cpus: int = 16,
        memory_mb: int = 65536,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        state_file: str | None = None,
    ) -> None:
        if not host_ids:
            raise ValueError("a sim serves at least one host")
        # Built once, never changed: lookups need no lock.
        self._hosts: dict[str, _Host] = {h: _Host(h) for h in host_ids}
        if len(self._hosts) != len(host_ids):
            raise ValueError("duplicate host ids")
        self._host_ids = list(host_ids)
        self._settings = settings or SimSettings()
        self._settings_lock = threading.Lock()  # serialises writers; readers take the reference
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._clock = clock
        self._closed = False
        self.events = EventHub(clock)
        self.cpus = cpus
        self.memory_mb = memory_mb
        self._init_migration()
        self._state = StateFile(state_file) if state_file else None
        if self._state is not None:
            self._state.load(self._hosts, VmInfo, VmState)

    def save(self) -> None:
        """Write the state file (no-op without one)."""
        if self._state is not None:
            self._state.save(self._hosts)

    # -- settings and conditions (SimControl) ----------------------------------------

    @property
    def settings(self) -> SimSettings:
        return self._settings

    def configure(self, **changes: float | bool) -> SimSettings:
        """Change some settings (the others keep their value); returns the full new settings.

        InvalidArgument for an unknown name or a bad value, and then nothing changes."""
        unknown = set(changes) - set(SETTING_NAMES)
        if unknown:
            raise InvalidArgument(f"unknown sim settings: {', '.join(sorted(unknown))}")
        with self._settings_lock:
            new = replace(self._settings, **changes)  # type: ignore[arg-type]
            self._settings = new
        if changes:
            log.info("sim settings changed: %s",
                     ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))
        return new

    def condition(self, host_id: str) -> HostCondition:
        return self._host(host_id).condition

    @_persists
    def set_condition(self, host_id: str, condition: HostCondition | int) -> HostCondition:
        """UP, DOWN (powered off: VMs gone, ops aborted) or PARTITIONED (cut off, still
        running). UP from DOWN is a power-on with no VMs; UP from PARTITIONED heals."""
        try:
            condition = HostCondition(condition)
        except ValueError:
            raise InvalidArgument(f"unknown host condition {condition}") from None
        host = self._host(host_id)
        with host.lock:
            old = host.condition
            killed: list[str] = []
            aborted: list[str] = []
            if condition == HostCondition.DOWN:
                killed, aborted = self._power_off(host, "host powered off")
            host.condition = condition
        if old != condition:
            self.events.publish(host_id, reason=f"condition {old.name} -> {condition.name}")
            log.info("host %s: %s -> %s%s", host_id, old.name, condition.name,
                     f" (VMs killed: {killed}, ops aborted: {aborted})"
                     if condition == HostCondition.DOWN else "")
        return condition

    def has_vm(self, host_id: str, vm_id: str) -> bool:
        """Whether the host is powered and has the VM (running, crashed, or being started):
        what keeps the VM's volume sessions alive (`agent/volumes.py`). True while
        PARTITIONED: the host runs."""
        host = self._host(host_id)
        with host.lock:
            return host.condition != HostCondition.DOWN and (vm_id in host.vms
                                                             or vm_id in host.ops)

    @_persists
    def crash_vm(self, host_id: str, vm_id: str) -> VmInfo:
        """The VM dies; it stays on the host as CRASHED until stopped or destroyed. A reboot,
        pause or resume in progress on it is aborted."""
        check_vm_id(vm_id)
        host = self._host(host_id)
        with host.lock:
            vm = host.vms.get(vm_id)
            if vm is None:
                raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
            op = host.ops.get(vm_id)
            if op is not None and op.info.kind in ("reboot", "pause", "resume"):
                self._abort(host, op, "vm crashed")
            vm = vm._replace(state=CRASHED)
            host.vms[vm_id] = vm
        self.events.publish(host_id, vm_id, CRASHED, "crashed")
        log.info("host %s vm %s gen %d: crashed", host_id, vm_id, vm.generation)
        return vm

    @_persists
    def seed_vms(self, host_id: str, vms: Iterable[VmInfo]) -> int:
        """Put VMs on a host directly (state 0 means RUNNING), raising the high-water marks.
        All-or-nothing: one bad entry and none is seeded."""
        host = self._host(host_id)
        batch: list[VmInfo] = []
        for vm in vms:
            check_vm_id(vm.vm_id)
            try:
                state = VmState(vm.state) if vm.state else RUNNING
            except ValueError:
                raise InvalidArgument(f"vm {vm.vm_id}: unknown state {vm.state}") from None
            if state == STOPPED:
                raise InvalidArgument(f"vm {vm.vm_id}: a stopped VM is not on a host; "
                                      "seed RUNNING, PAUSED or CRASHED")
            if vm.generation < 0:
                raise InvalidArgument(f"vm {vm.vm_id}: negative generation {vm.generation}")
            batch.append(VmInfo(vm.vm_id, state, vm.generation))
        with host.lock:
            if host.condition == HostCondition.DOWN:
                raise BadState(f"host {host_id} is DOWN (powered off): set it UP first")
            hwm = host.hwm
            for vm in batch:
                host.vms[vm.vm_id] = vm
                if hwm.get(vm.vm_id, -1) < vm.generation:
                    hwm[vm.vm_id] = vm.generation
        log.info("host %s: seeded %d VMs", host_id, len(batch))
        return len(batch)

    # -- Backend ---------------------------------------------------------------------

    def host_ids(self) -> list[str]:
        return list(self._host_ids)

    def ping(self, host_id: str) -> HostInfo:
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            count = len(host.vms)
        return HostInfo(self.cpus, self.memory_mb, count)

    def list_vms(self, host_id: str) -> VmListing:
        host = self._host(host_id)
        report_ops = self._settings.report_ops
        with host.lock:
            self._check_reachable(host)
            vms = tuple(host.vms.values())
            ops = tuple(op.info for op in host.ops.values()) if report_ops else ()
        return VmListing(vms, ops, report_ops)

    @_persists
    def start_vm(self, host_id: str, vm_id: str, *, generation: int, op_id: str = "",
                 cpus: int = 0, memory_mb: int = 0, disk: str = "",
                 caller_active: Callable[[], bool] = lambda: True) -> VmInfo:
        check_vm_id(vm_id)
        if generation < 0:
            raise InvalidArgument(f"negative generation {generation}")
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            seen = host.hwm.get(vm_id)
            if seen is not None and generation < seen:
                raise StaleGeneration(
                    f"stale start of vm {vm_id} on host {host_id}: generation {generation} is "
                    f"older than generation {seen}, already seen by this host")
            joined = self._joinable(host, vm_id, "start", generation)
            if joined is None:
                vm = host.vms.get(vm_id)
                if vm is not None:
                    if vm.generation != generation:
                        raise BadState(
                            f"vm {vm_id} is already on host {host_id} with generation "
                            f"{vm.generation} ({vm.state.name}); asked to start generation "
                            f"{generation}")
                    if vm.state == CRASHED:
                        raise BadState(f"vm {vm_id} is CRASHED on host {host_id}: stop or "
                                       "destroy it before starting it again")
                    return vm  # already runs with this generation: idempotent
                if not caller_active():
                    raise CallerGone(f"start of vm {vm_id} on host {host_id} not begun: "
                                     "the caller has gone")
                host.hwm[vm_id] = generation
                op = self._register(host, vm_id, "start", op_id, generation)
        if joined is not None:
            return self._join(host, joined)

        def complete() -> VmInfo:
            vm = VmInfo(vm_id, RUNNING, generation)
            host.vms[vm_id] = vm
            return vm

        return self._run(host, op, self._settings.start_delay, complete)

    @_persists
    def stop_vm(self, host_id: str, vm_id: str, *, op_id: str = "",
                force: bool = False) -> VmInfo:
        return self._remove(host_id, vm_id, "stop", op_id, plug=force)

    @_persists
    def destroy_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._remove(host_id, vm_id, "destroy", op_id, plug=True)

    @_persists
    def reboot_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "reboot", op_id, RUNNING, RUNNING, "reboot_delay")

    @_persists
    def pause_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "pause", op_id, RUNNING, PAUSED, "pause_delay")

    @_persists
    def resume_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "resume", op_id, PAUSED, RUNNING, "pause_delay")

    def device_info(self, host_id: str, vm_id: str) -> list[Device]:
        check_vm_id(vm_id)
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            if vm_id not in host.vms:
                raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
        rate = self._settings.device_info_failure_rate
        if rate > 0:
            with self._rng_lock:
                roll = self._rng.random()
            if roll < rate:
                raise InjectedFailure(f"injected failure: device info of vm {vm_id} on host "
                                      f"{host_id} (rate {rate})")
        return sim_devices(vm_id)

    @_persists
    def fence(self, host_id: str) -> list[str]:
        host = self._host(host_id)
        with host.lock:
            old = host.condition
            killed, aborted = self._power_off(host, "host fenced")
            host.condition = HostCondition.DOWN
        self.events.publish(host_id, reason="fenced")
        log.warning("host %s fenced (was %s): VMs killed %s, ops aborted %s",
                    host_id, old.name, killed, aborted)
        return killed

    def close(self) -> None:
        self._closed = True
        self.events.close()
        self._close_migration()
        for host in self._hosts.values():
            with host.lock:
                for op in list(host.ops.values()):
                    self._abort(host, op, "agent shutting down")

    # -- internals (_check_reachable, _abort, _power_off, _joinable and _register run
    #    under the host lock) ----------------------------------------------------------

    def _host(self, host_id: str) -> _Host:
        host = self._hosts.get(host_id)
        if host is None:
            raise NotServed(f"this agent does not serve host {host_id!r}")
        return host

    @staticmethod
    def _check_reachable(host: _Host) -> None:
        if host.condition == HostCondition.DOWN:
            raise HostUnreachable(f"host {host.host_id} is DOWN (powered off)")
        if host.condition == HostCondition.PARTITIONED:
            raise HostUnreachable(f"host {host.host_id} is PARTITIONED (cut off from the "
                                  "network)")

    @staticmethod
    def _abort(host: _Host, op: _Op, reason: str) -> None:
        op.reason = reason
        op.abort.set()
        if host.ops.get(op.info.vm_id) is op:
            del host.ops[op.info.vm_id]

    def _power_off(self, host: _Host, reason: str) -> tuple[list[str], list[str]]:
        killed = sorted(host.vms)
        aborted = sorted(op.info.op_id for op in host.ops.values())
        host.vms.clear()
        for op in list(host.ops.values()):
            self._abort(host, op, reason)
        return killed, aborted

    @staticmethod
    def _joinable(host: _Host, vm_id: str, kind: str, generation: int | None = None) -> _Op | None:
        """The op in progress on the VM that this call repeats (to join), None when there is
        none; BadState when another operation holds the VM."""
        op = host.ops.get(vm_id)
        if op is None:
            return None
        info = op.info
        if info.kind == kind and (generation is None or info.generation == generation):
            return op
        raise BadState(f"vm {vm_id} on host {host.host_id} has a {info.kind} in progress "
                       f"(op {info.op_id}, generation {info.generation})")

    def _register(self, host: _Host, vm_id: str, kind: str, op_id: str,
                  generation: int) -> _Op:
        if self._closed:
            raise Aborted("the agent is shutting down")
        op = _Op(OpInfo(op_id or f"agent-{uuid.uuid4().hex[:12]}", vm_id, kind, generation,
                        self._clock()))
        host.ops[vm_id] = op
        return op

    def _run(self, host: _Host, op: _Op, delay: float,
             complete: Callable[[], VmInfo]) -> VmInfo:
        """Wait out ``delay`` (woken early by an abort), then apply ``complete`` under the
        lock unless aborted; finish the op and answer as the host's condition allows."""
        info = op.info
        log.info("host %s vm %s op %s gen %d: %s begun (%.2fs)", host.host_id, info.vm_id,
                 info.op_id, info.generation, info.kind, delay)
        if delay > 0:
            op.abort.wait(delay)
        with host.lock:
            if op.abort.is_set():
                op.error = (Aborted, f"{info.kind} of vm {info.vm_id} on host {host.host_id} "
                                     f"(op {info.op_id}) aborted: {op.reason}")
            else:
                try:
                    op.result = complete()
                except (VmNotFound, BadState) as exc:
                    op.error = (type(exc), str(exc))
                if host.ops.get(info.vm_id) is op:
                    del host.ops[info.vm_id]
            partitioned = host.condition == HostCondition.PARTITIONED
        op.done.set()
        if op.error is not None:
            log.info("host %s vm %s op %s gen %d: %s failed: %s", host.host_id, info.vm_id,
                     info.op_id, info.generation, info.kind, op.error[1])
        else:
            assert op.result is not None
            log.info("host %s vm %s op %s gen %d: %s done, %s%s", host.host_id, info.vm_id,
                     info.op_id, info.generation, info.kind, op.result.state.name,
                     " (host PARTITIONED: answer lost)" if partitioned else "")
        return self._outcome(host, op, partitioned)

    def _join(self, host: _Host, op: _Op) -> VmInfo:
        info = op.info
        log.info("host %s vm %s op %s gen %d: repeated %s joins the one in progress",
                 host.host_id, info.vm_id, info.op_id, info.generation, info.kind)
        op.done.wait()
        with host.lock:
            partitioned = host.condition == HostCondition.PARTITIONED
        return self._outcome(host, op, partitioned)

    @staticmethod
    def _outcome(host: _Host, op: _Op, partitioned: bool) -> VmInfo:
        if op.error is not None:
            cls, message = op.error
            raise cls(message)  # a fresh exception per caller (joined calls share the op)
        if partitioned:
            raise HostUnreachable(
                f"host {host.host_id} is PARTITIONED (cut off from the network): the "
                f"{op.info.kind} of vm {op.info.vm_id} completed but its answer was lost")
        assert op.result is not None
        return op.result

    def _remove(self, host_id: str, vm_id: str, kind: str, op_id: str, plug: bool) -> VmInfo:
        """Stop or destroy. ``plug``: power off at once, aborting any op in progress."""
        check_vm_id(vm_id)
        host = self._host(host_id)
        joined = None
        with host.lock:
            self._check_reachable(host)
            current = host.ops.get(vm_id)
            if current is not None and plug:
                self._abort(host, current, f"vm powered off ({kind}, op {op_id or '-'})")
            else:
                joined = self._joinable(host, vm_id, kind)
            if joined is None:
                vm = host.vms.get(vm_id)
                if vm is None:
                    return VmInfo(vm_id, STOPPED, 0)  # not here: already stopped
                if plug or self._settings.stop_delay == 0:
                    del host.vms[vm_id]
                    log.info("host %s vm %s op %s gen %d: %s done at once (was %s)", host_id,
                             vm_id, op_id or "-", vm.generation, kind, vm.state.name)
                    return VmInfo(vm_id, STOPPED, vm.generation)
                op = self._register(host, vm_id, kind, op_id, vm.generation)
        if joined is not None:
            return self._join(host, joined)

        def complete() -> VmInfo:
            gone = host.vms.pop(vm_id, None)
            return VmInfo(vm_id, STOPPED, gone.generation if gone else op.info.generation)

        return self._run(host, op, self._settings.stop_delay, complete)

    def _change(self, host_id: str, vm_id: str, kind: str, op_id: str, source: VmState,
                target: VmState, delay_name: str) -> VmInfo:
        """Reboot, pause or resume: ``source`` -> ``target`` after the named delay; a VM
        already in ``target`` (pause, resume) answers at once."""
        check_vm_id(vm_id)
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            joined = self._joinable(host, vm_id, kind)
            if joined is None:
                vm = host.vms.get(vm_id)
                if vm is None:
                    raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
                if vm.incoming:
                    raise BadState(f"cannot {kind} vm {vm_id} on host {host_id}: it is the "
                                   "incoming end of a live migration")
                if vm.state == target and source != target:
                    return vm  # already paused / already running: idempotent
                if vm.state != source:
                    raise BadState(f"cannot {kind} vm {vm_id} on host {host_id}: it is "
                                   f"{vm.state.name}, not {source.name}")
                delay = getattr(self._settings, delay_name)
                if delay == 0:
                    vm = vm._replace(state=target)
                    host.vms[vm_id] = vm
                    log.info("host %s vm %s op %s gen %d: %s done at once, %s", host_id,
                             vm_id, op_id or "-", vm.generation, kind, target.name)
                    return vm
                op = self._register(host, vm_id, kind, op_id, vm.generation)
        if joined is not None:
            return self._join(host, joined)

        def complete() -> VmInfo:
            vm = host.vms.get(vm_id)
            if vm is None:
                raise VmNotFound(f"vm {vm_id} left host {host_id} during the {kind}")
            vm = vm._replace(state=target)
            host.vms[vm_id] = vm
            return vm

        return self._run(host, op, delay, complete)
