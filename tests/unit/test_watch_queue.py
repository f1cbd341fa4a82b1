"""WatchQueue, between the cache's watch thread and one WatchVms stream: `put` never waits
(a stuck reader once stalled the node's VM cache behind a full queue.Queue), an overflow
ends the stream at once, and `close` wakes a reader sleeping in `get`."""

from __future__ import annotations

import queue
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from controlplane import errors
from controlplane.vm.service import WatchQueue

LIMIT = 3


class QueueMachine(RuleBasedStateMachine):
    """Against a model: a list, an overflowed flag and a closed flag."""

    def __init__(self) -> None:
        super().__init__()
        self.q = WatchQueue(LIMIT)
        self.items: list[int] = []
        self.overflowed = False
        self.closed = False

    @rule(item=st.integers())
    def put(self, item: int) -> None:
        taken = self.q.put(item)  # returns at once whatever the state: it never waits
        if self.closed or self.overflowed:
            assert not taken
        elif len(self.items) >= LIMIT:
            assert not taken
            self.overflowed, self.items = True, []
        else:
            assert taken
            self.items.append(item)

    @rule()
    def get(self) -> None:
        if self.overflowed:
            with pytest.raises(errors.Exhausted, match=f"more than {LIMIT} events"):
                self.q.get(timeout=0)
        elif self.closed:
            assert self.q.get(timeout=0) is None
        elif not self.items:
            with pytest.raises(queue.Empty):
                self.q.get(timeout=0)
        else:
            assert self.q.get(timeout=0) == self.items.pop(0)

    @rule()
    def close(self) -> None:
        self.q.close()
        self.closed = True

    @invariant()
    def flags_agree(self) -> None:
        assert (self.q.overflowed, self.q.closed) == (self.overflowed, self.closed)


TestWatchQueue = QueueMachine.TestCase
TestWatchQueue.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_a_stuck_reader_never_blocks_the_writer() -> None:
    """Nobody reads: the writer offers ten times the limit and returns every time."""
    q = WatchQueue(limit=100)
    done = threading.Event()

    def writer() -> None:
        for i in range(1000):
            q.put(i)
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert done.wait(10), "the writer blocked on a full queue"
    assert q.overflowed
    with pytest.raises(errors.Exhausted):
        q.get()


def test_close_wakes_a_reader_waiting_with_no_timeout() -> None:
    q = WatchQueue()
    got: list[object] = []

    def read() -> None:
        while (item := q.get()) is not None:
            got.append(item)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert q.put("first")
    q.close()
    reader.join(10)
    assert not reader.is_alive(), "close did not wake the reader"
    assert got in (["first"], [])  # read before the close, or dropped by it
