"""VM sync, the pure core: what to do with one host's report. No I/O here.

The owner of a host pulls the agent's report (VMs with generations, operations in
progress) and calls `plan_sync` with the records from its watch-fed caches. The answer is
a list of actions the shell applies with compare-and-swap txns. Keeping the decisions pure
is what lets the nasty cases be tested one by one:

- A VM with an operation in flight is skipped. The operation's management node left (its
  incarnation is no longer a member): the op is an *orphan*, still skipped until the agent
  shows it finished or `vm.orphanedSkipTimeout` ran out, counted from `orphaned_at` (set by
  the first owner that saw the orphan; evaluated lazily here, so no timer outlives stop()).
- A VM the agent is still working on (its op list) is skipped too, whatever etcd says: a
  slow start whose VM has not appeared yet is not a VM that is not running.
- A copy running with an older generation than its record, or on a host that is not its
  record's host, is a stray: it is stopped, never adopted.
- HA (NeverStop VMs): only on proof. A reachable host that reports the VM not running, or
  a host fenced out of band. Never on silence.
- HA that failed is retried on the same proof: a NEVER_STOP VM whose start failed (it is
  Stopped, its last op a failed start) is restarted when its host reports it absent or is
  fenced. How often is the shell's business (`vm.ha.retry_due`, over the audit records).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from controlplane.vm import states

# Records sync leaves alone entirely: never started, gone, or terminal.
UNTRACKED = frozenset({"Created", "Destroyed", "Expunging", "Error"})
# The state an agent report describes, to tell "unchanged" from "not allowed".
REPORTED_STATE = {"running": "Running", "paused": "Paused", "crashed": "Crashed",
                  "stopped": "Stopped"}
# Where an HA VM was meant to be running (a user stop passes through Stopping with an op).
SHOULD_RUN = frozenset({"Running", "Unknown", "Paused", "Crashed", "NoState", "Starting",
                        "Rebooting", "Pausing", "Resuming", "Migrating"})


@dataclass(frozen=True)
class VmRecordView:
    vm_id: str
    state: str
    host_id: str
    generation: int
    ha: bool
    mod_revision: int
    # Its last operation was a start that failed: a NEVER_STOP VM left Stopped by it still
    # needs HA (whether HA began that start is for the shell to check in the audit records).
    start_failed: bool = False


@dataclass(frozen=True)
class OpView:
    vm_id: str
    op_id: str
    kind: str
    node_id: str
    incarnation: int
    orphaned_at: float
    mod_revision: int
    deadline: float = 0.0


@dataclass(frozen=True)
class ReportedVm:
    vm_id: str
    state: str  # running, paused, crashed, stopped
    generation: int


@dataclass(frozen=True)
class Report:
    """One host's answer. `fenced` = the host was powered off out of band: nothing runs."""

    host_id: str
    vms: Mapping[str, ReportedVm]
    agent_ops: Mapping[str, str]  # vm_id -> op id in progress on the agent
    reports_ops: bool = True
    fenced: bool = False


OpStatus = Literal["live", "orphan-new", "orphan", "expired"]


def op_status(op: OpView, members: Mapping[str, int], now: float,
              orphan_timeout: float) -> OpStatus:
    """Live while its (node, incarnation) is a member; else an orphan until the timeout."""
    if members.get(op.node_id) == op.incarnation:
        return "live"
    if not op.orphaned_at:
        return "orphan-new"
    if now - op.orphaned_at >= orphan_timeout:
        return "expired"
    return "orphan"


# -- actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkOrphan:
    """Stamp orphaned_at on an orphan op (CAS on the op) so every owner counts the same."""

    op: OpView


@dataclass(frozen=True)
class SetState:
    """Write the VM's new state (CAS on the VM; with `op`, also remove that op by CAS)."""

    vm: VmRecordView
    state: str
    event: str
    op: OpView | None = None
    op_outcome: str = ""


@dataclass(frozen=True)
class Restart:
    """HA: place the VM on another host and start it there (one txn: VM, op, audit)."""

    vm: VmRecordView
    from_host: str
    evidence: tuple[str, ...]
    op: OpView | None = None  # an orphan op to remove in the same txn
    op_outcome: str = ""
    # A retry of a failed HA start (the VM is Stopped): the shell confirms from the audit
    # records that HA began that start, and leaves a user's failed start alone.
    retry: bool = False
    # The audit record's reason ("": the shell's default for the kind of attempt).
    reason: str = ""


@dataclass(frozen=True)
class ResolveMigration:
    """A migrate op whose owner left (or that outlived its deadline): the shell asks both
    hosts' agents which copy runs and settles it (`vm.migration.resolve_migration`); VM
    sync never settles a migration from one host's report."""

    vm: VmRecordView
    op: OpView


@dataclass(frozen=True)
class StopStray:
    host_id: str
    vm_id: str
    generation: int
    reason: str


@dataclass(frozen=True)
class Skip:
    vm_id: str
    reason: str


Action = MarkOrphan | SetState | Restart | StopStray | Skip | ResolveMigration


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)  # reported, no record: left alone

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def plan_sync(
    report: Report,
    records: Sequence[VmRecordView],
    records_by_id: Mapping[str, VmRecordView],
    ops: Mapping[str, OpView],
    members: Mapping[str, int],
    now: float,
    orphan_timeout: float,
    ha_allowed: bool,
) -> Plan:
    """Decide, for one host report, every VM record placed on the host and every VM the
    host runs. `records` are the records placed on this host; `records_by_id` any record
    (to recognise strays); `members` node id -> incarnation of the current members."""
    plan = Plan()
    host = report.host_id
    for vm in records:
        if vm.state in UNTRACKED or vm.host_id != host:
            continue
        op = ops.get(vm.vm_id)
        outcome = ""
        migration = migration_action(vm, op, members, now, orphan_timeout)
        if migration is not None:
            plan.actions.append(migration)
            continue
        if op is not None:
            status = op_status(op, members, now, orphan_timeout)
            if status == "live":
                plan.actions.append(Skip(vm.vm_id, f"operation {op.kind} {op.op_id} in flight"))
                continue
            if status == "orphan-new":
                plan.actions.append(MarkOrphan(op))
                plan.actions.append(Skip(vm.vm_id, f"operation {op.op_id} just orphaned"))
                continue
            if status == "orphan":
                agent_busy = vm.vm_id in report.agent_ops
                if report.fenced or (report.reports_ops and not agent_busy):
                    outcome = "orphan-resolved"
                else:
                    plan.actions.append(Skip(vm.vm_id, f"orphan operation {op.op_id} "
                                             "within vm.orphanedSkipTimeout"))
                    continue
            else:
                outcome = "orphan-expired"
        if vm.vm_id in report.agent_ops:
            # The agent is still working on it (e.g. a slow start whose VM has not appeared).
            if op is not None:
                plan.actions.append(SetState(vm, vm.state, "", op, outcome))
            plan.actions.append(Skip(vm.vm_id, "the agent has an operation in progress"))
            continue
        seen = report.vms.get(vm.vm_id)
        if seen is not None and seen.generation < vm.generation:
            plan.actions.append(StopStray(host, vm.vm_id, seen.generation,
                                          f"generation {seen.generation} < record "
                                          f"{vm.generation}"))
            seen = None
        event = states.event_for_report(seen.state if seen else "absent")
        if REPORTED_STATE[event] == vm.state and not states.allowed(vm.state, event):
            if op is not None:  # e.g. Paused reported paused: no edge, nothing changed
                plan.actions.append(SetState(vm, vm.state, "", op, outcome))
            continue
        if not states.allowed(vm.state, event):
            if op is not None:
                plan.actions.append(SetState(vm, vm.state, "", op, outcome))
            plan.actions.append(Skip(vm.vm_id, f"report {event!r} not valid in {vm.state}"))
            continue
        target = states.next_state(vm.state, event)
        lost = target in ("Stopped", "Crashed") and vm.state in SHOULD_RUN
        retry = awaits_retry(vm) and event == "stopped"
        if vm.ha and (lost or retry) and ha_allowed:
            why = ("host fenced out of band: nothing runs on it" if report.fenced
                   else f"host {host} reachable, reports the VM "
                   f"{seen.state if seen else 'absent'}")
            state = (f"record state {vm.state} after a failed start" if retry
                     else f"record state {vm.state}")
            plan.actions.append(Restart(vm, host, (why, state, f"generation {vm.generation}"),
                                        op, outcome, retry=retry))
        elif target != vm.state or op is not None:
            plan.actions.append(SetState(vm, target, event, op, outcome))
    for seen in report.vms.values():
        record = records_by_id.get(seen.vm_id)
        if record is None:
            plan.strangers.append(seen.vm_id)
        elif record.host_id != host and seen.vm_id not in ops:
            plan.actions.append(StopStray(host, seen.vm_id, seen.generation,
                                          f"record places it on {record.host_id or 'no host'}"))
    return plan


def migration_action(vm: VmRecordView, op: OpView | None, members: Mapping[str, int],
                     now: float, orphan_timeout: float) -> Action | None:
    """For a VM with a migrate op: skip it while its owner lives and its deadline has not
    passed, mark a new orphan, else resolve it by asking both hosts (ResolveMigration),
    whatever vm.orphanedSkipTimeout says: the agents' answers decide, not a timeout. None
    for any other VM. Also called for VMs of a host that does not answer: the target's
    answer alone may settle the migration."""
    if op is None or op.kind != "migrate":
        return None
    status = op_status(op, members, now, orphan_timeout)
    if status == "orphan-new":
        return MarkOrphan(op)
    if status == "live" and not (op.deadline and now >= op.deadline):
        return Skip(vm.vm_id, f"migration {op.op_id} in flight")
    return ResolveMigration(vm, op)


def plan_unreachable(
    host_id: str,
    records: Sequence[VmRecordView],
    ops: Mapping[str, OpView],
) -> list[SetState]:
    """A host just became Disconnected: its VMs without an operation become Unknown."""
    out = []
    for vm in records:
        if vm.state in UNTRACKED or vm.host_id != host_id or vm.vm_id in ops:
            continue
        if vm.state != "Unknown" and states.allowed(vm.state, "unknown"):
            out.append(SetState(vm, states.next_state(vm.state, "unknown"), "unknown"))
    return out


def awaits_retry(vm: VmRecordView) -> bool:
    """A NEVER_STOP VM that a failed start left Stopped: HA retries it (with backoff) once its
    host reports it absent or is fenced. A user's stop is a stop op, so it never qualifies."""
    return vm.ha and vm.state == "Stopped" and vm.start_failed


def awaits_ha(records: Sequence[VmRecordView], host_id: str) -> bool:
    """Whether a host (a fenced one: nothing runs on it) still has VMs HA must place."""
    return any(vm.host_id == host_id and vm.ha
               and (vm.state in SHOULD_RUN or awaits_retry(vm)) for vm in records)


def needs_fence(records: Sequence[VmRecordView], host_id: str) -> bool:
    """Fence an unreachable host only when an HA VM on it is waiting for proof."""
    return any(vm.ha and vm.host_id == host_id and vm.state in SHOULD_RUN for vm in records)
