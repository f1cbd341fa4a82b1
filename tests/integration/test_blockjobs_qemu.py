"""Live snapshot and live merge on real QEMU 7.2 (``-machine none``, no guest) over QMP.

Data is checked in the image files with qemu-io ``read -P`` after QEMU closed them (or was
killed), never through the driver that wrote it.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from controlplane.agent.drivers.qemu import QemuDriver, QemuVm
from controlplane.storage import qemuimg
from controlplane.storage.blockjobs import BlockJobError, BlockJobRunner, JobRecord, Phase
from controlplane.testing.qemu import write_pattern
from controlplane.testing.waiting import wait_until

MIB = 1 << 20
BASE_PATTERN = 0x11


# ---- qemu-io helper: many reads in one process, reporting which failed -----------------


def unreadable(path: Path, checks: Sequence[tuple[int, int, int]]) -> list[int]:
    """Offsets among (pattern, offset, length) checks whose data is NOT in the image (read
    through its backing chain), with one qemu-io process for all of them."""
    args = [a for p, off, ln in checks for a in ("-c", f"read -P {p} {off} {ln}")]
    out = subprocess.run(["qemu-io", "-r", *args, str(path)], capture_output=True, text=True,
                         timeout=120).stdout
    reads = len(re.findall(r"^read \d+/\d+ bytes", out, re.M))
    assert reads == len(checks), out[-2000:]
    return [int(m) for m in re.findall(r"Pattern verification failed at offset (\d+)", out)]


def make_chain(d: Path, names: Sequence[str]) -> list[Path]:
    """qcow2 chain, base first; the base holds BASE_PATTERN in its first MiB."""
    paths = [d / f"{n}.qcow2" for n in names]
    qemuimg.create(str(paths[0]), size=64 * MIB)
    write_pattern(str(paths[0]), 0, MIB, BASE_PATTERN)
    for below, path in zip(paths, paths[1:], strict=False):
        qemuimg.create(str(path), backing=str(below))
    return paths


class Recorder:
    """A driver wrapper logging commands next to the runner's persists, in one list."""

    def __init__(self, driver: QemuDriver) -> None:
        self.driver = driver
        self.log: list[tuple[str, str]] = []
        self.events_at_complete: list[str] = []

    def persist(self, rec: JobRecord) -> None:
        self.log.append(("persist", rec.phase.value))

    def complete(self, job_id: str) -> None:
        self.events_at_complete = [
            e["event"] if e["event"] != "JOB_STATUS_CHANGE" else e["data"]["status"]
            for e in self.driver.vm.job_events(job_id)
        ]
        self.log.append(("complete", job_id))
        self.driver.complete(job_id)

    def cancel(self, job_id: str) -> None:
        self.log.append(("cancel", job_id))
        self.driver.cancel(job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)

    def index(self, entry: tuple[str, str]) -> int:
        return self.log.index(entry)


@pytest.fixture
def two_layers(tmp_path: Path) -> Iterator[tuple[Path, Path, QemuVm]]:
    base, top = make_chain(tmp_path, ["base", "top"])
    with QemuVm(str(top)) as vm:
        yield base, top, vm


class Writer(threading.Thread):
    """A busy guest: distinct 64 KiB writes, one after another, through the driver."""

    def __init__(self, driver: QemuDriver, start: int, count: int) -> None:
        super().__init__(daemon=True)
        self.driver, self.start_at, self.count = driver, start, count
        self.done: list[tuple[int, int, int]] = []  # (pattern, offset, length), acknowledged
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        for i in range(self.count):
            if self.stop.is_set():
                return
            w = ((i % 250) + 1, self.start_at + i * 64 * 1024, 64 * 1024)
            try:
                self.driver.write("disk0", w[1], w[2], w[0])
            except BlockJobError as exc:
                self.error = exc
                return
            self.done.append(w)


# ---- tests -------------------------------------------------------------------------------


def test_live_snapshot_under_writes_holds_everything_written_before_it(
        two_layers: tuple[Path, Path, QemuVm], tmp_path: Path) -> None:
    """Every write acknowledged before the snapshot started is in the flat output; in fact
    every write acknowledged before the cancel went out is (cancel after ready gives a
    point-in-time copy as of the cancel), and the guest stays on its own disk."""
    base, top, vm = two_layers
    driver = QemuDriver(vm)
    writer = Writer(driver, 2 * MIB, 900)  # up to ~58 MiB
    at_cancel: list[list[tuple[int, int, int]]] = []

    def persist(rec: JobRecord) -> None:
        if rec.phase is Phase.FINISHING:
            at_cancel.append(list(writer.done))

    writer.start()
    try:
        wait_until(lambda: len(writer.done) >= 100, timeout=10, message="writer started")
        before_start = list(writer.done)
        rec = BlockJobRunner(driver, persist, poll_interval=0.01, timeout=20).live_snapshot(
            "snap1", "disk0", str(tmp_path / "target.qcow2"), str(tmp_path / "out.qcow2"))
    finally:
        writer.stop.set()
        writer.join(timeout=10)
    assert writer.error is None
    assert rec.phase is Phase.COMPLETED, rec.error
    assert len(writer.done) > len(before_start), "the guest kept writing during the snapshot"
    events = [e["event"] for e in vm.job_events("snap1") if e["event"] != "JOB_STATUS_CHANGE"]
    assert events == ["BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"]  # cancel after ready
    assert driver.chain("disk0") == [str(top), str(base)]
    assert rec.bytes_copied > 0 and rec.bytes_copied == rec.offset
    out = tmp_path / "out.qcow2"
    assert qemuimg.chain_info(str(out))[-1].backing_path is None
    assert unreadable(out, [(BASE_PATTERN, 0, MIB), *before_start]) == []
    assert unreadable(out, at_cancel[0]) == []


def test_active_commit_pivots_only_after_ready(two_layers: tuple[Path, Path, QemuVm]) -> None:
    base, top, vm = two_layers
    driver = QemuDriver(vm)
    writes = [(0x40 + i, (4 + i) * MIB, MIB) for i in range(8)]
    for p, off, ln in writes:
        driver.write("disk0", off, ln, p)
    rec_driver = Recorder(driver)
    rec = BlockJobRunner(rec_driver, rec_driver.persist, poll_interval=0.01,  # type: ignore[arg-type]
                         timeout=20).live_merge("m1", "disk0", str(top), str(base))
    assert rec.phase is Phase.COMPLETED, rec.error
    assert rec_driver.index(("persist", "FINISHING")) < rec_driver.index(("complete", "m1"))
    assert rec_driver.log[-1] == ("persist", "COMPLETED")
    # QEMU had said ready (status change and event) before the pivot went out
    assert "ready" in rec_driver.events_at_complete
    assert "BLOCK_JOB_READY" in rec_driver.events_at_complete
    assert "BLOCK_JOB_COMPLETED" not in rec_driver.events_at_complete
    assert driver.chain("disk0") == [str(base)]
    vm.close()
    assert unreadable(base, [(BASE_PATTERN, 0, MIB), *writes]) == []


def test_inner_commit_completes_on_its_own(tmp_path: Path) -> None:
    base, mid, top = make_chain(tmp_path, ["base", "mid", "top"])
    write_pattern(str(mid), 2 * MIB, MIB, 0x22)
    write_pattern(str(top), 3 * MIB, MIB, 0x33)
    records: list[JobRecord] = []
    with QemuVm(str(top)) as vm:
        driver = QemuDriver(vm)
        rec = BlockJobRunner(driver, records.append, poll_interval=0.01,
                             timeout=20).live_merge("m1", "disk0", str(mid), str(base))
        assert rec.phase is Phase.COMPLETED, rec.error
        assert [r.phase.value for r in records] == ["STARTING", "RUNNING", "COMPLETED"]
        assert driver.chain("disk0") == [str(top), str(base)]
    assert qemuimg.chain_info(str(top))[-1].backing_path == os.path.realpath(base)
    assert unreadable(base, [(BASE_PATTERN, 0, MIB), (0x22, 2 * MIB, MIB)]) == []
    assert unreadable(top, [(0x33, 3 * MIB, MIB)]) == []


def test_qemu_killed_right_after_completed_of_an_active_commit(tmp_path: Path) -> None:
    """SIGKILL at BLOCK_JOB_COMPLETED (before anyone flushed), with a guest writing all along.

    Seen with QEMU 7.2 here (repeated runs): every write acknowledged *before* the COMPLETED
    event is in the base afterwards (the mirror underneath block-commit flushes its target
    when it converges), but a write QEMU took *after* the pivot and acknowledged before the
    kill is regularly missing from the base: it went to the base, whose qcow2 metadata was
    still in QEMU's cache (the same loss as any unflushed guest write). So a moved backing
    pointer proves nothing about durability, as DESIGN section 7 says; we did not see data that
    the job itself had committed go missing.

    The project's path never claims success here: after COMPLETED the runner must read the
    chain and flush before it persists COMPLETED; QEMU is gone, so the job ends FAILED with
    the record at FINISHING until then, and the chain reconcile decides.
    """
    base, top = make_chain(tmp_path, ["base", "top"])
    at_event: list[int] = []
    holder: dict[str, QemuVm] = {}
    writer: Writer | None = None

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "BLOCK_JOB_COMPLETED":
            at_event.append(len(writer.done) if writer else 0)
            holder["vm"].kill()

    vm = QemuVm(str(top), on_event=on_event)
    holder["vm"] = vm
    try:
        driver = QemuDriver(vm)
        early = [(0x40 + i, (2 + i) * MIB, MIB) for i in range(8)]
        for p, off, ln in early:
            driver.write("disk0", off, ln, p)
        writer = Writer(driver, 16 * MIB, 700)
        writer.start()
        wait_until(lambda: len(writer.done) >= 10, timeout=10, message="writer started")
        recorder = Recorder(driver)
        rec = BlockJobRunner(recorder, recorder.persist, poll_interval=0.005,  # type: ignore[arg-type]
                             timeout=20).live_merge("m1", "disk0", str(top), str(base))
        writer.stop.set()
        writer.join(timeout=10)
    finally:
        vm.close()
    assert at_event, "BLOCK_JOB_COMPLETED was seen"
    assert not vm.alive()
    assert rec.phase is Phase.FAILED
    assert ("persist", "COMPLETED") not in recorder.log
    assert recorder.index(("persist", "FINISHING")) < recorder.index(("complete", "m1"))
    before_event = writer.done[: at_event[0]]
    assert unreadable(base, [(BASE_PATTERN, 0, MIB), *early, *before_event]) == []


def test_bench_snapshot_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from controlplane.devtools.bench.snapshot import main

    assert main(["--size-mib", "16"]) == 0
    out = capsys.readouterr().out
    assert f"bytes_copied: {16 * MIB}" in out
    assert "output_has_backing: False" in out and "seconds: " in out
