"""Host events, the pure and in-process parts: the agent's EventHub (fan-out, bounded
queues that turn into a resync), OwnedLoop.poke (coalescing, a poke during a run makes
another run), the watch plan and the reconnect backoff."""

from __future__ import annotations

import random
import threading

from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent.events import EventHub
from controlplane.cluster.owned_loop import OwnedLoop
from controlplane.v1 import host_pb2
from controlplane.vm.hostevents import BACKOFF_MAX, backoff_delay, plan_watches


def test_first_get_is_a_resync_then_events_in_order():
    hub = EventHub(clock=lambda: 1.0)
    sub = hub.subscribe()
    assert sub.get(0.0) == ([], True)
    hub.publish("h", "a", 3, "crashed")
    hub.publish("h", reason="fenced")
    events, resync = sub.get(1.0)
    assert not resync and [(e.vm_id, e.state, e.reason) for e in events] == [
        ("a", 3, "crashed"), ("", 0, "fenced")]
    assert sub.get(0.0) == ([], False)  # a heartbeat


@given(st.integers(1, 50), st.integers(0, 200))
def test_a_slow_reader_gets_a_resync_never_a_block(max_pending, published):
    hub = EventHub()
    sub = hub.subscribe(max_pending)
    sub.get(0.0)
    for i in range(published):
        hub.publish("h", f"v{i}")  # never blocks, whatever the reader does
    events, resync = sub.get(0.0)
    assert len(events) <= max_pending
    assert resync == (published > max_pending) or (published > max_pending and resync)
    if not resync:
        assert [e.vm_id for e in events] == [f"v{i}" for i in range(published)]


def test_close_wakes_a_waiting_reader_and_drops_the_subscription():
    hub = EventHub()
    sub = hub.subscribe()
    sub.get(0.0)
    out = []
    reader = threading.Thread(target=lambda: out.append(sub.get(30.0)))
    reader.start()
    hub.close()
    reader.join(5)
    assert out == [([], False)] and sub.closed and hub.subscribers() == 0
    assert hub.subscribe().closed  # after close, nothing subscribes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Work:
    """A run that blocks until released; counts the runs that finished."""

    def __init__(self) -> None:
        self.release = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.done = threading.Semaphore(0)

    def __call__(self, _resource: str) -> None:
        self.started.release()
        assert self.release.acquire(timeout=10)

    def run_one(self, loop: OwnedLoop) -> None:
        """Let the run in progress finish and wait until its slot says so."""
        self.release.release()
        assert wait_for(lambda: not loop._slots["h"].running)


def wait_for(cond) -> bool:  # type: ignore[no-untyped-def]
    event = threading.Event()
    for _ in range(1000):
        if cond():
            return True
        event.wait(0.005)
    return False


def make_loop(clock, work):  # type: ignore[no-untyped-def]
    return OwnedLoop("t", resources=lambda: ["h"], owns=lambda _r: True, work=work,
                     interval=lambda: 60.0, clock=clock, workers=1)


def test_poke_makes_a_run_due_now_and_pokes_coalesce():
    clock, work = Clock(), Work()
    loop = make_loop(clock, work)
    assert not loop.poke("h")  # no slot yet: its first run is due anyway
    assert loop.schedule(clock.now) == ["h"]
    work.run_one(loop)
    clock.now = 1.0
    assert loop.schedule(clock.now) == []  # next due at 60
    for _ in range(5):
        assert loop.poke("h")
    assert loop.schedule(clock.now) == ["h"]  # five pokes, one run
    work.run_one(loop)
    assert loop.schedule(clock.now) == []
    loop.stop()


def test_a_poke_during_a_run_makes_another_run_follow_it():
    clock, work = Clock(), Work()
    loop = make_loop(clock, work)
    assert loop.schedule(0.0) == ["h"]
    assert work.started.acquire(timeout=10)  # the run is in progress
    assert loop.poke("h") and loop.poke("h")
    work.run_one(loop)
    assert loop.schedule(0.0) == ["h"]  # due again at once, not in 60 s
    work.run_one(loop)
    assert loop.schedule(0.0) == []
    loop.stop()


def host(host_id: str, address: str) -> host_pb2.Host:
    return host_pb2.Host(host_id=host_id, address=address)


def test_plan_watches_one_stream_per_address_of_owned_hosts():
    hosts = [host("a", "x:1"), host("b", "x:1"), host("c", "y:1"), host("d", "z:1"),
             host("e", "")]
    plan = plan_watches(hosts, owns=lambda h: h in {"a", "b", "c", "e"})
    assert plan == {"x:1": frozenset({"a", "b"}), "y:1": frozenset({"c"})}


@given(st.integers(1, 100), st.integers(0, 2**32))
def test_backoff_grows_and_is_capped(failures, seed):
    rng = random.Random(seed)
    delay = backoff_delay(failures, rng)
    assert 0 < delay <= BACKOFF_MAX * 1.25
    assert backoff_delay(1, random.Random(seed)) <= 0.2 * 1.25
