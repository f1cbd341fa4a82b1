"""The store against a real etcd: deadlines, no blacklisting, keepalive, watch resume."""

from __future__ import annotations

import threading
import time

import pytest

from controlplane.store import KeepAlive, PrefixWatch, Store, StoreUnavailable
from controlplane.store import txn as t
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until


def test_unreachable_etcd_fails_within_budget() -> None:
    store = Store(f"127.0.0.1:{free_port()}", timeout=0.5, budget=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.list_prefix("/x/")
    # bounded by the budget (1 s), not by a TCP timeout of minutes; the slack is for a
    # loaded machine (TLS to the closed port included)
    assert time.monotonic() - started < 5.0
    store.close()


def test_one_unavailable_does_not_blacklist_the_endpoint(etcd: EtcdCluster) -> None:
    store = Store(etcd.endpoints, timeout=0.5, budget=0.5)
    store.put("/k", b"1")
    etcd.members[0].stop()
    with pytest.raises(StoreUnavailable):
        store.get("/k")
    etcd.members[0].restart()
    # pyetcd's own client() would refuse every call for 300 s here.
    kv = wait_until(lambda: store.get("/k", budget=1.0), timeout=10)
    assert kv.value == b"1"
    store.close()


def test_cas_and_fence_compares(etcd: EtcdCluster) -> None:
    store = Store(etcd.endpoints)
    rev = store.put("/r", b"a")
    assert store.txn([t.mod_revision_is("/r", rev)], [t.put("/r", b"b")]).succeeded
    assert not store.txn([t.mod_revision_is("/r", rev)], [t.put("/r", b"c")]).succeeded
    assert store.get("/r").value == b"b"
    lease, _ = store.grant(5)
    res = store.txn([t.absent("/m")], [t.put("/m", b"", lease)])
    fence = t.Fence("/m", res.revision)
    assert store.txn([fence.compare()], [t.put("/owned", b"1")]).succeeded
    store.revoke(lease)
    store.txn([t.absent("/m")], [t.put("/m", b"")])  # a new incarnation
    assert not store.txn([fence.compare()], [t.put("/owned", b"2")]).succeeded
    assert store.get("/owned").value == b"1"
    store.close()


def test_keepalive_one_stream_keeps_lease_and_reports_loss(etcd: EtcdCluster) -> None:
    store = Store(etcd.endpoints)
    lease, ttl = store.grant(2)
    acks: list[float] = []
    lost = threading.Event()
    ka = KeepAlive(store, lease, ttl / 3, lambda s, _t, _r: acks.append(s), lost.set).start()
    wait_until(lambda: len(acks) >= 10, timeout=10)  # > 3 TTLs
    assert store.lease_ttl(lease) > 0
    assert ka.streams_opened == 1
    store.revoke(lease)
    wait_until(lost.is_set, timeout=5)
    ka.stop()
    store.close()


def test_watch_resumes_after_etcd_restart_without_gaps(etcd: EtcdCluster) -> None:
    store = Store(etcd.endpoints, timeout=1.0)
    start = store.put("/w/0", b"0")
    got: list[tuple[str, str, int]] = []
    watch = PrefixWatch(store, "/w/", start + 1,
                        lambda evs, _r: got.extend((e.kind, e.kv.key, e.revision) for e in evs),
                        lambda r: r).start()
    for i in range(1, 4):
        store.put(f"/w/{i}", b"x")
    wait_until(lambda: len(got) == 3, timeout=5)
    etcd.members[0].stop()
    etcd.members[0].restart()
    store.put("/w/4", b"x", budget=30)
    store.delete("/w/1", budget=30)
    wait_until(lambda: len(got) == 5, timeout=30)
    assert [k for _, k, _ in got] == ["/w/1", "/w/2", "/w/3", "/w/4", "/w/1"]
    assert [kind for kind, _, _ in got][-1] == "delete"
    revisions = [r for _, _, r in got]
    assert revisions == sorted(revisions) and len(set(revisions)) == 5
    assert watch.streams_opened >= 2
    watch.stop()
    store.close()


def test_watch_from_compacted_revision_relists(etcd: EtcdCluster) -> None:
    store = Store(etcd.endpoints)
    first = store.put("/c/a", b"1")
    last = store.put("/c/a", b"2")
    store.compact(last)
    compacted = threading.Event()

    def on_compacted(revision: int) -> int:
        resume = store.list_prefix("/c/")[1] + 1
        compacted.set()  # only now: a put before the re-list would be in the list, not the watch
        return resume

    got: list[int] = []
    watch = PrefixWatch(store, "/c/", first, lambda evs, _r: got.extend(e.revision for e in evs),
                        on_compacted).start()
    wait_until(compacted.is_set, timeout=5)
    rev = store.put("/c/b", b"3")
    wait_until(lambda: got == [rev], timeout=5)
    watch.stop()
    store.close()
