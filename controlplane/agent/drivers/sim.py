"""A fake block-job backend that replays, on demand, the sequences that break naive runners.

Why it exists: real QEMU shows the dangerous cases only by timing (len=0 at start for a poll
or two, a job dismissed while nobody listened, a drain that parks a ready job in standby), so
tests cannot ask for them. Here each job follows a script chosen per job id, and the job
advances exactly one step per :meth:`SimDriver.status` call, so every run is the same:

- ``normal``: ``steps`` polls of progress; the poll where offset reaches len still says
  ``running`` (real QEMU 7.2 did this too), the next one is ready (READY event). An inner
  commit completes there instead (COMPLETED event, chain re-linked).
- ``len0-at-start``: the first ``len0_polls`` polls report offset=0, len=0, then normal.
- ``vanish``: at the point where the job would become ready (or complete) it disappears with
  no event; if ``pivoted`` the commit's chain change (or the mirror's pivot) happened first.
- ``flap``: at that point the READY event is sent but the job is already in ``standby`` for
  ``flap_polls`` polls, then ``ready`` again. A pivot in standby is refused; a cancel in
  standby is taken as a cancel before ready (this fake is stricter than QEMU here on purpose,
  so a runner that trusts a stale READY event is caught).
- ``cancel-before-ready``: at poll ``cancel_at`` (before ready) someone else cancels the job:
  CANCELLED event, the target holds only part of the data.

Effects follow QEMU: a cancel of a ready mirror ends with COMPLETED and leaves the target a
copy of the source at that moment; a cancel before ready ends with CANCELLED and a partial
copy; a pivot (complete) of an active commit merges top into base and makes base active.

Disks are in memory: each image path maps to {sector offset: pattern} plus a backing path.
The driver also implements :class:`~controlplane.storage.blockjobs.ImageOps` on those images,
so a runner given ``images=sim`` creates, and flattens, targets in memory too.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from controlplane.storage.blockjobs import BlockJobError, JobEvent, JobStatus

__all__ = ["SECTOR", "SimDriver", "SimScript"]

SECTOR = 512
CHUNK = 1 << 20  # bytes of progress per poll

ScriptName = Literal["normal", "len0-at-start", "vanish", "flap", "cancel-before-ready"]


@dataclass(frozen=True)
class SimScript:
    """How one job misbehaves; see the module docstring for each name."""

    name: ScriptName = "normal"
    steps: int = 4
    len0_polls: int = 3
    pivoted: bool = False
    flap_polls: int = 2
    cancel_at: int = 2


@dataclass
class _Job:
    job_id: str
    type: Literal["mirror", "commit"]
    node: str
    script: SimScript
    source: str = ""  # mirror: the active image at start; commit: top
    target: str = ""  # mirror: target image; commit: base
    sync: str = "top"
    active: bool = False
    polls: int = 0
    progress: int = 0
    offset: int = 0
    length: int = 0
    state: str = "created"
    flap_left: int = 0
    requested: str | None = None  # 'complete' | 'cancel'
    ever_ready: bool = False
    done: bool = field(default=False)


class SimDriver:
    """In-memory BlockJobDriver and ImageOps; deterministic, thread-safe.

    ``disks`` maps a disk (node) name to its chain, active image first; by default one disk
    ``disk0`` on ``/sim/top.qcow2`` <- ``/sim/base.qcow2``. ``log`` (shared with a test's
    persist callback, if it likes) receives ``(command, job_id or node)`` tuples for start,
    complete, cancel, release and flush, in call order.
    """

    def __init__(
        self,
        scripts: Mapping[str, SimScript | str] | None = None,
        *,
        disks: Mapping[str, Sequence[str]] | None = None,
        size: int = 64 << 20,
        log: list[tuple[str, str]] | None = None,
    ) -> None:
        self.scripts = {
            k: v if isinstance(v, SimScript) else SimScript(name=v)  # type: ignore[arg-type]
            for k, v in (scripts or {}).items()
        }
        self.size = size
        self.log: list[tuple[str, str]] = log if log is not None else []
        self.layers: dict[str, dict[int, int]] = {}
        self.backing: dict[str, str | None] = {}
        self.active: dict[str, str] = {}
        self.fail_flush = False
        self.dead = False
        self._jobs: dict[str, _Job] = {}
        self._events: dict[str, list[JobEvent]] = {}
        self._lock = threading.RLock()
        for node, chain in (disks or {"disk0": ["/sim/top.qcow2", "/sim/base.qcow2"]}).items():
            for i, path in enumerate(chain):
                self.layers.setdefault(path, {})
                self.backing[path] = chain[i + 1] if i + 1 < len(chain) else None
            self.active[node] = chain[0]

    # ---- faults

    def kill(self) -> None:
        """The backend process died: every later call raises BlockJobError."""
        self.dead = True

    def _alive(self) -> None:
        if self.dead:
            raise BlockJobError("sim backend is dead")

    def forget_events(self) -> None:
        """What a new connection sees after a restart: jobs as they are, no event history."""
        with self._lock:
            self._events = {k: [] for k in self._events}

    # ---- images

    def _chain_of(self, path: str | None) -> list[str]:
        out: list[str] = []
        while path is not None:
            out.append(path)
            path = self.backing.get(path)
        return out

    def read(self, node_or_path: str, offset: int) -> int | None:
        """The pattern seen at ``offset`` through a disk or an image's chain (None: never
        written, reads as zero)."""
        with self._lock:
            start = self.active.get(node_or_path, node_or_path)
            sector = offset - offset % SECTOR
            for path in self._chain_of(start):
                if sector in self.layers.get(path, {}):
                    return self.layers[path][sector]
            return None

    def virtual_size(self, path: str) -> int:
        with self._lock:
            if path not in self.layers:
                raise BlockJobError(f"no image {path}")
            return self.size

    def create_overlay(self, path: str, backing: str | None, size: int) -> None:
        with self._lock:
            self.layers[path] = {}
            self.backing[path] = backing

    def convert(self, src: str, dst: str) -> None:
        with self._lock:
            if src not in self.layers:
                raise BlockJobError(f"no image {src}")
            flat: dict[int, int] = {}
            for path in reversed(self._chain_of(src)):
                flat.update(self.layers[path])
            self.layers[dst] = flat
            self.backing[dst] = None

    # ---- BlockJobDriver

    def chain(self, node: str) -> list[str]:
        with self._lock:
            self._alive()
            return self._chain_of(self.active[node])

    def write(self, node: str, offset: int, length: int, pattern: int) -> None:
        if offset % SECTOR or length % SECTOR:
            raise BlockJobError("sim writes must be sector aligned")
        with self._lock:
            self._alive()
            layer = self.layers[self.active[node]]
            for sector in range(offset, offset + length, SECTOR):
                layer[sector] = pattern

    def flush(self, node: str) -> None:
        with self._lock:
            self._alive()
            self.log.append(("flush", node))
            if self.fail_flush:
                raise BlockJobError("sim flush failed")

    def _script(self, job_id: str) -> SimScript:
        return self.scripts.get(job_id, SimScript())

    def start_mirror(
        self, job_id: str, node: str, target_path: str, sync: Literal["top", "full"]
    ) -> None:
        with self._lock:
            self._alive()
            if job_id in self._jobs:
                raise BlockJobError(f"job {job_id} exists")
            if target_path not in self.layers:
                raise BlockJobError(f"no target image {target_path}")
            self.log.append(("start_mirror", job_id))
            self._jobs[job_id] = _Job(
                job_id, "mirror", node, self._script(job_id),
                source=self.active[node], target=target_path, sync=sync,
            )
            self._events[job_id] = []

    def start_commit(self, job_id: str, node: str, top: str, base: str) -> bool:
        with self._lock:
            self._alive()
            chain = self._chain_of(self.active[node])
            if top not in chain or base not in chain or chain.index(base) <= chain.index(top):
                raise BlockJobError(f"{base} is not below {top} in {chain}")
            if job_id in self._jobs:
                raise BlockJobError(f"job {job_id} exists")
            self.log.append(("start_commit", job_id))
            active = top == chain[0]
            self._jobs[job_id] = _Job(
                job_id, "commit", node, self._script(job_id), source=top, target=base,
                active=active,
            )
            self._events[job_id] = []
            return active

    def events(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            self._alive()
            return list(self._events.get(job_id, []))

    def complete(self, job_id: str) -> None:
        with self._lock:
            self._alive()
            self.log.append(("complete", job_id))
            job = self._jobs.get(job_id)
            if job is None or job.requested is not None:
                raise BlockJobError(f"job {job_id} cannot be completed")
            if job.state != "ready":
                raise BlockJobError(f"job {job_id} is {job.state}, not ready")
            job.requested = "complete"

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._alive()
            self.log.append(("cancel", job_id))
            job = self._jobs.get(job_id)
            if job is None:
                raise BlockJobError(f"no job {job_id}")
            if job.requested is None:
                job.requested = "cancel"
                job.ever_ready = job.state == "ready"

    def release(self, job_id: str) -> None:
        with self._lock:
            self._alive()
            self.log.append(("release", job_id))

    def status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            self._alive()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self._step(job)
            if job.done:
                del self._jobs[job_id]
                return None
            return JobStatus(
                job_id, job.type, job.state, job.offset, job.length, job.state == "ready"
            )

    # ---- the state machine

    def _step(self, job: _Job) -> None:
        job.polls += 1
        s = job.script
        if job.requested == "complete":
            self._apply(job)
            return self._end(job, "COMPLETED")
        if job.requested == "cancel":
            if job.ever_ready:  # cancel of a ready mirror: consistent copy, COMPLETED
                self._copy(job, fraction=1.0)
                return self._end(job, "COMPLETED")
            self._copy(job, fraction=job.offset / job.length if job.length else 0.0)
            return self._end(job, "CANCELLED")
        if job.state in ("ready", "standby"):
            if job.state == "standby":
                job.flap_left -= 1
                if job.flap_left <= 0:
                    job.state = "ready"
            return None
        if s.name == "len0-at-start" and job.polls <= s.len0_polls:
            job.state, job.offset, job.length = "running", 0, 0
            return None
        if s.name == "cancel-before-ready" and job.polls >= s.cancel_at:
            self._copy(job, fraction=job.offset / job.length if job.length else 0.0)
            return self._end(job, "CANCELLED")
        job.state = "running"
        job.length = s.steps * CHUNK
        if job.offset < job.length:
            job.progress += 1
            job.offset = min(job.length, job.progress * CHUNK)
            return None  # the poll that reaches len still says running
        # caught up: what comes next depends on the script
        if s.name == "vanish":
            if s.pivoted:
                self._apply(job)
            job.done = True
            return None
        if job.type == "commit" and not job.active:
            self._apply(job)
            return self._end(job, "COMPLETED")
        self._emit(job, "READY")
        if s.name == "flap":
            job.state, job.flap_left = "standby", s.flap_polls
        else:
            job.state = "ready"
        return None

    def _emit(self, job: _Job, kind: str) -> None:
        self._events[job.job_id].append(
            JobEvent(kind, job.job_id, job.offset, job.length)  # type: ignore[arg-type]
        )

    def _end(self, job: _Job, kind: str) -> None:
        self._emit(job, kind)
        job.done = True

    def _source_layers(self, job: _Job) -> list[str]:
        """The mirror's source layers the copy reads, lowest first."""
        chain = self._chain_of(job.source)
        if job.sync == "top":
            chain = chain[:1]
        return list(reversed(chain))

    def _copy(self, job: _Job, fraction: float) -> None:
        """Mirror: put (a prefix, by offset, of) the source's data into the target."""
        if job.type != "mirror":
            return
        data: dict[int, int] = {}
        for path in self._source_layers(job):
            data.update(self.layers[path])
        keep = sorted(data)[: int(len(data) * fraction)]
        self.layers[job.target].update({k: data[k] for k in keep})

    def _apply(self, job: _Job) -> None:
        """What a completed (pivoted) job does to the chain."""
        if job.type == "mirror":
            self._copy(job, fraction=1.0)
            self.backing[job.target] = self.backing[job.source] if job.sync == "top" else None
            self.active[job.node] = job.target
            return
        chain = self._chain_of(self.active[job.node])
        top_i, base_i = chain.index(job.source), chain.index(job.target)
        merged = self.layers[job.target]
        for path in reversed(chain[top_i:base_i]):  # lowest first: upper layers win
            merged.update(self.layers[path])
        if top_i == 0:
            self.active[job.node] = job.target
        else:
            self.backing[chain[top_i - 1]] = job.target
