"""Property tests of the pure member table: the seed races, driven by a model of etcd."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.cluster.table import MemberInfo, MemberTable

NODES = ["a", "b", "c", "d"]


class FakeEtcd:
    """Member keys with revisions, the event stream, and snapshots taken for lists."""

    def __init__(self) -> None:
        self.revision = 1
        self.keys: dict[str, MemberInfo] = {}
        self.events: list[tuple[str, object]] = []

    def join(self, node: str) -> None:
        if node in self.keys:
            return
        self.revision += 1
        info = MemberInfo(node, f"{node}:1", self.revision, self.revision)
        self.keys[node] = info
        self.events.append(("put", info))

    def leave(self, node: str) -> None:
        if node not in self.keys:
            return
        self.revision += 1
        del self.keys[node]
        self.events.append(("delete", (node, self.revision)))

    def snapshot(self) -> tuple[dict[str, MemberInfo], int]:
        self.revision += 1  # unrelated writes move the revision too
        return dict(self.keys), self.revision


def apply_event(table: MemberTable, event: tuple[str, object]) -> MemberTable:
    kind, payload = event
    if kind == "put":
        return table.on_put(payload)[0]  # type: ignore[arg-type]
    node, rev = payload  # type: ignore[misc]
    return table.on_delete(node, rev)[0]


steps = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(NODES)),
        st.tuples(st.just("leave"), st.sampled_from(NODES)),
        st.tuples(st.just("list"), st.just("")),
        st.tuples(st.just("apply_list"), st.integers(0, 20)),
        st.tuples(st.just("deliver"), st.just("")),
        st.tuples(st.just("drop"), st.just("")),
    ),
    max_size=60,
)


@given(steps)
@settings(max_examples=400, deadline=None)
def test_stale_lists_never_evict_a_live_member_and_fresh_lists_converge(ops: list) -> None:
    etcd = FakeEtcd()
    table = MemberTable()
    lists: list[tuple[dict[str, MemberInfo], int]] = []
    delivered = 0
    given: set[MemberInfo] = set()  # every member record the table was handed
    for op, arg in ops:
        if op == "join":
            etcd.join(arg)
        elif op == "leave":
            etcd.leave(arg)
        elif op == "list":
            lists.append(etcd.snapshot())
        elif op == "apply_list" and lists:
            listed, rev = lists[arg % len(lists)]  # possibly stale, possibly applied twice
            table = table.on_list(listed, rev)[0]
            given.update(listed.values())
        elif op == "deliver" and delivered < len(etcd.events):
            kind, payload = etcd.events[delivered]
            table = apply_event(table, etcd.events[delivered])
            if kind == "put":
                given.add(payload)  # type: ignore[arg-type]
            delivered += 1
        elif op == "drop" and delivered < len(etcd.events):
            delivered += 1  # a lost event: only reconcile can repair it
        # Safety: a member alive in etcd whose record the table was handed is kept, however
        # stale the lists applied since.
        for node, info in etcd.keys.items():
            if info in given:
                assert table.members.get(node) == info, (node, dict(table.members))
    # Liveness: the rest of the events, then two fresh lists, converge on etcd's truth.
    for event in etcd.events[delivered:]:
        table = apply_event(table, event)
    for _ in range(2):
        listed, rev = etcd.snapshot()
        table = table.on_list(listed, rev)[0]
    assert dict(table.members) == etcd.keys
    assert not table.suspects


def test_list_read_before_join_cannot_evict_however_often_applied() -> None:
    table = MemberTable()
    stale = ({"a": MemberInfo("a", "a:1", 5, 5)}, 6)  # read at revision 6
    table, _ = table.on_list(*stale)
    table, changes = table.on_put(MemberInfo("b", "b:1", 7, 7))  # b joins at 7
    assert [c.kind for c in changes] == ["join"]
    for _ in range(5):
        table, changes = table.on_list(*stale)
        assert "b" in table.members and not changes
    assert "b" not in table.suspects


def test_missing_twice_from_fresh_lists_is_evicted_once() -> None:
    table, _ = MemberTable().on_put(MemberInfo("a", "a:1", 5, 5))
    table, changes = table.on_list({}, 9)
    assert "a" in table.members and table.suspects["a"] == 1 and not changes
    table, changes = table.on_list({}, 10)
    assert "a" not in table.members and [c.kind for c in changes] == ["evict"]
    assert table.epoch == 10
    # a late put of the same (dead) incarnation does not resurrect it
    table, changes = table.on_put(MemberInfo("a", "a:1", 5, 5))
    assert "a" not in table.members and not changes


def test_presence_resets_suspicion_and_rejoin_is_reported() -> None:
    table, _ = MemberTable().on_put(MemberInfo("a", "a:1", 5, 5))
    table, _ = table.on_list({}, 9)
    table, _ = table.on_list({"a": MemberInfo("a", "a:1", 5, 5)}, 11)
    assert not table.suspects
    table, _ = table.on_list({}, 12)
    assert "a" in table.members  # one miss again, not two in a row
    table, changes = table.on_delete("a", 13)
    assert [c.kind for c in changes] == ["leave"] and table.epoch == 13
    table, changes = table.on_put(MemberInfo("a", "a:1", 14, 14))
    assert [c.kind for c in changes] == ["join"] and table.members["a"].incarnation == 14
    table, changes = table.on_put(MemberInfo("a", "a:1", 14, 15))
    assert [c.kind for c in changes] == ["update"] and table.epoch == 14


def test_out_of_order_delete_then_old_put_is_ignored() -> None:
    table, _ = MemberTable().on_delete("a", 10)
    table, changes = table.on_put(MemberInfo("a", "a:1", 8, 8))
    assert not table.members and not changes
