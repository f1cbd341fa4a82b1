"""Host events from the agents make the owner pull a host at once (not one interval later).

Why: VM sync pulls every owned host once per `vm.syncInterval`; a guest whose QEMU died is
then seen up to an interval late (ZStack polls every 60 s). Agents know sooner: the libvirt
backend gets a lifecycle event from libvirtd within milliseconds, the sim knows when it
crashes a VM. So each agent serves `AgentService.WatchHostEvents`, a server stream of
events naming host and VM, and this node keeps one such stream open to every agent address
that serves a host it owns. Each event pokes the tracker (`HostTracker.poke`): the host is
pulled at the next scheduler tick (50 ms), on the tracker's pool. The pull stays the source
of truth; an event carries no state this node applies.

How it scales:
- one stream per agent *address*, not per host (a sim agent serving 1,000 hosts is one
  stream), and only from the node that owns at least one of its hosts: streams = owned agent
  addresses, each holding one stream permit of the agent (rpc.py's stream budget) and one
  thread here;
- pokes coalesce in the OwnedLoop (a burst of events on a host is one pull, plus one more if
  the burst came during a pull), so an event storm costs at most two pulls per host;
- a stream's first message, and any after the agent dropped events for a slow reader, says
  `resync`: every owned host of that agent is poked (also what makes a reconnect after a
  gap safe: events sent while the stream was down are not replayed);
- a broken stream is reopened with capped exponential backoff and jitter; an agent that
  does not implement the RPC (older version) is retried rarely. Meanwhile the periodic pull
  covers it, as before.
Which addresses to watch is recomputed every `refresh` seconds from the host cache and the
ring (`plan_watches`, pure), so ring changes and new hosts are picked up without a hook.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping

import grpc

from controlplane import metrics
from controlplane.owner import OwnerContext
from controlplane.v1 import agent_pb2, host_pb2

__all__ = ["HostEventWatcher", "backoff_delay", "plan_watches"]

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
UNIMPLEMENTED_RETRY = 60.0


def plan_watches(hosts: Iterable[host_pb2.Host],
                 owns: Callable[[str], bool]) -> dict[str, frozenset[str]]:
    """agent address -> the hosts served there that this node owns (addresses with none are
    not watched). Pure: the host records and the ownership test come in."""
    out: dict[str, set[str]] = {}
    for host in hosts:
        if host.address and owns(host.host_id):
            out.setdefault(host.address, set()).add(host.host_id)
    return {address: frozenset(ids) for address, ids in out.items()}


def backoff_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds before reopening a stream after ``failures`` consecutive failures (>= 1):
    doubling from BACKOFF_FIRST, capped at BACKOFF_MAX, with +-25% jitter so many nodes that
    lost the same agent do not come back in step."""
    base = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** max(0, failures - 1)))
    return base * (0.75 + 0.5 * (rng or random).random())


class _Watch:
    """One stream to one agent address, in its own thread, reopened until stopped."""

    def __init__(self, watcher: HostEventWatcher, address: str) -> None:
        self.watcher = watcher
        self.address = address
        self.stop = threading.Event()
        self._call: grpc.Call | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"host-events {address}",
                                       daemon=True)

    def cancel(self) -> None:
        self.stop.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        failures = 0
        rng = random.Random()
        while not self.stop.is_set():
            try:
                call = self.watcher.ctx.agents.stub(self.address).WatchHostEvents(
                    agent_pb2.AgentServiceWatchHostEventsRequest())
                with self._lock:
                    self._call = call
                if self.stop.is_set():
                    call.cancel()
                metrics.HOST_WATCHES.inc()
                try:
                    for message in call:
                        failures = 0
                        self.watcher._deliver(self.address, message)
                finally:
                    metrics.HOST_WATCHES.dec()
                failures += 1  # the agent ended the stream (it is stopping): reopen
            except grpc.RpcError as err:
                if self.stop.is_set():
                    return
                failures += 1
                metrics.HOST_EVENTS.labels("error").inc()
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("agent %s has no WatchHostEvents: periodic pulls only",
                             self.address)
                    self.stop.wait(UNIMPLEMENTED_RETRY)
                    continue
                if failures in (1, 10) or failures % 100 == 0:
                    log.info("host events from %s: stream broke (%s, %d in a row)",
                             self.address, code.name if code else err, failures)
            except Exception:  # noqa: BLE001 - the watch must survive anything
                failures += 1
                log.exception("host events from %s failed", self.address)
            self.stop.wait(backoff_delay(failures, rng))


class HostEventWatcher:
    """Keeps one WatchHostEvents stream open per agent address serving an owned host and
    pokes the owner's pull on every event."""

    def __init__(self, ctx: OwnerContext, poke: Callable[[str], object], *,
                 enabled: Callable[[], bool] = lambda: True, refresh: float = 0.5) -> None:
        self.ctx = ctx
        self.poke = poke
        self.enabled = enabled
        self.refresh = refresh
        self._plan: Mapping[str, frozenset[str]] = {}  # swapped whole, read without a lock
        self._watches: dict[str, _Watch] = {}  # only the refresh thread touches it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="host-events", daemon=True)

    def start(self) -> HostEventWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        for watch in list(self._watches.values()):
            watch.cancel()
        self._watches.clear()

    def watched(self) -> list[str]:
        return sorted(self._watches)

    def refresh_now(self) -> None:
        """Recompute the plan and open/close streams to match (the loop calls it)."""
        plan = plan_watches((e.value for e in self.ctx.hosts.entries()), self.ctx.owns) \
            if self.enabled() else {}
        self._plan = plan
        for address in [a for a in self._watches if a not in plan]:
            self._watches.pop(address).cancel()
        for address in plan:
            if address not in self._watches:
                watch = _Watch(self, address)
                self._watches[address] = watch
                watch.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh_now()
            except Exception:  # noqa: BLE001 - the refresh must survive anything
                log.exception("host events: refresh failed")
            self._stop.wait(self.refresh)

    def _deliver(self, address: str, message: agent_pb2.AgentServiceWatchHostEventsResponse
                 ) -> None:
        owned = self._plan.get(address, frozenset())
        if message.resync:
            metrics.HOST_EVENTS.labels("resync").inc()
            for host_id in owned:
                self.poke(host_id)
        for event in message.events:
            metrics.HOST_EVENTS.labels("event").inc()
            if event.host_id in owned:  # another node's host on a shared agent: not ours
                log.debug("host %s: event %s %s: pulling now", event.host_id,
                          event.vm_id or "-", event.reason, extra={"host_id": event.host_id})
                self.poke(event.host_id)
