"""HA guards and placement, pure: the partition breaker, the choice of a target host and the
backoff of retried HA attempts.

The breaker is what keeps a network partition from looking like a mass host failure. When
more than half of all hosts became unreachable within one sync interval of each other, the
likelier story is that *we* are cut off (or the network is), not that the hosts died; a
restart storm then would run VMs twice the moment the partition heals. So HA freezes until
enough hosts are back that the burst is no longer a majority.

It is stateless on purpose: it reads the `unreachable_since` stamps the host owners write
into the host records, so every management node reaches the same verdict from its cache,
and a node that restarts does not forget that the breaker was open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def largest_burst(times: Sequence[float], window: float) -> int:
    """The most timestamps that fall within any span of `window` seconds."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def breaker_open(unreachable_since: Sequence[float], total_hosts: int, window: float) -> bool:
    """True when more than half of all hosts went unreachable within one `window`.

    `unreachable_since` holds one stamp per host that is unreachable now; hosts that came
    back have none, so the breaker closes as they return.
    """
    if total_hosts <= 1:
        return False
    return largest_burst(unreachable_since, window) * 2 > total_hosts


def pick_host(candidates: Mapping[str, int], exclude: str = "") -> str | None:
    """The connected host with the fewest VMs (ties by id, so every node picks the same),
    other than `exclude` unless it is the only one. `candidates`: host id -> VM count."""
    others = {h: n for h, n in candidates.items() if h != exclude}
    pool = others or {h: n for h, n in candidates.items() if h == exclude}
    if not pool:
        return None
    return min(pool, key=lambda h: (pool[h], h))



# -- retries: HA that does not give up -----------------------------------------------------
#
# An HA attempt can fail: no connected host ("no-host"), or the start on the chosen host fails
# ("restart-failed", written in the txn that records the VM Stopped). The VM still needs HA,
# and nothing in any node's memory says so: the intent is in etcd, in the records (a NEVER_STOP
# VM Unknown on a FENCED host; a NEVER_STOP VM Stopped by a failed HA start), and the retry
# state (how many attempts failed in a row, when the last one was) is in the VM's HA audit
# records, which every attempt writes. So whichever node owns the host next reads the same
# answer from etcd, and the functions below turn it into "retry now or not".

RESTART = "restart"  # an attempt that placed the VM and started it (op_id: the start op)
RESTART_FAILED = "restart-failed"  # that start failed (same op_id, same generation)
NO_HOST = "no-host"  # an attempt that found no connected host to place the VM on
STOP_STRAY = "stop-stray"  # a stray copy stopped: about another copy, not an attempt
FAILURES = frozenset({RESTART_FAILED, NO_HOST})
# 2**64 times any base is far beyond any cap; the exponent is clamped so it cannot overflow.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class AttemptRecord:
    """What the backoff reads of one HA audit record (vm_pb2.HaAudit)."""

    action: str
    decided_at: float
    generation: int
    op_id: str = ""


def failed_attempts(records: Sequence[AttemptRecord], generation: int) -> tuple[int, float]:
    """(HA attempts that failed in a row, when the last of them was decided) for a VM whose
    record has `generation`; (0, 0.0) when its last attempt did not fail.

    `records` in the order of their keys (decided_at). Walking back from the newest: a
    failure counts while its generation is the one the VM had then (a no-host attempt leaves
    the generation, a placement bumps it, so each restart record must be `expect`, after
    which `expect` is one less); a restart paired with its own failure is skipped, a restart
    without one (it succeeded, or its outcome was settled by VM sync) ends the run, and so
    does a gap in generations: a start by a user in between (it bumps the generation and
    writes no audit record) began a new story. Stray stops are about other copies: ignored.
    """
    count, last, expect = 0, 0.0, generation
    failed_ops: set[str] = set()
    for record in reversed(records):
        if record.action == STOP_STRAY:
            continue
        if record.action in FAILURES:
            if record.generation != expect:
                break
            count += 1
            last = max(last, record.decided_at)
            if record.action == RESTART_FAILED and record.op_id:
                failed_ops.add(record.op_id)
        elif record.action == RESTART:
            if record.generation != expect or record.op_id not in failed_ops:
                break
            expect = record.generation - 1
        else:
            break
    return count, last


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after the last of `attempts` failed attempts: none before the first,
    then base, 2*base, 4*base, ... never more than `cap`."""
    if attempts <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(attempts - 1, _MAX_DOUBLINGS))


def retry_due(attempts: int, last_attempt: float, now: float, base: float,
              cap: float) -> bool:
    """Whether the next HA attempt may run now (exponential backoff with a cap).

    A last attempt stamped more than `cap` in the future (the clock of the node that wrote
    it is ahead of ours) counts as due: a skewed clock may delay HA by at most about the
    cap, never stop it."""
    if attempts <= 0:
        return True  # nothing failed: nothing to wait for, whatever the clocks say
    elapsed = now - last_attempt
    return elapsed >= retry_delay(attempts, base, cap) or elapsed < -cap


# -- storage evidence: the store says who holds a VM's volumes ------------------------------
#
# Seed: ZStack's anti-split-brain check. A VM of an unreachable host that has not been fenced
# may still run: the host may be cut off from us and not from its storage. The block store
# knows: every host's block client keeps a session on the volumes it has open, and a session
# whose keepalives stop expires and is blocklisted (its I/O refused: the store fences it). So:
# - a live session from the old host on any of the VM's volumes: the VM may run, no restart
#   (and no fence either: it would kill a VM that works);
# - no session from the old host on any of them, in two consecutive checks at least one
#   interval apart: the store has fenced the old copy, restart elsewhere without a fence
#   (two checks, so one answer given just before a late keepalive is not the whole story);
# - any volume the store could not answer for (every MDS failed, the volume unknown): the
#   evidence is *unknown*, which is not *absent*: no restart on storage evidence (the power
#   fence is still allowed).

STORAGE_LIVE = "live"
STORAGE_ABSENT = "absent"
STORAGE_UNKNOWN = "unknown"

HOLD = "hold"  # a live session: leave the VM (and its host) alone
WAIT = "wait"  # absent once: check again one interval later
RESTART_ON_STORAGE = "restart"  # absent twice, one interval apart
FALLBACK = "fallback"  # unknown: storage proves nothing; the fence path decides


@dataclass(frozen=True)
class VolumeAnswer:
    """What the store said about one volume ("storage/volume"): the client ids holding it,
    or (``answered`` False) why it could not say."""

    volume: str
    answered: bool
    clients: tuple[str, ...] = ()
    detail: str = ""


def storage_verdict(host_id: str, answers: Sequence[VolumeAnswer]) -> str:
    """live / absent / unknown for a VM whose volumes' answers are ``answers``. Live wins
    over unknown (one live session is enough to say "may run"); no volumes is unknown."""
    if any(a.answered and host_id in a.clients for a in answers):
        return STORAGE_LIVE
    if not answers or not all(a.answered for a in answers):
        return STORAGE_UNKNOWN
    return STORAGE_ABSENT


def storage_step(verdict: str, absent_since: float | None, now: float,
                 interval: float) -> tuple[str, float | None]:
    """(what to do, the new ``absent_since``) after one check answered ``verdict`` at
    ``now``; ``absent_since``: when the run of absent answers began (None: none).

    Only consecutive absent answers count: a live or unknown one ends the run. A run that
    began "in the future" (a clock stepped back) begins again now."""
    if verdict == STORAGE_LIVE:
        return HOLD, None
    if verdict != STORAGE_ABSENT:
        return FALLBACK, None
    if absent_since is None or absent_since > now:
        return WAIT, now
    if now - absent_since >= interval:
        return RESTART_ON_STORAGE, absent_since
    return WAIT, absent_since


def storage_evidence(host_id: str, answers: Sequence[VolumeAnswer]) -> tuple[str, ...]:
    """The audit lines of one check: what the store answered for each volume."""
    lines = []
    for a in answers:
        if not a.answered:
            lines.append(f"storage {a.volume}: unknown ({a.detail})")
        else:
            holders = ", ".join(a.clients) or "none"
            held = "holds it" if host_id in a.clients else "holds no session"
            lines.append(f"storage {a.volume}: clients [{holders}]: {host_id} {held} "
                         f"({a.detail})")
    return tuple(lines)
