"""AgentBlockJobs: block-job primitives on the VMs' disks, for the management node's runner.

The agent does not decide anything here: it runs one QMP-level command per call and answers
what the backend reports (a job's status, every event seen). Deciding completion and
persisting the job is the node's :class:`~controlplane.storage.blockjobs.BlockJobRunner`.

Backends (``controlplane agent --block-backend``):
- ``qemu``: one ``qemu-system-x86_64 -machine none`` per VM disk, opened by OpenDisk (the VM
  lifecycle itself is still the sim backend's: no guest OS runs; a hypervisor backend would
  open its disks in StartVm), driven over QMP by
  :class:`~controlplane.agent.drivers.qemu.QemuDriver`;
- ``sim``: :class:`~controlplane.agent.drivers.sim.SimDriver` per disk (in memory; the
  nasty sequences are replayed by its scripts in the unit tests);
- ``none``: the service answers UNIMPLEMENTED;
- ``libvirt`` (not a ``--block-backend`` choice: ``agent --backend libvirt`` implies it):
  the VM's disk is its domain's vda, driven by
  :class:`~controlplane.agent.drivers.libvirt.LibvirtBlockDriver` over the LibvirtBackend's
  connection. OpenDisk opens nothing (the domain runs already): it answers the chain the
  domain uses, which the node compares with the image's leaf; CloseDisk only forgets the VM
  here (the domain keeps running).

Requests are checked before a backend sees them: vm ids are ids (`rpc.check_id`), job ids
are names (`rpc.check_name`: a job id becomes a QMP job id and the name of the mirror
target's node), and every path is absolute and normal (`paths.check_absolute`). The agent has
no directory of its own to confine paths to: the node builds them inside its image directory
(`paths.confined`) and only a node may call this service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from controlplane import errors
from controlplane.paths import check_absolute
from controlplane.rpc import check_id, check_name
from controlplane.storage.blockjobs import BlockJobDriver, BlockJobError
from controlplane.v1 import blockjob_pb2 as pb
from controlplane.v1 import blockjob_pb2_grpc as pb_grpc

__all__ = ["BLOCK_BACKENDS", "AgentBlockJobsServiceServicer"]

log = logging.getLogger(__name__)
C = TypeVar("C")
J = TypeVar("J")

BLOCK_BACKENDS = ("qemu", "sim", "none")  # the --block-backend choices
SERVICE_BACKENDS = (*BLOCK_BACKENDS, "libvirt")
DISK = "disk0"


@dataclass
class _Disk:
    driver: BlockJobDriver
    node: str
    close: Callable[[], None]


def _qemu_disk(path: str) -> _Disk:
    from controlplane.agent.drivers.qemu import QemuDriver, QemuVm

    vm = QemuVm(path, disk=DISK)
    return _Disk(QemuDriver(vm), DISK, vm.close)


def _sim_disk(path: str) -> _Disk:
    from controlplane.agent.drivers.sim import SimDriver
    from controlplane.storage import qemuimg

    try:
        chain = [layer.path for layer in reversed(qemuimg.chain_info(path))]
    except qemuimg.QemuImgError:
        chain = [path]
    return _Disk(SimDriver(disks={DISK: chain}), DISK, lambda: None)


class AgentBlockJobsServiceServicer(pb_grpc.AgentBlockJobsServiceServicer):
    def __init__(self, backend: str, driver: BlockJobDriver | None = None) -> None:
        """``driver``: for ``libvirt``, the one driver on the host's domains."""
        if backend not in SERVICE_BACKENDS:
            raise ValueError(f"block backend: one of {SERVICE_BACKENDS}")
        if (backend == "libvirt") != (driver is not None):
            raise ValueError("a driver is given for the libvirt block backend, and only there")
        self.backend = backend
        self.driver = driver
        self._disks: dict[str, _Disk] = {}
        self._lock = threading.Lock()
        # QEMU dies with the thread that started it (pdeathsig): start every QEMU from one
        # thread that lives as long as the agent, never from a short-lived RPC thread.
        self._launcher = futures.ThreadPoolExecutor(1, thread_name_prefix="qemu-launcher")

    def close(self) -> None:
        with self._lock:
            disks = list(self._disks.values())
            self._disks.clear()
        for disk in disks:
            try:
                disk.close()
            except Exception:  # noqa: BLE001 - closing everything anyway
                log.exception("closing a disk failed")
        self._launcher.shutdown(wait=False)

    # -- helpers --------------------------------------------------------------------------

    def _enabled(self, context: grpc.ServicerContext) -> None:
        if self.backend == "none":
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          "this agent runs without a block-job backend (--block-backend)")

    def _disk(self, vm_id: str, context: grpc.ServicerContext, job_id: str | None = None
              ) -> _Disk:
        self._enabled(context)
        check_id(vm_id, "vm_id")
        if job_id is not None:
            check_name(job_id, "job_id")
        with self._lock:
            disk = self._disks.get(vm_id)
        if disk is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no disk open for VM {vm_id!r}")
        return disk

    def _do(self, context: grpc.ServicerContext, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except BlockJobError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {exc}")

    def _chain(self, answer: type[C], vm_id: str, disk: _Disk,
               context: grpc.ServicerContext) -> C:
        """The disk's chain, in the answer type of the calling method (all of one shape)."""
        paths = self._do(context, "chain", lambda: disk.driver.chain(disk.node))
        return answer(vm_id=vm_id, paths=paths)

    def _job(self, answer: type[J], vm_id: str, job_id: str, disk: _Disk,
             context: grpc.ServicerContext, active: bool = False) -> J:
        """The job's status and events, in the answer type of the calling method."""
        status = self._do(context, "status", lambda: disk.driver.status(job_id))
        events = self._do(context, "events", lambda: disk.driver.events(job_id))
        job = answer(vm_id=vm_id, job_id=job_id, listed=status is not None, active=active)
        if status is not None:
            job.status.CopyFrom(pb.AgentJobStatus(type=status.type, status=status.status,
                                                  offset=status.offset, length=status.length,
                                                  ready=status.ready))
        job.events.extend(pb.AgentJobEvent(kind=e.kind, offset=e.offset, length=e.length,
                                           error=e.error or "") for e in events)
        return job

    # -- disks ------------------------------------------------------------------------

    def OpenDisk(self, request: pb.OpenDiskRequest, context: grpc.ServicerContext
                 ) -> pb.OpenDiskResponse:
        self._enabled(context)
        check_id(request.vm_id, "vm_id")
        check_absolute(request.path, "path")
        with self._lock:
            disk = self._disks.get(request.vm_id)
        if disk is None and self.driver is not None:
            disk = _Disk(self.driver, request.vm_id, lambda: None)  # the domain's vda
            self._chain(pb.OpenDiskResponse, request.vm_id, disk, context)  # the domain is there
            with self._lock:
                disk = self._disks.setdefault(request.vm_id, disk)
        if disk is None:
            opener = _qemu_disk if self.backend == "qemu" else _sim_disk
            try:
                disk = self._launcher.submit(opener, request.path).result(60)
            except BlockJobError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"open {errors.shown(request.path, 256)}: {exc}")
            with self._lock:
                if request.vm_id in self._disks:  # a concurrent open won
                    disk.close()
                    disk = self._disks[request.vm_id]
                else:
                    self._disks[request.vm_id] = disk
                    log.info("VM %s: disk %s open (%s)", request.vm_id, request.path,
                             self.backend)
        return self._chain(pb.OpenDiskResponse, request.vm_id, disk, context)

    def CloseDisk(self, request: pb.CloseDiskRequest,
                  context: grpc.ServicerContext) -> pb.CloseDiskResponse:
        disk = self._disk(request.vm_id, context)
        answer = self._chain(pb.CloseDiskResponse, request.vm_id, disk, context)
        with self._lock:
            self._disks.pop(request.vm_id, None)
        disk.close()
        return answer

    def GetDiskChain(self, request: pb.GetDiskChainRequest, context: grpc.ServicerContext
                     ) -> pb.GetDiskChainResponse:
        return self._chain(pb.GetDiskChainResponse, request.vm_id, self._disk(request.vm_id,
                                                                              context), context)

    # -- jobs -------------------------------------------------------------------------

    def StartMirror(self, request: pb.StartMirrorRequest, context: grpc.ServicerContext
                    ) -> pb.StartMirrorResponse:
        disk = self._disk(request.vm_id, context, request.job_id)
        check_absolute(request.target_path, "target_path")
        if request.sync not in ("top", "full"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sync: top or full")
        self._do(context, "mirror", lambda: disk.driver.start_mirror(
            request.job_id, disk.node, request.target_path, request.sync))  # type: ignore[arg-type]
        return self._job(pb.StartMirrorResponse, request.vm_id, request.job_id, disk, context)

    def StartCommit(self, request: pb.StartCommitRequest, context: grpc.ServicerContext
                    ) -> pb.StartCommitResponse:
        disk = self._disk(request.vm_id, context, request.job_id)
        check_absolute(request.top, "top")
        check_absolute(request.base, "base")
        active = self._do(context, "commit", lambda: disk.driver.start_commit(
            request.job_id, disk.node, request.top, request.base))
        return self._job(pb.StartCommitResponse, request.vm_id, request.job_id, disk, context,
                         active=bool(active))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        return self._job(pb.GetJobResponse, request.vm_id, request.job_id,
                         self._disk(request.vm_id, context, request.job_id), context)

    def CompleteJob(self, request: pb.CompleteJobRequest,
                    context: grpc.ServicerContext) -> pb.CompleteJobResponse:
        disk = self._disk(request.vm_id, context, request.job_id)
        self._do(context, "complete", lambda: disk.driver.complete(request.job_id))
        return self._job(pb.CompleteJobResponse, request.vm_id, request.job_id, disk, context)

    def CancelJob(self, request: pb.CancelJobRequest,
                  context: grpc.ServicerContext) -> pb.CancelJobResponse:
        disk = self._disk(request.vm_id, context, request.job_id)
        self._do(context, "cancel", lambda: disk.driver.cancel(request.job_id))
        return self._job(pb.CancelJobResponse, request.vm_id, request.job_id, disk, context)

    def ReleaseJob(self, request: pb.ReleaseJobRequest,
                   context: grpc.ServicerContext) -> pb.ReleaseJobResponse:
        disk = self._disk(request.vm_id, context, request.job_id)
        self._do(context, "release", lambda: disk.driver.release(request.job_id))
        return self._job(pb.ReleaseJobResponse, request.vm_id, request.job_id, disk, context)

    def GuestWrite(self, request: pb.GuestWriteRequest, context: grpc.ServicerContext
                   ) -> pb.GuestWriteResponse:
        disk = self._disk(request.vm_id, context)
        if request.length <= 0 or request.offset < 0 or not 0 <= request.pattern <= 255:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "offset >= 0, length > 0, pattern 0..255")
        self._do(context, "write", lambda: disk.driver.write(
            disk.node, request.offset, request.length, request.pattern))
        return self._chain(pb.GuestWriteResponse, request.vm_id, disk, context)

    def Flush(self, request: pb.FlushRequest, context: grpc.ServicerContext) -> pb.FlushResponse:
        disk = self._disk(request.vm_id, context)
        self._do(context, "flush", lambda: disk.driver.flush(disk.node))
        return self._chain(pb.FlushResponse, request.vm_id, disk, context)
