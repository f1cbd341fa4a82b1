"""PrefixCache's first list: unreachable etcd is waited for, a permanent store error fails
loudly at once (logged as an error and raised) instead of being retried forever."""

from __future__ import annotations

import logging
import threading
import time

import grpc
import pytest

from controlplane.store.cache import PrefixCache
from controlplane.store.client import KV
from controlplane.store.errors import StoreError, StoreUnavailable


class ListingStore:
    """Just what PrefixCache's list needs: list_prefix answers from a script of errors."""

    timeout = 1.0

    def __init__(self, *errors: StoreError) -> None:
        self.errors = list(errors)
        self.calls = 0

    def list_prefix(self, prefix: str, timeout: float | None = None
                    ) -> tuple[list[KV], int]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [KV(key=f"{prefix}/a", value=b"1", mod_revision=7, create_revision=7,
                   version=1, lease=0)], 9


def cache(store: ListingStore) -> PrefixCache[bytes]:
    return PrefixCache(store, "/p", bytes, name="test-cache")  # type: ignore[arg-type]


def test_unreachable_etcd_is_retried_until_it_answers(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    store = ListingStore(StoreUnavailable("down"), StoreUnavailable("still down"))
    with caplog.at_level(logging.WARNING, "controlplane.store.cache"):
        kvs, revision = cache(store)._list_until_ok(timeout=10)
    assert (store.calls, revision, [kv.key for kv in kvs]) == (3, 9, ["/p/a"])
    warned = [r for r in caplog.records if "cannot list /p yet" in r.getMessage()]
    assert len(warned) == 2 and all(r.levelno == logging.WARNING for r in warned)


def test_a_permanent_error_is_logged_and_raised_at_once(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    store = ListingStore(StoreError("etcd: RESOURCE_EXHAUSTED: message larger than max"))
    with caplog.at_level(logging.WARNING, "controlplane.store.cache"), \
            pytest.raises(StoreError, match="RESOURCE_EXHAUSTED"):
        cache(store).start()
    assert store.calls == 1
    (record,) = [r for r in caplog.records if r.name == "controlplane.store.cache"]
    assert record.levelno == logging.ERROR and "test-cache" in record.getMessage()


def test_unreachable_past_the_timeout_raises() -> None:
    store = ListingStore(*[StoreUnavailable("down")] * 100)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        cache(store)._list_until_ok(timeout=0.3)
    assert time.monotonic() - started < 3 and store.calls >= 2


def test_stop_ends_the_retries() -> None:
    store = ListingStore(*[StoreUnavailable("down")] * 1000)
    c = cache(store)
    threading.Timer(0.3, c.stop).start()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        c._list_until_ok(timeout=None)
    assert time.monotonic() - started < 3


def test_etcd_overload_passes_and_a_too_large_answer_does_not() -> None:
    """etcd's "too many requests" (RESOURCE_EXHAUSTED) is retried like an outage; the same
    code for an answer over the receive limit is permanent (retrying cannot shrink it)."""
    from controlplane.store.client import _overloaded

    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _overloaded(exhausted, "etcdserver: too many requests")
    assert not _overloaded(exhausted, "Received message larger than max (5000000 vs. 4194304)")
    assert not _overloaded(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")
