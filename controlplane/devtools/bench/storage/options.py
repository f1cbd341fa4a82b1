"""The `controlplane bench storage` argument parser (argparse only: built on every start)."""

from __future__ import annotations

import argparse

from controlplane.config.argtypes import positive_float, positive_int

SUITES = ("mds", "reconcile", "snapshot")


def add_storage_parser(bench_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = bench_sub.add_parser(
        "storage", help="MDS failover, volume chain reconcile and live snapshot figures",
        description="Measures on this machine, with real processes and files: the time of a "
        "call to three sim MDS when the hung one is tried first (next to the per-attempt "
        "deadline), and once it is marked unhealthy; ReconcileVolumeChain of a --depth deep "
        "qcow2 chain through a real node on an embedded etcd; a live snapshot of a "
        "--snapshot-mib disk on real QEMU (time and bytes copied).")
    p.add_argument("--calls", type=positive_int, default=5,
                   help="MDS calls of each kind (default 5)")
    p.add_argument("--attempt-timeout", type=positive_float, default=1.0,
                   help="per-attempt MDS deadline in seconds (default 1.0; production: 30)")
    p.add_argument("--depth", type=positive_int, default=10, help="chain depth (default 10)")
    p.add_argument("--runs", type=positive_int, default=20, help="reconcile runs (default 20)")
    p.add_argument("--snapshot-mib", type=positive_int, default=256, help="disk size (default 256)")
    p.add_argument("--skip", default="", help=f"comma-separated suites to skip: {SUITES}")
    p.add_argument("--json", action="store_true")
    return p
