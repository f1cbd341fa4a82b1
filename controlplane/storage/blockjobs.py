"""Live snapshot and live merge with block jobs, and the one rule that says when a job is done.

Seed: Nova's live snapshot lost data because it took ``offset == len`` for "the copy is
finished". Right after a job starts QEMU reports ``offset = 0, len = 0`` (0 == 0), and even
QEMU 7.2 on this machine reported ``offset == len`` with ``status: running, ready: false``
one poll before a commit became ready. Acting then (pivot, or cancel to keep a copy) leaves a
copy that lacks data. So here:

- :func:`judge` (pure) turns what a backend reports into a :class:`Verdict`. Completion,
  cancellation and failure come only from QEMU's events (BLOCK_JOB_COMPLETED / CANCELLED /
  ERROR) or from a concluded status carrying an error; "ready" only from a ``ready`` status or
  a READY event; ``offset == len`` never counts. A job that vanished without an event is GONE,
  which is never success by itself: the runner confirms a merge by reading the chain.
  ``standby`` is not ready: QEMU parks a ready job in standby while it is paused (a drain, a
  ``job-pause``) and a backend may flap ready -> standby -> ready. QEMU itself would accept a
  cancel in standby, but a pivot is refused there, and a job that paused may have been paused
  for a reason (an I/O error with ``on-error=stop``); acting only on a *current* ``ready``
  costs at most a few polls and never acts on a stale one. So the current status wins over an
  older READY event, and a fresh ``ready`` status is what counts after a flap.
- :class:`BlockJobRunner` drives a job through a :class:`BlockJobDriver`
  (``agent.drivers.qemu`` for real QEMU, ``agent.drivers.sim`` for the bad sequences) and
  writes a :class:`JobRecord` through a
  ``persist`` callback (etcd in the management node) at every phase change, and always the
  FINISHING phase *before* the pivot or cancel command goes out, so a restarted agent or
  management node can finish or reconcile the job with :meth:`BlockJobRunner.resume`.

Live snapshot (what Nova does, without its bug): create a qcow2 target whose backing is the
disk's backing (a shallow copy of the top layer; a single-layer disk gets a standalone target
and ``sync=full``), mirror the disk into it, wait for READY, persist FINISHING, then
``block-job-cancel``. Cancelling a *ready* mirror ends it with BLOCK_JOB_COMPLETED (QEMU's
documented behaviour; not CANCELLED) and leaves the target a point-in-time copy as of the
cancel while the guest stays on its own disk. BLOCK_JOB_CANCELLED means the job was cancelled
before it was ready (by someone else, or forced), so the copy is not consistent: FAILED. The
target (with its backing) is then flattened into ``output_path`` with ``qemu-img convert``.

Live merge: ``block-commit`` of ``top`` into ``base``. An active-layer commit (top is the disk's
active image) becomes ready and must be pivoted with ``block-job-complete``; an inner commit
completes on its own. After completion the runner reads the chain (top gone, base present)
and flushes the disk before it persists COMPLETED: a moved backing pointer does not prove the
data is durable in the base, and a QEMU killed before that flush leaves the record at
FINISHING or FAILED, never COMPLETED.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from controlplane.storage import qemuimg

__all__ = [
    "BlockJobDriver",
    "BlockJobError",
    "BlockJobRunner",
    "ImageOps",
    "JobEvent",
    "JobRecord",
    "JobStatus",
    "Phase",
    "QemuImg",
    "Verdict",
    "judge",
    "naive_judge",
]

log = logging.getLogger(__name__)

JobType = Literal["mirror", "commit"]
EventKind = Literal["READY", "COMPLETED", "CANCELLED", "ERROR"]
JobKind = Literal["live-snapshot", "live-merge"]

# QEMU job states (qapi JobStatus) in which the job is certainly not ready to pivot or cancel
# into a consistent copy. 'running' is absent: it is ready when the flag or a READY event says
# so (a status read just before the transition is older than the event).
_NOT_READY_STATES = frozenset(
    {"created", "paused", "standby", "waiting", "pending", "aborting", "concluded", "null"}
)
_ENDED_STATES = frozenset({"concluded", "null"})
_TERMINAL_EVENTS = frozenset({"COMPLETED", "CANCELLED", "ERROR"})


class BlockJobError(Exception):
    """A backend refused or could not run a block-job command (QMP error, QEMU gone)."""


@dataclass(frozen=True)
class JobStatus:
    """One poll of a job, as the backend reports it (QEMU: one entry of query-block-jobs)."""

    job_id: str
    type: JobType
    status: str
    offset: int
    length: int
    ready: bool
    error: str | None = None  # set on a concluded job that failed (QEMU: query-block-jobs)


@dataclass(frozen=True)
class JobEvent:
    """One job event (QEMU: BLOCK_JOB_READY / _COMPLETED / _CANCELLED / _ERROR).

    ``error`` is set on a COMPLETED event when the job ended with an error (QEMU reports a
    failed job as BLOCK_JOB_COMPLETED with an ``error`` field) and on ERROR events.
    """

    kind: EventKind
    job_id: str
    offset: int = 0
    length: int = 0
    error: str | None = None


class Verdict(enum.Enum):
    RUNNING = "running"
    READY = "ready"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    GONE = "gone"  # vanished without a terminal event: outcome unknown, never success as such


_TERMINAL_VERDICTS = frozenset({Verdict.COMPLETED, Verdict.CANCELLED, Verdict.FAILED})


def judge(status: JobStatus | None, events: Sequence[JobEvent]) -> Verdict:
    """Say where a job is, from its latest status (None: not listed) and all its events.

    Rules, in order:

    1. The first terminal event decides (a job ends once): COMPLETED -> COMPLETED (FAILED if
       it carries an error), CANCELLED -> CANCELLED, ERROR -> FAILED. Events win over status.
    2. No status: GONE (it vanished; the caller must find out what happened).
    3. A concluded/null status with an error: FAILED; without one: GONE (it ended, but how is
       only known from its event, which we did not see).
    4. A state in which a job is not ready (standby, paused, waiting, pending, ...): RUNNING,
       even after a READY event: only a current ready counts after a ready/standby flap.
    5. ``ready`` state, the ready flag, or a READY event newer than any other event: READY.
    6. Anything else: RUNNING. ``offset == length`` is never looked at.
    """
    for event in events:
        if event.kind in _TERMINAL_EVENTS:
            if event.kind == "CANCELLED":
                return Verdict.CANCELLED
            if event.kind == "ERROR" or event.error:
                return Verdict.FAILED
            return Verdict.COMPLETED
    if status is None:
        return Verdict.GONE
    if status.status in _ENDED_STATES:
        return Verdict.FAILED if status.error else Verdict.GONE
    if status.status in _NOT_READY_STATES:
        return Verdict.RUNNING
    if status.status == "ready" or status.ready:
        return Verdict.READY
    if events and events[-1].kind == "READY":
        return Verdict.READY
    return Verdict.RUNNING


def naive_judge(status: JobStatus | None) -> bool:
    """Nova's bug, kept only so tests can show it is wrong: ``offset == len`` means done."""
    return status is not None and status.offset == status.length


class Phase(enum.Enum):
    """A job's persisted lifecycle; FINISHING is written before the pivot/cancel command."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    READY = "READY"
    FINISHING = "FINISHING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


_DONE_PHASES = frozenset({Phase.COMPLETED, Phase.FAILED})


@dataclass
class JobRecord:
    """What is persisted about one live snapshot or live merge (JSON-friendly via to_dict).

    For a snapshot, ``top``/``base`` are the disk's active image and its backing when the job
    started; ``target`` is the mirror target and ``output`` the flat copy. ``bytes_copied`` is
    the job's final offset (what the block job moved, not the output's size).
    """

    job_id: str
    kind: JobKind
    node: str
    top: str | None = None
    base: str | None = None
    target: str | None = None
    output: str | None = None
    phase: Phase = Phase.STARTING
    offset: int = 0
    length: int = 0
    bytes_copied: int = 0
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["phase"] = self.phase.value
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> JobRecord:
        values = dict(doc)
        values["phase"] = Phase(values.get("phase", Phase.STARTING.value))
        return cls(**values)


class BlockJobDriver(Protocol):
    """What a block-job backend must do. ``node`` names a disk as the backend knows it; after
    an active commit pivots, the same ``node`` must name the disk's new active image."""

    def start_mirror(
        self, job_id: str, node: str, target_path: str, sync: Literal["top", "full"]
    ) -> None:
        """Mirror ``node`` into the existing qcow2 ``target_path`` (created by the caller)."""

    def start_commit(self, job_id: str, node: str, top: str, base: str) -> bool:
        """Commit ``top`` into ``base`` (paths or node names); True for an active-layer commit."""

    def status(self, job_id: str) -> JobStatus | None:
        """The job's current status; None when the backend does not list it."""

    def events(self, job_id: str) -> list[JobEvent]:
        """Every event seen for the job so far, oldest first."""

    def complete(self, job_id: str) -> None:
        """Pivot a ready job (QEMU: block-job-complete)."""

    def cancel(self, job_id: str) -> None:
        """Cancel (QEMU: block-job-cancel, not forced; after ready: a point-in-time copy)."""

    def release(self, job_id: str) -> None:
        """Close what the backend opened for the job (a mirror target), so another process
        can read the target file. Idempotent; a no-op for a job the backend does not know."""

    def chain(self, node: str) -> list[str]:
        """The image paths the running disk uses now, active image first, base last."""

    def write(self, node: str, offset: int, length: int, pattern: int) -> None:
        """A guest write of ``length`` bytes of ``pattern`` at ``offset`` (tests, busy guests)."""

    def flush(self, node: str) -> None:
        """Flush the disk: what was written, including a commit's data, is on stable storage."""


class ImageOps(Protocol):
    """The offline image operations a live snapshot needs (qemu-img, or the sim's memory)."""

    def virtual_size(self, path: str) -> int: ...

    def create_overlay(self, path: str, backing: str | None, size: int) -> None: ...

    def convert(self, src: str, dst: str) -> None: ...


class QemuImg:
    """ImageOps with qemu-img (:mod:`controlplane.storage.qemuimg`). ``-U`` reads images a
    running QEMU holds (metadata only); ``create -u`` does not open the backing file, which
    QEMU has open; convert runs only after the job ended and the backend released the
    target, and reads the backing (read-only for QEMU) with ``-U``."""

    def __init__(self, binary: str = "qemu-img", timeout: float = 3600.0) -> None:
        self.binary = binary
        self.timeout = timeout

    def virtual_size(self, path: str) -> int:
        try:
            return qemuimg.chain_info(path, binary=self.binary)[-1].virtual_size
        except qemuimg.QemuImgError as exc:
            raise BlockJobError(str(exc)) from exc

    def create_overlay(self, path: str, backing: str | None, size: int) -> None:
        try:
            qemuimg.create(path, size=size, backing=backing, unsafe_backing=True,
                           binary=self.binary, timeout=self.timeout)
        except (qemuimg.QemuImgError, FileExistsError) as exc:
            raise BlockJobError(str(exc)) from exc

    def convert(self, src: str, dst: str) -> None:
        try:
            qemuimg.convert(src, dst, force_share=True, binary=self.binary,
                            timeout=self.timeout)
        except (qemuimg.QemuImgError, FileExistsError) as exc:
            raise BlockJobError(str(exc)) from exc


class _Timeout(Exception):
    pass


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _in_chain(path: str, chain: Sequence[str]) -> bool:
    return any(_same_path(path, p) for p in chain)


class BlockJobRunner:
    """Runs live snapshots and live merges to a persisted, confirmed end.

    Synchronous (the agent is threaded); one call drives one job. ``persist`` is called with
    the record at every phase change and must not return before the record is durable: the
    FINISHING write is the only thing a restarted process has to go on.
    """

    def __init__(
        self,
        driver: BlockJobDriver,
        persist: Callable[[JobRecord], None],
        *,
        poll_interval: float = 0.05,
        timeout: float = 600.0,
        images: ImageOps | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        self.driver = driver
        self.persist = persist
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.images: ImageOps = images if images is not None else QemuImg()
        self.progress_interval = progress_interval

    # ---- public operations

    def live_snapshot(
        self, job_id: str, node: str, target_path: str, output_path: str
    ) -> JobRecord:
        """Copy the running disk ``node`` to a flat ``output_path``; the guest stays on its disk."""
        rec = JobRecord(job_id, "live-snapshot", node, target=target_path, output=output_path)
        deadline = time.monotonic() + self.timeout
        self._set(rec, Phase.STARTING)
        try:
            chain = self.driver.chain(node)
            rec.top = chain[0]
            rec.base = chain[1] if len(chain) > 1 else None
            size = self.images.virtual_size(rec.top)
            self.images.create_overlay(target_path, rec.base, size)
            self.driver.start_mirror(job_id, node, target_path, "top" if rec.base else "full")
        except BlockJobError as exc:
            return self._fail(rec, f"could not start mirror: {exc}")
        self._set(rec, Phase.RUNNING)
        return self._drive_snapshot(rec, deadline, cancel_sent=False)

    def live_merge(self, job_id: str, node: str, top: str, base: str) -> JobRecord:
        """Commit ``top`` into ``base`` on the running disk ``node`` (pivot if top is active)."""
        rec = JobRecord(job_id, "live-merge", node, top=top, base=base)
        deadline = time.monotonic() + self.timeout
        self._set(rec, Phase.STARTING)
        try:
            active = self.driver.start_commit(job_id, node, top, base)
        except BlockJobError as exc:
            return self._fail(rec, f"could not start commit: {exc}")
        log.info("job %s: %s commit of %s into %s", job_id,
                 "active-layer" if active else "inner", top, base)
        self._set(rec, Phase.RUNNING)
        return self._drive_merge(rec, deadline, complete_sent=False)

    def resume(self, record: JobRecord) -> JobRecord:
        """Finish a job from its persisted record after a restart of this process.

        The backend's event history may be gone (a new QMP connection), so a job that is not
        listed any more is GONE: a merge is then judged by the chain; a snapshot is FAILED,
        because without the COMPLETED event of our cancel nothing proves the copy consistent.
        A FINISHING job that is still ready gets its pivot/cancel (again: the command may not
        have gone out before the restart).
        """
        rec = JobRecord.from_dict(record.to_dict())
        if rec.phase in _DONE_PHASES:
            return rec
        deadline = time.monotonic() + self.timeout
        log.info("job %s: resuming %s from %s", rec.job_id, rec.kind, rec.phase.value)
        if rec.kind == "live-merge":
            return self._drive_merge(rec, deadline, complete_sent=False)
        if rec.phase == Phase.FINISHING:
            verdict, _ = self._poll(rec)
            if verdict == Verdict.GONE:
                self._release(rec)
                return self._fail(rec, "restart before cancel completed; copy not trusted")
        return self._drive_snapshot(rec, deadline, cancel_sent=False)

    # ---- the two flows

    def _drive_snapshot(self, rec: JobRecord, deadline: float, cancel_sent: bool) -> JobRecord:
        while True:
            try:
                verdict, event = self._wait(rec, stop_at_ready=not cancel_sent, deadline=deadline)
            except _Timeout:
                return self._timed_out(rec, "READY" if not cancel_sent else "the copy to end")
            except BlockJobError as exc:
                self._release(rec)
                return self._fail(rec, f"lost the job: {exc}")
            if verdict == Verdict.READY:
                self._before_command(rec)
                try:
                    self.driver.cancel(rec.job_id)
                    cancel_sent = True
                except BlockJobError as exc:
                    log.warning("job %s: cancel refused (%s); waiting for ready", rec.job_id, exc)
                    self._sleep(deadline)
                continue
            break
        if verdict == Verdict.COMPLETED and rec.phase == Phase.FINISHING:
            if event is not None:
                rec.offset, rec.length = event.offset, event.length
            rec.bytes_copied = rec.offset
            self._release(rec)
            try:
                self.images.convert(str(rec.target), str(rec.output))
            except BlockJobError as exc:
                return self._fail(rec, f"convert to {rec.output} failed: {exc}")
            return self._finish(rec)
        self._release(rec)
        if verdict == Verdict.COMPLETED:
            return self._fail(rec, "mirror completed (pivoted) before our cancel; no copy")
        if verdict == Verdict.CANCELLED:
            when = "after" if rec.phase == Phase.FINISHING else "before"
            return self._fail(rec, f"job cancelled {when} ready; copy not consistent")
        if verdict == Verdict.GONE:
            if rec.phase == Phase.FINISHING:
                return self._fail(rec, "restart before cancel completed; copy not trusted")
            return self._fail(rec, "job vanished; copy not trusted")
        return self._fail(rec, f"job failed: {event.error if event else 'unknown error'}")

    def _drive_merge(self, rec: JobRecord, deadline: float, complete_sent: bool) -> JobRecord:
        while True:
            try:
                verdict, event = self._wait(
                    rec, stop_at_ready=not complete_sent, deadline=deadline
                )
            except _Timeout:
                return self._timed_out(rec, "READY" if not complete_sent else "the pivot")
            except BlockJobError as exc:
                return self._fail(rec, f"lost the job: {exc}; reconcile the chain")
            if verdict == Verdict.READY:  # only an active-layer commit becomes ready
                self._before_command(rec)
                try:
                    self.driver.complete(rec.job_id)
                    complete_sent = True
                except BlockJobError as exc:
                    log.warning("job %s: pivot refused (%s); waiting for ready", rec.job_id, exc)
                    self._sleep(deadline)
                continue
            break
        if event is not None:
            rec.offset, rec.length = event.offset, event.length
        if verdict == Verdict.COMPLETED:
            return self._confirm_merge(rec, "job completed")
        if verdict == Verdict.GONE:
            return self._confirm_merge(rec, "job vanished")
        if verdict == Verdict.CANCELLED:
            return self._fail(rec, "commit cancelled")
        return self._fail(rec, f"commit failed: {event.error if event else 'unknown error'}")

    def _confirm_merge(self, rec: JobRecord, how: str) -> JobRecord:
        """Success only if the chain shows it and the base is flushed."""
        assert rec.top is not None and rec.base is not None
        try:
            chain = self.driver.chain(rec.node)
        except BlockJobError as exc:
            return self._fail(rec, f"{how} but the chain cannot be read: {exc}")
        if _in_chain(rec.top, chain) or not _in_chain(rec.base, chain):
            return self._fail(rec, f"{how}; chain {chain} does not show the merge")
        try:
            self.driver.flush(rec.node)
        except BlockJobError as exc:
            return self._fail(rec, f"{how} but the flush failed: {exc}; base data not durable")
        log.info("job %s: %s; chain %s confirms the merge", rec.job_id, how, chain)
        rec.bytes_copied = rec.offset
        return self._finish(rec)

    # ---- waiting

    def _poll(self, rec: JobRecord) -> tuple[Verdict, JobEvent | None]:
        status = self.driver.status(rec.job_id)
        events = self.driver.events(rec.job_id)
        verdict = judge(status, events)
        if status is not None:
            rec.offset, rec.length = status.offset, status.length
        terminal = next((e for e in events if e.kind in _TERMINAL_EVENTS), None)
        return verdict, terminal

    def _wait(
        self, rec: JobRecord, *, stop_at_ready: bool, deadline: float
    ) -> tuple[Verdict, JobEvent | None]:
        """Poll until the job is terminal or gone (or ready, when ``stop_at_ready``)."""
        last_log = 0.0
        while True:
            verdict, event = self._poll(rec)
            now = time.monotonic()
            if now - last_log >= self.progress_interval:
                log.info("job %s: %s %d/%d bytes", rec.job_id, verdict.value,
                         rec.offset, rec.length)
                last_log = now
            if verdict in _TERMINAL_VERDICTS or verdict == Verdict.GONE:
                return verdict, event
            if verdict == Verdict.READY and stop_at_ready:
                return verdict, event
            self._sleep(deadline)

    def _sleep(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Timeout()
        time.sleep(min(self.poll_interval, left))

    # ---- record keeping

    def _set(self, rec: JobRecord, phase: Phase) -> None:
        rec.phase = phase
        self.persist(JobRecord.from_dict(rec.to_dict()))
        log.info("job %s: %s (%d/%d bytes)", rec.job_id, phase.value, rec.offset, rec.length)

    def _before_command(self, rec: JobRecord) -> None:
        """READY then FINISHING, persisted before the pivot/cancel goes out (a persist that
        raises stops the command: no pivot or cancel happens without its record)."""
        if rec.phase not in (Phase.READY, Phase.FINISHING):
            self._set(rec, Phase.READY)
        if rec.phase != Phase.FINISHING:
            self._set(rec, Phase.FINISHING)

    def _finish(self, rec: JobRecord) -> JobRecord:
        rec.error = None
        rec.finished_at = time.time()
        self._set(rec, Phase.COMPLETED)
        return rec

    def _fail(self, rec: JobRecord, error: str) -> JobRecord:
        rec.error = error
        rec.finished_at = time.time()
        self._set(rec, Phase.FAILED)
        log.warning("job %s: failed: %s", rec.job_id, error)
        return rec

    def _timed_out(self, rec: JobRecord, waiting_for: str) -> JobRecord:
        """FAILED first, then a best-effort cancel if nothing was requested yet (a job that
        is pivoting is left alone: its outcome is the chain reconcile's to find)."""
        requested = rec.phase == Phase.FINISHING
        out = self._fail(
            rec,
            f"timed out after {self.timeout:g}s waiting for {waiting_for} "
            f"({rec.offset}/{rec.length} bytes)",
        )
        if not requested:
            try:
                self.driver.cancel(rec.job_id)
            except BlockJobError as exc:
                log.warning("job %s: cancel after timeout failed: %s", rec.job_id, exc)
        self._release(rec)
        return out

    def _release(self, rec: JobRecord) -> None:
        if rec.kind != "live-snapshot":
            return
        try:
            self.driver.release(rec.job_id)
        except BlockJobError as exc:
            log.warning("job %s: release failed: %s", rec.job_id, exc)
