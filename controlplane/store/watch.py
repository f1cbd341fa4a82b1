"""A prefix watch that never loses an event silently.

- It starts at a given revision (the revision of the list the caller just read + 1), so
  nothing between list and watch is missed.
- After a stream error it resumes from the last delivered revision + 1.
- When etcd has compacted the revision it needs, it calls `on_compacted`, which re-lists and
  returns the revision to resume from: the only way to recover without a gap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import grpc
from pyetcd import etcdrpc
from pyetcd import utils as etcd_utils
from pyetcd.etcdrpc import kv_pb2

from controlplane.store.client import KV, Store
from controlplane.store.errors import StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KV  # for a delete: key and mod_revision (the delete's revision) only

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


# on_events(events, header_revision)
EventsCallback = Callable[[Sequence[WatchEvent], int], None]
# on_compacted(compact_revision) -> revision to resume from (after a re-list)
CompactedCallback = Callable[[int], int]


class PrefixWatch:
    """Deliver every put/delete under `prefix` from `start_revision` on, in order."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        start_revision: int,
        on_events: EventsCallback,
        on_compacted: CompactedCallback,
        name: str = "watch",
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.next_revision = start_revision
        self._on_events = on_events
        self._on_compacted = on_compacted
        self._stop = threading.Event()
        self._call = None
        self._call_lock = threading.Lock()
        self._restart = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.streams_opened = 0

    def start(self) -> PrefixWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def reconnect(self) -> None:
        """Drop the current stream and resume from next_revision (used when the caller
        suspects the stream went silent, e.g. after a network cut healed)."""
        self._restart.set()
        self._cancel()

    def _cancel(self) -> None:
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()

    def _requests(self, start: int) -> Iterator[etcdrpc.WatchRequest]:
        raw = self.prefix.encode()
        yield etcdrpc.WatchRequest(
            create_request=etcdrpc.WatchCreateRequest(
                key=raw, range_end=etcd_utils.prefix_range_end(raw), start_revision=start
            )
        )
        # Keep the request side open until the stream is cancelled.
        while not self._stop.is_set() and not self._restart.is_set():
            self._stop.wait(0.5)

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            self._restart.clear()
            try:
                call = self.store.watch_stub().Watch(self._requests(self.next_revision))
                with self._call_lock:
                    self._call = call
                if self._stop.is_set():
                    call.cancel()
                self.streams_opened += 1
                for resp in call:
                    if resp.compact_revision:
                        log.warning("watch %s: revision %d compacted (up to %d); re-listing",
                                    self.prefix, self.next_revision, resp.compact_revision)
                        call.cancel()
                        self.next_revision = self._on_compacted(resp.compact_revision)
                        break
                    if resp.canceled:
                        log.warning("watch %s canceled by etcd: %s", self.prefix,
                                    resp.cancel_reason)
                        break
                    backoff = 0.05
                    if not resp.events:
                        continue
                    events = [
                        WatchEvent(
                            "put" if ev.type == kv_pb2.Event.PUT else "delete",
                            KV.from_proto(ev.kv),
                        )
                        for ev in resp.events
                    ]
                    self.next_revision = events[-1].revision + 1
                    try:
                        self._on_events(events, resp.header.revision)
                    except Exception:  # a consumer bug must not kill the watch
                        log.exception("watch %s: event callback failed", self.prefix)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if not self._restart.is_set():
                    log.info("watch %s broke (%s); resuming at %d", self.prefix,
                             self.store.translate(exc), self.next_revision)
            except StoreError as exc:  # opening the stream, or the re-list after compaction
                log.info("watch %s cannot resume: %s", self.prefix, exc)
            finally:
                with self._call_lock:
                    self._call = None
            if self._restart.is_set():
                continue
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 1.0)
