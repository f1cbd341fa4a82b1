"""VmService: VM lifecycle calls, routed to the VM's owner, and reads from any node.

Operations (start, stop, ...) run on the owner of the VM id (`Router`), which records the
op in etcd before it calls the agent (`vm.operations`). Reads: GetVm is a linearizable etcd
read (any node answers it exactly); ListVms and WatchVms answer from this node's watch-fed
cache, which every node keeps complete, so they need no owner and no etcd read per VM.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from controlplane import errors, names, paging, wiretime
from controlplane.cluster.routing import Router, route_unary
from controlplane.owner import OwnerContext
from controlplane.rpc import check_id, check_range, remaining
from controlplane.store import txn as t
from controlplane.store.cache import CacheEvent
from controlplane.v1 import vm_pb2
from controlplane.v1 import vm_pb2_grpc as pb_grpc
from controlplane.vm import states
from controlplane.vm.migrations import Migrations
from controlplane.vm.operations import Operations
from controlplane.vm.records import root_disk_size

log = logging.getLogger(__name__)

A = TypeVar("A")
# Every VM operation's request has these two fields (and Start a host_id, Stop/Destroy force).
OpRequest = (vm_pb2.StartVmRequest | vm_pb2.StopVmRequest | vm_pb2.RebootVmRequest
             | vm_pb2.PauseVmRequest | vm_pb2.ResumeVmRequest | vm_pb2.DestroyVmRequest
             | vm_pb2.MigrateVmRequest)

MAX_CPUS = 1024
MAX_MEMORY_MB = 64 * 1024 * 1024
WATCH_QUEUE_LIMIT = 100_000  # events one WatchVms stream may have unsent before it is ended


class WatchQueue:
    """The events one WatchVms stream has yet to send: filled by the cache's watch thread,
    drained by the stream's own thread.

    `put` never blocks: the watch thread applies every change to this node's cache and feeds
    every stream, so a reader that is slow or stuck must cost only its own stream (a
    `queue.Queue.put` on a full queue here once stalled the node's VM cache behind one stuck
    client). Past `limit` unsent events the queue overflows: it takes nothing more and the
    reader is told at once (the stream ends RESOURCE_EXHAUSTED; the client re-watches with
    initial=True). `close` (the call ended, or the node stops) wakes a waiting reader, so an
    idle stream sleeps in `get` instead of polling."""

    def __init__(self, limit: int = WATCH_QUEUE_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._items: deque[Any] = deque()
        self._changed = threading.Condition()
        self.overflowed = False
        self.closed = False

    def put(self, item: Any) -> bool:
        """Queue `item` without waiting; False (and the item dropped) once the queue has
        overflowed or closed: the caller may stop offering more."""
        with self._changed:
            if self.closed or self.overflowed:
                return False
            if len(self._items) >= self.limit:
                self.overflowed = True
                self._items.clear()  # the stream ends: nothing queued will be sent
                self._changed.notify_all()
                return False
            self._items.append(item)
            self._changed.notify()
            return True

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The next item; None once closed; errors.Exhausted once overflowed (both before
        any item still queued); queue.Empty when `timeout` passes with nothing."""
        with self._changed:
            if not self._changed.wait_for(
                    lambda: self._items or self.closed or self.overflowed, timeout):
                raise queue.Empty
            if self.overflowed:
                raise errors.Exhausted(
                    f"watcher too slow: more than {self.limit} events queued")
            if self.closed:
                return None
            return self._items.popleft()


class VmServicer(pb_grpc.VmServiceServicer):
    def __init__(self, ctx: OwnerContext, router: Router, operations: Operations,
                 migrations: Migrations | None = None, *,
                 check_disks: Callable[[Sequence[vm_pb2.VmDisk]], int] | None = None
                 ) -> None:
        self.ctx = ctx
        # Raises a controlplane.errors kind unless every disk's storage and volume exist,
        # else answers the root volume's size (server.py: VmDisks.check); None: disks are
        # refused.
        self.check_disks = check_disks
        self.router = router
        self.operations = operations
        self.migrations = migrations
        self._stopping = False
        self._watches: set[WatchQueue] = set()
        self._watches_lock = threading.Lock()

    def stop(self) -> None:
        """End every open WatchVms stream (their readers wake at once)."""
        with self._watches_lock:
            self._stopping = True
            watches = list(self._watches)
        for watch in watches:
            watch.close()

    # -- create ---------------------------------------------------------------------

    def CreateVm(self, request: vm_pb2.CreateVmRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.CreateVmResponse:
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
            if not any(d.root for d in request.disks):
                raise errors.Invalid(str(exc)) from None
            disk = 0  # the root disk is a volume of a primary storage: sized by its store

        def local() -> vm_pb2.CreateVmResponse:
            nonlocal disk
            if request.disks:
                # Before writing: a VM on a storage or volume that does not exist is refused.
                if self.check_disks is None:
                    raise errors.Refused("this node cannot check disks on primary storage")
                root_size = self.check_disks(request.disks)
                disk = disk or root_size
            if request.start:
                # Refuse before writing: a create that fails to start must leave nothing.
                self.operations.placement(vm_pb2.Vm(
                    vm_id=request.vm_id, cpus=request.cpus or 1,
                    memory_mb=request.memory_mb or 512), request.host_id)
            now = wiretime.now()
            vm = vm_pb2.Vm(vm_id=request.vm_id, name=request.name or request.vm_id,
                           state="Created", ha=request.ha, cpus=request.cpus or 1,
                           memory_mb=request.memory_mb or 512, image=request.image,
                           root_disk_offering_size=request.root_disk_offering_size,
                           root_disk_size=disk, created_at=now, state_changed_at=now,
                           create_request_id=request.request_id, disks=request.disks)
            key = self.ctx.keys.vm(request.vm_id)
            exists = errors.Exists(f"VM {request.vm_id!r} already exists")
            try:
                self.ctx.write([t.absent(key)], [t.put(key, vm.SerializeToString())], exists)
            except errors.Exists:
                vm = self._created_by(request)  # a retry of the call that created it?
                if vm is None:
                    raise
            else:
                log.info("vm %s created (root disk %d bytes, ha %s)", vm.vm_id, disk,
                         names.short(vm_pb2.HaLevel, vm.ha), extra={"vm_id": vm.vm_id})
            if request.start:
                vm = self._operate(vm.vm_id, "start", context, request.wait,
                                   host_id=request.host_id, request_id=request.request_id)
            return vm_pb2.CreateVmResponse(vm=vm)

        return route_unary(self.router, pb_grpc.VmServiceStub, "CreateVm", request.vm_id,
                           request, context, local)

    def _created_by(self, request: vm_pb2.CreateVmRequest) -> vm_pb2.Vm | None:
        """The VM record, when the call with this request's `request_id` created it (a
        client retrying a create whose answer it lost); else None."""
        if not request.request_id:
            return None
        vm, _, _, _ = self.operations.read(request.vm_id)
        if vm is None or vm.create_request_id != request.request_id:
            return None
        log.info("vm %s: create with request %s answered again", vm.vm_id, request.request_id,
                 extra={"vm_id": vm.vm_id})
        return vm

    # -- operations -----------------------------------------------------------------

    def _operate(self, vm_id: str, kind: str, context: grpc.ServicerContext, wait: bool,
                 host_id: str = "", force: bool = False, request_id: str = "") -> vm_pb2.Vm:
        if kind == "migrate" and self.migrations is None:
            raise errors.Unsupported("this node does not run migrations")
        begun = self.operations.begin(vm_id, kind, host_id=host_id, force=force,
                                      request_id=request_id)
        answer = vm_pb2.Vm()
        answer.CopyFrom(begun.vm)
        if begun.joined:
            # A retry of the call that began the op: wait for it when this node runs it;
            # an op of another node (a dead owner's orphan) is answered as in flight.
            future = self.operations.running(begun.op.op_id) if begun.op.op_id else None
            if future is None:
                if begun.op.op_id:
                    answer.op.CopyFrom(begun.op)
                return answer
        elif kind == "migrate":
            assert self.migrations is not None
            future = self.migrations.submit(begun)
        else:
            future = self.operations.submit(begun, force)
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

    def _routed_op(self, kind: str, method: str, request: OpRequest,
                   context: grpc.ServicerContext, answer: type[A], host_id: str = "",
                   force: bool = False) -> A:
        check_id(request.vm_id, "vm_id")
        if host_id:
            check_id(host_id, "host_id")
        return route_unary(
            self.router, pb_grpc.VmServiceStub, method, request.vm_id, request, context,
            lambda: answer(vm=self._operate(request.vm_id, kind, context, request.wait,
                                            host_id=host_id, force=force,
                                            request_id=request.request_id)))

    def StartVm(self, request: vm_pb2.StartVmRequest, context: grpc.ServicerContext
                ) -> vm_pb2.StartVmResponse:
        return self._routed_op("start", "StartVm", request, context, vm_pb2.StartVmResponse,
                               host_id=request.host_id)

    def StopVm(self, request: vm_pb2.StopVmRequest, context: grpc.ServicerContext
               ) -> vm_pb2.StopVmResponse:
        return self._routed_op("stop", "StopVm", request, context, vm_pb2.StopVmResponse,
                               force=request.force)

    def RebootVm(self, request: vm_pb2.RebootVmRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.RebootVmResponse:
        return self._routed_op("reboot", "RebootVm", request, context, vm_pb2.RebootVmResponse)

    def PauseVm(self, request: vm_pb2.PauseVmRequest, context: grpc.ServicerContext
                ) -> vm_pb2.PauseVmResponse:
        return self._routed_op("pause", "PauseVm", request, context, vm_pb2.PauseVmResponse)

    def ResumeVm(self, request: vm_pb2.ResumeVmRequest, context: grpc.ServicerContext
                 ) -> vm_pb2.ResumeVmResponse:
        return self._routed_op("resume", "ResumeVm", request, context, vm_pb2.ResumeVmResponse)

    def DestroyVm(self, request: vm_pb2.DestroyVmRequest, context: grpc.ServicerContext
                  ) -> vm_pb2.DestroyVmResponse:
        return self._routed_op("destroy", "DestroyVm", request, context,
                               vm_pb2.DestroyVmResponse, force=request.force)

    def MigrateVm(self, request: vm_pb2.MigrateVmRequest, context: grpc.ServicerContext
                  ) -> vm_pb2.MigrateVmResponse:
        return self._routed_op("migrate", "MigrateVm", request, context,
                               vm_pb2.MigrateVmResponse, host_id=request.host_id)

    # -- reads ----------------------------------------------------------------------

    def GetVm(self, request: vm_pb2.GetVmRequest, context: grpc.ServicerContext
              ) -> vm_pb2.GetVmResponse:
        check_id(request.vm_id, "vm_id")
        vm, _, op, _ = self.operations.read(request.vm_id)
        if vm is None:
            raise errors.NotFound(f"no VM {request.vm_id!r}")
        if op is not None:
            vm.op.CopyFrom(op)
        return vm_pb2.GetVmResponse(vm=vm)

    def ListVms(self, request: vm_pb2.ListVmsRequest, context: grpc.ServicerContext
                ) -> vm_pb2.ListVmsResponse:
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
        chunk, token = paging.page(vms, lambda v: v.vm_id, request.page_size, request.page_token)
        return vm_pb2.ListVmsResponse(vms=chunk, revision=revision, next_page_token=token)

    def ListHaAudit(self, request: vm_pb2.ListHaAuditRequest, context: grpc.ServicerContext
                    ) -> vm_pb2.ListHaAuditResponse:
        check_id(request.vm_id, "vm_id")
        kvs, _ = self.ctx.store.list_prefix(self.ctx.keys.audit(request.vm_id))
        chunk, token = paging.page(kvs, lambda kv: kv.key, request.page_size,
                                   request.page_token)
        return vm_pb2.ListHaAuditResponse(
            records=[vm_pb2.HaAudit.FromString(kv.value) for kv in chunk],
            next_page_token=token)

    def WatchVms(self, request: vm_pb2.WatchVmsRequest, context: grpc.ServicerContext
                 ) -> Iterator[vm_pb2.WatchVmsResponse]:
        if request.vm_id:
            check_id(request.vm_id, "vm_id")

        def wanted(vm: vm_pb2.Vm) -> bool:
            return ((not request.vm_id or vm.vm_id == request.vm_id)
                    and (not request.host_id or vm.host_id == request.host_id))

        events = WatchQueue()

        def on_events(batch: Sequence[CacheEvent[vm_pb2.Vm]]) -> None:
            # On the cache's watch thread: never wait here (WatchQueue.put does not).
            for ev in batch:
                vm = ev.entry.value if ev.entry else ev.previous.value if ev.previous else None
                if vm is not None and (wanted(vm) or (ev.previous and wanted(ev.previous.value))):
                    if not events.put((ev.kind, vm, ev.revision)):
                        return  # overflowed (the stream ends) or closed

        if not context.add_callback(events.close):  # the call ended: wake the reader
            events.close()
        with self._watches_lock:
            if self._stopping:
                events.close()
            self._watches.add(events)
        self.ctx.vms.add_listener(on_events)
        try:
            if request.initial:
                entries, revision = self.ctx.vms.snapshot()
                for entry in sorted(entries, key=lambda e: e.key):
                    if wanted(entry.value):
                        yield vm_pb2.WatchVmsResponse(kind=vm_pb2.WatchVmsResponse.KIND_PUT,
                                                      vm=entry.value,
                                             revision=entry.mod_revision)
                yield vm_pb2.WatchVmsResponse(kind=vm_pb2.WatchVmsResponse.KIND_SYNCED,
                                              revision=revision)
            while (item := events.get()) is not None:  # Exhausted when overflowed
                kind, vm, revision = item
                yield vm_pb2.WatchVmsResponse(
                    kind=(vm_pb2.WatchVmsResponse.KIND_PUT if kind == "put"
                          else vm_pb2.WatchVmsResponse.KIND_DELETE),
                    vm=vm, revision=revision)
        finally:
            self.ctx.vms.remove_listener(on_events)
            with self._watches_lock:
                self._watches.discard(events)
