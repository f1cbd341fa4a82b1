"""Periodic work on every resource this node owns: one scheduler for the VM tracker (pull
each host) and the MDS health checker (probe each store), and whatever comes next.

Why one loop: both were the same code twice (a scheduler thread, due/running maps, a pool,
the `owns` filter, a stop sequence), and the subtle parts belong in one place:
- a resource is never worked on twice at once (a slow pull of a host does not pile up);
- the next run is due one interval after the previous one *finished* (a run that lasts as
  long as the interval does not turn into a busy loop);
- a resource that is no longer ours is forgotten at the next tick (`on_forget` lets the
  owner of the loop drop the evidence it gathered: a new owner must gather its own);
- the interval is read at every use (a live setting applies at once);
- nothing runs while `enabled()` is false (not ready, fenced); stop() ends the scheduler
  and cancels queued runs;
- `poke(id)` makes a run due at the next tick (an event said "look now"); a poke during a
  run makes another run follow it at once (the change may have come after the run read its
  source), and any number of pokes coalesce into one run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["OwnedLoop"]

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass
class _Slot:
    next_due: float
    running: bool = False
    again: bool = False  # poked while running: due again as soon as the run ends


class OwnedLoop(Generic[R]):
    """Runs `work(resource_id)` for each id of `resources()` that `owns(id)`, every
    `interval()` seconds, on a pool of `workers` threads."""

    def __init__(self, name: str, *, resources: Callable[[], Iterable[str]],
                 owns: Callable[[str], bool], work: Callable[[str], R],
                 interval: Callable[[], float], enabled: Callable[[], bool] = lambda: True,
                 on_forget: Callable[[str], None] = lambda _id: None,
                 on_tick: Callable[[int], None] = lambda _owned: None,
                 resource_key: str = "resource_id", workers: int = 8, tick: float = 0.05,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.resources = resources
        self.owns = owns
        self.work = work
        self.interval = interval
        self.enabled = enabled
        self.on_forget = on_forget
        self.on_tick = on_tick
        self.resource_key = resource_key  # the log field naming the resource (host_id...)
        self.tick = tick
        self.clock = clock
        self.workers = workers
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> OwnedLoop[R]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def stopping(self) -> threading.Event:
        """Set once stop() was called: work can wait on it instead of sleeping."""
        return self._stop

    def owned(self) -> list[str]:
        return [r for r in self.resources() if self.owns(r)]

    def schedule(self, now: float) -> list[str]:
        """One tick: forget what is no longer ours, submit what is due. Returns the ids
        submitted (tests drive the loop with this and an injected clock)."""
        if not self.enabled():
            return []
        owned = set(self.owned())
        due, forgotten = [], []
        with self._lock:
            for resource_id in list(self._slots):
                if resource_id not in owned:
                    del self._slots[resource_id]
                    forgotten.append(resource_id)
            for resource_id in owned:
                slot = self._slots.setdefault(resource_id, _Slot(next_due=now))
                if not slot.running and now >= slot.next_due:
                    slot.running = True
                    due.append(resource_id)
        for resource_id in forgotten:
            self.on_forget(resource_id)
        self.on_tick(len(owned))
        for resource_id in due:
            self._pool.submit(self._run_one, resource_id)
        return due

    def run_now(self, resource_id: str) -> tuple[bool, R | None]:
        """Work on `resource_id` right away in the caller's thread. (False, None) when a run
        is already in progress; else (True, what work returned)."""
        with self._lock:
            slot = self._slots.setdefault(resource_id, _Slot(next_due=self.clock()))
            if slot.running:
                return False, None
            slot.running = True
        try:
            return True, self.work(resource_id)
        finally:
            self._finished(resource_id)

    def poke(self, resource_id: str) -> bool:
        """Make a run of `resource_id` due now (run by the scheduler at its next tick, on the
        pool, so the caller never blocks). False when the id has no slot yet: it is not
        ours, or it is new and its first run is due at the next tick anyway."""
        with self._lock:
            slot = self._slots.get(resource_id)
            if slot is None:
                return False
            if slot.running:
                slot.again = True
            else:
                slot.next_due = min(slot.next_due, self.clock())
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.schedule(self.clock())
            except Exception:  # noqa: BLE001 - the scheduler must survive anything
                log.exception("%s: scheduling failed", self.name)

    def _run_one(self, resource_id: str) -> None:
        try:
            self.work(resource_id)
        except Exception:  # noqa: BLE001 - one resource's failure must not stop the others
            log.exception("%s: work on %s failed", self.name, resource_id,
                          extra={self.resource_key: resource_id})
        finally:
            self._finished(resource_id)

    def _finished(self, resource_id: str) -> None:
        with self._lock:
            slot = self._slots.get(resource_id)
            if slot is not None:
                slot.running = False
                slot.next_due = self.clock() + (0.0 if slot.again else self.interval())
                slot.again = False
