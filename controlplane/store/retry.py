"""How long each attempt of one etcd call may take, and how long to pause between them.

Pure (no I/O, no clock, no randomness of its own): `Store.run` feeds it the elapsed time and
a random number and follows what it says; the property tests drive it the same way.

Why short attempts first. When the etcd leader dies, a write that a member had forwarded to
it is lost, and the attempt waits for its whole deadline. So is every write sent to a member
that still believes in the dead leader: that lasts until a member's election timeout fires
(etcd's default 1 s, plus a random part of up to 1 s), and the new leader follows within
milliseconds. A write sent after that waits for the new leader and succeeds. With one fixed
3 s attempt the first write after a leader kill -9 took 3.1-3.5 s here although etcd had a
new leader after ~1.5 s. So attempts are `first` (0.5 s) long while the call is younger
than `hold` (2 s: one election with the default timings), each on another member (a
timed-out attempt marks its endpoint failed), and the first one sent once the new leader is
known succeeds. After `hold` the attempts get the full `cap`: an etcd that is merely slow
(not electing) still gets long attempts, as before, within the call's budget.

Why no pause after a timed-out attempt: it has already waited; pausing only delays the one
sent after the election. Fast failures (a refused connection to the dead member, every
endpoint marked failed) back off exponentially, so nothing spins.

What a retry may cost: a write that timed out may have been applied (the new leader commits
what the old one had replicated). The store retries only what it retried before (every
unary KV/lease call; txns are compare-and-swap, so a replayed txn fails its compare and the
caller re-reads and must recognise its own write). Calls that pass their own timeout (big
range reads, the caches' list, compaction) keep it for every attempt (`fixed`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttemptPolicy:
    """Attempt timeouts and pauses for one call with a budget of B seconds.

    An attempt that starts before `hold` seconds into the call gets `first` seconds, a later
    one `cap`; never less than `floor`, never past B (the last attempt gets what is left).
    The first attempt always runs (at least `floor`, even when B is smaller); a later one
    starts only when its pause plus `floor` still fit in B. So every timeout is in
    [floor, cap] and a call takes at most max(B, floor), plus what the transport adds past
    a deadline. After a timed-out attempt the pause is only the jitter; after the n-th fast
    failure in a row it is min(pause_cap, pause_base * 2**(n-1)) plus the jitter.
    """

    first: float = 0.5
    cap: float = 3.0
    hold: float = 2.0
    floor: float = 0.05
    pause_base: float = 0.05
    pause_cap: float = 0.5
    jitter: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.first <= self.cap:
            raise ValueError(f"need 0 < floor <= first <= cap, got floor={self.floor}, "
                             f"first={self.first}, cap={self.cap}")
        if self.hold < 0 or self.jitter < 0:
            raise ValueError("hold and jitter must be >= 0")
        if not 0 < self.pause_base <= self.pause_cap:
            raise ValueError("need 0 < pause_base <= pause_cap")

    @classmethod
    def short_first(cls, first: float, cap: float, hold: float = 2.0) -> AttemptPolicy:
        """`first`-second attempts for `hold` seconds, then `cap` (first lowered to cap)."""
        floor = min(0.05, cap)
        return cls(first=max(floor, min(first, cap)), cap=cap, hold=hold, floor=floor)

    def fixed(self, timeout: float) -> AttemptPolicy:
        """The same pauses, every attempt `timeout` long: for calls that name their own."""
        return AttemptPolicy(first=timeout, cap=timeout, hold=0.0,
                             floor=min(self.floor, timeout), pause_base=self.pause_base,
                             pause_cap=self.pause_cap, jitter=self.jitter)

    def timeout(self, elapsed: float, budget: float, first_attempt: bool = False
                ) -> float | None:
        """Timeout of an attempt starting `elapsed` seconds into a call with `budget`, or
        None when there is no time left for it (the first attempt always runs)."""
        left = budget - elapsed
        if not first_attempt and left < self.floor:
            return None
        wanted = self.first if elapsed < self.hold else self.cap
        return max(self.floor, min(wanted, left))

    def pause(self, fast_failures: int, rnd: float) -> float:
        """Pause before the next attempt. `fast_failures`: attempts in a row that failed
        before their deadline (0 when the last one timed out); `rnd` in [0, 1)."""
        jitter = self.jitter * min(max(rnd, 0.0), 1.0)
        if fast_failures <= 0:
            return jitter
        backoff = self.pause_base * 2.0 ** min(fast_failures - 1, 64)
        return min(self.pause_cap, backoff) + jitter

    def next_attempt(self, elapsed: float, budget: float, fast_failures: int,
                     rnd: float) -> tuple[float, float] | None:
        """After a failed attempt, `elapsed` seconds into the call: (pause, timeout of the
        next attempt), or None to give up."""
        pause = self.pause(fast_failures, rnd)
        timeout = self.timeout(elapsed + pause, budget)
        return None if timeout is None else (pause, timeout)

    def timed_out(self, took: float, timeout: float) -> bool:
        """Whether an attempt that failed after `took` seconds used up its deadline (the
        transport answers DEADLINE_EXCEEDED a little after it, never much before)."""
        return took >= 0.9 * timeout
