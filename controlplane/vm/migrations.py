"""Live migration, the shell: the owner's agent calls, and settling a migration from what
both hosts' agents report (`vm.migration.resolve_migration`).

The op is begun like every op (`Operations.begin(vm_id, "migrate")`: VM Migrating, the op
naming source host + generation and target host + generation + 1, in one fenced CAS txn).
Then:
1. PrepareIncomingVm on the target (an incoming copy with generation + 1);
2. MigrateVm on the source (transfer and switchover), phase "transferring" written first;
3. settle, whatever 1 and 2 answered: ask both agents (ListVms), decide, act (abort the
   target's incoming copy, resume or stop the source copy), then write the record (host,
   generation, state) and remove the op in one CAS txn, only while the op is still ours.
An owner that dies anywhere leaves the op in etcd; VM sync finds it orphaned
(`vm.sync.migration_action`) and calls `resolve`, which runs step 3 only. Nothing here
settles a migration from one agent's answer or from a timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc

from controlplane import errors, metrics, wiretime
from controlplane.owner import Conflict, Fenced
from controlplane.store import txn as t
from controlplane.v1 import agent_pb2, host_pb2, vm_pb2
from controlplane.vm import states
from controlplane.vm.migration import (
    Abort,
    Complete,
    Copy,
    Decision,
    MigrationView,
    SideReport,
    Wait,
    resolve_migration,
)
from controlplane.vm.operations import DEFINITE_FAILURES, Begun, Operations

log = logging.getLogger(__name__)

AGENT_STATES = {1: "running", 2: "paused", 3: "crashed"}


class Migrations:
    def __init__(self, operations: Operations) -> None:
        self.ops = operations
        self.ctx = operations.ctx
        self._resolving: set[str] = set()
        self._lock = threading.Lock()
        operations.migration_target = self.target

    # -- target choice (called by Operations._prepare inside begin) -------------------

    def target(self, vm: vm_pb2.Vm, wanted: str,
               fresh: dict[str, tuple[host_pb2.HostAllocation | None, int]] | None = None
               ) -> str:
        """The target host, by the placement every start uses (filters: connected, takes
        placements, fits; then the weigher), never the source; raises errors.NotFound,
        Refused or Exhausted (nothing fits: the message names the request and the best
        host's room). The begin txn reserves the VM's share on it."""
        if wanted == vm.host_id:
            raise errors.Refused(f"VM {vm.vm_id} already runs on host {wanted}")
        return self.ops.placement(vm, wanted, fresh, exclude=(vm.host_id,))

    # -- the owner's run -----------------------------------------------------------------

    def submit(self, begun: Begun) -> futures.Future[vm_pb2.Vm]:
        return self.ops.submit(begun, run=self.execute)

    def execute(self, begun: Begun) -> vm_pb2.Vm:
        vm, op = begun.vm, begun.op
        deadline = wiretime.seconds(op.deadline)
        source = self.ctx.host_record(op.host_id)
        target = self.ctx.host_record(op.target_host_id)
        notes: list[str] = []
        answer = None
        volumes, why = self.ops.start_volumes(vm, "start")
        if source is None or target is None:
            notes.append("a host record is gone")
        elif why:
            notes.append(f"{why}; definite: the VM stays on the source")
        else:
            try:
                prepared = self._call(target.address, "PrepareIncomingVm",
                                      agent_pb2.AgentServicePrepareIncomingVmRequest(
                                          host_id=target.host_id, vm_id=vm.vm_id,
                                          op_id=op.op_id, generation=op.target_generation,
                                          cpus=vm.cpus, memory_mb=vm.memory_mb,
                                          source_host_id=source.host_id,
                                          volumes=volumes), deadline)
                self._set_phase(vm.vm_id, op.op_id, "transferring")
                answer = self._call(source.address, "MigrateVm",
                                    agent_pb2.AgentServiceMigrateVmRequest(
                                        host_id=source.host_id, vm_id=vm.vm_id, op_id=op.op_id,
                                        generation=op.generation,
                                        target_generation=op.target_generation,
                                        target_host_id=target.host_id,
                                        target_uri=prepared.uri,
                                        timeout=wiretime.duration(
                                            max(1.0, deadline - time.time() - 1.0))), deadline)
            except grpc.RpcError as err:
                notes.append(f"agent: {err.code().name}: {err.details()}")
                if err.code() in DEFINITE_FAILURES:
                    notes.append("definite: the VM stays on the source")
            except errors.DomainError as exc:
                notes.append(f"not waited for: {exc or 'stopping'}")
        if answer is not None:
            notes.append(f"transfer {wiretime.span(answer.total):.3f} s, downtime "
                         f"{wiretime.span(answer.downtime) * 1000:.1f} ms")
        self._set_phase(vm.vm_id, op.op_id, "settling")
        final = self.settle(vm.vm_id, op.op_id, "; ".join(notes), until=deadline)
        if final is None:
            final = vm_pb2.Vm()
            final.CopyFrom(vm)
            final.op.CopyFrom(op)
        return final

    def _call(self, address: str, method: str, request: object, deadline: float) -> object:
        return self.ops._call_agent(address, method, request, deadline)

    def _set_phase(self, vm_id: str, op_id: str, phase: str) -> None:
        """Progress only (CAS on the op; a lost write is harmless)."""
        entry = self.ctx.ops.get(self.ctx.keys.op(vm_id))
        if entry is None or entry.value.op_id != op_id:
            return
        op = vm_pb2.Op()
        op.CopyFrom(entry.value)
        op.phase = phase
        try:
            self.ctx.owner_txn([t.mod_revision_is(self.ctx.keys.op(vm_id), entry.mod_revision)],
                               [t.put(self.ctx.keys.op(vm_id), op.SerializeToString())])
        except (Conflict, Fenced):
            pass

    # -- settling (the owner after its calls, or any node for an orphan) -----------------

    def resolve_later(self, vm_id: str) -> bool:
        """Settle an orphaned (or overdue) migration in the background, once at a time per
        VM; one decision round (VM sync calls again next interval if it had to wait)."""
        with self._lock:
            if vm_id in self._resolving:
                return False
            self._resolving.add(vm_id)

        def run() -> None:
            try:
                vm, _, op, _ = self.ops.read(vm_id)
                if vm is not None and op is not None and op.kind == "migrate":
                    self.settle(vm_id, op.op_id, f"resolved by {self.ctx.node_id}: op of "
                                f"{op.node_id} incarnation {op.incarnation}", until=0.0,
                                outcome_prefix="orphan-")
            except Exception:  # noqa: BLE001 - logged; sync tries again next round
                log.exception("vm %s: migration not resolved", vm_id)
            finally:
                with self._lock:
                    self._resolving.discard(vm_id)

        try:
            self.ops._pool.submit(run)
        except RuntimeError:  # stopping
            with self._lock:
                self._resolving.discard(vm_id)
            return False
        return True

    def side(self, host_id: str, vm_id: str) -> SideReport | None:
        """What one host's agent says of the VM; None when it does not answer (a fenced
        host answers for itself: nothing runs there)."""
        host = self.ctx.host_record(host_id)
        if host is None:
            return None
        if host.status == host_pb2.HOST_STATUS_FENCED:
            return SideReport(None, False)  # powered off out of band: the proof nothing runs
        try:
            reply = self.ctx.agents.stub(host.address, host_id).ListVms(
                agent_pb2.AgentServiceListVmsRequest(host_id=host_id),
                timeout=self.ctx.config.get("host.pingTimeout"))
        except grpc.RpcError:
            return None
        copy = next((Copy(AGENT_STATES.get(v.state, "stopped"), v.generation, v.incoming)
                     for v in reply.vms if v.vm_id == vm_id
                     and v.state in AGENT_STATES), None)
        busy = not reply.reports_ops or any(o.vm_id == vm_id for o in reply.ops)
        return SideReport(copy, busy)

    def decide(self, op: vm_pb2.Op) -> Decision:
        view = MigrationView(op.vm_id, op.host_id, op.target_host_id, op.generation,
                             op.target_generation, wiretime.seconds(op.deadline))
        return resolve_migration(self.side(op.host_id, op.vm_id),
                                 self.side(op.target_host_id, op.vm_id), view, time.time())

    def settle(self, vm_id: str, op_id: str, detail: str, until: float,
               outcome_prefix: str = "") -> vm_pb2.Vm | None:
        """Decide and act until decided (retrying while the answer is Wait, until `until`;
        0: one round). Returns the VM as written, None when nothing was written."""
        delay = 0.1
        while True:
            vm, _, op, _ = self.ops.read(vm_id)
            if vm is None or op is None or op.op_id != op_id:
                return vm  # settled by someone else (or gone)
            decision = self.decide(op)
            if not isinstance(decision, Wait):
                written = self._act(vm_id, op, decision, detail, outcome_prefix)
                if written is not None:
                    return written
            else:
                log.info("vm %s: migration %s not settled yet: %s", vm_id, op_id,
                         decision.reason, extra={"vm_id": vm_id, "op_id": op_id})
            if time.time() + delay >= until or self.ops._stopping.is_set():
                return None
            self.ops._stopping.wait(delay)
            delay = min(delay * 2, 2.0)

    def _agent(self, host_id: str, method: str, request: object) -> object:
        host = self.ctx.host_record(host_id)
        if host is None:
            raise errors.NotFound(f"no host {host_id}")
        return getattr(self.ctx.agents.stub(host.address, host_id), method)(
            request, timeout=self.ctx.config.get("host.pingTimeout"))

    def _act(self, vm_id: str, op: vm_pb2.Op, decision: Decision, detail: str,
             prefix: str) -> vm_pb2.Vm | None:
        evidence = "; ".join(decision.evidence)  # type: ignore[union-attr]
        if isinstance(decision, Abort):
            try:
                self._agent(op.target_host_id, "AbortIncomingVm",
                            agent_pb2.AgentServiceAbortIncomingVmRequest(
                                host_id=op.target_host_id, vm_id=vm_id, op_id=op.op_id,
                                generation=op.target_generation))
            except (grpc.RpcError, errors.DomainError) as err:
                # switched over meanwhile (FAILED_PRECONDITION) or no answer: decide again
                log.info("vm %s: abort of the incoming copy on %s not done (%s): deciding "
                         "again", vm_id, op.target_host_id, _why(err),
                         extra={"vm_id": vm_id, "op_id": op.op_id})
                return None
            if decision.resume_source:
                try:
                    self._agent(op.host_id, "ResumeVm", agent_pb2.AgentServiceResumeVmRequest(
                        host_id=op.host_id, vm_id=vm_id, op_id=op.op_id,
                        generation=op.generation))
                except (grpc.RpcError, errors.DomainError) as err:
                    log.warning("vm %s: source copy on %s not resumed (%s); VM sync shows it "
                                "paused", vm_id, op.host_id, _why(err),
                                extra={"vm_id": vm_id, "op_id": op.op_id})
            return self._record(vm_id, op, op.host_id, op.generation, decision.state,
                                f"{prefix}aborted" if prefix else "aborted",
                                f"{detail}; stays on {op.host_id}: {evidence}".lstrip("; "))
        assert isinstance(decision, Complete)
        if decision.stop_source:
            try:
                self._agent(op.host_id, "StopVm", agent_pb2.AgentServiceStopVmRequest(
                    host_id=op.host_id, vm_id=vm_id, op_id=op.op_id, generation=op.generation,
                    force=True))
            except (grpc.RpcError, errors.DomainError) as err:
                log.warning("vm %s: source copy on %s not stopped (%s): VM sync stops it as a "
                            "stray", vm_id, op.host_id, _why(err),
                            extra={"vm_id": vm_id, "op_id": op.op_id})
        return self._record(vm_id, op, op.target_host_id, op.target_generation, decision.state,
                            f"{prefix}resolved" if prefix else "completed",
                            f"{detail}; moved to {op.target_host_id}: {evidence}".lstrip("; "))

    def _record(self, vm_id: str, op: vm_pb2.Op, host_id: str, generation: int, state: str,
                outcome: str, detail: str) -> vm_pb2.Vm | None:
        """One CAS txn: the VM's placement and state, the op removed (only while it is the
        same op)."""
        keys = self.ctx.keys
        for _ in range(5):
            vm, vm_rev, op_now, op_rev = self.ops.read(vm_id)
            if vm is None or op_now is None or op_now.op_id != op.op_id:
                return vm
            new = vm_pb2.Vm()
            new.CopyFrom(vm)
            if host_id != vm.host_id:
                new.last_host_id, new.host_id = vm.host_id, host_id
                new.ClearField("devices")
            new.generation = generation
            if new.state != state:
                new.state = state
                new.state_changed_at.CopyFrom(wiretime.now())
            new.last_op.CopyFrom(vm_pb2.LastOp(
                op_id=op.op_id, kind=op.kind, outcome=outcome, node_id=self.ctx.node_id,
                finished_at=wiretime.now(), detail=detail))
            try:
                self.ctx.owner_txn([t.mod_revision_is(keys.vm(vm_id), vm_rev),
                                    t.mod_revision_is(keys.op(vm_id), op_rev)],
                                   [t.put(keys.vm(vm_id), new.SerializeToString()),
                                    t.delete(keys.op(vm_id))])
            except Conflict:
                continue
            except Fenced as exc:
                log.warning("vm %s: migration %s not recorded: %s", vm_id, op.op_id, exc,
                            extra={"vm_id": vm_id, "op_id": op.op_id})
                return None
            # the share the VM no longer holds: the source's once it moved, else the target's
            # (best effort: the hosts' owners reconcile whatever is left)
            if host_id != vm.host_id:
                self.ops.allocations.release(vm.host_id, vm_id, vm.generation)
            else:
                self.ops.allocations.release(op.target_host_id, vm_id, op.target_generation)
            metrics.VM_OPS.labels("migrate", outcome).inc()
            log.info("vm %s: migration %s %s: %s on %s generation %d (%s)", vm_id, op.op_id,
                     outcome, state, host_id, generation, detail,
                     extra={"vm_id": vm_id, "host_id": host_id, "op_id": op.op_id})
            return new
        return None


def _why(err: Exception) -> str:
    if isinstance(err, grpc.RpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)


assert "migrate" in states.OPERATIONS
