"""Storage-proven HA, the pure parts (issue 14, section 1): the verdict over the store's
answers, the two-checks rule, and the sim store's session table (expiry, blocklist) on a
fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.mds.sessions import Blocklisted, SessionTable
from controlplane.vm import ha

HOST = "host-0"
hosts = st.sampled_from([HOST, "host-1", "host-2"])
answers = st.lists(st.builds(ha.VolumeAnswer, volume=st.sampled_from(["s/a", "s/b"]),
                             answered=st.booleans(),
                             clients=st.lists(hosts, max_size=3).map(tuple)), max_size=4)


@given(answers)
def test_a_live_session_from_the_host_always_holds(answers: list[ha.VolumeAnswer]) -> None:
    verdict = ha.storage_verdict(HOST, answers)
    live = any(a.answered and HOST in a.clients for a in answers)
    assert (verdict == ha.STORAGE_LIVE) == live


@given(answers)
def test_absent_only_when_every_volume_answered_without_the_host(
        answers: list[ha.VolumeAnswer]) -> None:
    verdict = ha.storage_verdict(HOST, answers)
    if verdict == ha.STORAGE_ABSENT:
        assert answers and all(a.answered and HOST not in a.clients for a in answers)
    if not answers or any(not a.answered for a in answers):
        assert verdict != ha.STORAGE_ABSENT  # unknown is not absent


verdicts = st.sampled_from([ha.STORAGE_LIVE, ha.STORAGE_ABSENT, ha.STORAGE_UNKNOWN])


@given(st.lists(st.tuples(verdicts, st.floats(0, 5)), max_size=12),
       st.floats(0.1, 3))
def test_a_restart_needs_two_consecutive_absent_answers_one_interval_apart(
        steps: list[tuple[str, float]], interval: float) -> None:
    now, since = 1000.0, None
    run: list[float] = []  # times of the current run of absent answers
    for verdict, gap in steps:
        now += gap
        action, since = ha.storage_step(verdict, since, now, interval)
        run = run + [now] if verdict == ha.STORAGE_ABSENT else []
        if action == ha.RESTART_ON_STORAGE:
            assert verdict == ha.STORAGE_ABSENT and len(run) >= 2
            assert now - run[0] >= interval
            since, run = None, []  # the shell restarts and forgets
        else:
            assert action == {ha.STORAGE_LIVE: ha.HOLD, ha.STORAGE_ABSENT: ha.WAIT,
                              ha.STORAGE_UNKNOWN: ha.FALLBACK}[verdict]


def test_a_run_stamped_in_the_future_begins_again() -> None:
    assert ha.storage_step(ha.STORAGE_ABSENT, 2000.0, 1000.0, 1.0) == (ha.WAIT, 1000.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_expired_session_is_blocklisted_and_stays_so() -> None:
    clock = Clock()
    table = SessionTable(clock=clock, default_timeout=2.0)
    table.attach("v", HOST, "s1", "10.0.0.1")
    clock.now += 1.5
    table.keepalive("v", HOST, "s1")
    clock.now += 1.5
    assert [s.client_id for s in table.live("v")] == [HOST]
    clock.now += 2.5  # no keepalive for longer than the timeout: expired
    with pytest.raises(Blocklisted, match="blocklisted"):
        table.keepalive("v", HOST, "s1")  # nobody looked before: still refused
    with pytest.raises(Blocklisted):
        table.attach("v", HOST, "s1")  # the same session cannot come back
    assert table.live("v") == []
    assert not table.detach("v", HOST, "s1")  # a blocklisted session stays on the list
    assert [s.blocklisted for s in table.all()] == [True]
    table.attach("v", HOST, "s2")  # a new session (a new start) may
    assert [s.session_id for s in table.live("v")] == ["s2"]


def test_a_session_belongs_to_its_client() -> None:
    table = SessionTable(clock=Clock())
    table.attach("v", HOST, "s1")
    with pytest.raises(Blocklisted, match="belongs to client"):
        table.keepalive("v", "host-9", "s1")
    with pytest.raises(KeyError):
        table.keepalive("v", HOST, "nope")


def test_two_tables_on_one_file_are_one_store(tmp_path) -> None:
    path = str(tmp_path / "sessions.db")
    clock = Clock()
    a, b = SessionTable(path, clock=clock), SessionTable(path, clock=clock)
    a.attach("v", HOST, "s1")
    assert [s.session_id for s in b.live("v")] == ["s1"]
    b.set_timeout(0.5)
    assert a.timeout() == 0.5
    clock.now += 1
    with pytest.raises(Blocklisted):
        b.keepalive("v", HOST, "s1")
    assert a.live("v") == []
