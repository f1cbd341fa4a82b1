"""Host maintenance: the host's owner evacuates every VM from a host in
PREPARING_MAINTENANCE, one per-VM step each (`evacuate_vm`), until none holds the host;
then the host is MAINTENANCE.

Why the state lives in the host record (scheduling + `maintenance`): an owner can die at
any point, and the next owner of the host (the ring moves it) must carry on from what etcd
says, not from what the dead one remembered. Each round reads the VMs placed on the host
from the cache, evacuates those that hold it (not stopped) and have no op in flight, and
writes progress (counters, what is left and why) with one CAS on the host record. A cold
migration writes its VM into `maintenance.moving` BEFORE it stops the VM, so an owner that
died between the stop and the start elsewhere leaves a record that says "start this one on
another host", and the next owner does.

Ops run on this node (the host's owner), as HA's restarts do, with the same fenced CAS txns
as any op: a user's op on the same VM in between makes ours refused, never doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

from controlplane import errors, wiretime
from controlplane.cluster.owned_loop import OwnedLoop
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.store import txn as t
from controlplane.store.errors import StoreError
from controlplane.v1 import host_pb2, vm_pb2
from controlplane.vm.allocations import holds
from controlplane.vm.migrations import Migrations
from controlplane.vm.operations import Operations

log = logging.getLogger(__name__)

MIGRATE = "migrate"
STOP = "stop"
POLICIES = {host_pb2.MAINTENANCE_POLICY_MIGRATE: MIGRATE, host_pb2.MAINTENANCE_POLICY_STOP: STOP}
POLICY_ENUM = {v: k for k, v in POLICIES.items()}
PARALLEL = 8  # VMs evacuated at once per host (each is a stop and maybe a start: seconds)
ROUND_INTERVAL = 0.5  # seconds between rounds of one host while it is being evacuated


@dataclass(frozen=True)
class Outcome:
    """What one evacuation step did: "migrated" (to `host_id`), "stopped", or "left"
    (still on the host; `reason` says why)."""

    vm_id: str
    result: str
    reason: str = ""
    host_id: str = ""


def policy_of(host: host_pb2.Host, default: str) -> str:
    return POLICIES.get(host.maintenance.policy, default)


class MaintenanceLoop:
    """Runs maintenance rounds on every host this node owns that is being evacuated."""

    def __init__(self, ctx: OwnerContext, operations: Operations, *,
                 migrations: Migrations | None = None,
                 enabled: Callable[[], bool] = lambda: True, tick: float = 0.1) -> None:
        self.ctx = ctx
        self.operations = operations
        # Live migration for policy migrate; without it (a node built without one) the
        # migrate policy is a cold migration: stop, place, start elsewhere.
        self.migrations = migrations
        self._pool = futures.ThreadPoolExecutor(PARALLEL * 2, thread_name_prefix="evacuate")
        self.loop: OwnedLoop[None] = OwnedLoop(
            "maintenance", resources=self._evacuating, owns=ctx.owns, work=self.round,
            interval=lambda: ROUND_INTERVAL,
            enabled=lambda: not ctx.registration.fenced and enabled(),
            resource_key="host_id", workers=4, tick=tick)

    def start(self) -> MaintenanceLoop:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def poke(self, host_id: str) -> None:
        self.loop.poke(host_id)

    def _evacuating(self) -> list[str]:
        return [e.value.host_id for e in self.ctx.hosts.entries()
                if e.value.scheduling == host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE]

    # -- one round ------------------------------------------------------------------

    def round(self, host_id: str) -> None:
        host = self.ctx.host_record(host_id)
        if host is None or host.scheduling != host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE:
            return
        policy = policy_of(host, str(self.ctx.config.get("host.maintenancePolicy")))
        busy = {e.value.vm_id: e.value for e in self.ctx.ops.by_index(host_id)}
        moving = set(host.maintenance.moving)
        todo: list[vm_pb2.Vm] = []
        left: dict[str, str] = {}
        restarts: list[vm_pb2.Vm] = []  # stopped here by a cold migration: start elsewhere
        for entry in self.ctx.vms.by_index(host_id):
            vm = entry.value
            if vm.vm_id in busy:
                op = busy[vm.vm_id]
                left[vm.vm_id] = f"operation {op.kind} {op.op_id} of {op.node_id} in flight"
            elif vm.vm_id in moving and vm.state == "Stopped":
                restarts.append(vm)
            elif holds(vm):
                todo.append(vm)
        if policy == MIGRATE and todo and self.migrations is None:
            # the intent first: a death after the stop must not turn a move into a stop
            if not self._update(host_id, add_moving=[vm.vm_id for vm in todo]):
                return  # the record changed (enabled again?): next round decides afresh
        work = [(vm, policy, False) for vm in todo] + [(vm, MIGRATE, True) for vm in restarts]
        outcomes: list[Outcome] = []
        if work:
            jobs = [self._pool.submit(self.evacuate_vm, vm, pol, restart_only=only)
                    for vm, pol, only in work[:PARALLEL * 4]]
            for job in jobs:
                try:
                    outcomes.append(job.result())
                except Exception as exc:  # noqa: BLE001 - one VM's failure is its reason
                    log.exception("maintenance of %s: an evacuation failed", host_id,
                                  extra={"host_id": host_id})
                    outcomes.append(Outcome("?", "left", f"failed: {exc}"))
        for outcome in outcomes:
            if outcome.result == "left":
                left[outcome.vm_id] = outcome.reason
        self._update(host_id, outcomes=outcomes, left=left)

    def evacuate_vm(self, vm: vm_pb2.Vm, policy: str, restart_only: bool = False) -> Outcome:
        """Move one VM off its host (policy migrate) or stop it (policy stop, or when no
        other host fits it).

        Policy migrate is a live migration (the MigrateVm op, `_live_migrate`) when this
        node runs migrations; else a cold one: stop here, place (this host is excluded by
        its scheduling state), start on the target. `restart_only`: the second half of a
        cold migration an earlier owner began (the VM is in `maintenance.moving`)."""
        host_id = vm.host_id
        target = ""
        if policy == MIGRATE and not restart_only and self.migrations is not None:
            return self._live_migrate(vm)
        if policy == MIGRATE:
            try:
                target = self.operations.placement(vm, "", exclude=(host_id,))
            except (errors.Exhausted, errors.Refused) as exc:
                if restart_only:
                    return Outcome(vm.vm_id, "stopped", f"stopped: {exc}")
                policy, target = STOP, ""
                log.warning("maintenance of %s: VM %s is stopped: %s", host_id, vm.vm_id, exc,
                            extra={"host_id": host_id, "vm_id": vm.vm_id})
        if not restart_only:
            stopped = self._run(vm.vm_id, "stop")
            if stopped is not None:
                return Outcome(vm.vm_id, "left", stopped)
            if policy == STOP:
                return Outcome(vm.vm_id, "stopped")
        # cold migration, second half: start elsewhere (placement again: the target of
        # before may have filled meanwhile; this host is in maintenance, never chosen)
        failed = self._run(vm.vm_id, "start")
        if failed is not None:
            return Outcome(vm.vm_id, "stopped", f"stopped; not started elsewhere: {failed}")
        current = self.ctx.vms.get(self.ctx.keys.vm(vm.vm_id))
        placed = current.value.host_id if current is not None else target
        return Outcome(vm.vm_id, "migrated", host_id=placed)

    def _live_migrate(self, vm: vm_pb2.Vm) -> Outcome:
        """One live migration, run to its end on this node. Nothing fits elsewhere: the VM
        is stopped (the policy's fallback). The migration failed (aborted: the VM runs on
        here still): left, with the reason, and the next round tries again; an operator who
        cannot wait runs the maintenance with policy stop."""
        assert self.migrations is not None
        host_id = vm.host_id
        try:
            self.operations.placement(vm, "", exclude=(host_id,))
        except (errors.Exhausted, errors.Refused) as exc:
            log.warning("maintenance of %s: VM %s is stopped: %s", host_id, vm.vm_id, exc,
                        extra={"host_id": host_id, "vm_id": vm.vm_id})
            stopped = self._run(vm.vm_id, "stop")
            return Outcome(vm.vm_id, "left", stopped) if stopped is not None else \
                Outcome(vm.vm_id, "stopped", f"stopped: {exc}")
        try:
            begun = self.operations.begin(vm.vm_id, "migrate")
        except errors.DomainError as exc:
            return Outcome(vm.vm_id, "left", f"migrate refused: {exc}")
        except StoreError as exc:
            return Outcome(vm.vm_id, "left", f"migrate not begun (etcd: {exc})")
        result = self.migrations.execute(begun)
        if result is not None and result.last_op.op_id == begun.op.op_id \
                and result.host_id != host_id:
            return Outcome(vm.vm_id, "migrated", host_id=result.host_id)
        why = (f"migration {result.last_op.outcome}: {result.last_op.detail}"
               if result is not None and result.last_op.op_id == begun.op.op_id
               else "migration outcome not recorded yet")
        return Outcome(vm.vm_id, "left", why)

    def _run(self, vm_id: str, kind: str) -> str | None:
        """Run one op to its end on this node; None when it completed, else why not."""
        try:
            begun = self.operations.begin(vm_id, kind)
        except errors.DomainError as exc:
            return f"{kind} refused: {exc}"
        except StoreError as exc:
            return f"{kind} not begun (etcd: {exc})"
        result = self.operations.execute(begun)
        if result is None:
            return f"{kind} outcome not recorded"
        if result.last_op.op_id == begun.op.op_id and result.last_op.outcome != "completed":
            return f"{kind} {result.last_op.outcome}: {result.last_op.detail}"
        return None

    # -- the host record ------------------------------------------------------------

    def _update(self, host_id: str, *, add_moving: list[str] | None = None,
                outcomes: list[Outcome] | None = None,
                left: dict[str, str] | None = None) -> bool:
        """One CAS on the host record: progress of this round, or the VMs about to be moved;
        and MAINTENANCE once nothing holds the host. False when the host is no longer being
        evacuated or the write did not apply."""
        key = self.ctx.keys.host(host_id)
        for _ in range(5):
            try:
                kv = self.ctx.store.get(key)
            except StoreError:
                return False
            if kv is None:
                return False
            host = host_pb2.Host.FromString(kv.value)
            if host.scheduling != host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE:
                return False
            m = host.maintenance
            if add_moving:
                m.moving.extend(v for v in add_moving if v not in m.moving)
            for outcome in outcomes or ():
                if outcome.result == "migrated":
                    m.migrated += 1
                elif outcome.result == "stopped":
                    m.stopped += 1
                if outcome.result != "left" and outcome.vm_id in m.moving:
                    m.moving.remove(outcome.vm_id)
            if left is not None:
                now = wiretime.now()
                del m.left[:]
                m.left.extend(host_pb2.MaintenanceVm(vm_id=v, reason=why, tried_at=now)
                              for v, why in sorted(left.items()))
                if not left and not self._holding(host_id, outcomes or []):
                    host.scheduling = host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE
                    m.finished_at.CopyFrom(now)
                    del m.moving[:]
            try:
                result = self.ctx.owner_txn([t.mod_revision_is(key, kv.mod_revision)],
                                            [t.put(key, host.SerializeToString())])
            except Conflict:
                continue
            except (Fenced, StoreError):
                return False
            self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            if host.scheduling == host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE:
                log.warning("host %s is in maintenance: %d VMs migrated, %d stopped", host_id,
                            m.migrated, m.stopped, extra={"host_id": host_id})
            return True
        return False

    def _holding(self, host_id: str, outcomes: list[Outcome]) -> bool:
        """Whether a VM still holds the host by etcd (not the cache: the round's own stops
        may not be in it yet), apart from those this round just moved or stopped."""
        done = {o.vm_id for o in outcomes if o.result != "left"}
        for entry in self.ctx.vms.by_index(host_id):
            if entry.value.vm_id in done or not holds(entry.value):
                continue
            try:
                kv = self.ctx.store.get(entry.key)
            except StoreError:
                return True
            if kv is not None and holds(vm := vm_pb2.Vm.FromString(kv.value)) \
                    and vm.host_id == host_id:
                return True
        return False
