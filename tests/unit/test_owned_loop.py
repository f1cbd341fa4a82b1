"""OwnedLoop: periodic work on owned resources, driven tick by tick with an injected clock."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.cluster.owned_loop import OwnedLoop
from controlplane.testing.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(resources, owns, work, interval=10.0, **kw):  # type: ignore[no-untyped-def]
    clock = Clock()
    loop = OwnedLoop("test", resources=lambda: list(resources), owns=owns, work=work,
                     interval=lambda: interval, clock=clock, **kw)
    return loop, clock


def test_only_owned_resources_run_and_each_again_one_interval_after_it_finished() -> None:
    done: list[str] = []
    loop, clock = make(["a", "b", "c"], lambda r: r != "b", done.append)
    try:
        assert sorted(loop.schedule(clock())) == ["a", "c"]
        wait_until(lambda: len(done) == 2, timeout=5)
        assert loop.schedule(clock()) == []  # not due yet
        clock.now += 9.9
        assert loop.schedule(clock()) == []
        clock.now += 0.2
        assert sorted(loop.schedule(clock())) == ["a", "c"]
    finally:
        loop.stop()


def test_a_running_resource_is_never_submitted_twice() -> None:
    release = threading.Event()
    started: list[str] = []

    def work(r: str) -> None:
        started.append(r)
        release.wait(5)

    loop, clock = make(["a"], lambda r: True, work, interval=0.0)
    try:
        assert loop.schedule(clock()) == ["a"]
        wait_until(lambda: started == ["a"], timeout=5)
        clock.now += 100
        assert loop.schedule(clock()) == []
        assert loop.run_now("a") == (False, None)
        release.set()
        wait_until(lambda: loop.schedule(clock()) == ["a"], timeout=5)
    finally:
        release.set()
        loop.stop()


def test_a_resource_no_longer_owned_is_forgotten_and_disabled_runs_nothing() -> None:
    owned = {"a", "b"}
    forgotten: list[str] = []
    enabled = [True]
    loop, clock = make(["a", "b"], lambda r: r in owned, lambda r: None,
                       on_forget=forgotten.append, enabled=lambda: enabled[0])
    try:
        loop.schedule(clock())
        owned.discard("b")
        clock.now += 1
        loop.schedule(clock())
        assert forgotten == ["b"]
        enabled[0] = False
        clock.now += 100
        assert loop.schedule(clock()) == []
    finally:
        loop.stop()


def test_run_now_returns_what_work_returned_and_a_failing_work_does_not_stop_the_loop() -> None:
    calls: list[str] = []

    def work(r: str) -> str:
        calls.append(r)
        if r == "bad":
            raise RuntimeError("boom")
        return r.upper()

    loop, clock = make(["bad", "ok"], lambda r: True, work, interval=0.0)
    try:
        assert loop.run_now("ok") == (True, "OK")
        loop.schedule(clock())
        wait_until(lambda: calls.count("bad") == 1 and calls.count("ok") == 2, timeout=5)
        clock.now += 1
        wait_until(lambda: sorted(loop.schedule(clock())) == ["bad", "ok"], timeout=5)
    finally:
        loop.stop()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sets(st.sampled_from("abcdef")), st.floats(0, 30)), max_size=12))
def test_submitted_only_when_owned_due_and_idle(steps) -> None:  # type: ignore[no-untyped-def]
    """Over any sequence of ownership changes and clock steps (work finishes at once):
    every submitted id is owned at that tick, and no id is submitted twice within one
    interval of its previous run."""
    owned: set[str] = set()
    loop, clock = make("abcdef", lambda r: r in owned, lambda r: None, interval=10.0,
                       workers=1)
    last: dict[str, float] = {}
    try:
        for ids, step in steps:
            owned.clear()
            owned.update(ids)
            clock.now += step
            for r in last.copy():
                if r not in owned:
                    del last[r]  # forgotten: a new owner starts afresh
            due = loop.schedule(clock())
            assert set(due) <= owned
            for r in due:
                assert r not in last or clock.now - last[r] >= 10.0 - 1e-9
            wait_until(lambda due=due: all(not loop._slots[r].running for r in due
                                           if r in loop._slots), timeout=5)
            for r in due:
                last[r] = clock.now
    finally:
        loop.stop()
