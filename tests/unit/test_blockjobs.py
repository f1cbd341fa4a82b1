"""Block-job completion rules (judge) and the runner against the sim's bad sequences.

The runner runs with poll_interval=0: the sim advances one step per status() call, so the
tests are deterministic and need no waiting at all.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent.drivers.sim import CHUNK, SimDriver, SimScript
from controlplane.storage.blockjobs import (
    BlockJobError,
    BlockJobRunner,
    JobEvent,
    JobRecord,
    JobStatus,
    Phase,
    Verdict,
    judge,
    naive_judge,
)

TOP, BASE = "/sim/top.qcow2", "/sim/base.qcow2"
STATES = ["created", "running", "paused", "ready", "standby", "waiting", "pending",
          "aborting", "concluded", "null"]
TERMINAL = {"COMPLETED", "CANCELLED", "ERROR"}

# ---- judge -------------------------------------------------------------------------------

sizes = st.integers(min_value=0, max_value=1 << 40)
def statuses_in(states: st.SearchStrategy[str]) -> st.SearchStrategy[JobStatus]:
    """Job statuses whose state is drawn from `states` (built, not filtered: a filter that
    rejects most examples trips hypothesis's filter_too_much check now and then)."""
    return st.builds(JobStatus, job_id=st.just("j"), type=st.sampled_from(["mirror", "commit"]),
                     status=states, offset=sizes, length=sizes,
                     ready=st.booleans(), error=st.none() | st.text(min_size=1, max_size=5))


statuses = statuses_in(st.sampled_from(STATES))
events = st.builds(JobEvent, kind=st.sampled_from(["READY", "COMPLETED", "CANCELLED", "ERROR"]),
                   job_id=st.just("j"), offset=sizes, length=sizes,
                   error=st.none() | st.text(min_size=1, max_size=5))


@given(state=st.sampled_from([s for s in STATES if s != "ready"]), size=sizes,
       evs=st.lists(events.filter(lambda e: e.kind in ("CANCELLED", "ERROR")), max_size=3))
def test_offset_equal_to_length_is_never_ready_or_completed(
        state: str, size: int, evs: list[JobEvent]) -> None:
    status = JobStatus("j", "mirror", state, size, size, ready=False)
    assert naive_judge(status)  # what Nova concluded
    assert judge(status, evs) not in (Verdict.READY, Verdict.COMPLETED)


@given(status=st.none() | statuses, before=st.lists(events, max_size=3),
       terminal=events.filter(lambda e: e.kind in TERMINAL), after=st.lists(events, max_size=3))
def test_the_first_terminal_event_wins_over_any_status(
        status: JobStatus | None, before: list[JobEvent], terminal: JobEvent,
        after: list[JobEvent]) -> None:
    before = [e for e in before if e.kind == "READY"]
    want = {"CANCELLED": Verdict.CANCELLED, "ERROR": Verdict.FAILED}.get(
        terminal.kind, Verdict.FAILED if terminal.error else Verdict.COMPLETED)
    assert judge(status, [*before, terminal, *after]) == want


@given(n=st.integers(min_value=0, max_value=3))
def test_a_vanished_job_without_terminal_event_is_gone(n: int) -> None:
    assert judge(None, [JobEvent("READY", "j", 5, 5)] * n) == Verdict.GONE


@given(status=statuses_in(st.just("standby")),
       n=st.integers(min_value=0, max_value=2))
def test_standby_is_not_ready_even_after_a_ready_event(status: JobStatus, n: int) -> None:
    assert judge(status, [JobEvent("READY", "j", 1, 1)] * n) == Verdict.RUNNING


@given(status=statuses_in(st.sampled_from([s for s in STATES if s not in ("ready", "running")])),
       evs=st.lists(events, max_size=4))
def test_ready_needs_a_ready_state_flag_or_event(status: JobStatus,
                                                 evs: list[JobEvent]) -> None:
    if not any(e.kind in TERMINAL for e in evs):
        assert judge(status, evs) != Verdict.READY


def test_judge_cases() -> None:
    run = JobStatus("j", "commit", "running", 10, 10, False)
    assert judge(run, []) == Verdict.RUNNING
    assert judge(run, [JobEvent("READY", "j", 10, 10)]) == Verdict.READY  # status older
    assert judge(JobStatus("j", "commit", "ready", 10, 10, True), []) == Verdict.READY
    assert judge(JobStatus("j", "mirror", "concluded", 1, 2, False, "EIO"), []) == Verdict.FAILED
    assert judge(JobStatus("j", "mirror", "concluded", 2, 2, False), []) == Verdict.GONE
    assert judge(None, []) == Verdict.GONE
    assert judge(None, [JobEvent("COMPLETED", "j", 1, 1, "EIO")]) == Verdict.FAILED


# ---- runner on the sim -------------------------------------------------------------------


class World:
    """A sim disk with data in both layers, a runner, and one log of persists and commands."""

    def __init__(self, scripts: dict[str, SimScript | str] | None = None,
                 disks: dict[str, list[str]] | None = None, **runner_kw: float) -> None:
        self.log: list[tuple[str, str]] = []
        self.sim = SimDriver(scripts, disks=disks, log=self.log)
        self.records: list[JobRecord] = []
        self.runner = self.make_runner(**runner_kw)
        self.written: dict[int, int] = {}
        chain = self.sim.chain("disk0")
        for i, path in enumerate(reversed(chain)):  # base first, upper layers override
            self.sim.active["disk0"] = path
            for j in range(4):
                self.write(j * CHUNK + i * 4096, 4096, 0x10 * (i + 1) + j)
        self.sim.active["disk0"] = chain[0]

    def make_runner(self, **kw: float) -> BlockJobRunner:
        return BlockJobRunner(self.sim, self.persist, images=self.sim,
                              **{"poll_interval": 0.0, **kw})  # type: ignore[arg-type]

    def persist(self, rec: JobRecord) -> None:
        self.records.append(rec)
        self.log.append(("persist", rec.phase.value))

    def write(self, offset: int, length: int, pattern: int) -> None:
        self.sim.write("disk0", offset, length, pattern)
        self.written[offset] = pattern

    def phases(self) -> list[str]:
        return [r.phase.value for r in self.records]

    def before(self, first: tuple[str, str], then: tuple[str, str]) -> bool:
        return first in self.log and then in self.log and \
            self.log.index(first) < self.log.index(then)

    def snapshot(self, job: str = "s1") -> JobRecord:
        return self.runner.live_snapshot(job, "disk0", "/sim/target.qcow2", "/sim/out.qcow2")

    def output_has_all_writes(self) -> bool:
        return all(self.sim.read("/sim/out.qcow2", off) == pat
                   for off, pat in self.written.items())


def test_snapshot_normal_cancels_only_after_ready_and_copies_everything() -> None:
    w = World()
    rec = w.snapshot()
    assert rec.phase is Phase.COMPLETED and rec.error is None
    assert w.phases() == ["STARTING", "RUNNING", "READY", "FINISHING", "COMPLETED"]
    assert w.before(("persist", "FINISHING"), ("cancel", "s1"))
    assert w.output_has_all_writes()
    assert rec.bytes_copied == 4 * CHUNK and (rec.top, rec.base) == (TOP, BASE)
    assert w.sim.backing["/sim/out.qcow2"] is None  # flat
    assert w.sim.chain("disk0") == [TOP, BASE]  # the guest stays on its disk


def test_active_merge_normal_pivots_after_ready_then_flushes() -> None:
    w = World()
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.COMPLETED, rec.error
    assert w.before(("persist", "FINISHING"), ("complete", "m1"))
    assert w.before(("flush", "disk0"), ("persist", "COMPLETED"))
    assert w.sim.chain("disk0") == [BASE]
    assert all(w.sim.read("disk0", off) == pat for off, pat in w.written.items())


def test_inner_merge_completes_without_pivot() -> None:
    chain = ["/sim/top.qcow2", "/sim/mid.qcow2", "/sim/base.qcow2"]
    w = World(disks={"disk0": chain})
    rec = w.runner.live_merge("m1", "disk0", "/sim/mid.qcow2", BASE)
    assert rec.phase is Phase.COMPLETED, rec.error
    assert "READY" not in w.phases() and ("complete", "m1") not in w.log
    assert w.sim.chain("disk0") == [TOP, BASE]
    assert all(w.sim.read("disk0", off) == pat for off, pat in w.written.items())


def test_len0_naive_check_says_done_at_first_poll_while_judge_waits() -> None:
    """The Nova bug: 0 == 0 right after start. Acting on it cancels before ready, which
    gives CANCELLED and a copy that lacks data; the runner's check waits for ready."""
    naive = World({"s1": "len0-at-start"})
    naive.sim.create_overlay("/sim/target.qcow2", BASE, naive.sim.size)
    naive.sim.start_mirror("s1", "disk0", "/sim/target.qcow2", "top")
    first = naive.sim.status("s1")
    assert first is not None and (first.offset, first.length) == (0, 0)
    assert naive_judge(first) is True
    assert judge(first, naive.sim.events("s1")) == Verdict.RUNNING
    naive.sim.cancel("s1")  # what a naive runner does now
    assert naive.sim.status("s1") is None
    assert [e.kind for e in naive.sim.events("s1")] == ["CANCELLED"]
    naive.sim.convert("/sim/target.qcow2", "/sim/out.qcow2")
    assert not naive.output_has_all_writes()

    w = World({"s1": "len0-at-start", "m1": "len0-at-start"})
    assert w.snapshot().phase is Phase.COMPLETED and w.output_has_all_writes()
    assert w.runner.live_merge("m1", "disk0", TOP, BASE).phase is Phase.COMPLETED


def test_normal_script_reports_offset_equal_len_before_ready_like_qemu() -> None:
    w = World()
    w.sim.create_overlay("/sim/target.qcow2", BASE, w.sim.size)
    w.sim.start_mirror("s1", "disk0", "/sim/target.qcow2", "top")
    polls = [w.sim.status("s1") for _ in range(5)]
    caught_up = [p for p in polls if p is not None and p.offset == p.length]
    assert caught_up[0].status == "running" and judge(caught_up[0], []) == Verdict.RUNNING
    assert polls[-1] is not None and polls[-1].status == "ready"


@pytest.mark.parametrize("kind", ["snapshot", "merge"])
def test_vanish_without_pivot_fails(kind: str) -> None:
    job = "s1" if kind == "snapshot" else "m1"
    w = World({job: SimScript("vanish", pivoted=False)})
    rec = w.snapshot() if kind == "snapshot" else w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.FAILED and "vanished" in (rec.error or "")
    assert "COMPLETED" not in w.phases()
    assert w.sim.chain("disk0") == [TOP, BASE]


def test_vanished_merge_with_pivot_is_completed_by_the_chain() -> None:
    w = World({"m1": SimScript("vanish", pivoted=True)})
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert w.sim.events("m1") == []
    assert rec.phase is Phase.COMPLETED, rec.error
    assert w.sim.chain("disk0") == [BASE] and ("complete", "m1") not in w.log


def test_vanished_snapshot_is_failed_even_if_it_pivoted() -> None:
    w = World({"s1": SimScript("vanish", pivoted=True)})
    assert w.snapshot().phase is Phase.FAILED


def test_flap_pivots_only_on_a_fresh_ready() -> None:
    w = World({"m1": SimScript("flap", flap_polls=3)})
    w.sim.start_commit("m1", "disk0", TOP, BASE)
    seen = [w.sim.status("m1") for _ in range(6)]
    standby = next(s for s in seen if s is not None and s.status == "standby")
    events = w.sim.events("m1")
    assert [e.kind for e in events] == ["READY"]
    assert judge(standby, events) == Verdict.RUNNING
    with pytest.raises(BlockJobError):  # trusting the READY event: pivot refused in standby
        w.sim.complete("m1")

    w = World({"m1": SimScript("flap", flap_polls=3), "s1": SimScript("flap", flap_polls=3)})
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.COMPLETED, rec.error
    assert w.log.count(("complete", "m1")) == 1  # one pivot, accepted
    w2 = World({"s1": SimScript("flap", flap_polls=3)})
    assert w2.snapshot().phase is Phase.COMPLETED and w2.output_has_all_writes()


def test_cancel_before_ready_is_never_success() -> None:
    w = World({"s1": "cancel-before-ready", "m1": "cancel-before-ready"})
    rec = w.snapshot()
    assert rec.phase is Phase.FAILED and "before ready" in (rec.error or "")
    assert "FINISHING" not in w.phases() and ("cancel", "s1") not in w.log
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.FAILED and "cancelled" in (rec.error or "")
    assert w.sim.chain("disk0") == [TOP, BASE]


def test_failed_flush_after_commit_is_not_success() -> None:
    w = World()
    w.sim.fail_flush = True
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.FAILED and "flush" in (rec.error or "")
    assert "COMPLETED" not in w.phases()


def test_a_failing_persist_stops_the_pivot() -> None:
    w = World()

    def persist(rec: JobRecord) -> None:
        if rec.phase is Phase.FINISHING:
            raise OSError("etcd unreachable")

    runner = BlockJobRunner(w.sim, persist, images=w.sim, poll_interval=0)
    with pytest.raises(OSError):
        runner.live_merge("m1", "disk0", TOP, BASE)
    assert ("complete", "m1") not in w.log


def test_timeout_fails_and_cancels_the_job() -> None:
    w = World({"m1": SimScript(steps=10**9)}, timeout=0.05, poll_interval=0.001)
    rec = w.runner.live_merge("m1", "disk0", TOP, BASE)
    assert rec.phase is Phase.FAILED and "timed out" in (rec.error or "")
    assert w.before(("persist", "FAILED"), ("cancel", "m1"))


def test_record_round_trips_through_json() -> None:
    rec = JobRecord("j", "live-merge", "disk0", top=TOP, base=BASE, phase=Phase.FINISHING,
                    offset=3, length=4)
    assert JobRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec


# ---- resume ------------------------------------------------------------------------------


class Crash(Exception):
    """The runner's process died here."""


def crash_at(w: World, phase: Phase, kind: str = "merge") -> JobRecord:
    """Run until ``phase`` is persisted, then die before the next driver command."""
    saved: list[JobRecord] = []

    def persist(rec: JobRecord) -> None:
        saved.append(rec)
        w.log.append(("persist", rec.phase.value))
        if rec.phase is phase:
            raise Crash()

    runner = BlockJobRunner(w.sim, persist, images=w.sim, poll_interval=0)
    with pytest.raises(Crash):
        if kind == "merge":
            runner.live_merge("m1", "disk0", TOP, BASE)
        else:
            runner.live_snapshot("s1", "disk0", "/sim/target.qcow2", "/sim/out.qcow2")
    return saved[-1]


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.READY, Phase.FINISHING])
def test_resume_merge_finishes_a_job_still_running(phase: Phase) -> None:
    w = World()
    rec = crash_at(w, phase)
    assert ("complete", "m1") not in w.log
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.COMPLETED, out.error
    assert w.sim.chain("disk0") == [BASE]
    assert w.before(("persist", "FINISHING"), ("complete", "m1"))


def test_resume_merge_finishing_after_pivot_sent_with_events_lost() -> None:
    """Died after the pivot went out; the new connection has no events: GONE, confirmed by
    the chain."""
    w = World()
    rec = crash_at(w, Phase.FINISHING)
    w.sim.complete("m1")
    assert w.sim.status("m1") is None
    w.sim.forget_events()
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.COMPLETED, out.error
    assert w.log.count(("complete", "m1")) == 1


def test_resume_merge_finishing_job_vanished_without_pivot_fails() -> None:
    w = World({"m1": SimScript("vanish", pivoted=False, steps=50)})
    rec = crash_at(w, Phase.RUNNING)
    while w.sim.status("m1") is not None:
        pass
    rec.phase = Phase.FINISHING
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.FAILED and "job vanished" in (out.error or "")


def test_resume_merge_that_never_started_fails() -> None:
    w = World()
    rec = crash_at(w, Phase.STARTING)
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.FAILED and w.sim.chain("disk0") == [TOP, BASE]


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.READY, Phase.FINISHING])
def test_resume_snapshot_finishes_a_job_still_there(phase: Phase) -> None:
    w = World()
    rec = crash_at(w, phase, "snapshot")
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.COMPLETED, out.error
    assert w.output_has_all_writes()
    assert w.before(("persist", "FINISHING"), ("cancel", "s1"))


def test_resume_snapshot_finishing_with_job_gone_is_not_trusted() -> None:
    w = World()
    rec = crash_at(w, Phase.FINISHING, "snapshot")
    w.sim.cancel("s1")
    assert w.sim.status("s1") is None  # it did finish, but the event is lost with the restart
    w.sim.forget_events()
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.FAILED
    assert out.error == "restart before cancel completed; copy not trusted"


def test_resume_snapshot_finishing_with_completed_event_still_known_converts() -> None:
    w = World()
    rec = crash_at(w, Phase.FINISHING, "snapshot")
    w.sim.cancel("s1")
    w.sim.status("s1")
    out = w.make_runner().resume(rec)
    assert out.phase is Phase.COMPLETED and w.output_has_all_writes()


@pytest.mark.parametrize("phase", [Phase.COMPLETED, Phase.FAILED])
def test_resume_of_a_finished_record_changes_nothing(phase: Phase) -> None:
    w = World()
    rec = JobRecord("m1", "live-merge", "disk0", top=TOP, base=BASE, phase=phase)
    assert w.make_runner().resume(rec) == rec and w.records == []
