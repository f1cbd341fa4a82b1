"""Live snapshot figure: how long a live snapshot of a full disk takes on real QEMU.

Why this shape: the cost of a live snapshot is the mirror (the block job copies every
allocated byte of the disk's top layer) plus the flattening ``qemu-img convert``. The disk is
one qcow2 layer of ``size_mib`` filled with data by qemu-io first, so the mirror runs with
``sync=full`` and copies all of it; ``bytes_copied`` is the job's final offset, next to the
flat output's allocated size. Wall time includes creating the target, the mirror, waiting for
READY, the cancel, and the convert; not QEMU's start.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from controlplane.agent.drivers.qemu import QemuDriver, QemuVm
from controlplane.storage import qemuimg
from controlplane.storage.blockjobs import BlockJobRunner, JobRecord, Phase
from controlplane.testing.qemu import write_pattern

__all__ = ["main", "measure"]

MIB = 1 << 20


def measure(size_mib: int = 256, workdir: str | None = None) -> dict[str, object]:
    """Fill a ``size_mib`` qcow2 disk, live-snapshot it, and return the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-snap-", dir=workdir) as tmp:
        d = Path(tmp)
        disk = d / "disk.qcow2"
        qemuimg.create(str(disk), size=size_mib << 20)
        fill = time.monotonic()
        write_pattern(str(disk), 0, size_mib << 20, 0x5A)
        fill_s = time.monotonic() - fill
        records: list[JobRecord] = []
        stamps: dict[str, float] = {}

        def persist(rec: JobRecord) -> None:
            records.append(rec)
            stamps.setdefault(rec.phase.value, time.monotonic())

        with QemuVm(str(disk)) as vm:
            runner = BlockJobRunner(QemuDriver(vm), persist, poll_interval=0.01)
            start = time.monotonic()
            rec = runner.live_snapshot("bench-snap", vm.disk, str(d / "target.qcow2"),
                                       str(d / "output.qcow2"))
            seconds = time.monotonic() - start
        if rec.phase is not Phase.COMPLETED:
            raise RuntimeError(f"live snapshot failed: {rec.error}")
        layers = qemuimg.chain_info(str(d / "output.qcow2"))
        return {
            "disk_mib": size_mib,
            "fill_seconds": round(fill_s, 3),
            "seconds": round(seconds, 3),
            # mirror until READY; cancel (point-in-time copy) plus the flattening convert
            "to_ready_seconds": round(stamps["READY"] - stamps["STARTING"], 3),
            "cancel_and_convert_seconds": round(stamps["COMPLETED"] - stamps["FINISHING"], 3),
            "bytes_copied": rec.bytes_copied,
            "output_allocated_bytes": layers[-1].actual_size,
            "output_has_backing": len(layers) > 1,
        }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the live-snapshot figures as plain ``key: value`` lines."""
    p = argparse.ArgumentParser(prog="bench_snapshot", description=__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--workdir", default=None, help="where the images go (default: /tmp)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = measure(args.size_mib, args.workdir)
    print(f"live snapshot of a {figures['disk_mib']} MiB disk (filled by qemu-io)")
    for key, value in figures.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
