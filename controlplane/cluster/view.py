"""The cluster view: one node's picture of the members, and its ring.

Threads and their single job:
- the watch thread turns etcd events into queue items;
- the reconcile thread lists the members every few seconds and queues the listing;
  a failed list queues nothing (a failed list is not an empty list);
- the applier thread is the only writer: it takes items in order, runs the pure
  MemberTable, and when the members changed builds a new Ring and swaps one reference.

Readers (`ring`, `table`) never lock: they get an immutable snapshot.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from controlplane import metrics, wiretime
from controlplane.cluster.ring import DEFAULT_VNODES, Ring
from controlplane.cluster.table import Change, MemberInfo, MemberTable
from controlplane.store import KV, Keys, PrefixWatch, Store, StoreError, WatchEvent
from controlplane.v1 import records_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """The member keys as read at one etcd revision."""

    members: Mapping[str, MemberInfo]
    revision: int


def member_info(keys: Keys, kv: KV) -> MemberInfo | None:
    """Decode a member key; None (and a log line) for a value that is not a MemberRecord."""
    node_id = keys.node_id_of(kv.key)
    record = records_pb2.MemberRecord()
    try:
        record.ParseFromString(kv.value)
    except Exception:  # noqa: BLE001 - a foreign value must not break membership
        log.error("ignoring undecodable member key %s", kv.key)
        return None
    return MemberInfo(
        node_id=node_id,
        address=record.address,
        incarnation=kv.create_revision,
        mod_revision=kv.mod_revision,
        started_at=wiretime.seconds(record.started_at),
        version=record.version,
    )


ChangeListener = Callable[[MemberTable, Sequence[Change]], None]


class ClusterView:
    """Membership as seen by one node, kept in revision order by one applier thread."""

    def __init__(
        self,
        store: Store,
        keys: Keys,
        vnodes: int = DEFAULT_VNODES,
        reconcile_interval: float | None = 3.0,
        confirm_rounds: int = 2,
        name: str = "view",
    ) -> None:
        self.store = store
        self.keys = keys
        self.vnodes = vnodes
        self.reconcile_interval = reconcile_interval
        self.confirm_rounds = confirm_rounds
        self.name = name
        self._table = MemberTable()
        self._ring = Ring.build((), 0, vnodes)
        self._queue: queue.Queue = queue.Queue()
        self._applied = threading.Condition()
        self._applied_seq = 0
        self._submitted_seq = 0
        self._seq_lock = threading.Lock()
        self._stop = threading.Event()
        self._listeners: list[ChangeListener] = []
        self._watch: PrefixWatch | None = None
        self._threads: list[threading.Thread] = []
        self.reconcile_failures = 0
        self.last_reconcile_ok = 0.0

    # -- readers --------------------------------------------------------------------

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def table(self) -> MemberTable:
        return self._table

    def add_listener(self, listener: ChangeListener) -> None:
        """Called from the applier thread after every input that changed something."""
        self._listeners.append(listener)

    def wait_for(self, predicate: Callable[[MemberTable], bool], timeout: float) -> bool:
        """Block until predicate(table) holds or timeout; returns whether it holds."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while not predicate(self._table):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._applied.wait(min(left, 0.1))
            return True

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> ClusterView:
        """Read the members (retrying until etcd answers, or `timeout`), then watch from
        the next revision and start the applier and reconcile threads."""
        listing = self._list_until_ok(timeout)
        self._apply(("list", listing))
        self._watch = PrefixWatch(
            self.store, self.keys.members, listing.revision + 1,
            self._on_events, self._on_compacted, name=f"{self.name}-watch",
        )
        self._spawn(self._apply_loop, "apply")
        self._watch.start()
        if self.reconcile_interval:
            self._spawn(self._reconcile_loop, "reconcile")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch:
            self._watch.stop()
        self._queue.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        with self._applied:
            self._applied.notify_all()

    def resync(self) -> None:
        """Re-list now and reopen the watch stream (after a network cut healed: a stream
        that went silent may have lost its connection without an error)."""
        if self._watch:
            self._watch.reconnect()
        self.reconcile_now()

    # -- inputs ---------------------------------------------------------------------

    def read_members(self, timeout: float | None = None) -> Listing:
        """One list of the member keys (I/O). Raises StoreError; never returns a
        made-up empty list."""
        kvs, revision = self.store.list_prefix(self.keys.members, budget=timeout or 0.0,
                                               timeout=timeout)
        members = {}
        for kv in kvs:
            info = member_info(self.keys, kv)
            if info is not None:
                members[info.node_id] = info
        return Listing(members, revision)

    def submit_listing(self, listing: Listing, wait: float | None = None) -> bool:
        """Queue a listing for the applier (what reconcile does); optionally wait until it
        has been applied. Tests drive the reconcile race with this, deterministically."""
        return self._submit(("list", listing), wait)

    def reconcile_now(self, wait: float | None = None) -> bool:
        """List once and queue the result; False if the list failed."""
        try:
            listing = self.read_members(timeout=self.store.timeout)
        except StoreError as exc:
            self.reconcile_failures += 1
            metrics.RECONCILE_FAILURES.inc()
            log.warning("reconcile: member list failed (%s); keeping the current view", exc)
            return False
        self.last_reconcile_ok = time.monotonic()
        return self._submit(("list", listing), wait)

    def _submit(self, item: tuple, wait: float | None) -> bool:
        with self._seq_lock:
            self._submitted_seq += 1
            seq = self._submitted_seq
            self._queue.put((seq, item))
        if wait is None:
            return True
        deadline = time.monotonic() + wait
        with self._applied:
            while self._applied_seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(left)
        return True

    def _on_events(self, events: Sequence[WatchEvent], header_revision: int) -> None:
        self._submit(("events", list(events)), None)

    def _on_compacted(self, compact_revision: int) -> int:
        listing = self._list_until_ok(None)
        self._submit(("list", listing), None)
        return listing.revision + 1

    def _list_until_ok(self, timeout: float | None) -> Listing:
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = 0.1
        while True:
            try:
                return self.read_members(timeout=self.store.timeout)
            except StoreError as exc:
                if self._stop.is_set() or (deadline and time.monotonic() > deadline):
                    raise
                log.warning("cannot list members yet (%s); retrying", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    # -- the applier ----------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], what: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{what}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _apply_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None or self._stop.is_set():
                return
            seq, item = entry
            try:
                self._apply(item)
            except Exception:  # noqa: BLE001 - the applier must survive a bad input
                log.exception("applying %s failed", item[0])
            with self._applied:
                self._applied_seq = seq
                self._applied.notify_all()

    def _apply(self, item: tuple) -> None:
        kind, payload = item
        table = self._table
        changes: list[Change] = []
        if kind == "list":
            table, found = table.on_list(payload.members, payload.revision, self.confirm_rounds)
            changes.extend(found)
        else:
            for event in payload:
                node_id = self.keys.node_id_of(event.kv.key)
                if event.kind == "put":
                    info = member_info(self.keys, event.kv)
                    if info is None:
                        continue
                    table, found = table.on_put(info)
                else:
                    table, found = table.on_delete(node_id, event.revision)
                changes.extend(found)
        if set(table.members) != set(self._table.members) or table.epoch != self._ring.epoch:
            self._ring = Ring.build(table.members, table.epoch, self.vnodes)
        self._table = table
        if changes or kind == "list":
            for change in changes:
                log.info("member %s %s at revision %d", change.node_id, change.kind,
                         change.revision)
            for listener in self._listeners:
                try:
                    listener(table, changes)
                except Exception:  # noqa: BLE001
                    log.exception("membership listener failed")

    def _reconcile_loop(self) -> None:
        assert self.reconcile_interval
        while not self._stop.wait(self.reconcile_interval):
            self.reconcile_now()
