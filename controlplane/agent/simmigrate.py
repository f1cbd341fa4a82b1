"""Live migration in the sim: the phases QEMU goes through, over a real TCP connection.

Why a socket and not a shortcut through memory: the two ends of a migration are often two
agent processes (each host its own agent), and the crash tests kill and restart either one
mid-transfer. QEMU's own protocol is the model: the target is started "incoming" and
listens (``-incoming tcp:HOST:PORT``); the source connects, streams the guest, pauses it
for the last pages, and asks the target to switch over. The target activating its copy is
the commit point, decided under the target host's lock; an abort of the incoming copy
(`abort_incoming`, under the same lock) fences the generation, so whichever comes first
wins and the other is refused. The source deletes its copy only after the target
acknowledged; with the answer lost its copy stays paused (running nowhere) until the owner
has asked the target which copy runs.

Wire (one JSON object per line): source -> ``{"vm_id", "generation"}``; target ->
``{"ok": true}`` or ``{"ok": false, "reason"}``; source -> ``{"switchover": true}``; target
-> ``{"ack": true}`` or ``{"ack": false, "reason"}``. A connection that ends before the
switchover drops the incoming copy (QEMU's incoming side exits on a broken stream).

Settings (SimControl Configure): migrate_prepare_delay, migrate_transfer_delay,
migrate_downtime (the guest paused at the switchover), migrate_answer_delay (the source
answers its caller this long after the switchover: the window where the VM moved but the
owner has not heard), migrate_fail (transfers break halfway).
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from controlplane.agent.backend import (
    Aborted,
    BadState,
    HostUnreachable,
    InvalidArgument,
    Migrated,
    StaleGeneration,
    VmInfo,
    VmNotFound,
    VmState,
    check_vm_id,
)

log = logging.getLogger(__name__)

IO_TIMEOUT = 10.0  # seconds a migration socket waits for the other end's next line


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _recv(reader: Any) -> dict[str, Any]:
    """The next line as JSON; ConnectionError when the other end went away."""
    line = reader.readline()
    if not line:
        raise ConnectionError("the other end closed the migration connection")
    return json.loads(line)


class _Incoming:
    """One incoming copy's listener and, once the source connected, its connection."""

    def __init__(self, host_id: str, vm_id: str, generation: int) -> None:
        self.host_id, self.vm_id, self.generation = host_id, vm_id, generation
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.conn: socket.socket | None = None
        self.closed = threading.Event()

    @property
    def uri(self) -> str:
        return f"tcp:127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self) -> None:
        self.closed.set()
        for sock in (self.listener, self.conn):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


class SimMigration:
    """Mixed into SimBackend: prepare_incoming, migrate_out, abort_incoming."""

    # provided by SimBackend
    _hosts: dict[str, Any]
    _settings: Any
    _closed: bool
    _host: Callable[..., Any]
    _check_reachable: Callable[..., None]
    _register: Callable[..., Any]
    _abort: Callable[..., None]
    save: Callable[[], None]

    def _init_migration(self) -> None:
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._incoming_lock = threading.Lock()

    def _close_migration(self) -> None:
        with self._incoming_lock:
            listeners = list(self._incoming.values())
            self._incoming.clear()
        for incoming in listeners:
            incoming.close()

    def _drop_listener(self, host_id: str, vm_id: str) -> None:
        with self._incoming_lock:
            incoming = self._incoming.pop((host_id, vm_id), None)
        if incoming is not None:
            incoming.close()

    # -- target side ---------------------------------------------------------------------

    def prepare_incoming(self, host_id: str, vm_id: str, *, generation: int, op_id: str = "",
                         cpus: int = 0, memory_mb: int = 0, disk: str = "",
                         source_host_id: str = "") -> tuple[VmInfo, str]:
        """Make the incoming copy (PAUSED, incoming) with ``generation`` and listen for the
        source; answers the copy and the URI to send the VM to. Idempotent for the same
        generation; StaleGeneration below the host's high-water mark; BadState for a
        generation aborted here before or another copy of the VM."""
        check_vm_id(vm_id)
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            seen = host.hwm.get(vm_id)
            if seen is not None and generation < seen:
                raise StaleGeneration(f"stale incoming vm {vm_id} on host {host_id}: generation "
                                      f"{generation} < {seen}, already seen by this host")
            if host.fenced_in.get(vm_id, -1) >= generation:
                raise BadState(f"incoming vm {vm_id} generation {generation} on host {host_id} "
                               "was aborted: refused")
            vm = host.vms.get(vm_id)
            if vm is not None:
                if vm.incoming and vm.generation == generation:
                    with self._incoming_lock:
                        incoming = self._incoming.get((host_id, vm_id))
                    if incoming is not None:
                        return vm, incoming.uri
                raise BadState(f"vm {vm_id} is already on host {host_id} (generation "
                               f"{vm.generation}, {vm.state.name}"
                               f"{', incoming' if vm.incoming else ''})")
            if vm_id in host.ops:
                raise BadState(f"vm {vm_id} on host {host_id} has a "
                               f"{host.ops[vm_id].info.kind} in progress")
            host.hwm[vm_id] = generation
            op = self._register(host, vm_id, "migrate-in", op_id, generation)
        delay = self._settings.migrate_prepare_delay
        log.info("host %s vm %s op %s gen %d: incoming from %s (prepare %.2fs)", host_id, vm_id,
                 op.info.op_id, generation, source_host_id or "?", delay)
        if delay > 0:
            op.abort.wait(delay)
        with host.lock:
            if host.ops.get(vm_id) is op:
                del host.ops[vm_id]
            if op.abort.is_set():
                raise Aborted(f"incoming vm {vm_id} on host {host_id} aborted: {op.reason}")
            if host.fenced_in.get(vm_id, -1) >= generation:
                raise BadState(f"incoming vm {vm_id} generation {generation} was aborted")
            vm = VmInfo(vm_id, VmState.PAUSED, generation, True)
            host.vms[vm_id] = vm
            incoming = _Incoming(host_id, vm_id, generation)
            with self._incoming_lock:
                old = self._incoming.pop((host_id, vm_id), None)
                self._incoming[(host_id, vm_id)] = incoming
        if old is not None:
            old.close()
        self.save()
        threading.Thread(target=self._serve_incoming, args=(host, incoming), daemon=True,
                         name=f"incoming-{vm_id}").start()
        return vm, incoming.uri

    def _serve_incoming(self, host: Any, incoming: _Incoming) -> None:
        vm_id, generation = incoming.vm_id, incoming.generation
        while not incoming.closed.is_set():
            try:
                conn, _ = incoming.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            incoming.conn = conn
            try:
                self._receive(host, incoming, conn)
            except (OSError, ValueError) as exc:
                log.info("host %s vm %s gen %d: incoming migration broke: %s", host.host_id,
                         vm_id, generation, exc)
            finally:
                self._end_incoming(host, incoming)
            return

    def _receive(self, host: Any, incoming: _Incoming, conn: socket.socket) -> None:
        vm_id, generation = incoming.vm_id, incoming.generation
        conn.settimeout(None)  # the transfer takes as long as it takes; close() ends it
        reader = conn.makefile("rb")
        hello = _recv(reader)
        with host.lock:
            vm = host.vms.get(vm_id)
            ready = (vm is not None and vm.incoming and vm.generation == generation
                     and hello.get("vm_id") == vm_id and hello.get("generation") == generation)
            if ready:
                op = self._register(host, vm_id, "migrate-in", hello.get("op_id", ""),
                                    generation)
        if not ready:
            _send(conn, {"ok": False, "reason": f"no incoming vm {hello.get('vm_id')} "
                         f"generation {hello.get('generation')} on host {host.host_id}"})
            return
        try:
            _send(conn, {"ok": True})
            message = _recv(reader)  # the transfer: the source's next line is the switchover
            if not message.get("switchover"):
                raise ValueError(f"unexpected message {message}")
            with host.lock:
                vm = host.vms.get(vm_id)
                fenced = host.fenced_in.get(vm_id, -1) >= generation
                activate = (vm is not None and vm.incoming and vm.generation == generation
                            and not fenced and not op.abort.is_set())
                if activate:
                    host.vms[vm_id] = VmInfo(vm_id, VmState.RUNNING, generation)
            if activate:
                self.save()  # the commit point: saved before the source hears of it
                log.info("host %s vm %s gen %d: switched over, runs here", host.host_id,
                         vm_id, generation)
                _send(conn, {"ack": True})
            else:
                _send(conn, {"ack": False, "reason": f"incoming vm {vm_id} generation "
                             f"{generation} on host {host.host_id} was aborted"})
        finally:
            with host.lock:
                if host.ops.get(vm_id) is op:
                    del host.ops[vm_id]

    def _end_incoming(self, host: Any, incoming: _Incoming) -> None:
        """The connection ended: an incoming copy that did not switch over is dropped."""
        with host.lock:
            vm = host.vms.get(incoming.vm_id)
            dropped = (vm is not None and vm.incoming
                       and vm.generation == incoming.generation)
            if dropped:
                del host.vms[incoming.vm_id]
        with self._incoming_lock:
            if self._incoming.get((incoming.host_id, incoming.vm_id)) is incoming:
                del self._incoming[(incoming.host_id, incoming.vm_id)]
        incoming.close()
        if dropped:
            self.save()
            log.info("host %s vm %s gen %d: incoming copy dropped (no switchover)",
                     host.host_id, incoming.vm_id, incoming.generation)

    def abort_incoming(self, host_id: str, vm_id: str, *, generation: int,
                       op_id: str = "") -> bool:
        """Destroy an incoming copy up to ``generation`` that has not switched over and fence
        that generation here (a later prepare or switchover is refused). True when a copy was
        destroyed; BadState when the copy of that generation already runs here."""
        check_vm_id(vm_id)
        host = self._host(host_id)
        with host.lock:
            self._check_reachable(host)
            vm = host.vms.get(vm_id)
            if vm is not None and not vm.incoming and vm.generation == generation:
                raise BadState(f"vm {vm_id} generation {generation} already switched over to "
                               f"host {host_id}: it runs here")
            if host.fenced_in.get(vm_id, -1) < generation:
                host.fenced_in[vm_id] = generation
            destroyed = vm is not None and vm.incoming and vm.generation <= generation
            if destroyed:
                del host.vms[vm_id]
            op = host.ops.get(vm_id)
            if op is not None and op.info.kind == "migrate-in":
                self._abort(host, op, f"incoming aborted (op {op_id or '-'})")
        self._drop_listener(host_id, vm_id)
        self.save()
        log.info("host %s vm %s: incoming up to generation %d aborted%s", host_id, vm_id,
                 generation, " (copy destroyed)" if destroyed else "")
        return destroyed

    # -- source side ---------------------------------------------------------------------

    def migrate_out(self, host_id: str, vm_id: str, *, generation: int,
                    target_generation: int, target_host_id: str, target_uri: str,
                    op_id: str = "", timeout: float = 0.0) -> Migrated:
        """Send the running VM to ``target_uri`` and switch over; see the module docstring
        for what each failure leaves behind."""
        check_vm_id(vm_id)
        if not target_uri.startswith("tcp:"):
            raise InvalidArgument(f"the sim migrates to tcp:HOST:PORT, not {target_uri!r}")
        address, _, port = target_uri[4:].rpartition(":")
        host = self._host(host_id)
        settings = self._settings
        with host.lock:
            self._check_reachable(host)
            vm = host.vms.get(vm_id)
            if vm is None:
                raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
            if vm.generation != generation or vm.state != VmState.RUNNING or vm.incoming:
                raise BadState(f"vm {vm_id} on host {host_id} is {vm.state.name} generation "
                               f"{vm.generation}: cannot migrate generation {generation}")
            if vm_id in host.ops:
                raise BadState(f"vm {vm_id} on host {host_id} has a "
                               f"{host.ops[vm_id].info.kind} in progress")
            op = self._register(host, vm_id, "migrate-out", op_id, generation)
        began = time.monotonic()
        deadline = began + (timeout or 3600.0)
        try:
            sock = socket.create_connection((address, int(port)), timeout=IO_TIMEOUT)
        except OSError as exc:
            self._end_out(host, op)
            raise BadState(f"cannot reach the target of vm {vm_id} at {target_uri}: "
                           f"{exc}") from exc
        try:
            return self._send_vm(host, op, sock, target_host_id, target_generation, settings,
                                 began, deadline)
        finally:
            sock.close()
            self._end_out(host, op)

    def _end_out(self, host: Any, op: Any) -> None:
        with host.lock:
            if host.ops.get(op.info.vm_id) is op:
                del host.ops[op.info.vm_id]

    @staticmethod
    def _transfer(op: Any, sock: socket.socket, vm_id: str, seconds: float) -> None:
        """The transfer: `seconds` of streaming, ended early by an abort here or by the
        target closing the stream (aborted there), as QEMU's source sees a broken stream
        before it pauses the guest: either way the VM keeps running here."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if op.abort.is_set():
                raise Aborted(f"migration of vm {vm_id} aborted: {op.reason}")
            readable, _, _ = select.select([sock], [], [], min(0.05, left))
            if readable and not sock.recv(1, socket.MSG_PEEK):
                raise Aborted(f"the target closed the migration stream of vm {vm_id} during "
                              "the transfer: it keeps running here")
        if op.abort.is_set():
            raise Aborted(f"migration of vm {vm_id} aborted: {op.reason}")

    def _send_vm(self, host: Any, op: Any, sock: socket.socket, target_host_id: str,
                 target_generation: int, settings: Any, began: float,
                 deadline: float) -> Migrated:
        vm_id, generation = op.info.vm_id, op.info.generation
        reader = sock.makefile("rb")
        try:
            _send(sock, {"vm_id": vm_id, "generation": target_generation,
                         "op_id": op.info.op_id})
            hello = _recv(reader)
        except (OSError, ValueError) as exc:
            raise BadState(f"target of vm {vm_id} did not answer: {exc}") from exc
        if not hello.get("ok"):
            raise BadState(f"target refused vm {vm_id}: {hello.get('reason')}")
        transfer = settings.migrate_transfer_delay
        if settings.migrate_fail:
            op.abort.wait(min(transfer / 2, max(0.0, deadline - time.monotonic())))
            raise Aborted(f"migration of vm {vm_id} to {target_host_id} failed halfway "
                          "(injected): it keeps running here")
        self._transfer(op, sock, vm_id, min(transfer, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline and transfer > 0:
            raise Aborted(f"migration of vm {vm_id} to {target_host_id} timed out: it keeps "
                          "running here")
        # the switchover: pause here, let the target take over
        with host.lock:
            vm = host.vms.get(vm_id)
            if vm is None or vm.generation != generation or op.abort.is_set():
                raise Aborted(f"vm {vm_id} left host {host.host_id} during its migration")
            host.vms[vm_id] = vm._replace(state=VmState.PAUSED)
        self.save()
        paused = time.monotonic()
        if settings.migrate_downtime > 0:
            time.sleep(settings.migrate_downtime)
        try:
            _send(sock, {"switchover": True})
            answer = _recv(reader)
        except (OSError, ValueError) as exc:
            raise HostUnreachable(
                f"switchover answer for vm {vm_id} from {target_host_id} lost ({exc}): the "
                "copy here stays paused until the target says which copy runs") from exc
        if not answer.get("ack"):
            with host.lock:
                vm = host.vms.get(vm_id)
                if vm is not None and vm.generation == generation:
                    host.vms[vm_id] = vm._replace(state=VmState.RUNNING)
            self.save()
            raise BadState(f"target refused the switchover of vm {vm_id}: "
                           f"{answer.get('reason')}; it keeps running here")
        downtime = time.monotonic() - paused
        with host.lock:
            vm = host.vms.get(vm_id)
            if vm is not None and vm.generation == generation:
                del host.vms[vm_id]
        self.save()
        total = time.monotonic() - began
        log.info("host %s vm %s gen %d: migrated to %s gen %d in %.3fs (downtime %.3fs)",
                 host.host_id, vm_id, generation, target_host_id, target_generation, total,
                 downtime)
        if settings.migrate_answer_delay > 0:
            time.sleep(settings.migrate_answer_delay)
        return Migrated(VmInfo(vm_id, VmState.RUNNING, target_generation), total, downtime)
