"""Host events inside the agent: backends publish, each WatchHostEvents stream subscribes.

Why: a sync interval is seconds to a minute (ZStack polls every 60 s), while a guest whose
QEMU was killed is dead at once. A backend that learns of a change (libvirt's lifecycle
events, the sim's crash and condition changes) publishes a ``HostEvent``; every open
WatchHostEvents stream gets it and the node owning the host pulls that host now. An event
is a hint, never a state to apply: the pull (ListVms) stays the source of truth, so an
event may be late, duplicated or coalesced without harm.

Scaling: ``publish`` never blocks and never waits for a reader. Each subscription is a
bounded queue; a reader that falls ``max_pending`` events behind loses them, and the next
``get`` answers ``resync`` instead (pull every host), which costs one pull per owned host
and is always correct. A batch of events goes out in one message.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["EventHub", "HostEvent", "Subscription"]

DEFAULT_MAX_PENDING = 10_000
MAX_BATCH = 1_000


class HostEvent(NamedTuple):
    """``vm_id`` empty: about the whole host. ``state``: a VmState number, 0 = gone/unknown."""

    host_id: str
    vm_id: str
    state: int
    reason: str
    at: float


class Subscription:
    """One reader's queue (one WatchHostEvents stream)."""

    def __init__(self, hub: EventHub, max_pending: int) -> None:
        self._hub = hub
        self._max = max_pending
        self._queue: collections.deque[HostEvent] = collections.deque()
        self._cond = threading.Condition()
        self._resync = True  # the reader has seen nothing yet: its first answer says resync
        self._closed = False

    def _put(self, event: HostEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= self._max:
                self._queue.clear()  # behind: drop them all, the reader pulls everything
                self._resync = True
            else:
                self._queue.append(event)
            self._cond.notify()

    def get(self, timeout: float) -> tuple[list[HostEvent], bool]:
        """Wait up to ``timeout`` for events; (events, resync). Both empty/False: a timeout
        (send a heartbeat) or the subscription was closed (check ``closed``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._queue and not self._resync and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            resync, self._resync = self._resync, False
        return batch, resync

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._hub._drop(self)


class EventHub:
    """Fan-out of HostEvents to every subscription; thread-safe, publish never blocks."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._subs: tuple[Subscription, ...] = ()  # swapped under the lock, read without
        self._lock = threading.Lock()
        self._clock = clock
        self._closed = False
        self.published = 0

    def publish(self, host_id: str, vm_id: str = "", state: int = 0, reason: str = "") -> None:
        event = HostEvent(host_id, vm_id, int(state), reason, self._clock())
        self.published += 1  # a statistic: a lost increment under a race does no harm
        for sub in self._subs:
            sub._put(event)

    def subscribe(self, max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        sub = Subscription(self, max_pending)
        with self._lock:
            if self._closed:
                sub._closed = True
            else:
                self._subs = (*self._subs, sub)
        return sub

    def subscribers(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        """Close every subscription (agent shutdown: the streams end)."""
        with self._lock:
            self._closed = True
            subs = self._subs
        for sub in subs:
            sub.close()

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
