"""Live block-job figures on a real libvirt domain: snapshot time and bytes, merge time.

``python3 -m controlplane.devtools.bench.libvirt_blockjobs [--fill-mib N] [--runs R]``

One guest (the project's, TCG) on its own per-host session libvirtd, its vda ``top.qcow2``
over ``base.qcow2``. After boot the guest writes ``--fill-mib`` MiB of its pattern to
/dev/vda (64 KiB blocks, each fsync'ed), so the top holds that much; the bench waits for the
writer to finish. Then, ``--runs`` times: a live snapshot (blockCopy shallow into a target,
READY, abort, qemu-img convert to a flat file) and an active live merge of the top into
its base (blockCommit, READY, pivot, flush); before each later run a fresh, empty top is
put on the live disk (an external disk-only snapshot), so run 1 moves the filled top and
the later runs show the fixed cost of a job on an almost empty top.

Printed per run: seconds to READY and in total, the bytes the job moved (its last cur) and
the flat output's allocated bytes, and one flush (pause + resume) apart. Boot time apart.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence

from controlplane.agent.guest import WRITE_BLOCK
from controlplane.storage import qemuimg
from controlplane.storage.blockjobs import BlockJobRunner, JobRecord, Phase
from controlplane.testing.libvirt import LibvirtHosts, wait_console
from controlplane.testing.libvirt_blockjobs import ChainGuest, disk_dir

__all__ = ["main", "measure"]

MIB = 1 << 20


def _job(guest: ChainGuest, kind: str, i: int) -> dict[str, object]:
    stamps: dict[str, float] = {}

    def persist(rec: JobRecord) -> None:
        stamps.setdefault(rec.phase.value, time.monotonic())

    runner = BlockJobRunner(guest.driver, persist, poll_interval=0.01, timeout=600)
    chain = guest.driver.chain(guest.vm_id)
    start = time.monotonic()
    if kind == "snapshot":
        output = str(guest.directory / f"bench-out-{i}.qcow2")
        rec = runner.live_snapshot(f"bench-snap-{i}", guest.vm_id,
                                   str(guest.directory / f"bench-target-{i}.qcow2"), output)
    else:
        rec = runner.live_merge(f"bench-merge-{i}", guest.vm_id, chain[0], chain[1])
    seconds = time.monotonic() - start
    if rec.phase is not Phase.COMPLETED:
        raise RuntimeError(f"live {kind} failed: {rec.error}")
    row: dict[str, object] = {
        f"{kind}_s": round(seconds, 3),
        f"{kind}_to_ready_s": round(stamps["READY"] - stamps["STARTING"], 3),
        f"{kind}_bytes_moved": rec.bytes_copied,
    }
    if kind == "snapshot":
        row["snapshot_output_bytes"] = qemuimg.chain_info(output)[-1].actual_size
    return row


def measure(fill_mib: int = 32, runs: int = 3) -> dict[str, object]:
    """Boot the guest, let it fill its top, run the jobs; the figures as a dict."""
    pool = LibvirtHosts(disk_dir("cp-bench-bj-pool-"), prefix="cp-bj-")
    try:
        boot = time.monotonic()
        blocks = fill_mib * MIB // WRITE_BLOCK
        guest = ChainGuest(pool.host(0), disk_dir("cp-bench-bj-"), vm_id="bj-bench",
                           size_mib=max(64, 2 * fill_mib), write_blocks=blocks)
        out: dict[str, object] = {"fill_mib": fill_mib,
                                  "boot_seconds": round(time.monotonic() - boot, 3)}
        try:
            fill = time.monotonic()
            wait_console(guest.backend.serial_log(guest.vm_id), f"writer done at {blocks}",
                         600)
            out["guest_fill_seconds"] = round(time.monotonic() - fill, 3)
            rows = []
            for i in range(runs):
                if i:
                    guest.new_top()
                rows.append({"run": i + 1, **_job(guest, "snapshot", i),
                             **_job(guest, "merge", i)})
            flush = time.monotonic()
            guest.driver.flush(guest.vm_id)
            out["flush_seconds"] = round(time.monotonic() - flush, 3)
            out["runs"] = rows
        finally:
            guest.close()
    finally:
        pool.stop()
        shutil.rmtree(pool.base_dir, ignore_errors=True)  # the daemon's log dir
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="live snapshot / merge figures on libvirt")
    p.add_argument("--fill-mib", type=int, default=32, help="MiB the guest writes first")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    figures = measure(args.fill_mib, args.runs)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for key, value in figures.items():
        if key != "runs":
            print(f"{key}: {value}")
    for row in figures["runs"]:  # type: ignore[attr-defined]
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
