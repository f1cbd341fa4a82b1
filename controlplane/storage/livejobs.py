"""Live snapshot and live merge of a running VM's image, driven by the image's owner node.

Why it is split this way: the agent runs QMP-level primitives on the VM's QEMU
(``AgentBlockJobs`` in blockjob.proto) and reports what QEMU says; the node that owns the
image runs :class:`~controlplane.storage.blockjobs.BlockJobRunner`, which decides when a job
is complete (READY or a COMPLETED/CANCELLED event, never ``offset == len``), and persists
every phase in etcd (``jobs/<id>``) before a pivot or cancel goes out. So the decision and
its record live where etcd and the image lock are, and a restarted node can finish a job
from its record (:meth:`LiveJobs.resume`).

A live merge keeps the image record in step with the disk in vdsm's order: the leaf is
marked ILLEGAL in the same txn that records FINISHING (before the pivot command), the chain
is updated in the same txn that records COMPLETED, and a failed pivot makes the leaf LEGAL
again (the VM still writes it). An interrupted merge is what ReconcileVolumeChain repairs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator

import grpc

from controlplane import errors, wiretime
from controlplane.owner import Conflict, Fenced
from controlplane.paths import confined
from controlplane.rpc import check_name
from controlplane.storage import blockjobs as bj
from controlplane.storage.images import ImageManager, Lock, volume
from controlplane.store import StoreError
from controlplane.store import txn as t
from controlplane.v1 import blockjob_pb2, blockjob_pb2_grpc, host_pb2, vm_pb2, volume_pb2

__all__ = ["LiveJobs", "RemoteDriver", "job_view"]

log = logging.getLogger(__name__)


class RemoteDriver:
    """:class:`~controlplane.storage.blockjobs.BlockJobDriver` over the agent's
    AgentBlockJobs service, for one VM's disk (the ``node`` arguments are ignored: the disk
    is the VM's). Every gRPC failure becomes a BlockJobError."""

    def __init__(self, stub: blockjob_pb2_grpc.AgentBlockJobsServiceStub, vm_id: str,
                 timeout: float = 30.0) -> None:
        self.stub = stub
        self.vm_id = vm_id
        self.timeout = timeout
        # The runner polls status() then events(): one GetJob answers both, so status()
        # keeps its answer for the events() call that follows it.
        self._answered: blockjob_pb2.GetJobResponse | None = None

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code().name if callable(getattr(exc, "code", None)) else "UNKNOWN"
            details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
            raise bj.BlockJobError(f"agent {method}: {code}: {details}") from exc

    def _job(self, method: str, job_id: str) -> blockjob_pb2.GetJobResponse:
        """GetJob, CompleteJob, CancelJob or ReleaseJob: one request shape, one answer shape."""
        request = getattr(blockjob_pb2, f"{method}Request")(vm_id=self.vm_id, job_id=job_id)
        return self._call(method, request)  # type: ignore[return-value]

    def open(self, path: str) -> list[str]:
        answer = self._call("OpenDisk", blockjob_pb2.OpenDiskRequest(vm_id=self.vm_id,
                                                                     path=path))
        return list(answer.paths)  # type: ignore[attr-defined]

    def start_mirror(self, job_id: str, node: str, target_path: str, sync: str) -> None:
        self._call("StartMirror", blockjob_pb2.StartMirrorRequest(
            vm_id=self.vm_id, job_id=job_id, target_path=target_path, sync=sync))

    def start_commit(self, job_id: str, node: str, top: str, base: str) -> bool:
        answer = self._call("StartCommit", blockjob_pb2.StartCommitRequest(
            vm_id=self.vm_id, job_id=job_id, top=top, base=base))
        return bool(answer.active)  # type: ignore[attr-defined]

    def status(self, job_id: str) -> bj.JobStatus | None:
        job = self._answered = self._job("GetJob", job_id)
        if not job.listed:
            return None
        s = job.status
        return bj.JobStatus(job_id, s.type, s.status, s.offset, s.length, s.ready)  # type: ignore[arg-type]

    def events(self, job_id: str) -> list[bj.JobEvent]:
        job, self._answered = self._answered, None
        if job is None or job.job_id != job_id:
            job = self._job("GetJob", job_id)
        return [bj.JobEvent(e.kind, job_id, e.offset, e.length, e.error or None)  # type: ignore[arg-type]
                for e in job.events]

    def complete(self, job_id: str) -> None:
        self._job("CompleteJob", job_id)

    def cancel(self, job_id: str) -> None:
        self._job("CancelJob", job_id)

    def release(self, job_id: str) -> None:
        self._job("ReleaseJob", job_id)

    def chain(self, node: str) -> list[str]:
        answer = self._call("GetDiskChain", blockjob_pb2.GetDiskChainRequest(vm_id=self.vm_id))
        return list(answer.paths)  # type: ignore[attr-defined]

    def write(self, node: str, offset: int, length: int, pattern: int) -> None:
        self._call("GuestWrite", blockjob_pb2.GuestWriteRequest(
            vm_id=self.vm_id, offset=offset, length=length, pattern=pattern))

    def flush(self, node: str) -> None:
        self._call("Flush", blockjob_pb2.FlushRequest(vm_id=self.vm_id))


def job_view(job: volume_pb2.BlockJob, rec: bj.JobRecord) -> volume_pb2.BlockJob:
    """The stored BlockJob with the runner's record copied in."""
    out = volume_pb2.BlockJob()
    out.CopyFrom(job)
    out.phase = rec.phase.value
    out.top, out.base = rec.top or "", rec.base or ""
    out.target, out.output = rec.target or "", rec.output or ""
    out.offset, out.length, out.bytes_copied = rec.offset, rec.length, rec.bytes_copied
    out.error = rec.error or ""
    out.started_at.CopyFrom(wiretime.stamp(rec.started_at))
    if rec.finished_at:
        out.finished_at.CopyFrom(wiretime.stamp(rec.finished_at))
    else:
        out.ClearField("finished_at")
    return out


def record_of(job: volume_pb2.BlockJob) -> bj.JobRecord:
    return bj.JobRecord(
        job_id=job.job_id, kind=job.kind, node=job.vm_id,  # type: ignore[arg-type]
        top=job.top or None, base=job.base or None, target=job.target or None,
        output=job.output or None, phase=bj.Phase(job.phase), offset=job.offset,
        length=job.length, bytes_copied=job.bytes_copied, error=job.error or None,
        started_at=wiretime.seconds(job.started_at),
        finished_at=wiretime.seconds(job.finished_at) or None)


class LiveJobs:
    """Live snapshot / live merge for the VolumeService (on the image's owner).

    ``agent_stub``: address -> AgentBlockJobs stub (the node's channel pool).
    ``runner_options``: passed to BlockJobRunner (tests shorten the poll interval)."""

    def __init__(self, manager: ImageManager,
                 agent_stub: Callable[[str], blockjob_pb2_grpc.AgentBlockJobsServiceStub],
                 **runner_options: object) -> None:
        self.manager = manager
        self.ctx = manager.ctx
        self.agent_stub = agent_stub
        self.runner_options = runner_options
        self._running: set[str] = set()
        self._running_lock = threading.Lock()

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str) -> volume_pb2.BlockJob:
        try:
            kv = self.ctx.store.get(self.ctx.keys.job(job_id))
        except StoreError as exc:
            raise errors.Unreachable(f"cannot read etcd: {exc}") from exc
        if kv is None:
            raise errors.NotFound(f"no block job {job_id!r}")
        return volume_pb2.BlockJob.FromString(kv.value)

    def _running_vm(self, image: volume_pb2.Image) -> tuple[vm_pb2.Vm, host_pb2.Host]:
        if not image.vm_id:
            raise errors.Refused(f"image {image.image_id} has no VM: use the offline operations")
        try:
            vm_kv = self.ctx.store.get(self.ctx.keys.vm(image.vm_id))
        except StoreError as exc:
            raise errors.Unreachable(f"cannot read etcd: {exc}") from exc
        vm = vm_pb2.Vm.FromString(vm_kv.value) if vm_kv is not None else None
        if vm is None or vm.state != "Running":
            raise errors.Refused(f"VM {image.vm_id} of image {image.image_id} is "
                             f"{vm.state if vm else 'not defined'}: live operations need it "
                             "Running")
        host = self.ctx.host_record(vm.host_id)
        if host is None:
            raise errors.Refused(f"VM {vm.vm_id} runs on unknown host {vm.host_id}")
        return vm, host

    def _new_job(self, kind: str, job_id: str, image: volume_pb2.Image, vm: vm_pb2.Vm
                 ) -> volume_pb2.BlockJob:
        job_id = job_id or f"{kind}-{uuid.uuid4().hex[:12]}"
        check_name(job_id, "job_id")
        if self.ctx.store.get(self.ctx.keys.job(job_id)) is not None:
            raise errors.Exists(f"block job {job_id} exists")
        return volume_pb2.BlockJob(job_id=job_id, kind=kind, image_id=image.image_id,
                                   vm_id=vm.vm_id, host_id=vm.host_id,
                                   node_id=self.ctx.node_id, started_at=wiretime.now())

    def _driver(self, host: host_pb2.Host, vm_id: str, path: str) -> RemoteDriver:
        driver = RemoteDriver(self.agent_stub(host.address), vm_id)
        try:
            chain = driver.open(path)
        except bj.BlockJobError as exc:
            raise errors.Unreachable(str(exc)) from exc
        if not chain or os.path.realpath(chain[0]) != os.path.realpath(path):
            raise errors.Refused(f"VM {vm_id}'s disk runs on {chain[0] if chain else 'nothing'}, "
                             f"not on the image's leaf {path}: run ReconcileVolumeChain")
        return driver

    # -- persistence --------------------------------------------------------------------

    def _store(self, job: volume_pb2.BlockJob, lock: Lock,
               image: tuple[volume_pb2.Image, int] | None = None) -> int:
        """Write the job record (and the image record, CAS) in one fenced txn under the lock.
        Returns the new revision; raises a `controlplane.errors` kind when it did not apply."""
        compares = [t.create_revision_is(lock.key, lock.revision)]
        ops = [t.put(self.ctx.keys.job(job.job_id), job.SerializeToString())]
        if image is not None:
            key = self.ctx.keys.image(image[0].image_id)
            compares.append(t.mod_revision_is(key, image[1]))
            ops.append(t.put(key, image[0].SerializeToString()))
        try:
            return self.ctx.owner_txn(compares, ops).revision
        except (Conflict, Fenced, StoreError) as exc:  # the job cannot go on
            raise errors.Busy(f"job {job.job_id}: record not written ({exc}); "
                             "run ReconcileVolumeChain") from exc

    def _runner(self, driver: RemoteDriver, persist: Callable[[bj.JobRecord], None]
                ) -> bj.BlockJobRunner:
        return bj.BlockJobRunner(driver, persist, **self.runner_options)  # type: ignore[arg-type]

    # -- operations ---------------------------------------------------------------------

    def output_of(self, image_id: str, job_id: str, output_path: str) -> str:
        """Where a live snapshot writes its flat copy: always a file directly in the image's
        own directory (``<image dir>/<image_id>/``), so a request cannot make the node write
        anywhere else. ``output_path`` is empty (``<job_id>.qcow2``), a file name
        (`check_name`: 'backup-1.qcow2'), or an absolute path whose directory, after
        realpath, is the image's own directory (the path an earlier answer showed). The file
        itself may not be a symlink that leads out (`confined`). Invalid naming
        output_path otherwise."""
        directory = self.manager.directory(image_id)
        if not output_path:
            return str(confined(directory, f"{job_id}.qcow2", field="job_id"))
        name = output_path
        if os.path.isabs(output_path) and "\0" not in output_path:
            parent, name = os.path.split(output_path)
            if os.path.realpath(parent) != os.path.realpath(directory):
                raise errors.Invalid(f"output_path {errors.shown(output_path)} is not in the "
                                     f"image's own directory {directory}: give a file name "
                                     "or a path directly in it")
        check_name(name, "output_path")
        return str(confined(directory, name, field="output_path"))

    def live_snapshot(self, image_id: str, job_id: str = "", output_path: str = ""
                      ) -> volume_pb2.BlockJob:
        """A flat copy of the running disk; the output rule is `output_of`'s (a file
        directly in the image's own directory), checked before anything is started."""
        if job_id:
            check_name(job_id, "job_id")
        if output_path:  # refused before the lock, whatever the VM's state
            self.output_of(image_id, job_id, output_path)
        with self.manager.locked(image_id) as lock:
            image, _ = self.manager.read(image_id)
            self.manager.check_files(image)
            vm, host = self._running_vm(image)
            job = self._new_job("live-snapshot", job_id, image, vm)
            leaf = volume(image, image.leaf_id)
            assert leaf is not None
            output = self.output_of(image_id, job.job_id, output_path)
            if os.path.lexists(output):
                raise errors.Exists(f"{output} exists")
            target = str(confined(self.manager.directory(image_id),
                                  f"{job.job_id}.mirror.qcow2", field="job_id"))
            driver = self._driver(host, vm.vm_id, leaf.path)
            state = {"job": job}
            persist = self._snapshot_persister(state, lock)
            with self._tracking(job.job_id):
                rec = self._runner(driver, persist).live_snapshot(job.job_id, vm.vm_id,
                                                                  target, output)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)  # released by the runner; the flat output is the copy
            log.info("live snapshot %s of image %s: %s (%d bytes copied)", job.job_id,
                     image_id, rec.phase.value, rec.bytes_copied)
            return state["job"]

    def live_merge(self, image_id: str, volume_id: str, job_id: str = ""
                   ) -> volume_pb2.BlockJob:
        with self.manager.locked(image_id) as lock:
            image, revision = self.manager.read(image_id)
            self.manager.check_files(image)
            vm, host = self._running_vm(image)
            top = volume(image, volume_id)
            if top is None:
                raise errors.NotFound(f"image {image_id} has no volume {volume_id!r}")
            if not top.parent_id:
                raise errors.Refused(f"volume {volume_id} is the base: nothing to merge it into")
            parent = volume(image, top.parent_id)
            assert parent is not None
            leaf = volume(image, image.leaf_id)
            assert leaf is not None
            job = self._new_job("live-merge", job_id, image, vm)
            job.volume_id = volume_id
            active = volume_id == image.leaf_id
            driver = self._driver(host, vm.vm_id, leaf.path)
            state: dict = {"job": job, "image": image, "revision": revision,
                           "illegal": False}
            persist = self._merge_persister(state, lock, driver, top, active)
            with self._tracking(job.job_id):
                rec = self._runner(driver, persist).live_merge(job.job_id, vm.vm_id, top.path,
                                                               parent.path)
            if rec.phase is bj.Phase.COMPLETED:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(top.path)
            log.info("live merge %s of %s into %s (image %s): %s", job.job_id, volume_id,
                     parent.volume_id, image_id, rec.phase.value)
            return state["job"]


    @contextlib.contextmanager
    def _tracking(self, job_id: str) -> Iterator[None]:
        with self._running_lock:
            self._running.add(job_id)
        try:
            yield
        finally:
            with self._running_lock:
                self._running.discard(job_id)

    # -- persisting each phase -------------------------------------------------------

    def _snapshot_persister(self, state: dict, lock: Lock) -> Callable[[bj.JobRecord], None]:
        def persist(rec: bj.JobRecord) -> None:
            state["job"] = job_view(state["job"], rec)
            self._store(state["job"], lock)

        return persist

    def _merge_persister(self, state: dict, lock: Lock, driver: RemoteDriver,
                         top: volume_pb2.Volume, active: bool
                         ) -> Callable[[bj.JobRecord], None]:
        """Job record and image record in one txn where the chain changes (vdsm's order)."""
        volume_id = top.volume_id

        def persist(rec: bj.JobRecord) -> None:
            state["job"] = job_view(state["job"], rec)
            new_image = None
            if rec.phase is bj.Phase.FINISHING and active and not state["illegal"]:
                # The leaf is ILLEGAL before the pivot goes out; its data is in the
                # parent already (the job is READY).
                new_image = _copy(state["image"])
                volume(new_image, volume_id).legality = volume_pb2.VOLUME_LEGALITY_ILLEGAL
                state["illegal"] = True
            elif rec.phase is bj.Phase.COMPLETED:
                new_image = _copy(state["image"])
                _unlink_from_chain(new_image, volume_id)
            elif rec.phase is bj.Phase.FAILED and state["illegal"] \
                    and _in_chain(top.path, driver):
                new_image = _copy(state["image"])  # no pivot: the VM still writes it
                volume(new_image, volume_id).legality = volume_pb2.VOLUME_LEGALITY_LEGAL
            if new_image is None:
                self._store(state["job"], lock)
                return
            state["revision"] = self._store(state["job"], lock,
                                            (new_image, state["revision"]))
            state["image"] = new_image

        return persist

    def resume(self, job_id: str) -> volume_pb2.BlockJob:
        """Finish a job whose node is gone, from its record (the runner's resume rules: a
        ready merge is pivoted, a vanished one judged by the chain, a snapshot interrupted
        after its cancel is FAILED). Under the image lock, which the dead node's lease held
        until it expired: ABORTED until then."""
        job = self.get(job_id)
        if bj.Phase(job.phase) in (bj.Phase.COMPLETED, bj.Phase.FAILED):
            return job
        if job.node_id in self.ctx.members() and job.node_id != self.ctx.node_id:
            raise errors.Refused(f"job {job_id} is being run by node {job.node_id}")
        with self._running_lock:
            if job_id in self._running:
                raise errors.Refused(f"job {job_id} is running on this node")
        with self.manager.locked(job.image_id) as lock:
            image, revision = self.manager.read(job.image_id)
            self.manager.check_files(image)
            _, host = self._running_vm(image)
            driver = RemoteDriver(self.agent_stub(host.address), job.vm_id)
            job.node_id = self.ctx.node_id
            state: dict = {"job": job, "image": image, "revision": revision}
            if job.kind == "live-merge":
                top = volume(image, job.volume_id)
                if top is None:  # the COMPLETED txn was written; only the record lags
                    raise errors.Refused(f"volume {job.volume_id} is no longer in image "
                                     f"{job.image_id}: run ReconcileVolumeChain")
                state["illegal"] = top.legality == volume_pb2.VOLUME_LEGALITY_ILLEGAL
                active = state["illegal"] or job.volume_id == image.leaf_id
                persist = self._merge_persister(state, lock, driver, top, active)
            else:
                persist = self._snapshot_persister(state, lock)
            with self._tracking(job_id):
                rec = self._runner(driver, persist).resume(record_of(job))
            log.info("block job %s resumed by %s: %s", job_id, self.ctx.node_id,
                     rec.phase.value)
            return state["job"]


def _copy(image: volume_pb2.Image) -> volume_pb2.Image:
    out = volume_pb2.Image()
    out.CopyFrom(image)
    return out


def _unlink_from_chain(image: volume_pb2.Image, volume_id: str) -> None:
    top = volume(image, volume_id)
    assert top is not None
    if image.leaf_id == volume_id:
        image.leaf_id = top.parent_id
    for v in image.volumes:
        if v.parent_id == volume_id:
            v.parent_id = top.parent_id
    image.volumes.remove(top)


def _in_chain(path: str, driver: RemoteDriver) -> bool:
    try:
        return any(os.path.realpath(p) == os.path.realpath(path) for p in driver.chain(""))
    except bj.BlockJobError:
        return True  # cannot tell: keep it LEGAL, the safe side for a VM that may write it
