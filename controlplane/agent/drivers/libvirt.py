"""The block-job backend over libvirt: live snapshot and live merge on a real domain's disk.

Why libvirt and not QMP underneath it: libvirt owns the domain's QEMU and its block graph; a
QMP command sent past it (``qemu-monitor-command``) taints the domain and leaves libvirt's
idea of the disk chain wrong after a pivot. So every job is libvirt's own API, on the disk
``vda`` of the domain named by the VM id (``node`` in :class:`BlockJobDriver` is the domain
name):

- live snapshot: ``virDomainBlockCopy`` into the external target the node created
  (``REUSE_EXT``; ``SHALLOW`` when the disk has a backing, so the target shares it;
  ``TRANSIENT_JOB`` because the domains are persistent), until READY, then
  ``virDomainBlockJobAbort`` without PIVOT: QEMU's soft cancel of a ready mirror, which
  leaves the target a point-in-time copy as of the abort while the guest stays on its disk;
- live merge: ``virDomainBlockCommit`` (``VIR_DOMAIN_BLOCK_COMMIT_ACTIVE`` when ``top`` is
  the disk's active image), and for an active commit, once READY,
  ``virDomainBlockJobAbort(PIVOT)``.

Aborts and pivots are sent with ``ABORT_ASYNC``: the outcome is the job's event, judged by the
runner like any other, not the return of a call that may time out mid-way.

What libvirt reports, measured here (libvirt 9.0, QEMU 7.2), and what this driver makes of it:

- ``virDomainGetBlockJobInfo`` gives ``type, cur, end`` and no state and no ready flag.
  libvirt 9.0 already hides QEMU's ``0 == 0`` at start (it reports ``0/1``) and reports
  ``cur = end - 1`` until QEMU says ready (13107199/13107200 for a 12.5 MiB copy), so
  ``cur == end`` is exactly "ready", which for an active commit is *not* done: the chain
  still holds the top until the pivot. :class:`JobStatus` is therefore ``running`` with
  ``ready=False`` while listed; READY comes only from the event (``blockjobs.judge`` rule 5).
  A job libvirt no longer lists is ``None`` (GONE unless an event says how it ended).
  libvirt's events carry no progress, so an event's offset/length are the last
  ``cur/end`` this driver read (what the runner records as ``bytes_copied``).
- ``VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`` (disk target, job type, status) is collected per job:
  READY -> READY, COMPLETED -> COMPLETED, FAILED -> ERROR, CANCELED -> CANCELLED, with one
  translation: libvirt reports our abort of a *ready* copy as CANCELED (measured), where
  QEMU reports BLOCK_JOB_COMPLETED and the project's rules (blockjobs.py: "cancelling a ready
  mirror ends it with COMPLETED; CANCELLED means cancelled before ready") expect COMPLETED.
  So a CANCELED that follows this driver's own abort of a copy whose READY event it had seen
  is COMPLETED; any other CANCELED stays CANCELLED (someone else's abort, or before ready).
  libvirt shows no standby state, so a ready copy that QEMU parked (a paused job) cannot be
  told apart; libvirt never pauses a copy job on its own and we send no pause.
- libvirt allows one block job per disk, and its events name the disk, not a job: a job is
  registered for its disk *before* the libvirt call (an event can come before the call
  returns) and events go to the disk's current job until its terminal event.

The events come from the process's one libvirt event loop (``agent.libvirt.backend``'s
``ensure_event_loop``): :class:`BlockJobEvents` is registered on each connection the
LibvirtBackend opens, beside its lifecycle callback; no second loop is started.

``flush``: a pause and resume of the domain. QEMU's ``stop`` flushes every image of every
disk (``vm_stop`` -> ``bdrv_flush_all``), guest or no guest, so after an active commit's pivot
the base's data is on stable storage; the guest is paused for a few milliseconds. A paused
domain is refused (resuming it would run a guest someone paused).

``write``: not offered. The guest writes its pattern from its kernel command line
(``agent/guest.py``, ``cp.write_blocks``): that is a real guest writing through its virtio
disk, which the tests use; an on-demand write channel into the guest is left for later.

Files: the node creates the mirror target (and the image files) as its own user; a
per-host session daemon runs QEMU as the host's user, which shares the image directory's
group (``testing/libvirt.py``). The target and, for a commit, the base must be writable by
QEMU, so the driver adds group read/write to them when it owns them (a real host's system
daemon runs QEMU as root here and needs nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

import libvirt

from controlplane.storage.blockjobs import BlockJobError, JobEvent, JobStatus

__all__ = ["DISK", "BlockJobEvents", "LibvirtBlockDriver", "disk_chain", "grant_group_rw"]

log = logging.getLogger(__name__)

DISK = "vda"
RELEASE_TIMEOUT = 10.0  # a job aborted by us leaves libvirt's list within this

_EVENT_KINDS = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_READY: "READY",
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "COMPLETED",
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "ERROR",
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "CANCELLED",
}
_TERMINAL = frozenset({"COMPLETED", "ERROR", "CANCELLED"})
_JOB_TYPES: dict[int, Literal["mirror", "commit"]] = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: "mirror",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: "commit",
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: "commit",
}


@dataclass
class _Job:
    job_id: str
    domain: str
    disk: str
    type: Literal["mirror", "commit"]
    raw: list[tuple[str, float]] = field(default_factory=list)  # (libvirt kind, monotonic)
    aborted_ready: bool = False  # our abort without pivot went out after READY (a copy)
    progress: tuple[int, int] = (0, 0)  # the last blockJobInfo (cur, end) this driver read
    ended: bool = False


class BlockJobEvents:
    """Block-job events of one libvirt daemon, per job. Callbacks run in libvirt's event
    loop thread and only append (no libvirt call there: it would stall the loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._current: dict[tuple[str, str], _Job] = {}  # (domain, disk) -> its job

    def register(self, conn: Any) -> int:
        """Subscribe to VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 on ``conn`` (every domain)."""
        return int(conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._callback, None))

    def _callback(self, conn: Any, dom: Any, disk: str, job_type: int, status: int,
                  opaque: object) -> None:
        try:
            kind = _EVENT_KINDS.get(status)
            if kind is None:
                return
            name = dom.name()
            with self._lock:
                job = self._current.get((name, disk))
                if job is None:
                    log.info("block job event %s on %s/%s with no job of ours", kind, name,
                             disk)
                    return
                job.raw.append((kind, time.monotonic()))
                if kind in _TERMINAL:
                    job.ended = True
                    del self._current[(name, disk)]
            log.info("job %s (%s/%s): libvirt event %s", job.job_id, name, disk, kind)
        except Exception:  # noqa: BLE001 - never raise into libvirt's loop
            log.exception("block job event")

    def begin(self, job: _Job) -> None:
        with self._lock:
            running = self._current.get((job.domain, job.disk))
            if running is not None and not running.ended:
                raise BlockJobError(f"disk {job.disk} of {job.domain} already runs job "
                                    f"{running.job_id}")
            if job.job_id in self._jobs and not self._jobs[job.job_id].ended:
                raise BlockJobError(f"job {job.job_id} is running")
            self._jobs[job.job_id] = job
            self._current[(job.domain, job.disk)] = job

    def drop(self, job: _Job) -> None:
        """The job never started (libvirt refused it)."""
        with self._lock:
            if self._current.get((job.domain, job.disk)) is job:
                del self._current[(job.domain, job.disk)]
            if self._jobs.get(job.job_id) is job:
                del self._jobs[job.job_id]

    def job(self, job_id: str) -> _Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def mark_aborted(self, job: _Job) -> None:
        """Our abort (no pivot) is going out: if the copy's READY came and it has not ended,
        the CANCELED that follows is the consistent copy's end."""
        with self._lock:
            kinds = [k for k, _ in job.raw]
            job.aborted_ready = job.type == "mirror" and "READY" in kinds and not job.ended

    def raw_kinds(self, job: _Job) -> list[str]:
        with self._lock:
            return [kind for kind, _ in job.raw]

    def events(self, job: _Job) -> list[JobEvent]:
        with self._lock:
            raw = list(job.raw)
            aborted_ready = job.aborted_ready
            cur, end = job.progress
        out = []
        for kind, _ in raw:
            if kind == "CANCELLED" and aborted_ready:
                kind = "COMPLETED"  # QEMU's own word for a soft-cancelled ready mirror
            error = "libvirt reported the block job FAILED" if kind == "ERROR" else None
            out.append(JobEvent(kind, job.job_id, cur, end, error))  # type: ignore[arg-type]
        return out


def grant_group_rw(path: str) -> None:
    """Group read/write on a file this process owns (see the module doc: a session daemon's
    QEMU runs as the host's user, a member of the image directory's group)."""
    try:
        st = os.stat(path)
        if st.st_uid == os.geteuid() and (st.st_mode & 0o060) != 0o060:
            os.chmod(path, stat.S_IMODE(st.st_mode) | 0o060)
    except OSError as exc:
        log.debug("grant %s: %s", path, exc)


def disk_chain(xml: str, target: str = DISK) -> list[str]:
    """The image paths of disk ``target`` in a live domain XML, active image first: its
    ``<source file>`` then each ``<backingStore>``'s (pure; libvirt fills the backing chain
    in the live XML)."""
    root = ET.fromstring(xml)
    for disk in root.iterfind("./devices/disk"):
        t = disk.find("target")
        if t is None or t.get("dev") != target:
            continue
        out: list[str] = []
        node: ET.Element | None = disk
        while node is not None:
            source = node.find("source")
            if source is None:
                break
            path = source.get("file") or source.get("dev") or source.get("name")
            if not path:
                break
            out.append(path)
            node = node.find("backingStore")
        return out
    raise BlockJobError(f"the domain has no disk {target}")


class LibvirtBlockDriver:
    """:class:`~controlplane.storage.blockjobs.BlockJobDriver` on libvirt domains.

    ``connection`` returns the live libvirt connection (the LibvirtBackend's, which
    reconnects); ``events`` is the BlockJobEvents registered on it. ``node`` arguments are
    domain names (the VM id); the disk is ``disk`` (vda) of each. ``pausing(name)`` is held
    around the flush's pause (the LibvirtBackend reports the domain RUNNING meanwhile: a
    pull in those milliseconds must not record the VM Paused).
    """

    def __init__(self, connection: Callable[[], Any], events: BlockJobEvents,
                 disk: str = DISK,
                 pausing: Callable[[str], AbstractContextManager[object]] | None = None
                 ) -> None:
        self._connection = connection
        self._events = events
        self.disk = disk
        self._pausing = pausing or (lambda _name: contextlib.nullcontext())

    # ---- helpers

    def _domain(self, name: str) -> Any:
        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            raise BlockJobError(f"no domain {name}: {exc}") from exc
        except Exception as exc:  # the backend's HostUnreachable and kin
            raise BlockJobError(f"libvirt not reachable: {exc}") from exc

    def _job(self, job_id: str) -> _Job:
        job = self._events.job(job_id)
        if job is None:
            raise BlockJobError(f"no job {job_id} on this agent")
        return job

    @staticmethod
    def _call(what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except libvirt.libvirtError as exc:
            raise BlockJobError(f"{what}: {exc}") from exc

    def _start(self, job: _Job, what: str, call: Callable[[], Any]) -> None:
        self._events.begin(job)
        try:
            self._call(what, call)
        except BlockJobError:
            self._events.drop(job)
            raise
        log.info("job %s: %s started on %s/%s", job.job_id, what, job.domain, job.disk)

    # ---- BlockJobDriver

    def chain(self, node: str) -> list[str]:
        dom = self._domain(node)
        return disk_chain(self._call("XMLDesc", lambda: dom.XMLDesc(0)), self.disk)

    def start_mirror(
        self, job_id: str, node: str, target_path: str, sync: Literal["top", "full"]
    ) -> None:
        dom = self._domain(node)
        grant_group_rw(target_path)
        flags = (libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
                 | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
        if sync == "top":
            flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
        source = ET.Element("disk", type="file")
        ET.SubElement(source, "source", file=os.path.abspath(target_path))
        ET.SubElement(source, "driver", type="qcow2")
        xml = ET.tostring(source, encoding="unicode")
        job = _Job(job_id, node, self.disk, "mirror")
        self._start(job, "blockCopy", lambda: dom.blockCopy(self.disk, xml, None, flags))

    def start_commit(self, job_id: str, node: str, top: str, base: str) -> bool:
        dom = self._domain(node)
        chain = self.chain(node)
        real = [os.path.realpath(p) for p in chain]
        if os.path.realpath(top) not in real or os.path.realpath(base) not in real:
            raise BlockJobError(f"top {top} and base {base} must both be in the chain {chain}")
        active = os.path.realpath(top) == real[0]
        grant_group_rw(base)  # QEMU reopens the base read-write for the commit
        flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if active else 0
        job = _Job(job_id, node, self.disk, "commit")
        self._start(job, "blockCommit",
                    lambda: dom.blockCommit(self.disk, base, top, 0, flags))
        return active

    def status(self, job_id: str) -> JobStatus | None:
        job = self._events.job(job_id)
        if job is None:
            return None
        dom = self._domain(job.domain)
        info = self._call("blockJobInfo", lambda: dom.blockJobInfo(job.disk, 0))
        if not info or _JOB_TYPES.get(int(info.get("type", 0))) != job.type:
            return None  # not listed (ended, or another kind of job runs on the disk)
        cur, end = int(info["cur"]), int(info["end"])
        job.progress = (cur, end)
        return JobStatus(job_id, job.type, "running", cur, end, False)

    def events(self, job_id: str) -> list[JobEvent]:
        job = self._events.job(job_id)
        return [] if job is None else self._events.events(job)

    def libvirt_events(self, job_id: str) -> list[str]:
        """The job's events as libvirt named them (before the CANCELED translation), for
        logs and tests."""
        job = self._events.job(job_id)
        return [] if job is None else self._events.raw_kinds(job)

    def complete(self, job_id: str) -> None:
        job = self._job(job_id)
        dom = self._domain(job.domain)
        self._call("blockJobAbort(PIVOT)", lambda: dom.blockJobAbort(
            job.disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
            | libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC))

    def cancel(self, job_id: str) -> None:
        job = self._job(job_id)
        dom = self._domain(job.domain)
        self._events.mark_aborted(job)
        self._call("blockJobAbort", lambda: dom.blockJobAbort(
            job.disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC))

    def release(self, job_id: str) -> None:
        """libvirt closes a copy's target itself when the job ends; this waits (bounded)
        until libvirt no longer lists the job, so the target is closed when it returns."""
        job = self._events.job(job_id)
        if job is None:
            return
        deadline = time.monotonic() + RELEASE_TIMEOUT
        while self.status(job_id) is not None:
            if time.monotonic() > deadline:
                raise BlockJobError(f"job {job_id} still listed after {RELEASE_TIMEOUT:g}s")
            time.sleep(0.02)

    def write(self, node: str, offset: int, length: int, pattern: int) -> None:
        raise BlockJobError("the libvirt driver has no on-demand guest write: the guest "
                            "writes what its kernel command line asks (cp.write_blocks)")

    def flush(self, node: str) -> None:
        dom = self._domain(node)
        state = self._call("state", lambda: dom.state(0))[0]
        if state != libvirt.VIR_DOMAIN_RUNNING:
            raise BlockJobError(f"domain {node} is not running (state {state}): no flush")
        with self._pausing(node):
            self._call("suspend (flush)", dom.suspend)  # QEMU stop: bdrv_flush_all
            self._call("resume (flush)", dom.resume)
