"""LibvirtBackend: one host's VMs as libvirt domains, over one libvirt connection.

One backend serves one host (``--host-id``) through one libvirt URI (``qemu:///system`` on
a real host; on a test machine each simulated host has its own session daemon, so each has
its own domain namespace). The domain name is the VM id: libvirt itself then guarantees at
most one copy of a VM per host, whatever the agent believes.

What survives an agent restart lives in libvirt, in each domain's ``<metadata>``
(``agent/domainxml.py`` builds the domain XML, reads the metadata and the device
addresses): the generation the VM was started with and the operation in progress (id,
kind, start time), written before the libvirt call that carries it out. At every
(re)connection the backend rediscovers every domain of its daemon and resolves the ops a
dead agent left (``states.resolve_op``: a start that had defined but not booted the domain
boots it, so a start once begun completes; a stop or destroy is carried out; the rest is
whatever state the domain is in). The generation high-water mark per VM is the generation
in the metadata of its domain (still defined after a stop) and, once a destroy undefined
it, in this process's memory.

Lifecycle: start = define from the VM (cpus, memory, a per-VM qcow2 disk when ``disk_mb``
is set, the guest kernel/initramfs when given, one virtio NIC on user networking) then boot
(with ``boot_timeout``, a start answers once the guest printed its ready marker on the
serial console; the op is in progress meanwhile); graceful stop = ACPI shutdown, then
destroy after ``stop_timeout``; force stop = destroy; reboot = a hardware reset (guest-
independent); pause/resume = suspend/resume; destroy = destroy + undefine (+ the per-VM
disk). A stopped VM stays defined (shut off) and is not listed, as a stopped VM is absent
from the sim's host. libvirt states map onto VmState in ``states.vm_state`` (a QEMU killed
-9 is shut off with reason "crashed": CRASHED until stopped or destroyed).

Fence: destroy every domain of this daemon and mark the host powered off (every call but
fence then answers HostUnreachable) until ``power_on`` or a restart of the agent (a host
coming back from a power-off is a new agent process). A fence needs libvirtd: without it
the QEMUs cannot be killed, and the fence fails (so no HA restart happens without proof).

Events: libvirt's default event loop runs in one thread of the process (``virEvent*``);
each connection registers a LIFECYCLE callback that publishes to ``events`` (WatchHostEvents
streams them: the owner pulls at once). The loop also runs the connection keepalive, so a
dead libvirtd is noticed in seconds: the connection is reopened in the background with
backoff and, once back, a host-level event tells the owner to pull.

Threads: gRPC handlers call the backend from many threads. libvirt connections are
thread-safe; each VM has a lock held around the libvirt calls that change it (not around
waits), so a destroy never races the define/boot of a start. ListVms, the hot path, costs
two libvirt calls whatever the number of domains (all states in one getAllDomainStats;
metadata cached by domain UUID, read only for domains not seen before).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import libvirt

from controlplane.agent.backend import (
    Aborted,
    BackendError,
    BadState,
    CallerGone,
    Device,
    HostInfo,
    HostUnreachable,
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
from controlplane.agent.domainxml import (
    NAMESPACE,
    PREFIX,
    DomainSpec,
    VmMetadata,
    agent_devices,
    domain_xml,
    metadata_xml,
    parse_metadata,
)
from controlplane.agent.drivers.libvirt import BlockJobEvents, LibvirtBlockDriver, grant_group_rw
from controlplane.agent.events import EventHub
from controlplane.agent.libvirt import states
from controlplane.agent.libvirt.migrate import INCOMING_REASONS, LibvirtMigration, is_incoming
from controlplane.errors import Failed
from controlplane.paths import inside

__all__ = ["HypervisorFailed", "LibvirtBackend"]

log = logging.getLogger(__name__)

RUNNING, PAUSED, CRASHED, STOPPED = VmState.RUNNING, VmState.PAUSED, VmState.CRASHED, \
    VmState.STOPPED
POLL = 0.05  # seconds between state checks while a graceful stop waits
BOOT_POLL = 0.05  # seconds between reads of the console while a start waits for the guest
KEEPALIVE = (2, 3)  # seconds between keepalives, missed ones before the link is dead


class HypervisorFailed(BackendError, Failed):
    """libvirt refused or failed a call for a reason other than the connection (INTERNAL)."""


_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """libvirt's default event loop, once per process, in a daemon thread: it delivers
    domain events and runs connection keepalives. Must run before the first connection."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; ours are raised and logged
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # noqa: BLE001 - the loop must never end
                    log.exception("libvirt event loop")
                    time.sleep(0.1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class _Op:
    __slots__ = ("info", "abort", "done", "result", "error")

    def __init__(self, info: OpInfo) -> None:
        self.info = info
        self.abort = threading.Event()
        self.done = threading.Event()
        self.result: VmInfo | None = None
        self.error: BaseException | None = None


class LibvirtBackend(LibvirtMigration):
    """The Backend protocol over libvirt, for one host (live migration: libvirt/migrate.py)."""

    name = "libvirt"

    def __init__(self, host_id: str, uri: str, *, accel: str = "tcg",
                 stop_timeout: float = 30.0, boot_timeout: float = 0.0,
                 state_dir: str = "", disk_mb: int = 0, image_dir: str = "",
                 kernel: str = "", initrd: str = "", cmdline: str = "",
                 default_cpus: int = 1, default_memory_mb: int = 256,
                 clock: Callable[[], float] = time.time,
                 open_connection: Callable[[str], Any] | None = None) -> None:
        if accel not in ("tcg", "kvm"):
            raise InvalidArgument(f"accel must be tcg or kvm here (auto is resolved by the "
                                  f"caller), got {accel!r}")
        self.host_id = host_id
        self.uri = uri
        self.accel = accel
        self.stop_timeout = stop_timeout
        if boot_timeout and not state_dir:
            raise InvalidArgument("waiting for the guest (boot_timeout) needs a state_dir "
                                  "for its console file")
        self.boot_timeout = boot_timeout
        self.state_dir = state_dir
        self.disk_mb = disk_mb
        self.image_dir = image_dir
        self.kernel, self.initrd, self.cmdline = kernel, initrd, cmdline
        self.default_cpus, self.default_memory_mb = default_cpus, default_memory_mb
        self.events = EventHub(clock)
        self._clock = clock
        self._open = open_connection or libvirt.open
        self._lock = threading.Lock()  # ops, hwm, vm locks, meta cache
        self._ops: dict[str, _Op] = {}
        self._hwm: dict[str, int] = {}
        self._vm_locks: dict[str, threading.Lock] = {}
        self._meta: dict[str, tuple[str, VmMetadata | None]] = {}  # uuid -> (name, meta)
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._callback_id: int | None = None
        self._block_callback_id: int | None = None
        # Block-job events (VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2) for the block driver, on the
        # same connections and the same event loop as the lifecycle events.
        self.block_events = BlockJobEvents()
        self._flushing: set[str] = set()  # domains the block driver pauses to flush
        self._reconnecting = False
        self._fenced = False
        self._closed = False
        if state_dir:
            os.makedirs(state_dir, exist_ok=True)
        ensure_event_loop()
        try:
            self._connection()
        except HostUnreachable as exc:
            log.warning("host %s: libvirt not reachable at start (%s); retrying in the "
                        "background", host_id, exc)
            self._reconnect_later()

    # -- connection ------------------------------------------------------------------

    def _connection(self) -> Any:
        """The live connection, opened (and the host rediscovered) when there is none."""
        conn = self._conn
        if conn is not None:
            return conn
        with self._conn_lock:
            if self._conn is not None:
                return self._conn
            try:
                conn = self._open(self.uri)
            except libvirt.libvirtError as exc:
                raise HostUnreachable(f"host {self.host_id}: cannot connect to libvirt at "
                                      f"{self.uri}: {exc}") from exc
            try:
                conn.setKeepAlive(*KEEPALIVE)
                conn.registerCloseCallback(self._closed_cb, None)
                self._callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None)
                self._block_callback_id = self.block_events.register(conn)
                with self._lock:
                    self._meta.clear()
                self._rediscover(conn)
            except libvirt.libvirtError as exc:
                _quiet_close(conn)
                raise HostUnreachable(f"host {self.host_id}: libvirt at {self.uri} failed "
                                      f"while connecting: {exc}") from exc
            self._conn = conn
        log.info("host %s: connected to %s", self.host_id, self.uri)
        self.events.publish(self.host_id, reason="hypervisor connected")
        return conn

    def _closed_cb(self, conn: Any, reason: int, opaque: object) -> None:
        """libvirt's event loop thread: the daemon went away (or keepalive timed out)."""
        if self._conn is conn:
            self._conn = None
            log.warning("host %s: libvirt connection closed (reason %d)", self.host_id,
                        reason)
            self.events.publish(self.host_id, reason="hypervisor connection lost")
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        with self._lock:
            if self._reconnecting or self._closed:
                return
            self._reconnecting = True

        def run() -> None:
            delay = 0.1
            try:
                while not self._closed and self._conn is None:
                    try:
                        self._connection()
                        return
                    except HostUnreachable:
                        time.sleep(delay)
                        delay = min(delay * 2, 5.0)
            finally:
                with self._lock:
                    self._reconnecting = False

        threading.Thread(target=run, name=f"libvirt-reconnect {self.host_id}",
                         daemon=True).start()

    def _broken(self, conn: Any, exc: libvirt.libvirtError) -> BackendError:
        """The error a failed libvirt call means: the connection is gone (HostUnreachable,
        and reconnect), the domain is gone (VmNotFound), or the call failed."""
        alive = True
        try:
            alive = bool(conn.isAlive())
        except libvirt.libvirtError:
            alive = False
        if not alive:
            if self._conn is conn:
                self._conn = None
                self._reconnect_later()
            return HostUnreachable(f"host {self.host_id}: libvirt connection lost: {exc}")
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return VmNotFound(f"host {self.host_id}: {exc}")
        return HypervisorFailed(f"host {self.host_id}: libvirt: {exc}")

    def _lifecycle_cb(self, conn: Any, dom: Any, event: int, detail: int,
                      opaque: object) -> None:
        """libvirt's event loop thread: publish (no libvirt RPC here, it would stall the
        loop); the owner's pull reads the real state."""
        try:
            name = dom.name()
            if event in (states.EV_DEFINED, states.EV_UNDEFINED):
                with self._lock:
                    self._meta.pop(dom.UUIDString(), None)
            state, reason = states.event_state(event, detail)
            log.info("host %s vm %s: libvirt event %s", self.host_id, name, reason)
            self.events.publish(self.host_id, name, state, reason)
        except Exception:  # noqa: BLE001 - never raise into libvirt's loop
            log.exception("host %s: lifecycle event", self.host_id)

    def _rediscover(self, conn: Any) -> None:
        """Every domain of the daemon: learn the generations, resolve the ops a dead agent
        left in the metadata (ops this process runs are its own business)."""
        for dom in conn.listAllDomains(0):
            meta = self._read_meta(dom)
            if meta is None:
                continue
            name = dom.name()
            if self.fenced_incoming(dom, name, meta.generation):
                continue
            with self._lock:
                if self._hwm.get(name, -1) < meta.generation:
                    self._hwm[name] = meta.generation
                running_here = name in self._ops
            if meta.op_kind and not running_here:
                self._resolve(dom, name, meta)

    def _resolve(self, dom: Any, name: str, meta: VmMetadata) -> None:
        active = bool(dom.isActive())
        action = states.resolve_op(meta.op_kind, active)
        log.warning("host %s vm %s gen %d: op %s (%s) left unfinished by a previous agent; "
                    "domain %s: %s", self.host_id, name, meta.generation, meta.op_id,
                    meta.op_kind, "active" if active else "inactive", action.value)
        try:
            if meta.op_kind == "start" and self.boot_timeout and action in (
                    states.Resolution.CREATE, states.Resolution.CLEAR):
                self._resume_start(dom, name, meta, boot=action is states.Resolution.CREATE)
            elif action is states.Resolution.CREATE:
                dom.create()
                self._set_meta(dom, meta.cleared(stopped=False))
            elif action is states.Resolution.DESTROY:
                dom.destroy()
                self._set_meta(dom, meta.cleared(stopped=True))
            elif action is states.Resolution.UNDEFINE:
                if active:
                    dom.destroy()
                dom.undefine()
                self._remove_disk(name)
            else:
                self._set_meta(dom, meta.cleared())
        except libvirt.libvirtError as exc:
            log.error("host %s vm %s: resolving op %s failed: %s", self.host_id, name,
                      meta.op_id, exc)

    def _resume_start(self, dom: Any, name: str, meta: VmMetadata, boot: bool) -> None:
        """A start the dead agent left while its guest booted (or before it booted it):
        the op is this process's now, in progress (listed) until the guest is ready, as it
        would have been had the agent lived; then the metadata is cleared."""
        op = _Op(OpInfo(meta.op_id, name, "start", meta.generation, meta.op_started))
        with self._lock:
            if name in self._ops:
                return
            self._ops[name] = op
        try:
            if boot:
                _unlink(self.serial_log(name))
                dom.create()
        except BaseException:
            self._finish(op)
            raise

        def run() -> None:
            try:
                self._wait_guest_ready(op, dom, name)
                with self._vm_lock(name):
                    if not op.abort.is_set():
                        self._set_meta(dom, meta.cleared(stopped=False))
                op.result = VmInfo(name, RUNNING, meta.generation)
            except Exception as exc:  # noqa: BLE001 - logged; the pull reads the state
                op.error = exc
                log.error("host %s vm %s: resumed start %s failed: %s", self.host_id, name,
                          meta.op_id, exc)
            finally:
                self._finish(op)

        threading.Thread(target=run, name=f"resume-start {name}", daemon=True).start()

    # -- metadata --------------------------------------------------------------------

    def _read_meta(self, dom: Any) -> VmMetadata | None:
        key = dom.UUIDString()
        with self._lock:
            cached = self._meta.get(key)
        if cached is not None:
            return cached[1]
        try:
            meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                               NAMESPACE, 0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                raise
            meta = None  # not a domain of ours
        except ValueError as exc:  # ours but unreadable: never guess a generation
            log.error("host %s domain %s: unreadable metadata, left alone: %s",
                      self.host_id, dom.name(), exc)
            meta = None
        with self._lock:
            self._meta[key] = (dom.name(), meta)
        return meta

    def _set_meta(self, dom: Any, meta: VmMetadata) -> None:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(meta), PREFIX,
                        NAMESPACE, flags)
        with self._lock:
            self._meta[dom.UUIDString()] = (dom.name(), meta)

    # -- helpers ---------------------------------------------------------------------

    def _check(self, host_id: str) -> Any:
        if host_id != self.host_id:
            raise NotServed(f"this agent does not serve host {host_id!r}")
        if self._fenced:
            raise HostUnreachable(f"host {host_id} is powered off (fenced)")
        return self._connection()

    def _vm_lock(self, vm_id: str) -> threading.Lock:
        with self._lock:
            return self._vm_locks.setdefault(vm_id, threading.Lock())

    @staticmethod
    def _lookup(conn: Any, vm_id: str) -> Any | None:
        try:
            return conn.lookupByName(vm_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _state_of(self, dom: Any, meta: VmMetadata | None) -> VmState | None:
        state, reason = dom.state()
        return states.vm_state(state, reason, bool(meta and meta.stopped))

    def _begin(self, vm_id: str, kind: str, op_id: str, generation: int,
               plug: bool = False) -> tuple[_Op, bool]:
        """Register an op on the VM; (op, True) when this call repeats the op in progress
        (join it). A plug (destroy, force stop) aborts the op in progress instead."""
        with self._lock:
            if self._closed:
                raise Aborted("the agent is shutting down")
            current = self._ops.get(vm_id)
            if current is not None:
                same = current.info.kind == kind and (
                    kind != "start" or current.info.generation == generation)
                if same and not plug:
                    return current, True
                if not plug:
                    info = current.info
                    raise BadState(f"vm {vm_id} on host {self.host_id} has a {info.kind} in "
                                   f"progress (op {info.op_id}, generation {info.generation})")
                current.abort.set()
            op = _Op(OpInfo(op_id or f"agent-{uuid.uuid4().hex[:12]}", vm_id, kind,
                            generation, self._clock()))
            self._ops[vm_id] = op
            return op, False

    def _finish(self, op: _Op) -> None:
        with self._lock:
            if self._ops.get(op.info.vm_id) is op:
                del self._ops[op.info.vm_id]
        op.done.set()

    @staticmethod
    def _join(op: _Op) -> VmInfo:
        op.done.wait()
        if op.error is not None:
            raise type(op.error)(str(op.error))
        assert op.result is not None
        return op.result

    def _run(self, conn: Any, vm_id: str, kind: str, op_id: str, generation: int,
             body: Callable[[_Op], VmInfo], plug: bool = False) -> VmInfo:
        op, joined = self._begin(vm_id, kind, op_id, generation, plug)
        if joined:
            log.info("host %s vm %s: repeated %s joins op %s", self.host_id, vm_id, kind,
                     op.info.op_id)
            return self._join(op)
        try:
            op.result = body(op)
            return op.result
        except libvirt.libvirtError as exc:
            op.error = self._broken(conn, exc)
            raise op.error from exc
        except BaseException as exc:
            op.error = exc
            raise
        finally:
            self._finish(op)
            if op.error is None:
                log.info("host %s vm %s op %s gen %d: %s done, %s", self.host_id, vm_id,
                         op.info.op_id, op.result.generation if op.result else generation,
                         kind, op.result.state.name if op.result else "?")
            else:
                log.info("host %s vm %s op %s: %s failed: %s", self.host_id, vm_id,
                         op.info.op_id, kind, op.error)

    def _disk(self, vm_id: str, disk: str = "") -> str:
        """vda: the VM's image leaf the node named (inside ``image_dir``), else a blank
        per-VM disk of ``disk_mb`` in the state dir, else none."""
        if disk:
            if not self.image_dir or not inside(self.image_dir, disk):
                raise InvalidArgument(
                    f"disk {disk!r} of vm {vm_id} is not inside this agent's image "
                    f"directory ({self.image_dir or 'none: --image-dir is not set'})")
            if not os.path.isfile(disk):
                raise InvalidArgument(f"disk {disk!r} of vm {vm_id} does not exist")
            grant_group_rw(disk)  # the leaf is written by the host user's QEMU
            return disk
        if not self.disk_mb or not self.state_dir:
            return ""
        path = os.path.join(self.state_dir, f"{vm_id}.qcow2")
        if not os.path.exists(path):
            from controlplane.storage import qemuimg  # noqa: PLC0415 - only with disks
            qemuimg.create(path, size=self.disk_mb << 20)
            os.chmod(path, 0o666)  # a session daemon runs as the host's own user
        return path

    def _remove_disk(self, vm_id: str) -> None:
        if self.state_dir:
            for suffix in (".qcow2", ".serial.log"):
                try:
                    os.unlink(os.path.join(self.state_dir, vm_id + suffix))
                except FileNotFoundError:
                    pass

    def serial_log(self, vm_id: str) -> str:
        """Where the guest's serial console goes (tests wait there for a ready marker)."""
        return os.path.join(self.state_dir, f"{vm_id}.serial.log") if self.state_dir else ""

    # -- Backend ---------------------------------------------------------------------

    def host_ids(self) -> list[str]:
        return [self.host_id]

    def ping(self, host_id: str) -> HostInfo:
        conn = self._check(host_id)
        try:
            info = conn.getInfo()
            count = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        except libvirt.libvirtError as exc:
            raise self._broken(conn, exc) from exc
        return HostInfo(cpus=int(info[2]), memory_mb=int(info[1]), vm_count=count)

    def list_vms(self, host_id: str) -> VmListing:
        conn = self._check(host_id)
        vms = []
        try:
            for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0):
                meta = self._read_meta(dom)
                if meta is None:
                    continue  # not ours (another tool's domain on a shared daemon)
                state = states.vm_state(stats.get("state.state", 0),
                                        stats.get("state.reason", 0), meta.stopped)
                if state == PAUSED and dom.name() in self._flushing:
                    state = RUNNING  # paused for milliseconds by a block flush, not by a user
                if state is not None:
                    incoming = (state == PAUSED and stats.get("state.reason", 0)
                                in INCOMING_REASONS and is_incoming(dom))
                    if incoming and self.fenced_incoming(dom, dom.name(), meta.generation):
                        continue
                    vms.append(VmInfo(dom.name(), state, meta.generation, incoming))
        except libvirt.libvirtError as exc:
            raise self._broken(conn, exc) from exc
        with self._lock:
            ops = tuple(op.info for op in self._ops.values())
        return VmListing(tuple(vms), ops, True)

    def start_vm(self, host_id: str, vm_id: str, *, generation: int, op_id: str = "",
                 cpus: int = 0, memory_mb: int = 0, disk: str = "",
                 caller_active: Callable[[], bool] = lambda: True) -> VmInfo:
        check_vm_id(vm_id)
        if generation < 0:
            raise InvalidArgument(f"negative generation {generation}")
        conn = self._check(host_id)
        self._refuse_stale(vm_id, generation)
        with self._lock:
            joinable = (op := self._ops.get(vm_id)) is not None and op.info.kind == "start" \
                and op.info.generation == generation
        if not joinable and not caller_active():
            raise CallerGone(f"start of vm {vm_id} on host {host_id} not begun: the caller "
                             "has gone")

        def body(op: _Op) -> VmInfo:
            with self._vm_lock(vm_id):
                dom = self._lookup(conn, vm_id)
                meta = self._read_meta(dom) if dom is not None else None
                if dom is not None and meta is not None:
                    self._refuse_stale(vm_id, generation, meta.generation)
                    state = self._state_of(dom, meta)
                    if dom.isActive():
                        if meta.generation != generation:
                            raise BadState(
                                f"vm {vm_id} is already on host {host_id} with generation "
                                f"{meta.generation} ({state.name if state else '?'}); asked "
                                f"to start generation {generation}")
                        if state == CRASHED:
                            raise BadState(f"vm {vm_id} is CRASHED on host {host_id}: stop "
                                           "or destroy it before starting it again")
                        return VmInfo(vm_id, state or RUNNING, generation)  # idempotent
                with self._lock:
                    self._hwm[vm_id] = max(generation, self._hwm.get(vm_id, -1))
                spec = DomainSpec(
                    vm_id=vm_id, cpus=cpus or self.default_cpus,
                    memory_mb=memory_mb or self.default_memory_mb, disk=self._disk(vm_id, disk),
                    generation=generation, accel=self.accel, kernel=self.kernel,
                    initrd=self.initrd, cmdline=self.cmdline,
                    console_log=self.serial_log(vm_id), op_id=op.info.op_id,
                    op_kind="start", op_started=op.info.started_at,
                    uuid=dom.UUIDString() if dom is not None else "")
                new = spec.metadata
                dom = conn.defineXML(domain_xml(spec))
                with self._lock:
                    self._meta[dom.UUIDString()] = (vm_id, new)
                if op.abort.is_set():
                    raise Aborted(f"start of vm {vm_id} on host {host_id} aborted")
                if self.boot_timeout:
                    _unlink(self.serial_log(vm_id))  # the marker must be this boot's
                dom.create()
                if not self.boot_timeout:
                    self._set_meta(dom, new.cleared(stopped=False))
                    return VmInfo(vm_id, RUNNING, generation)
            self._wait_guest_ready(op, dom, vm_id)  # not under the VM's lock: a plug aborts
            with self._vm_lock(vm_id):
                if op.abort.is_set():
                    raise Aborted(f"start of vm {vm_id} on host {host_id} aborted")
                self._set_meta(dom, new.cleared(stopped=False))
            return VmInfo(vm_id, RUNNING, generation)

        return self._run(conn, vm_id, "start", op_id, generation, body)

    def _wait_guest_ready(self, op: _Op, dom: Any, vm_id: str) -> None:
        """Until the guest prints its ready marker on the serial console (``boot_timeout``
        set): a start then answers once the guest has booted, and the op stays in progress
        (listed, and in the metadata) meanwhile, as a slow start on any hypervisor. A
        guest that is slower than the timeout is left running (logged); one that died
        while booting fails the start."""
        from controlplane.agent.guest import READY_MARKER  # noqa: PLC0415 - a file read

        path = self.serial_log(vm_id)
        deadline = time.monotonic() + self.boot_timeout
        while not op.abort.is_set():
            try:
                with open(path, "rb") as console:
                    if READY_MARKER.encode() in console.read():
                        return
            except FileNotFoundError:
                pass
            if not dom.isActive():
                raise HypervisorFailed(f"host {self.host_id} vm {vm_id}: the guest died "
                                       "while booting")
            if time.monotonic() >= deadline:
                log.warning("host %s vm %s: no ready marker after %.0fs; taken as running",
                            self.host_id, vm_id, self.boot_timeout)
                return
            op.abort.wait(BOOT_POLL)

    def _refuse_stale(self, vm_id: str, generation: int, seen: int | None = None) -> None:
        with self._lock:
            mark = max(self._hwm.get(vm_id, -1), -1 if seen is None else seen)
        if mark >= 0 and generation < mark:
            raise StaleGeneration(
                f"stale start of vm {vm_id} on host {self.host_id}: generation {generation} "
                f"is older than generation {mark}, already seen by this host")

    def stop_vm(self, host_id: str, vm_id: str, *, op_id: str = "",
                force: bool = False) -> VmInfo:
        check_vm_id(vm_id)
        conn = self._check(host_id)

        def body(op: _Op) -> VmInfo:
            with self._vm_lock(vm_id):
                dom = self._lookup(conn, vm_id)
                meta = self._read_meta(dom) if dom is not None else None
                if dom is None or meta is None:
                    return VmInfo(vm_id, STOPPED, 0)
                if not dom.isActive():
                    if not meta.stopped:
                        self._set_meta(dom, meta.cleared(stopped=True))  # a crash, seen
                    return VmInfo(vm_id, STOPPED, meta.generation)
                if force:
                    dom.destroy()
                    self._set_meta(dom, meta.cleared(stopped=True))
                    return VmInfo(vm_id, STOPPED, meta.generation)
                self._set_meta(dom, meta.with_op(op.info.op_id, "stop", op.info.started_at))
                dom.shutdown()  # ACPI power button: the guest shuts itself down
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and not op.abort.is_set():
                if not dom.isActive():
                    break
                op.abort.wait(POLL)
            with self._vm_lock(vm_id):
                if op.abort.is_set():
                    raise Aborted(f"stop of vm {vm_id} on host {host_id} aborted")
                if dom.isActive():
                    log.info("host %s vm %s: no shutdown after %.1fs: destroyed",
                             host_id, vm_id, self.stop_timeout)
                    dom.destroy()
                self._set_meta(dom, meta.cleared(stopped=True))
            return VmInfo(vm_id, STOPPED, meta.generation)

        return self._run(conn, vm_id, "stop", op_id, 0, body, plug=force)

    def destroy_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        check_vm_id(vm_id)
        conn = self._check(host_id)

        def body(op: _Op) -> VmInfo:
            with self._vm_lock(vm_id):
                dom = self._lookup(conn, vm_id)
                meta = self._read_meta(dom) if dom is not None else None
                if dom is None or meta is None:
                    return VmInfo(vm_id, STOPPED, 0)
                self._set_meta(dom, meta.with_op(op.info.op_id, "destroy",
                                                 op.info.started_at))
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
                self._remove_disk(vm_id)
            return VmInfo(vm_id, STOPPED, meta.generation)

        return self._run(conn, vm_id, "destroy", op_id, 0, body, plug=True)

    def _change(self, host_id: str, vm_id: str, kind: str, op_id: str, source: VmState,
                target: VmState, call: Callable[[Any], object]) -> VmInfo:
        check_vm_id(vm_id)
        conn = self._check(host_id)

        def body(op: _Op) -> VmInfo:
            with self._vm_lock(vm_id):
                dom = self._lookup(conn, vm_id)
                meta = self._read_meta(dom) if dom is not None else None
                state = self._state_of(dom, meta) if dom is not None and meta else None
                if state is None or meta is None:
                    raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
                if state == target and source != target:
                    return VmInfo(vm_id, state, meta.generation)  # idempotent
                if state != source:
                    raise BadState(f"cannot {kind} vm {vm_id} on host {host_id}: it is "
                                   f"{state.name}, not {source.name}")
                call(dom)
                return VmInfo(vm_id, target, meta.generation)

        return self._run(conn, vm_id, kind, op_id, 0, body)

    def reboot_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "reboot", op_id, RUNNING, RUNNING,
                            lambda dom: dom.reset(0))

    def pause_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "pause", op_id, RUNNING, PAUSED,
                            lambda dom: dom.suspend())

    def resume_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo:
        return self._change(host_id, vm_id, "resume", op_id, PAUSED, RUNNING,
                            lambda dom: dom.resume())

    def device_info(self, host_id: str, vm_id: str) -> list[Device]:
        check_vm_id(vm_id)
        conn = self._check(host_id)
        try:
            dom = self._lookup(conn, vm_id)
            if dom is None or not dom.isActive() or self._read_meta(dom) is None:
                raise VmNotFound(f"vm {vm_id} is not running on host {host_id}")
            return agent_devices(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise self._broken(conn, exc) from exc


    def fence(self, host_id: str) -> list[str]:
        if host_id != self.host_id:
            raise NotServed(f"this agent does not serve host {host_id!r}")
        conn = self._connection()  # HostUnreachable: no proof, no fence
        self._fenced = True
        with self._lock:
            for op in self._ops.values():
                op.abort.set()
        killed = []
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                name = dom.name()
                with self._vm_lock(name):
                    try:
                        dom.destroy()
                    except libvirt.libvirtError as exc:
                        if dom.isActive():
                            raise
                        log.info("host %s vm %s: already gone at fence (%s)", host_id, name,
                                 exc)
                if self._read_meta(dom) is not None:
                    killed.append(name)
        except libvirt.libvirtError as exc:
            self._fenced = False  # not powered off: the fence failed
            raise self._broken(conn, exc) from exc
        log.warning("host %s fenced: every domain destroyed (%s)", host_id,
                    ", ".join(sorted(killed)) or "none")
        self.events.publish(host_id, reason="fenced")
        return sorted(killed)

    def block_driver(self) -> LibvirtBlockDriver:
        """The block-job driver on this host's domains (their vda), over this backend's
        connection and events: the agent's AgentBlockJobsService uses it for its VMs."""
        return LibvirtBlockDriver(self._connection, self.block_events,
                                  pausing=self._flush_pause)

    @contextlib.contextmanager
    def _flush_pause(self, vm_id: str) -> Iterator[None]:
        with self._lock:
            self._flushing.add(vm_id)
        try:
            yield
        finally:
            with self._lock:
                self._flushing.discard(vm_id)

    def power_on(self) -> None:
        """The fenced host is back (its domains stay shut off, as after a power cycle)."""
        self._fenced = False
        self.events.publish(self.host_id, reason="powered on")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for op in self._ops.values():
                op.abort.set()
        self.events.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                for callback in (self._callback_id, self._block_callback_id):
                    if callback is not None:
                        conn.domainEventDeregisterAny(callback)
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            _quiet_close(conn)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _quiet_close(conn: Any) -> None:
    try:
        conn.close()
    except libvirt.libvirtError:
        pass
