"""VM operations run by an owner: recorded in etcd first, then sent to the host agent.

The order is the whole point (seed: a VM restarted elsewhere while it was still starting):
1. `begin`: one fenced CAS txn writes the VM's intermediate state AND `ops/<vm>` (op id,
   kind, our node id + incarnation, deadline). From then on VM sync leaves the VM alone,
   also after we die: our op becomes an orphan, not a forgotten operation.
2. The agent call runs in a worker thread, bounded by the op's deadline; the gRPC caller
   may wait for it or not.
3. `finish`: one fenced CAS txn writes the outcome and removes the op, only if the op is
   still ours (never deletes a newer entry). A transport error is not a failure: the op is
   removed but the state stays intermediate, and VM sync settles it from the agent's report.
4. After Running: the device addresses are fetched and stored, retried on failure; a
   failure there never fails the start.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
import tenacity

from controlplane import errors, metrics, names, wiretime
from controlplane.config.live import LiveConfig
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.store import txn as t
from controlplane.store.errors import StoreError
from controlplane.v1 import agent_pb2, host_pb2, vm_pb2, volume_pb2
from controlplane.vm import ha, states
from controlplane.vm.allocations import FREE_STATES, Allocations
from controlplane.vm.records import op_view
from controlplane.vm.sync import Restart, op_status

log = logging.getLogger(__name__)

AGENT_CALLS = {"start": "StartVm", "stop": "StopVm", "reboot": "RebootVm", "pause": "PauseVm",
               "resume": "ResumeVm", "destroy": "DestroyVm"}
# Agent answers that say the operation did not happen (anything else: outcome unknown).
DEFINITE_FAILURES = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED,
                     grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
DEVICE_INFO_AFTER = ("start", "reboot", "resume")
# A start also compares the host's allocation record, which every start and stop on that
# host rewrites: losing that race is normal under load, so a start tries more often (with a
# short random pause, so the racers spread out) before it answers ABORTED.
BEGIN_ATTEMPTS = {"start": 30, "migrate": 30}  # the kinds that reserve a host's share
BEGIN_ATTEMPTS_DEFAULT = 5


@dataclass(frozen=True)
class Begun:
    vm: vm_pb2.Vm
    op: vm_pb2.Op
    revision: int  # mod_revision of both the VM record and the op record
    # Begun by HA: a failed outcome also writes a restart-failed audit record (same txn).
    ha_from: str | None = None
    # A retry of the call that began `op` (same request_id): nothing new to run. `op` is
    # empty when that op has finished already (`vm.last_op` says how).
    joined: bool = False


def op_timeout(config: LiveConfig, kind: str) -> float:
    """Seconds an op of ``kind`` may take: a live migration has its own setting
    (vm.migrateTimeout: how long a migration an agent still works on, or whose target does
    not answer, is waited for before it is aborted), every other op vm.opTimeout."""
    key = "vm.migrateTimeout" if kind == "migrate" else "vm.opTimeout"
    return float(config.get(key))


def next_generation(vm: vm_pb2.Vm) -> int:
    """The generation of the VM's next copy: above every one handed out before (an aborted
    migration's target generation is fenced on its host and must never come back)."""
    return max(vm.generation, vm.issued_generation) + 1


def new_op_id() -> str:
    return uuid.uuid4().hex[:16]


class Operations:
    def __init__(self, ctx: OwnerContext, allocations: Allocations, *,
                 image_locks: Callable[[str], list[str]] = lambda vm_id: [],
                 workers: int = 64,
                 volumes_of: Callable[[vm_pb2.Vm], list[agent_pb2.AgentVolume]] | None = None
                 ) -> None:
        self.ctx = ctx
        # placement over capacity, settled by CAS on each host's allocation record
        self.allocations = allocations
        # The VM's volumes with their store's MDS, for the agent's start (server.py: VmDisks);
        # raises errors.NotFound when a disk's storage is gone.
        self.volumes_of = volumes_of
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="vm-op")
        self._stopping = threading.Event()
        self._device_syncs: set[str] = set()
        self._lock = threading.Lock()
        self._running: dict[str, futures.Future[vm_pb2.Vm]] = {}  # op id -> its execution
        # The lock keys of a VM's images (from the node: its image cache knows them). A
        # start compares them absent in its begin txn, and an offline image operation
        # checks the VM after taking its lock: whichever commits first wins, never both.
        self.image_locks = image_locks
        # The target host of a migration (set by vm.migrations.Migrations, which runs them).
        self.migration_target: Callable[
            [vm_pb2.Vm, str, dict[str, tuple[host_pb2.HostAllocation | None, int]]],
            str] | None = None

    def stop(self) -> None:
        """Stop taking work. Agent calls in flight finish within their op's deadline; their
        outcome write then fails the fencing compare (our lease is gone), so our ops stay
        in etcd as orphans the next owner handles. (A blocking agent call costs a fifth
        less node CPU per op than a cancellable future: measured with bench fleet.)"""
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- reading --------------------------------------------------------------------

    def read(self, vm_id: str) -> tuple[vm_pb2.Vm | None, int, vm_pb2.Op | None, int]:
        """The VM record and its op, read together (one linearizable txn)."""
        keys = self.ctx.keys
        result = self.ctx.store.txn([], [t.get(keys.vm(vm_id)), t.get(keys.op(vm_id))])
        vm_kvs, op_kvs = result.ranges
        vm = vm_pb2.Vm.FromString(vm_kvs[0].value) if vm_kvs else None
        op = vm_pb2.Op.FromString(op_kvs[0].value) if op_kvs else None
        return (vm, vm_kvs[0].mod_revision if vm_kvs else 0,
                op, op_kvs[0].mod_revision if op_kvs else 0)

    def read_cached(self, vm_id: str) -> tuple[vm_pb2.Vm | None, int, vm_pb2.Op | None, int]:
        """The same from this node's caches (possibly behind: callers CAS on it)."""
        vm = self.ctx.vms.get(self.ctx.keys.vm(vm_id))
        op = self.ctx.ops.get(self.ctx.keys.op(vm_id))
        return (vm.value if vm else None, vm.mod_revision if vm else 0,
                op.value if op else None, op.mod_revision if op else 0)

    # -- begin ----------------------------------------------------------------------

    def begin(self, vm_id: str, kind: str, host_id: str = "", force: bool = False,
              request_id: str = "") -> Begun:
        """Record the operation (state + op) in one fenced CAS txn; raises a
        `controlplane.errors` kind when refused.

        A lost compare may be our own write: a txn attempt that timed out (an etcd leader
        change) can still be committed, and the store's retry of it then fails its compare.
        So the re-read first checks whether the op in etcd is the one we tried to write.

        `request_id` (the caller's idempotency key): when the op in flight, or the VM's last
        finished op, was begun by a call with the same key, the answer is that op (`joined`)
        instead of a refusal. A client whose first attempt died with the connection (an
        owner killed mid-call) cannot know whether the op began; its retry must not fail
        as "busy with" its own op, nor begin a second one."""
        tried: set[str] = set()  # op ids of our txns that lost their compare
        # allocation records read from etcd after a lost compare (over the cached ones)
        fresh: dict[str, tuple[host_pb2.HostAllocation | None, int]] = {}
        for attempt in range(BEGIN_ATTEMPTS.get(kind, BEGIN_ATTEMPTS_DEFAULT)):
            # First from the watch-fed caches (no etcd read): the CAS proves them current.
            # A refusal or a lost CAS is decided again on an etcd read: a cache may lag.
            cached = attempt == 0
            vm, vm_rev, op, op_rev = self.read_cached(vm_id) if cached else self.read(vm_id)
            if vm is not None and op is not None and op.op_id in tried:
                log.info("vm %s: %s begun as op %s (our txn applied although its answer was "
                         "lost)", vm_id, kind, op.op_id,
                         extra={"vm_id": vm_id, "host_id": op.host_id, "op_id": op.op_id})
                return Begun(vm, op, op_rev)
            if request_id and vm is not None:
                joined = self._joined(vm, op, op_rev, kind, request_id)
                if joined is not None:
                    return joined
            locks = self.image_locks(vm_id) if kind == "start" else []
            try:
                if vm is None:
                    raise errors.NotFound(f"no VM {vm_id!r}")
                new, record = self._prepare(vm, op, op_rev, kind, host_id, fresh)
                record.request_id = request_id
                if not cached:
                    self._check_images_free(vm_id, locks)
            except errors.DomainError:
                if cached:
                    continue
                raise
            share = self._share(new, record)
            try:
                # the record the CAS compares is the one the share is checked against
                reserve_compares, reserve_puts = (self.allocations.reserve(
                    share, *(fresh[share.host_id] if share.host_id in fresh
                             else self.allocations.record(share.host_id)))
                    if share is not None else ([], []))
                result = self.ctx.owner_txn(
                    [t.mod_revision_is(self.ctx.keys.vm(vm_id), vm_rev),
                     t.mod_revision_is(self.ctx.keys.op(vm_id), op_rev),
                     *(t.absent(key) for key in locks), *reserve_compares],
                    [t.put(self.ctx.keys.vm(vm_id), new.SerializeToString()),
                     t.put(self.ctx.keys.op(vm_id), record.SerializeToString()),
                     *reserve_puts],
                )
            except Conflict:
                tried.add(record.op_id)
                if share is not None:
                    self._refresh_allocation(share.host_id, fresh)
                    self._stopping.wait(random.uniform(0, 0.002 * min(attempt + 1, 10)))
                continue
            except Fenced as exc:
                raise errors.Unreachable(str(exc)) from exc
            log.info("vm %s: %s begun as op %s (state %s -> %s, host %s, generation %d)",
                     vm_id, kind, record.op_id, vm.state, new.state, new.host_id,
                     new.generation,
                     extra={"vm_id": vm_id, "host_id": new.host_id, "op_id": record.op_id})
            return Begun(new, record, result.revision)
        raise errors.Busy(f"VM {vm_id} kept changing; retry")

    @staticmethod
    def _share(new: vm_pb2.Vm, record: vm_pb2.Op) -> vm_pb2.Vm | None:
        """The VM as its begin txn reserves it: a start on its (new) host; a migration on
        its target, with the target's generation (the source keeps its own entry until the
        migration is settled); other ops reserve nothing."""
        if record.kind == "start":
            return new
        if record.kind == "migrate":
            share = vm_pb2.Vm()
            share.CopyFrom(new)
            share.host_id, share.generation = record.target_host_id, record.target_generation
            return share
        return None

    @staticmethod
    def _joined(vm: vm_pb2.Vm, op: vm_pb2.Op | None, op_rev: int, kind: str,
                request_id: str) -> Begun | None:
        """The op a call with this `request_id` began already, if any (see `begin`)."""
        if op is not None and op.request_id == request_id:
            began_kind = op.kind
        elif vm.last_op.request_id == request_id:  # finished (another op may run now)
            began_kind = vm.last_op.kind
        else:
            return None
        if began_kind != kind:
            raise errors.Invalid(f"request_id {errors.shown(request_id)} began a {began_kind} "
                                 f"of VM {vm.vm_id}, not a {kind}")
        op_id = op.op_id if op is not None and op.request_id == request_id else vm.last_op.op_id
        log.info("vm %s: %s with request %s joins op %s", vm.vm_id, kind, request_id, op_id,
                 extra={"vm_id": vm.vm_id, "host_id": vm.host_id, "op_id": op_id})
        ours = op is not None and op.request_id == request_id
        return Begun(vm, op if ours else vm_pb2.Op(), op_rev, joined=True)  # type: ignore[arg-type]

    def running(self, op_id: str) -> futures.Future[vm_pb2.Vm] | None:
        """The execution of op `op_id` when this node runs it (for a joined call to wait)."""
        with self._lock:
            return self._running.get(op_id)

    def _check_images_free(self, vm_id: str, locks: list[str]) -> None:
        for key in locks:
            kv = self.ctx.store.get(key)
            if kv is not None:
                image = self.ctx.keys.last_segment(key)
                raise errors.Refused(f"VM {vm_id}: image {image} is locked by "
                                     f"{kv.value.decode()} for an offline operation; retry later")

    def _refresh_allocation(self, host_id: str,
                            fresh: dict[str, tuple[host_pb2.HostAllocation | None, int]]) -> None:
        """After a lost start txn: the host's allocation record from etcd (the cache may
        lag behind the winner's write); left out when etcd does not answer."""
        try:
            fresh[host_id] = self.allocations.read(host_id)
        except StoreError:
            fresh.pop(host_id, None)

    def _prepare(self, vm: vm_pb2.Vm, op: vm_pb2.Op | None, op_rev: int, kind: str,
                 host_id: str, fresh: dict[str, tuple[host_pb2.HostAllocation | None, int]]
                 | None = None) -> tuple[vm_pb2.Vm, vm_pb2.Op]:
        """The VM record and op record `begin` writes; raises a `controlplane.errors` kind
        when the op is refused."""
        self._check_op_free(vm, op, op_rev, kind)
        event = states.OPERATIONS[kind].begin
        if vm.state not in states.CALLABLE_FROM[kind] or not states.allowed(vm.state, event):
            raise errors.Refused(f"VM {vm.vm_id} is {vm.state}: cannot {kind} it (allowed from "
                                 f"{', '.join(sorted(states.CALLABLE_FROM[kind]))})")
        new = vm_pb2.Vm()
        new.CopyFrom(vm)
        new.ClearField("op")
        now = time.time()
        if kind == "start":
            target = self.placement(vm, host_id, fresh or {})
            if target != vm.host_id:
                new.last_host_id = vm.host_id
            new.host_id = target
            new.generation = next_generation(vm)  # every placement: a new generation
            new.issued_generation = new.generation
        elif not vm.host_id:
            raise errors.Refused(f"VM {vm.vm_id} is {vm.state} and placed on no host")
        new.state = states.next_state(vm.state, event)
        new.state_changed_at.CopyFrom(wiretime.stamp(now))
        record = self.new_op(vm.vm_id, kind, new.host_id, new.generation, now)
        if kind == "migrate":
            if self.migration_target is None:
                raise errors.Unsupported("this node does not run migrations")
            # the source stays the VM's host until the migration is settled
            record.target_host_id = self.migration_target(vm, host_id, fresh or {})
            record.target_generation = next_generation(vm)
            new.issued_generation = record.target_generation  # written by the begin txn
            record.phase = "preparing"
        return new, record

    def new_op(self, vm_id: str, kind: str, host_id: str, generation: int,
               now: float) -> vm_pb2.Op:
        return vm_pb2.Op(
            op_id=new_op_id(), vm_id=vm_id, kind=kind, node_id=self.ctx.node_id,
            incarnation=self.ctx.registration.incarnation, started_at=wiretime.stamp(now),
            deadline=wiretime.stamp(now + op_timeout(self.ctx.config, kind)), host_id=host_id,
            generation=generation)

    def _check_op_free(self, vm: vm_pb2.Vm, op: vm_pb2.Op | None, op_rev: int,
                       kind: str) -> None:
        if op is None:
            return
        view = op_view(op, op_rev)
        status = op_status(view, self.ctx.members(), time.time(),
                           self.ctx.config.get("vm.orphanedSkipTimeout"))
        if status != "expired":
            raise errors.Refused(f"VM {vm.vm_id} is {vm.state} with operation {op.kind} {op.op_id} "
                                 f"of {op.node_id} in flight ({status}); cannot {kind} it now")

    def placement(self, vm: vm_pb2.Vm, wanted: str,
                  fresh: dict[str, tuple[host_pb2.HostAllocation | None, int]] | None = None,
                  exclude: tuple[str, ...] = ()) -> str:
        """The host a start goes to (vm/placement.py: filters, then the weigher; the VM's
        previous host when it passes). Raises errors.NotFound (no such host), Refused (the
        named host is not connected or takes no placements; no host at all) or Exhausted
        (nothing fits: the message names the request and the best host's free room)."""
        fresh = fresh or {}
        if wanted:
            host = self.ctx.host_record(wanted)
            if host is None:
                raise errors.NotFound(f"no host {wanted!r}")
            if host.status != host_pb2.HOST_STATUS_CONNECTED:
                status = names.short(host_pb2.HostStatus, host.status)
                raise errors.Refused(f"host {wanted} is {status}")
            allocation = fresh[wanted][0] if wanted in fresh else \
                self.allocations.record(wanted)[0]
            why = self.allocations.check_host(vm, host, allocation)
            if why is not None:
                scheduling_refused = "no new placements" in why
                raise (errors.Refused if scheduling_refused else errors.Exhausted)(why)
            return wanted
        # the salt changes with each lost race: a loser tries another of the best hosts
        decision = self.allocations.decide(vm, prefer=vm.host_id, fresh=fresh,
                                           exclude=exclude, salt=f"{vm.vm_id}/{len(fresh)}")
        if decision.host_id is None:
            message = self.allocations.explain(vm, decision)
            raise (errors.Exhausted if decision.best is not None else errors.Refused)(message)
        return decision.host_id

    # -- run ------------------------------------------------------------------------

    def disk_of(self, vm: vm_pb2.Vm) -> str | None:
        """The path of the leaf of the VM's image (``images/<vm.image.image_id>``, when that
        image belongs to this VM): the agent runs the VM on it (libvirt: vda), so live
        snapshot and merge work on the chain the image record describes. "" when the VM has
        no such image; None when etcd cannot be read (the start fails rather than run the VM
        on the wrong disk)."""
        image_id = vm.image.image_id
        if not image_id:
            return ""
        try:
            kv = self.ctx.store.get(self.ctx.keys.image(image_id))
        except StoreError as exc:
            log.warning("vm %s: image %s not read: %s", vm.vm_id, image_id, exc)
            return None
        if kv is None:
            return ""
        image = volume_pb2.Image.FromString(kv.value)
        if image.vm_id != vm.vm_id:
            return ""
        leaf = next((v for v in image.volumes if v.volume_id == image.leaf_id), None)
        return leaf.path if leaf is not None else ""

    def start_volumes(self, vm: vm_pb2.Vm, kind: str
                       ) -> tuple[list[agent_pb2.AgentVolume], str]:
        """(the volumes a start hands the agent, why they cannot be: "" when they can)."""
        if kind != "start" or not vm.disks or self.volumes_of is None:
            return [], ""
        try:
            return self.volumes_of(vm), ""
        except errors.DomainError as exc:
            return [], f"volumes: {exc}"

    def submit(self, begun: Begun, force: bool = False,
               run: Callable[[Begun], vm_pb2.Vm] | None = None) -> futures.Future[vm_pb2.Vm]:
        """Run the begun op in a worker (`run`: another executor than `execute`, e.g. a
        migration's), known by its op id until it ends (`running`)."""
        future = self._pool.submit(run or (lambda b: self.execute(b, force)), begun)
        op_id = begun.op.op_id
        with self._lock:
            self._running[op_id] = future

        def forget(_: futures.Future[vm_pb2.Vm]) -> None:
            with self._lock:
                self._running.pop(op_id, None)

        future.add_done_callback(forget)
        return future

    def execute(self, begun: Begun, force: bool = False) -> vm_pb2.Vm:
        """Call the agent, then record the outcome. Returns the VM as finally written."""
        vm, op = begun.vm, begun.op
        operation = states.OPERATIONS[op.kind]
        host = self.ctx.host_record(vm.host_id)
        event, outcome, detail = operation.failure, "failed", ""
        devices = None
        disk = self.disk_of(vm) if op.kind == "start" and host is not None else ""
        volumes, volumes_error = self.start_volumes(vm, op.kind)
        if host is None:
            detail = f"host {vm.host_id} is gone"
        elif disk is None:
            detail = f"cannot read the record of image {vm.image.image_id} (etcd)"
        elif volumes_error:
            detail = volumes_error
        else:
            method = AGENT_CALLS[op.kind]
            request = getattr(agent_pb2, f"AgentService{method}Request")(
                host_id=vm.host_id, vm_id=vm.vm_id, op_id=op.op_id, generation=vm.generation,
                cpus=vm.cpus, memory_mb=vm.memory_mb, force=force,
                **({"disk_path": disk} if disk else {}),
                **({"volumes": volumes} if volumes else {}))
            try:
                self._call_agent(host.address, method, request, wiretime.seconds(op.deadline))
                event, outcome = operation.success, "completed"
                if op.kind in DEVICE_INFO_AFTER:
                    # The VM runs: its device addresses go into the txn that records it.
                    devices = self.fetch_device_info(vm, host.address, attempts=1)
            except grpc.RpcError as err:
                detail = f"agent: {err.code().name}: {err.details()}"
                if err.code() not in DEFINITE_FAILURES:
                    event, outcome = "", "unknown"  # sync settles it from the agent's report
            except errors.DomainError as exc:
                event, outcome, detail = "", "unknown", f"not waited for: {exc or 'stopping'}"
        metrics.VM_OPS.labels(op.kind, outcome).inc()
        final = self.finish(begun, event, outcome, detail, devices)
        if final is not None and outcome == "completed" and op.kind in DEVICE_INFO_AFTER \
                and devices is None:
            self.retry_device_info(final)  # never fails the start: retried in background
        if final is None:
            # Not recorded (fenced, or the record kept changing): answer the op as still in
            # flight rather than a state that would look settled.
            final = vm_pb2.Vm()
            final.CopyFrom(vm)
            final.op.CopyFrom(op)
        return final

    def _call_agent(self, address: str, method: str, request: object, deadline: float) -> object:
        if self._stopping.is_set():
            raise errors.Unreachable("node stopping")
        # NodeRestriction: only an agent whose certificate names the request's host
        stub = self.ctx.agents.stub(address, getattr(request, "host_id", None) or None)
        return getattr(stub, method)(request, timeout=max(0.1, deadline - time.time()))

    def finish(self, begun: Begun, event: str, outcome: str, detail: str,
               devices: agent_pb2.DeviceInfo | None = None) -> vm_pb2.Vm | None:
        """Write the outcome and remove the op, only while the op is still ours.

        The first try compares against the revision `begin` wrote (no read: nobody else
        writes a VM with a live op); a lost compare re-reads and checks the op is ours."""
        vm_id, op = begun.vm.vm_id, begun.op
        keys = self.ctx.keys
        for attempt in range(5):
            if attempt == 0:
                current, vm_rev, op_now, op_rev = begun.vm, begun.revision, op, begun.revision
            else:
                current, vm_rev, op_now, op_rev = self.read(vm_id)
            if current is not None and op_now is None and current.last_op.op_id == op.op_id:
                # our own txn applied although its answer was lost (store retry, see begin)
                return current
            if current is None or op_now is None or op_now.op_id != op.op_id:
                log.warning("vm %s: op %s was taken over or removed meanwhile; leaving it",
                            vm_id, op.op_id,
                            extra={"vm_id": vm_id, "host_id": op.host_id, "op_id": op.op_id})
                return current
            new = vm_pb2.Vm()
            new.CopyFrom(current)
            if event and states.allowed(current.state, event):
                new.state = states.next_state(current.state, event)
                new.state_changed_at.CopyFrom(wiretime.now())
            if devices is not None and current.generation == begun.vm.generation:
                new.devices.CopyFrom(devices)
            new.last_op.CopyFrom(vm_pb2.LastOp(
                op_id=op.op_id, kind=op.kind, outcome=outcome, node_id=self.ctx.node_id,
                finished_at=wiretime.now(), detail=detail, request_id=op.request_id))
            writes = [t.put(keys.vm(vm_id), new.SerializeToString()), t.delete(keys.op(vm_id))]
            if begun.ha_from is not None and outcome == "failed":
                # The failed attempt is part of the retry state the next attempt reads.
                writes.append(self._audit_put(vm_pb2.HaAudit(
                    vm_id=vm_id, decided_at=wiretime.now(), node_id=self.ctx.node_id,
                    action=ha.RESTART_FAILED, from_host=begun.ha_from, to_host=op.host_id,
                    generation=op.generation, reason="the HA start failed; retried with backoff",
                    evidence=[detail], op_id=op.op_id)))
            try:
                self.ctx.owner_txn(
                    [t.mod_revision_is(keys.vm(vm_id), vm_rev),
                     t.mod_revision_is(keys.op(vm_id), op_rev)], writes)
            except Conflict:
                continue
            except Fenced as exc:
                log.warning("vm %s: op %s not finished: %s (the next owner resolves it)",
                            vm_id, op.op_id, exc,
                            extra={"vm_id": vm_id, "host_id": op.host_id, "op_id": op.op_id})
                return None
            if devices is not None:
                metrics.DEVICE_INFO.labels("stored").inc()
            if new.state in FREE_STATES:
                # stopped, destroyed, a start that failed: its share of the host is free
                self.allocations.release(new.host_id, vm_id, new.generation)
            log.info("vm %s: op %s %s %s (%s)%s", vm_id, op.op_id, op.kind, outcome,
                     new.state, f": {detail}" if detail else "",
                     extra={"vm_id": vm_id, "host_id": new.host_id, "op_id": op.op_id})
            return new
        log.warning("vm %s: could not record the outcome of op %s", vm_id, op.op_id,
                    extra={"vm_id": vm_id, "host_id": op.host_id, "op_id": op.op_id})
        return None

    def fetch_device_info(self, vm: vm_pb2.Vm, address: str,
                          attempts: int = 5) -> agent_pb2.DeviceInfo | None:
        """The VM's device addresses from its agent, retried with backoff; None (logged)
        when every attempt failed."""
        request = agent_pb2.SyncVmDeviceInfoRequest(host_id=vm.host_id, vm_id=vm.vm_id,
                                                    generation=vm.generation)
        timeout = self.ctx.config.get("host.pingTimeout")
        try:
            for trial in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(attempts),
                wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
                retry=tenacity.retry_if_exception_type(grpc.RpcError),
                reraise=True,
            ):
                with trial:
                    if self._stopping.is_set():
                        return None
                    answer = self.ctx.agents.stub(address, request.host_id
                                                  ).SyncVmDeviceInfo(request, timeout=timeout)
                    return agent_pb2.DeviceInfo(devices=answer.devices)
        except grpc.RpcError as err:
            metrics.DEVICE_INFO.labels("failed").inc()
            log.warning("vm %s: device info sync failed (%d attempts): %s; retried later",
                        vm.vm_id, attempts, err.details(),
                        extra={"vm_id": vm.vm_id, "host_id": vm.host_id})
        return None

    def retry_device_info(self, vm: vm_pb2.Vm) -> None:
        """Fetch and store device info in the background, once at a time per VM (VM sync
        calls this for every Running VM that has none)."""
        with self._lock:
            if vm.vm_id in self._device_syncs or self._stopping.is_set():
                return
            self._device_syncs.add(vm.vm_id)

        def run() -> None:
            try:
                self.sync_device_info(vm)
            finally:
                with self._lock:
                    self._device_syncs.discard(vm.vm_id)

        try:
            self._pool.submit(run)
        except RuntimeError:  # pool shut down: stopping
            with self._lock:
                self._device_syncs.discard(vm.vm_id)

    def sync_device_info(self, vm: vm_pb2.Vm) -> bool:
        """Fetch the VM's device addresses and store them (CAS, same generation only)."""
        host = self.ctx.host_record(vm.host_id)
        devices = self.fetch_device_info(vm, host.address) if host else None
        if devices is None:
            return False
        for _ in range(5):
            current, vm_rev, _op, _ = self.read(vm.vm_id)
            if current is None or current.generation != vm.generation:
                return False
            current.devices.CopyFrom(devices)
            try:
                self.ctx.owner_txn([t.mod_revision_is(self.ctx.keys.vm(vm.vm_id), vm_rev)],
                                   [t.put(self.ctx.keys.vm(vm.vm_id),
                                          current.SerializeToString())])
            except Conflict:
                continue
            except Fenced:
                return False
            metrics.DEVICE_INFO.labels("stored").inc()
            return True
        return False

    # -- HA and strays (called by VM sync) ------------------------------------------

    def restart(self, action: Restart) -> futures.Future[vm_pb2.Vm] | None:
        """HA: move the VM to another connected host and start it there. One txn writes the
        new placement (generation + 1), our op and the audit record with its evidence.

        Every attempt is audited, and a failed one is retried: after `n` failures in a row
        (read from the audit records, so any owner reads the same) the next attempt waits
        `vm.ha.retry_delay(n)`. With no connected host the attempt writes a no-host record."""
        keys = self.ctx.keys
        entry = self.ctx.vms.get(keys.vm(action.vm.vm_id))
        if entry is None or entry.mod_revision != action.vm.mod_revision:
            return None  # changed since the report was read: the stale-report guard
        vm = entry.value
        failures = self._failed_attempts(vm)
        if failures is None:
            return None
        attempts, last = failures
        if action.retry and not attempts:
            return None  # Stopped by a start HA did not begin (a user's): not HA's to retry
        if not ha.retry_due(attempts, last, time.time(), self.ctx.config.get("ha.retryDelay"),
                            self.ctx.config.get("ha.retryMaxDelay")):
            metrics.HA_DECISIONS.labels("backoff").inc()
            return None
        decision = self.allocations.decide(vm, exclude=(action.from_host,),
                                           fallback_to_excluded=True)
        target = decision.host_id
        if target is None:
            self._no_host(action, vm, attempts, self.allocations.explain(vm, decision))
            return None
        state = vm.state
        for event in ("stopped", "starting"):
            if states.allowed(state, event):
                state = states.next_state(state, event)
        if state != "Starting":
            log.warning("HA: VM %s in %s cannot be started", vm.vm_id, vm.state,
                        extra={"vm_id": vm.vm_id, "host_id": action.from_host})
            return None
        now = time.time()
        new = vm_pb2.Vm()
        new.CopyFrom(vm)
        new.state = state
        new.state_changed_at.CopyFrom(wiretime.stamp(now))
        new.last_host_id, new.host_id = vm.host_id, target
        new.generation = next_generation(vm)
        new.issued_generation = new.generation
        new.ClearField("devices")
        op = self.new_op(vm.vm_id, "start", target, new.generation, now)
        audit = vm_pb2.HaAudit(
            vm_id=vm.vm_id, decided_at=wiretime.stamp(now), node_id=self.ctx.node_id,
            action=ha.RESTART,
            from_host=action.from_host, to_host=target, generation=new.generation,
            reason=(action.reason or "host does not run the VM") if not attempts
            else f"retry after {attempts} failed attempts",
            evidence=list(action.evidence), op_id=op.op_id)
        compares = [t.mod_revision_is(keys.vm(vm.vm_id), action.vm.mod_revision),
                    t.mod_revision_is(keys.op(vm.vm_id),
                                      action.op.mod_revision if action.op else 0)]
        # the restart reserves on the target in the same txn (a lost race: next round)
        try:
            reserve_compares, reserve_puts = self.allocations.reserve(
                new, *self.allocations.record(target))
            result = self.ctx.owner_txn([*compares, *reserve_compares], [
                t.put(keys.vm(vm.vm_id), new.SerializeToString()),
                t.put(keys.op(vm.vm_id), op.SerializeToString()),
                self._audit_put(audit), *reserve_puts,
            ])
        except (Conflict, Fenced) as exc:
            log.info("HA: restart of VM %s not taken (%s)", vm.vm_id, exc,
                     extra={"vm_id": vm.vm_id, "host_id": target, "op_id": op.op_id})
            return None
        metrics.HA_DECISIONS.labels("restart").inc()
        if action.from_host != target:
            self.allocations.release(action.from_host, vm.vm_id, vm.generation)
        log.warning("HA: restarting VM %s on %s (was on %s, generation %d): %s", vm.vm_id,
                    target, action.from_host, new.generation, "; ".join(action.evidence),
                    extra={"vm_id": vm.vm_id, "host_id": target, "op_id": op.op_id})
        return self.submit(Begun(new, op, result.revision, ha_from=action.from_host))

    def _audit_put(self, audit: vm_pb2.HaAudit) -> object:
        """The txn put of one audit record: keys sort by decision time (then op id)."""
        decided = wiretime.seconds(audit.decided_at)
        return t.put(f"{self.ctx.keys.audit(audit.vm_id)}{decided:017.6f}-{audit.op_id}",
                     audit.SerializeToString())

    def _failed_attempts(self, vm: vm_pb2.Vm) -> tuple[int, float] | None:
        """`vm.ha.failed_attempts` over the VM's audit records (None: etcd did not answer,
        so no attempt this round)."""
        try:
            kvs, _ = self.ctx.store.list_prefix(self.ctx.keys.audit(vm.vm_id))
        except StoreError as exc:
            log.warning("HA: audit records of VM %s not read (%s): no attempt this round",
                        vm.vm_id, exc, extra={"vm_id": vm.vm_id, "host_id": vm.host_id})
            return None
        records = []
        for kv in kvs:
            audit = vm_pb2.HaAudit.FromString(kv.value)
            records.append(ha.AttemptRecord(audit.action, wiretime.seconds(audit.decided_at),
                                            audit.generation, audit.op_id))
        return ha.failed_attempts(records, vm.generation)

    def _no_host(self, action: Restart, vm: vm_pb2.Vm, attempts: int,
                 why: str = "no connected host") -> None:
        """Audit an attempt that found no connected host (CAS on the VM: only while the VM
        is as the report saw it, so a VM placed meanwhile gets no stale record)."""
        now = time.time()
        delay = ha.retry_delay(attempts + 1, self.ctx.config.get("ha.retryDelay"),
                               self.ctx.config.get("ha.retryMaxDelay"))
        audit = vm_pb2.HaAudit(
            vm_id=vm.vm_id, decided_at=wiretime.stamp(now), node_id=self.ctx.node_id,
            action=ha.NO_HOST,
            from_host=action.from_host, generation=vm.generation,
            reason=f"no host to place the VM on ({why}); attempt {attempts + 1}, "
                   f"next in {delay:g} s or later",
            evidence=list(action.evidence), op_id=new_op_id())
        try:
            self.ctx.owner_txn([t.mod_revision_is(self.ctx.keys.vm(vm.vm_id),
                                                  action.vm.mod_revision)],
                               [self._audit_put(audit)])
        except (Conflict, Fenced) as exc:
            log.info("HA: no-host attempt of VM %s not recorded (%s)", vm.vm_id, exc,
                     extra={"vm_id": vm.vm_id, "host_id": action.from_host})
            return
        log.warning("HA: no connected host to restart VM %s on (attempt %d; next in %g s "
                    "or later)", vm.vm_id, attempts + 1, delay,
                    extra={"vm_id": vm.vm_id, "host_id": action.from_host})
        metrics.HA_DECISIONS.labels("no-host").inc()

    def stop_stray(self, host_id: str, vm_id: str, generation: int, reason: str) -> bool:
        """Stop a copy the records do not place there (an older generation, another host),
        and write an audit record saying why."""
        host = self.ctx.host_record(host_id)
        if host is None:
            return False
        request = agent_pb2.AgentServiceStopVmRequest(
            host_id=host_id, vm_id=vm_id, generation=generation, force=True, op_id=new_op_id())
        try:
            self.ctx.agents.stub(host.address, host_id).StopVm(
                request, timeout=self.ctx.config.get("host.pingTimeout"))
        except grpc.RpcError as err:
            log.warning("stray VM %s on %s not stopped: %s", vm_id, host_id, err.details(),
                        extra={"vm_id": vm_id, "host_id": host_id, "op_id": request.op_id})
            return False
        now = time.time()
        audit = vm_pb2.HaAudit(vm_id=vm_id, decided_at=wiretime.stamp(now),
                               node_id=self.ctx.node_id,
                               action=ha.STOP_STRAY, from_host=host_id, generation=generation,
                               reason=reason, evidence=[f"host {host_id} runs generation "
                                                        f"{generation}: {reason}"],
                               op_id=request.op_id)
        try:
            self.ctx.owner_txn([], [self._audit_put(audit)])
        except (Conflict, Fenced):
            pass
        metrics.HA_DECISIONS.labels("stop-stray").inc()
        log.warning("stopped stray copy of VM %s on %s (generation %d): %s", vm_id, host_id,
                    generation, reason,
                    extra={"vm_id": vm_id, "host_id": host_id, "op_id": request.op_id})
        return True
