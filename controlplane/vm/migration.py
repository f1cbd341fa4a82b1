"""Live migration, the pure core: which copy of a migrating VM is the VM. No I/O here.

A migration has two copies for a while: the source's (generation g) and the target's
incoming one (g + 1). The commit point is on the target: its incoming copy switching over
(activating), decided under the target host's lock; the target's AbortIncomingVm, under the
same lock, destroys an incoming copy that has not switched over and fences g + 1 there, so
a switchover after it is refused. Hence the only evidence that settles a migration is the
*target's* answer:

- the target runs g + 1 (not incoming): the migration completed, whatever the source says
  (its copy, if any, is paused after the switchover and is stopped);
- the target answered and does not run g + 1: the migration did not complete, and after
  AbortIncomingVm it never will: the VM is the source's copy (resumed if the switchover
  left it paused), or, if the source shows none, Unknown on the source for VM sync to settle
  from the source's own reports (HA may then act, on its usual proof);
- the target did not answer: nothing is known; wait (never guess).

Before the op's deadline a migration still in progress (either agent reports an operation
on the VM, or the source does not answer) is waited for rather than aborted: it may still
complete on its own (the agents need no owner). After the deadline an answering target is
always enough to decide.

Used by the owner after its own agent calls (whatever they answered) and by whichever node
finds the op orphaned (`vm.sync.plan_sync` -> ResolveMigration): both ask both agents and
call `resolve_migration`, so a new owner decides exactly as the old one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_OF = {"running": "Running", "paused": "Paused", "crashed": "Crashed"}


@dataclass(frozen=True)
class Copy:
    """A copy of the VM as one host's agent reports it."""

    state: str  # running, paused, crashed
    generation: int
    incoming: bool = False


@dataclass(frozen=True)
class SideReport:
    """One host's answer about the VM. `busy`: its agent has an operation on the VM in
    progress (or cannot say: an agent that reports no operations)."""

    copy: Copy | None
    busy: bool = False


@dataclass(frozen=True)
class MigrationView:
    vm_id: str
    source_host: str
    target_host: str
    generation: int  # the source's
    target_generation: int  # generation + 1
    deadline: float


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Complete:
    """Record the VM on the target with the target generation, in `state`."""

    state: str
    stop_source: bool  # the source still shows a copy (paused after the switchover): stop it
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Abort:
    """AbortIncomingVm on the target first; once it answered, record the VM on the source
    with its generation, in `state` (resume the source copy first when `resume_source`)."""

    state: str
    resume_source: bool
    evidence: tuple[str, ...]


Decision = Wait | Complete | Abort


def _describe(host: str, side: SideReport | None) -> str:
    if side is None:
        return f"host {host} did not answer"
    if side.copy is None:
        return f"host {host} runs no copy" + (" (busy)" if side.busy else "")
    c = side.copy
    return (f"host {host} reports {c.state} generation {c.generation}"
            f"{' incoming' if c.incoming else ''}{' (busy)' if side.busy else ''}")


def resolve_migration(source: SideReport | None, target: SideReport | None,
                      op: MigrationView, now: float) -> Decision:
    """What the reports of both hosts prove about a migration (None: the host did not
    answer). See the module docstring for the rules."""
    evidence = (_describe(op.source_host, source), _describe(op.target_host, target))
    moved = (target is not None and target.copy is not None
             and target.copy.generation == op.target_generation and not target.copy.incoming)
    if moved:
        assert target is not None and target.copy is not None
        stop = (source is not None and source.copy is not None
                and source.copy.generation < op.target_generation)
        return Complete(STATE_OF.get(target.copy.state, "Unknown"), stop, evidence)
    if target is None:
        return Wait(f"{evidence[1]}: whether it switched over is unknown")
    in_progress = target.busy or source is None or source.busy
    if in_progress and now < op.deadline:
        return Wait(f"migration may still be in progress ({evidence[0]}; {evidence[1]})")
    mine = (source.copy if source is not None and source.copy is not None
            and source.copy.generation == op.generation and not source.copy.incoming else None)
    if mine is None:
        return Abort("Unknown", False, evidence)
    return Abort("Crashed" if mine.state == "crashed" else "Running", mine.state == "paused",
                 evidence)
