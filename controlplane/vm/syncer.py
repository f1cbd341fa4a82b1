"""VM sync, the shell: apply a plan from `vm.sync` with fenced compare-and-swap txns.

Every write compares the mod_revision the record had when the report was pulled, so a
report whose record changed during the pull is dropped by etcd itself (the stale-report
guard): nothing here re-reads a VM. Writes happen only for changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controlplane import metrics, wiretime
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.store import txn as t
from controlplane.v1 import vm_pb2
from controlplane.vm.operations import Operations
from controlplane.vm.sync import (
    Action,
    MarkOrphan,
    ResolveMigration,
    Restart,
    SetState,
    Skip,
    StopStray,
)

log = logging.getLogger(__name__)


@dataclass
class Applied:
    writes: int = 0
    dropped: int = 0  # CAS lost: the record changed since the pull (stale report)
    skipped: int = 0
    restarts: int = 0
    strays: int = 0


class Syncer:
    def __init__(self, ctx: OwnerContext, operations: Operations,
                 resolve_migration: Callable[[str], bool] = lambda vm_id: False) -> None:
        self.ctx = ctx
        self.operations = operations
        # settles a migration from both hosts' reports (vm.migrations.Migrations)
        self.resolve_migration = resolve_migration

    def apply(self, actions: Sequence[Action]) -> Applied:
        out = Applied()
        for action in actions:
            try:
                self._apply_one(action, out)
            except Fenced as exc:
                log.warning("sync stopped: %s", exc)
                break
            except Conflict:
                out.dropped += 1
                metrics.SYNC_WRITES.labels("dropped").inc()
        return out

    def _apply_one(self, action: Action, out: Applied) -> None:
        keys = self.ctx.keys
        if isinstance(action, Skip):
            out.skipped += 1
            metrics.SYNC_SKIPS.labels(action.reason.split(" ", 1)[0]).inc()
        elif isinstance(action, MarkOrphan):
            entry = self.ctx.ops.get(keys.op(action.op.vm_id))
            if entry is None or entry.mod_revision != action.op.mod_revision:
                return
            op = vm_pb2.Op()
            op.CopyFrom(entry.value)
            op.orphaned_at.CopyFrom(wiretime.now())
            self.ctx.owner_txn([t.mod_revision_is(keys.op(op.vm_id), entry.mod_revision)],
                               [t.put(keys.op(op.vm_id), op.SerializeToString())])
            log.warning("vm %s: op %s (%s) of %s incarnation %d is an orphan: skipped for up "
                        "to vm.orphanedSkipTimeout=%ss", op.vm_id, op.op_id, op.kind,
                        op.node_id, op.incarnation, self.ctx.config.get("vm.orphanedSkipTimeout"),
                        extra={"vm_id": op.vm_id, "host_id": op.host_id, "op_id": op.op_id})
            out.writes += 1
        elif isinstance(action, SetState):
            self._set_state(action)
            out.writes += 1
            metrics.SYNC_WRITES.labels("applied").inc()
        elif isinstance(action, Restart):
            if self.operations.restart(action) is not None:
                out.restarts += 1
        elif isinstance(action, ResolveMigration):
            self.resolve_migration(action.vm.vm_id)
        elif isinstance(action, StopStray):
            if self.operations.stop_stray(action.host_id, action.vm_id, action.generation,
                                          action.reason):
                out.strays += 1

    def _set_state(self, action: SetState) -> None:
        keys = self.ctx.keys
        vm_id = action.vm.vm_id
        entry = self.ctx.vms.get(keys.vm(vm_id))
        if entry is None or entry.mod_revision != action.vm.mod_revision:
            raise Conflict("changed since the pull")
        vm = vm_pb2.Vm()
        vm.CopyFrom(entry.value)
        compares = [t.mod_revision_is(keys.vm(vm_id), action.vm.mod_revision)]
        success = []
        if action.state != vm.state:
            vm.state = action.state
            vm.state_changed_at.CopyFrom(wiretime.now())
        if action.op is not None:
            op_entry = self.ctx.ops.get(keys.op(vm_id))
            compares.append(t.mod_revision_is(keys.op(vm_id), action.op.mod_revision))
            success.append(t.delete(keys.op(vm_id)))
            op = op_entry.value if op_entry else None
            vm.last_op.CopyFrom(vm_pb2.LastOp(
                op_id=action.op.op_id, kind=action.op.kind, outcome=action.op_outcome,
                node_id=self.ctx.node_id, finished_at=wiretime.now(),
                request_id=op.request_id if op else "",
                detail=f"op of {action.op.node_id} incarnation {action.op.incarnation}"
                + (f", orphaned at {wiretime.seconds(op.orphaned_at):.3f}"
                   if op and op.HasField("orphaned_at") else "")))
            log.warning("vm %s: orphan op %s (%s) removed: %s", vm_id, action.op.op_id,
                        action.op.kind, action.op_outcome,
                        extra={"vm_id": vm_id, "host_id": action.vm.host_id,
                               "op_id": action.op.op_id})
        success.insert(0, t.put(keys.vm(vm_id), vm.SerializeToString()))
        self.ctx.owner_txn(compares, success)
        if action.state != action.vm.state:
            log.info("vm %s: %s --%s--> %s (sync)", vm_id, action.vm.state, action.event,
                     action.state, extra={"vm_id": vm_id, "host_id": action.vm.host_id})
