"""VmService: VM lifecycle calls, routed to the VM's owner, and reads from any node.

Operations (start, stop, ...) run on the owner of the VM id (`Router`), which records the
op in etcd before it calls the agent (`vm.operations`). Reads: GetVm is a linearizable etcd
read (any node answers it exactly); ListVms and WatchVms answer from this node's watch-fed
cache, which every node keeps complete, so they need no owner and no etcd read per VM.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Iterator, Sequence

import grpc

from controlplane import errors
from controlplane.cluster.routing import Router, route_unary
from controlplane.owner import OwnerContext
from controlplane.rpc import check_id, check_range, remaining
from controlplane.store import txn as t
from controlplane.store.cache import CacheEvent
from controlplane.v1 import vm_pb2
from controlplane.v1 import vm_pb2_grpc as pb_grpc
from controlplane.vm import states
from controlplane.vm.operations import Operations
from controlplane.vm.records import root_disk_size

log = logging.getLogger(__name__)

MAX_CPUS = 1024
MAX_MEMORY_MB = 64 * 1024 * 1024


class VmServicer(pb_grpc.VmServiceServicer):
    def __init__(self, ctx: OwnerContext, router: Router, operations: Operations) -> None:
        self.ctx = ctx
        self.router = router
        self.operations = operations
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    # -- create ---------------------------------------------------------------------

    def CreateVm(self, request: vm_pb2.CreateVmRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.Vm:
        if not request.vm_id:
            request.vm_id = f"vm-{uuid.uuid4().hex[:12]}"
        check_id(request.vm_id, "vm_id")
        if request.host_id:
            check_id(request.host_id, "host_id")
        check_range(request.cpus, "cpus", 0, MAX_CPUS)
        check_range(request.memory_mb, "memory_mb", 0, MAX_MEMORY_MB)
        if not request.start and (request.host_id or request.wait):
            raise errors.Invalid("host_id and wait only apply with start=true")
        image = request.image
        try:
            disk = root_disk_size(
                request.root_disk_offering_size,
                image.virtual_size if image.HasField("virtual_size") else None,
                image.actual_size if image.HasField("actual_size") else None)
        except ValueError as exc:
            raise errors.Invalid(str(exc)) from None

        def local() -> vm_pb2.Vm:
            if request.start:
                # Refuse before writing: a create that fails to start must leave nothing.
                self.operations.placement(vm_pb2.Vm(vm_id=request.vm_id), request.host_id)
            now = time.time()
            vm = vm_pb2.Vm(vm_id=request.vm_id, name=request.name or request.vm_id,
                           state="Created", ha=request.ha, cpus=request.cpus or 1,
                           memory_mb=request.memory_mb or 512, image=request.image,
                           root_disk_offering_size=request.root_disk_offering_size,
                           root_disk_size=disk, created_at=now, state_changed_at=now)
            key = self.ctx.keys.vm(request.vm_id)
            self.ctx.write(
                [t.absent(key)], [t.put(key, vm.SerializeToString())],
                errors.Exists(f"VM {request.vm_id!r} already exists"))
            log.info("vm %s created (root disk %d bytes, ha %s)", vm.vm_id, disk,
                     vm_pb2.HaLevel.Name(vm.ha), extra={"vm_id": vm.vm_id})
            if request.start:
                return self._operate(vm.vm_id, "start", context, request.wait,
                                     host_id=request.host_id)
            return vm

        return route_unary(self.router, pb_grpc.VmServiceStub, "CreateVm", request.vm_id,
                           request, context, local)

    # -- operations -----------------------------------------------------------------

    def _operate(self, vm_id: str, kind: str, context: grpc.ServicerContext, wait: bool,
                 host_id: str = "", force: bool = False) -> vm_pb2.Vm:
        begun = self.operations.begin(vm_id, kind, host_id=host_id, force=force)
        future = self.operations.submit(begun, force)
        answer = vm_pb2.Vm()
        answer.CopyFrom(begun.vm)
        answer.op.CopyFrom(begun.op)
        if wait:
            # Answer "still in flight" well before the caller's deadline, so a loaded
            # machine does not turn it into DEADLINE_EXCEEDED; a caller that set no
            # deadline is answered so after rpc.NO_DEADLINE_CAP.
            left = remaining(context)
            try:
                return future.result(timeout=max(left - min(0.5, left * 0.2), 0.0))
            except TimeoutError:
                pass  # the op goes on; the caller sees it in flight
        return answer

    def _routed_op(self, kind: str, method: str, request: vm_pb2.VmOpRequest,
                   context: grpc.ServicerContext) -> vm_pb2.Vm:
        check_id(request.vm_id, "vm_id")
        if request.host_id:
            check_id(request.host_id, "host_id")
            if kind != "start":
                raise errors.Invalid(f"host_id is only for start, not {kind}")
        return route_unary(
            self.router, pb_grpc.VmServiceStub, method, request.vm_id, request, context,
            lambda: self._operate(request.vm_id, kind, context, request.wait,
                                  host_id=request.host_id, force=request.force))

    def StartVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext) -> vm_pb2.Vm:
        return self._routed_op("start", "StartVm", request, context)

    def StopVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext) -> vm_pb2.Vm:
        return self._routed_op("stop", "StopVm", request, context)

    def RebootVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.Vm:
        return self._routed_op("reboot", "RebootVm", request, context)

    def PauseVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext) -> vm_pb2.Vm:
        return self._routed_op("pause", "PauseVm", request, context)

    def ResumeVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.Vm:
        return self._routed_op("resume", "ResumeVm", request, context)

    def DestroyVm(self, request: vm_pb2.VmOpRequest, context: grpc.ServicerContext
                  ) -> vm_pb2.Vm:
        return self._routed_op("destroy", "DestroyVm", request, context)

    # -- reads ----------------------------------------------------------------------

    def GetVm(self, request: vm_pb2.VmRef, context: grpc.ServicerContext) -> vm_pb2.Vm:
        check_id(request.vm_id, "vm_id")
        vm, _, op, _ = self.operations.read(request.vm_id)
        if vm is None:
            raise errors.NotFound(f"no VM {request.vm_id!r}")
        if op is not None:
            vm.op.CopyFrom(op)
        return vm

    def ListVms(self, request: vm_pb2.ListVmsRequest, context: grpc.ServicerContext
                ) -> vm_pb2.ListVmsReply:
        if request.state and request.state not in states.STATES:
            raise errors.Invalid(f"unknown state {request.state!r}; states: "
                                 f"{', '.join(sorted(states.STATES))}")
        if request.host_id:
            entries, revision = self.ctx.vms.by_index(request.host_id), self.ctx.vms.revision
        else:
            entries, revision = self.ctx.vms.snapshot()
        vms = sorted((e.value for e in entries
                      if not request.state or e.value.state == request.state),
                     key=lambda v: v.vm_id)
        return vm_pb2.ListVmsReply(vms=vms, revision=revision)

    def ListHaAudit(self, request: vm_pb2.VmRef, context: grpc.ServicerContext
                    ) -> vm_pb2.ListHaAuditResponse:
        check_id(request.vm_id, "vm_id")
        kvs, _ = self.ctx.store.list_prefix(self.ctx.keys.audit(request.vm_id))
        return vm_pb2.ListHaAuditResponse(
            records=[vm_pb2.HaAudit.FromString(kv.value) for kv in kvs])

    def WatchVms(self, request: vm_pb2.WatchVmsRequest, context: grpc.ServicerContext
                 ) -> Iterator[vm_pb2.VmEvent]:
        if request.vm_id:
            check_id(request.vm_id, "vm_id")

        def wanted(vm: vm_pb2.Vm) -> bool:
            return ((not request.vm_id or vm.vm_id == request.vm_id)
                    and (not request.host_id or vm.host_id == request.host_id))

        events: queue.Queue = queue.Queue(maxsize=100_000)

        def on_events(batch: Sequence[CacheEvent[vm_pb2.Vm]]) -> None:
            for ev in batch:
                vm = ev.entry.value if ev.entry else ev.previous.value if ev.previous else None
                if vm is not None and (wanted(vm) or (ev.previous and wanted(ev.previous.value))):
                    try:
                        events.put_nowait((ev.kind, vm, ev.revision))
                    except queue.Full:
                        events.put(None)  # too slow a reader: end the stream
                        return

        self.ctx.vms.add_listener(on_events)
        try:
            if request.initial:
                entries, revision = self.ctx.vms.snapshot()
                for entry in sorted(entries, key=lambda e: e.key):
                    if wanted(entry.value):
                        yield vm_pb2.VmEvent(kind=vm_pb2.VmEvent.PUT, vm=entry.value,
                                             revision=entry.mod_revision)
                yield vm_pb2.VmEvent(kind=vm_pb2.VmEvent.SYNCED, revision=revision)
            while context.is_active() and not self._stopping:
                try:
                    item = events.get(timeout=0.25)
                except queue.Empty:
                    continue
                if item is None:
                    raise errors.Exhausted("watcher too slow: more than 100000 events queued")
                kind, vm, revision = item
                yield vm_pb2.VmEvent(
                    kind=vm_pb2.VmEvent.PUT if kind == "put" else vm_pb2.VmEvent.DELETE,
                    vm=vm, revision=revision)
        finally:
            self.ctx.vms.remove_listener(on_events)
