"""The real block-job backend: one ``qemu-system-x86_64 -machine none`` per disk, over QMP.

Why no guest: block jobs live in QEMU's block layer, which runs the same without a CPU or a
guest OS; guest writes are made with HMP ``qemu-io`` through the same monitor. That makes a
"running VM" start in ~50 ms, so tests use real jobs, real events and real qcow2 files.

Why ``-drive if=none`` and not a bare ``-blockdev``: a ``-blockdev`` node has no parent, so
after an active commit pivots, its node name still names the old top image (the pivot moves
*parents* of the top node to the base). ``-drive if=none,id=<disk>`` creates a BlockBackend
named ``<disk>`` (what a guest device would be attached to; ``-machine none`` has no bus for a
device) over a qcow2 node named ``<disk>-node``; its backing is opened automatically. The
BlockBackend follows the pivot like a guest would, so ``<disk>`` keeps naming the disk: QMP
commands take it as ``device``, ``query-block`` shows its current chain, and HMP ``qemu-io
<disk>`` writes where the guest would. HMP ``qemu-io`` also accepts a node name in QEMU 7.2
(checked), but that would write to the old top after a pivot.

:class:`QemuVm` runs qemu.qmp's asyncio client on a private loop in a thread and offers sync
methods (the rest of the project is threaded). Every event is kept, per job id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from controlplane.procs import spawn
from controlplane.storage.blockjobs import BlockJobError, JobEvent, JobStatus

__all__ = ["QemuDriver", "QemuVm", "QmpFailure"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_JOB_EVENTS = {
    "BLOCK_JOB_READY": "READY",
    "BLOCK_JOB_COMPLETED": "COMPLETED",
    "BLOCK_JOB_CANCELLED": "CANCELLED",
    "BLOCK_JOB_ERROR": "ERROR",
}
_PROTOCOL_DRIVERS = frozenset({"file", "host_device", "host_cdrom", "nbd", "null-co"})
_NODE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")


class QmpFailure(BlockJobError):
    """A QMP command failed, or QEMU is not there to answer it."""


class QemuVm:
    """A QEMU process with one qcow2 disk chain and no guest, driven over QMP.

    ``disk`` names the BlockBackend (use it as ``node`` with :class:`QemuDriver`); the top
    image's node is ``<disk>-node``. ``on_event`` (optional) is called in the QMP thread with
    each raw event *before* it is recorded, so a test can act at an exact event (kill QEMU at
    BLOCK_JOB_COMPLETED). Use as a context manager; :meth:`close` quits QEMU cleanly (images
    flushed), :meth:`kill` sends SIGKILL (nothing flushed).
    """

    def __init__(
        self,
        path: str,
        *,
        disk: str = "disk0",
        binary: str = "qemu-system-x86_64",
        start_timeout: float = 10.0,
        command_timeout: float = 30.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if shutil.which(binary) is None:
            raise QmpFailure(f"{binary} not found")
        self.path = os.path.abspath(path)
        self.disk = disk
        self.command_timeout = command_timeout
        self.on_event = on_event
        self._events: list[dict[str, Any]] = []
        self._events_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="qmp-")  # short: unix socket paths are <108 bytes
        self.socket = os.path.join(self._dir, "qmp.sock")
        self._log_path = os.path.join(self._dir, "qemu.log")  # stdout and stderr
        drive = ",".join([
            "if=none",
            f"id={disk}",
            f"node-name={disk}-node",
            "driver=qcow2",
            "file.filename=" + self.path.replace(",", ",,"),
        ])
        argv = [
            binary, "-machine", "none", "-nodefaults", "-display", "none", "-no-user-config",
            "-qmp", f"unix:{self.socket},server=on,wait=off", "-drive", drive,
        ]
        # Dies with this process (pdeathsig): a test or agent killed by SIGKILL leaves no QEMU
        # holding image locks. The signal follows the *thread* that started QEMU, so start
        # VMs from a thread that lives as long as they do.
        self.proc = spawn(argv, self._log_path, with_parent=True)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{disk}", daemon=True
        )
        self._thread.start()
        self._client: QMPClient | None = None
        self._reader: asyncio.Task[None] | None = None
        try:
            self._run(self._connect(start_timeout), start_timeout + 5)
        except BaseException:
            self.kill()
            self._stop_loop()
            raise

    # ---- lifecycle

    def __enter__(self) -> QemuVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def output(self) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return f.read().strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL QEMU now (no flush, no clean close); safe to call from the QMP thread."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Quit QEMU cleanly (it flushes and closes the images), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            try:
                self.execute("quit", timeout=5)
            except QmpFailure:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stop_loop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        if self._client is not None:
            try:
                self._run(self._disconnect(), 5)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("qmp disconnect: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    # ---- the async side (runs on the private loop)

    async def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise QmpFailure(f"qemu exited with {self.proc.returncode}: {self.output()}")
            if not os.path.exists(self.socket):  # not listening yet: no connect, no log noise
                if time.monotonic() > deadline:
                    raise QmpFailure(f"no QMP socket {self.socket} after {timeout:g}s")
                await asyncio.sleep(0.01)
                continue
            client = QMPClient(f"qmp-{self.disk}")
            try:
                await client.connect(self.socket)
                break
            except QMPError as exc:
                if time.monotonic() > deadline:
                    raise QmpFailure(f"no QMP on {self.socket}: {exc}") from exc
                await asyncio.sleep(0.02)
        self._client = client
        self._reader = asyncio.get_running_loop().create_task(self._read_events(client))

    async def _read_events(self, client: QMPClient) -> None:
        async for event in client.events:
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:  # noqa: BLE001 - a hook must not stop event collection
                    log.exception("on_event hook failed")
            with self._events_lock:
                self._events.append(dict(event))

    async def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._client is not None:
            await self._client.disconnect()

    async def _execute(self, cmd: str, args: dict[str, Any] | None) -> Any:
        if self._client is None:
            raise QmpFailure("not connected")
        return await self._client.execute(cmd, args)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise QmpFailure(f"no answer in {timeout:g}s") from exc

    # ---- sync API

    def execute(self, cmd: str, args: dict[str, Any] | None = None,
                timeout: float | None = None) -> Any:
        """Run one QMP command; any failure (QMP error, QEMU gone) is a QmpFailure."""
        if self._loop.is_closed():
            raise QmpFailure(f"{cmd}: QMP closed")
        try:
            return self._run(self._execute(cmd, args), timeout or self.command_timeout)
        except QmpFailure:
            raise
        except (QMPError, OSError, EOFError, RuntimeError) as exc:
            raise QmpFailure(f"{cmd}: {exc}") from exc

    def hmp(self, command_line: str) -> str:
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    def qemu_io(self, target: str, command: str) -> str:
        """Run one qemu-io command on a disk or node (HMP ``qemu-io``) and return its output.

        qemu-io's report is printed to QEMU's stdout, not into the HMP reply (QEMU 7.2: the
        reply is empty), so it is read back from QEMU's log: commands are serialized here and
        QEMU's stdout is flushed by the time the reply comes. A non-empty reply is an HMP error
        (no such device/node)."""
        with self._io_lock:
            before = os.path.getsize(self._log_path)
            reply = self.hmp(f'qemu-io {target} "{command}"').strip()
            if reply:
                raise QmpFailure(f"qemu-io {target}: {reply}")
            with open(self._log_path, "rb") as f:
                f.seek(before)
                return f.read().decode("utf-8", "replace")

    def events(self) -> list[dict[str, Any]]:
        """Every QMP event received so far, oldest first (raw dicts)."""
        with self._events_lock:
            return list(self._events)

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        """Events about one job: BLOCK_JOB_* (data.device) and JOB_STATUS_CHANGE (data.id)."""
        out = []
        for e in self.events():
            data = e.get("data", {})
            if data.get("device") == job_id or (
                e["event"] == "JOB_STATUS_CHANGE" and data.get("id") == job_id
            ):
                out.append(e)
        return out


class QemuDriver:
    """BlockJobDriver on a QemuVm: blockdev-mirror, block-commit, query-block-jobs,
    block-job-complete/-cancel, query-block for the chain, HMP qemu-io for guest I/O.

    Jobs use QEMU's defaults (auto-finalize, auto-dismiss): a finished job leaves
    query-block-jobs at once, so its outcome is known only from its event, kept by the QemuVm.
    Images are found by path among the qcow2 nodes (query-named-block-nodes), so chains are
    qcow2 only and a path must be open once.
    """

    def __init__(self, vm: QemuVm) -> None:
        self.vm = vm

    def _qmp(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return self.vm.execute(cmd, args)

    # ---- graph helpers

    def _format_node(self, path_or_node: str) -> str:
        nodes = self._qmp("query-named-block-nodes", {"flat": True})
        for n in nodes:
            if n["node-name"] == path_or_node:
                return path_or_node
        want = os.path.abspath(path_or_node)
        for n in nodes:
            if n["drv"] not in _PROTOCOL_DRIVERS and n["file"] == want:
                return str(n["node-name"])
        raise QmpFailure(f"no open image {path_or_node}")

    @staticmethod
    def _target_node(job_id: str) -> str:
        name = f"{job_id}-target"
        if not _NODE_NAME.match(name):
            raise QmpFailure(f"job id {job_id!r} does not make a node name")
        return name

    # ---- BlockJobDriver

    def chain(self, node: str) -> list[str]:
        for dev in self._qmp("query-block"):
            if dev.get("device") == node and "inserted" in dev:
                image = dev["inserted"]["image"]
                break
        else:
            for n in self._qmp("query-named-block-nodes", {"flat": False}):
                if n["node-name"] == node:
                    image = n["image"]
                    break
            else:
                raise QmpFailure(f"no disk or node {node}")
        out = []
        while image is not None:
            out.append(str(image["filename"]))
            image = image.get("backing-image")
        return out

    def start_mirror(
        self, job_id: str, node: str, target_path: str, sync: Literal["top", "full"]
    ) -> None:
        """blockdev-add the target (backing: the disk's backing node for sync=top, so that
        zero writes and partial clusters read through like on the source), then
        blockdev-mirror into it."""
        target = self._target_node(job_id)
        backing: str | None = None
        if sync == "top":
            chain = self.chain(node)
            backing = self._format_node(chain[1]) if len(chain) > 1 else None
        self._qmp("blockdev-add", {
            "driver": "qcow2",
            "node-name": target,
            "file": {"driver": "file", "filename": os.path.abspath(target_path)},
            "backing": backing,
        })
        try:
            self._qmp("blockdev-mirror", {
                "job-id": job_id, "device": node, "target": target, "sync": sync,
            })
        except QmpFailure:
            self.release(job_id)
            raise

    def start_commit(self, job_id: str, node: str, top: str, base: str) -> bool:
        chain = self.chain(node)
        top_node, base_node = self._format_node(top), self._format_node(base)
        active = os.path.abspath(top) == chain[0] or top_node == self._root_node(node)
        self._qmp("block-commit", {
            "job-id": job_id, "device": node, "top-node": top_node, "base-node": base_node,
        })
        return active

    def _root_node(self, node: str) -> str:
        for dev in self._qmp("query-block"):
            if dev.get("device") == node and "inserted" in dev:
                return str(dev["inserted"]["node-name"])
        return node

    def status(self, job_id: str) -> JobStatus | None:
        for job in self._qmp("query-block-jobs"):
            if job["device"] == job_id:
                return JobStatus(job_id, job["type"], job["status"], int(job["offset"]),
                                 int(job["len"]), bool(job["ready"]), job.get("error"))
        return None

    def events(self, job_id: str) -> list[JobEvent]:
        out = []
        for e in self.vm.job_events(job_id):
            kind = _JOB_EVENTS.get(e["event"])
            if kind is None:
                continue
            data = e.get("data", {})
            error = data.get("error")
            if kind == "ERROR":
                error = f"I/O error during {data.get('operation')} (action {data.get('action')})"
            out.append(JobEvent(kind, job_id, int(data.get("offset", 0)),  # type: ignore[arg-type]
                                int(data.get("len", 0)), error))
        return out

    def complete(self, job_id: str) -> None:
        self._qmp("block-job-complete", {"device": job_id})

    def cancel(self, job_id: str) -> None:
        self._qmp("block-job-cancel", {"device": job_id})

    def release(self, job_id: str) -> None:
        """blockdev-del the mirror target: closing it writes its qcow2 metadata to disk."""
        target = self._target_node(job_id)
        names = {n["node-name"] for n in self._qmp("query-named-block-nodes", {"flat": True})}
        if target in names:
            self._qmp("blockdev-del", {"node-name": target})

    def write(self, node: str, offset: int, length: int, pattern: int) -> None:
        out = self.vm.qemu_io(node, f"write -P {pattern} {offset} {length}")
        if f"wrote {length}/{length} bytes at offset {offset}" not in out:
            raise QmpFailure(f"write to {node} failed: {out.strip()}")

    def flush(self, node: str) -> None:
        out = self.vm.qemu_io(node, "flush")
        if "flush failed" in out:
            raise QmpFailure(f"flush of {node} failed: {out.strip()}")
