"""The cluster view in-process on a real etcd: the reconcile races, driven deterministically."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controlplane.cluster.registration import Registration
from controlplane.cluster.view import ClusterView
from controlplane.store import Keys, Store
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.waiting import wait_until


@pytest.fixture
def store(etcd: EtcdCluster) -> Iterator[Store]:
    s = Store(etcd.endpoints, timeout=1.0)
    yield s
    s.close()


@pytest.fixture
def keys() -> Keys:
    return Keys("/test")


def register(store: Store, keys: Keys, node_id: str) -> Registration:
    reg = Registration(store, keys, node_id, f"{node_id}:1", ttl=2).start()
    assert reg.wait_registered(10)
    return reg


def test_list_read_before_a_join_never_evicts_the_joiner(store: Store, keys: Keys) -> None:
    """The seed race: reconcile lists (revision R), a node joins (revision > R), and only then
    is the list applied, twice. The joiner must stay, and not even be suspected."""
    a = register(store, keys, "a")
    view = ClusterView(store, keys, reconcile_interval=None).start(timeout=5)
    try:
        stale = view.read_members()  # reconcile's read, before b exists
        assert set(stale.members) == {"a"}
        b = register(store, keys, "b")
        assert view.wait_for(lambda t: "b" in t.members, 5)  # the watch delivered the join
        for _ in range(3):  # applied late, and more than the two rounds eviction needs
            assert view.submit_listing(stale, wait=5)
            assert "b" in view.table.members and "b" in view.ring.members
            assert "b" not in view.table.suspects
        # and a fresh list is consistent with everything
        assert view.reconcile_now(wait=5)
        assert set(view.table.members) == {"a", "b"}
        b.stop()
        a.stop()
    finally:
        view.stop()


def test_member_whose_delete_was_missed_is_evicted_after_two_fresh_lists(
    store: Store, keys: Keys
) -> None:
    a = register(store, keys, "a")
    b = register(store, keys, "b")
    view = ClusterView(store, keys, reconcile_interval=None).start(timeout=5)
    try:
        assert view.wait_for(lambda t: set(t.members) == {"a", "b"}, 5)
        view._watch.stop()  # the watch goes silent: the delete below is never delivered
        b.stop(revoke=True)
        assert view.reconcile_now(wait=5)
        assert "b" in view.table.members and view.table.suspects["b"] == 1
        assert view.reconcile_now(wait=5)
        assert set(view.table.members) == {"a"} and set(view.ring.members) == {"a"}
        a.stop()
    finally:
        view.stop()


def test_failed_list_is_not_an_empty_list(etcd: EtcdCluster, store: Store, keys: Keys) -> None:
    a = register(store, keys, "a")
    view = ClusterView(store, keys, reconcile_interval=None).start(timeout=5)
    try:
        assert view.wait_for(lambda t: "a" in t.members, 5)
        a._keepalive.stop()  # keep the key through the outage below
        etcd.members[0].stop()
        for _ in range(3):
            assert view.reconcile_now(wait=5) is False
        assert set(view.table.members) == {"a"} and not view.table.suspects
        assert view.reconcile_failures == 3
    finally:
        view.stop()


def test_registration_regrants_and_reputs_after_lease_loss(store: Store, keys: Keys) -> None:
    reg = register(store, keys, "a")
    first = reg.incarnation
    store.revoke(reg.lease_id)  # as if the lease expired while we were cut off
    wait_until(lambda: reg.incarnation > first and not reg.fenced, timeout=10)
    kv = store.get(keys.member("a"))
    assert kv is not None and kv.create_revision == reg.incarnation and kv.lease == reg.lease_id
    reg.stop()
    assert store.get(keys.member("a")) is None


def test_restart_under_same_id_replaces_previous_incarnation(store: Store, keys: Keys) -> None:
    old = register(store, keys, "a")
    old._keepalive.stop()  # crashed: its key lingers until the lease expires
    new = register(store, keys, "a")
    kv = store.get(keys.member("a"))
    assert kv.create_revision == new.incarnation > old.incarnation
    new.stop()
