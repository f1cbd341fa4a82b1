"""A watch-fed cache of one key prefix: the store recipe VM sync reads instead of etcd.

Why: the owner of a host compares every VM the agent reports with its record. Reading each
record from etcd would cost one request per VM per sync round (100,000 per round for a big
fleet); the cache costs one list at start and one watch stream after that.

- Values are decoded once, in the watch thread (a value that does not decode is logged and
  left out), and kept with their mod_revision: writers compare-and-swap against it.
- An optional index (e.g. VM -> host id) keeps lookups per host O(VMs on the host).
- `revision` is the etcd revision the cache reflects; `wait_for_revision` lets a writer read
  its own write from the cache.
- On compaction the prefix is re-listed and the difference is delivered as events, so
  listeners never miss a change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import tenacity

from controlplane.store.client import KV, Store
from controlplane.store.errors import StoreError, StoreUnavailable
from controlplane.store.watch import PrefixWatch, WatchEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One cached key: its decoded value and the revisions a CAS needs."""

    key: str
    value: T
    mod_revision: int
    create_revision: int


@dataclass(frozen=True)
class CacheEvent(Generic[T]):
    kind: Literal["put", "delete"]
    key: str
    entry: Entry[T] | None  # the new entry (None for a delete)
    previous: Entry[T] | None
    revision: int


Listener = Callable[[Sequence[CacheEvent[T]]], None]


class PrefixCache(Generic[T]):
    """Every key under `prefix`, decoded by `decode`, kept current by a watch."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        decode: Callable[[bytes], T],
        index: Callable[[T], str] | None = None,
        name: str = "cache",
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.name = name
        self._decode = decode
        self._index_of = index
        self._entries: dict[str, Entry[T]] = {}
        self._index: dict[str, dict[str, Entry[T]]] = {}
        self._revision = 0
        self._changed = threading.Condition()
        self._listeners: list[Listener[T]] = []
        self._watch: PrefixWatch | None = None
        self._stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> PrefixCache[T]:
        """List the prefix, then watch it. The list is retried while etcd is unreachable
        (a cold start waits for etcd) until `timeout`; any other store error will not cure
        itself and is logged as an error and raised (see `_list_until_ok`)."""
        revision = self._relist(self._list_until_ok(timeout))
        self._watch = PrefixWatch(self.store, self.prefix, revision + 1, self._on_events,
                                  self._on_compacted, name=f"{self.name}-watch")
        self._watch.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch:
            self._watch.stop()
        with self._changed:
            self._changed.notify_all()

    def reconnect(self) -> None:
        """Reopen the watch stream (after a network cut: a silent stream may be dead)."""
        if self._watch:
            self._watch.reconnect()

    def add_listener(self, listener: Listener[T]) -> None:
        """Called in the watch thread with every batch of changes, after they applied."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener[T]) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    # -- readers --------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def get(self, key: str) -> Entry[T] | None:
        with self._changed:
            return self._entries.get(key)

    def entries(self) -> list[Entry[T]]:
        with self._changed:
            return list(self._entries.values())

    def by_index(self, value: str) -> list[Entry[T]]:
        with self._changed:
            return list(self._index.get(value, {}).values())

    def count(self, value: str) -> int:
        """How many entries have this index value (no copy)."""
        with self._changed:
            return len(self._index.get(value, ()))

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self) -> tuple[list[Entry[T]], int]:
        """Every entry and the revision they reflect, read together."""
        with self._changed:
            return list(self._entries.values()), self._revision

    def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Block until the cache reflects `revision`: the revision of a write under this
        prefix (e.g. our own). Writes elsewhere do not reach this watch, so waiting for
        their revision would time out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._revision < revision:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._changed.wait(left)
            return True

    # -- updates (watch thread only) ------------------------------------------------

    def _entry(self, kv: KV) -> Entry[T] | None:
        try:
            value = self._decode(kv.value)
        except Exception:  # noqa: BLE001 - a foreign value must not break the cache
            log.error("%s: ignoring undecodable value at %s", self.name, kv.key)
            return None
        return Entry(kv.key, value, kv.mod_revision, kv.create_revision)

    def _set(self, key: str, entry: Entry[T] | None) -> Entry[T] | None:
        previous = self._entries.pop(key, None)
        if previous is not None and self._index_of is not None:
            bucket = self._index.get(self._index_of(previous.value))
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    self._index.pop(self._index_of(previous.value), None)
        if entry is not None:
            self._entries[key] = entry
            if self._index_of is not None:
                self._index.setdefault(self._index_of(entry.value), {})[key] = entry
        return previous

    def _on_events(self, events: Sequence[WatchEvent], header_revision: int) -> None:
        out: list[CacheEvent[T]] = []
        with self._changed:
            for event in events:
                key = event.kv.key
                if event.kind == "put":
                    entry = self._entry(event.kv)
                    previous = self._set(key, entry)
                    if entry is not None:
                        out.append(CacheEvent("put", key, entry, previous, event.revision))
                else:
                    previous = self._set(key, None)
                    if previous is not None:
                        out.append(CacheEvent("delete", key, None, previous, event.revision))
            self._revision = max(self._revision, header_revision, events[-1].revision)
            self._changed.notify_all()
        self._deliver(out)

    def _deliver(self, events: list[CacheEvent[T]]) -> None:
        if not events:
            return
        for listener in list(self._listeners):
            try:
                listener(events)
            except Exception:  # noqa: BLE001 - one bad listener must not starve the rest
                log.exception("%s: listener failed", self.name)

    def _list_until_ok(self, timeout: float | None) -> tuple[list[KV], int]:
        """The whole prefix and its revision, never a made-up empty list.

        Unreachable etcd (StoreUnavailable) is expected at a cold start: retried with
        backoff (0.1 s doubling to 2 s) until `timeout` (None: until stop()). Anything else,
        e.g. a reply over the size limit or a permission error, will not cure itself:
        logged as an error and raised at once, so the node fails where it can be seen
        instead of looping quietly."""
        stop = tenacity.stop_when_event_set(self._stop)
        if timeout is not None:
            stop = stop | tenacity.stop_after_delay(timeout)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable),
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            sleep=self._stop.wait,
            before_sleep=lambda state: log.warning(
                "%s: cannot list %s yet (%s); retrying", self.name, self.prefix,
                state.outcome.exception() if state.outcome else "?"),
            reraise=True,
        )
        try:
            return retrying(self.store.list_prefix, self.prefix,
                            timeout=max(self.store.timeout, 10))
        except StoreUnavailable:
            raise
        except StoreError as exc:
            log.error("%s: cannot list %s: %s (not retried: it will not cure itself)",
                      self.name, self.prefix, exc)
            raise

    def _relist(self, listing: tuple[list[KV], int]) -> int:
        """Replace the contents with a fresh list; deliver the difference as events."""
        kvs, revision = listing
        out: list[CacheEvent[T]] = []
        with self._changed:
            seen = set()
            for kv in kvs:
                seen.add(kv.key)
                old = self._entries.get(kv.key)
                if old is not None and old.mod_revision == kv.mod_revision:
                    continue
                entry = self._entry(kv)
                previous = self._set(kv.key, entry)
                if entry is not None:
                    out.append(CacheEvent("put", kv.key, entry, previous, kv.mod_revision))
            for key in [k for k in self._entries if k not in seen]:
                previous = self._set(key, None)
                out.append(CacheEvent("delete", key, None, previous, revision))
            self._revision = max(self._revision, revision)
            self._changed.notify_all()
        self._deliver(out)
        return revision

    def _on_compacted(self, compact_revision: int) -> int:
        return self._relist(self._list_until_ok(None)) + 1
