"""A management node's own membership: lease, member key, keepalive, self-fencing.

Lessons built in:
- On lease loss, grant a new lease AND re-put the member key (tooz and moleculer re-granted
  but forgot the re-put, and their node silently left the cluster).
- A node restarted under the same id deletes the key its previous incarnation left behind
  (compare-and-swap on that key's mod_revision), then creates a fresh one: the new
  create_revision is a new incarnation, so a fencing compare tells old and new apart. It
  only does so when that key advertises the address it now listens on itself (so its
  holder is surely dead); a key held from another address is waited out, never stolen.
- Self-fencing: `fenced` is true whenever the last keepalive etcd acknowledged was *sent*
  more than TTL - margin ago. The lease surely lives TTL after that send, so a node that is
  not fenced is surely still a member; a fenced one stops owner work before anyone can
  evict it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import tenacity

from controlplane import __version__, wiretime
from controlplane.store import Fence, KeepAlive, Keys, Store, StoreError
from controlplane.store import txn as t
from controlplane.v1 import records_pb2

log = logging.getLogger(__name__)


class NodeIdInUse(StoreError):
    """Another live member holds our node id."""


def _address_of(value: bytes) -> str:
    try:
        return records_pb2.MemberRecord.FromString(value).address
    except Exception:  # noqa: BLE001 - a foreign value: treat as someone else's
        return ""


def fence_margin(ttl: float) -> float:
    """How long before the lease could expire a node stops owner work: a quarter of the TTL
    (at least 0.5 s), i.e. after missing about two keepalives sent every TTL/3."""
    return max(0.5, ttl / 4)


class Registration:
    """Register this node and keep it registered until stop()."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        node_id: str,
        address: str,
        ttl: int,
        on_incarnation: Callable[[int], None] | None = None,
        on_ack_latency: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.keys = keys
        self.node_id = node_id
        self.address = address
        self.ttl = ttl
        self.margin = fence_margin(ttl)
        self._clock = clock
        self._on_incarnation = on_incarnation
        self._on_ack_latency = on_ack_latency
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._lease_id = 0
        self._incarnation = 0
        self._acked_at = float("-inf")  # send time of the last acknowledged keepalive
        self._keepalive: KeepAlive | None = None
        self._thread = threading.Thread(target=self._run, name="registration", daemon=True)
        self.registrations = 0

    # -- state ----------------------------------------------------------------------

    @property
    def key(self) -> str:
        return self.keys.member(self.node_id)

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def lease_id(self) -> int:
        return self._lease_id

    @property
    def fenced(self) -> bool:
        """True when this node must not do owner work (see module docstring)."""
        if self._incarnation == 0 or self._lost.is_set():
            return True
        return self._clock() - self._acked_at > self.ttl - self.margin

    def fence(self) -> Fence:
        """The compare an owner's write must carry."""
        return Fence(self.key, self._incarnation)

    def last_ack_age(self) -> float:
        return self._clock() - self._acked_at

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Registration:
        """Register in the background; keeps trying (with backoff) while etcd is down, so a
        cold start waits for etcd instead of crash-looping."""
        self._lost.set()  # "not registered yet"
        self._thread.start()
        return self

    def wait_registered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.fenced:
                return True
            self._stop.wait(0.02)
        return not self.fenced

    def stop(self, revoke: bool = True) -> None:
        """Stop keepalives and (by default) revoke the lease so peers drop us at once."""
        self._stop.set()
        self._lost.set()
        if self._keepalive:
            self._keepalive.stop()
        if self._thread.is_alive():
            self._thread.join(5)
        if revoke and self._lease_id:
            try:
                self.store.revoke(self._lease_id, budget=2.0)
                log.info("lease %x revoked", self._lease_id)
            except StoreError as exc:
                log.warning("could not revoke lease %x: %s", self._lease_id, exc)

    def reregister(self, reason: str) -> None:
        """Treat the lease as lost: a new lease and a new member key (new incarnation)."""
        log.warning("re-registering: %s", reason)
        self._lost.set()

    # -- internals ------------------------------------------------------------------

    def _on_ack(self, sent_at: float, ttl: int, rtt: float) -> None:
        with self._lock:
            if sent_at > self._acked_at:
                self._acked_at = sent_at
        if self._on_ack_latency:
            self._on_ack_latency(rtt)

    def _on_lost(self) -> None:
        self.reregister(f"lease {self._lease_id:x} expired")

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._lost.is_set():
                self._lost.wait(0.2)  # wait for a loss, or poll stop
                continue
            if self._keepalive:
                self._keepalive.stop()
                self._keepalive = None
            try:
                self._retrying()(self._register_once)
            except StoreError:
                return  # only when stopping: the retries go on until then

    def _retrying(self) -> tenacity.Retrying:
        """Every store error is retried (etcd down at a cold start, a duplicate id whose
        lease has yet to expire), with backoff from 0.1 s doubling to 2 s, until stop();
        each new loss starts again from 0.1 s."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreError),
            stop=tenacity.stop_when_event_set(self._stop),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            sleep=self._stop.wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    @staticmethod
    def _log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        level = logging.ERROR if isinstance(exc, NodeIdInUse) else logging.WARNING
        log.log(level, "registration failed, retrying in %.1fs: %s", delay, exc)

    def _register_once(self) -> None:
        if self._stop.is_set():
            return  # stopped during the wait before this retry
        sent_at = self._clock()
        lease_id, granted = self.store.grant(self.ttl)
        record = records_pb2.MemberRecord(
            node_id=self.node_id,
            address=self.address,
            started_at=wiretime.now(),
            version=__version__,
            lease_ttl=granted,
        ).SerializeToString()
        while True:
            if self._stop.is_set():
                self.store.revoke(lease_id)
                return
            result = self.store.txn([t.absent(self.key)], [t.put(self.key, record, lease_id)],
                                    [t.get(self.key)])
            if result.succeeded:
                incarnation = result.revision
                break
            (old,) = result.ranges[0] or (None,)
            if old is None:
                continue
            holder = _address_of(old.value)
            if holder != self.address:
                # Another live process claims this id (or our previous incarnation from
                # another address, whose lease will expire). Never steal a live key: two
                # processes deleting each other's key would flap the ring forever.
                self.store.revoke(lease_id)
                raise NodeIdInUse(
                    f"node id {self.node_id!r} is held by {holder or 'an unknown address'} "
                    f"(incarnation {old.create_revision}); waiting for that lease to expire"
                )
            # Our own previous incarnation (it advertised the address we now listen on: it
            # is dead), its lease not yet expired: remove exactly that key, never a newer one.
            log.warning("removing member key of previous incarnation %d (lease %x)",
                        old.create_revision, old.lease)
            self.store.txn([t.mod_revision_is(self.key, old.mod_revision)], [t.delete(self.key)])
        with self._lock:
            self._lease_id = lease_id
            self._incarnation = incarnation
            self._acked_at = sent_at
        self.registrations += 1
        self._lost.clear()
        log.info("registered %s as incarnation %d (lease %x, ttl %ds)",
                 self.node_id, incarnation, lease_id, granted)
        if self._on_incarnation:
            self._on_incarnation(incarnation)
        self._keepalive = KeepAlive(
            self.store, lease_id, max(granted / 3, 0.2), self._on_ack, self._on_lost
        ).start()
