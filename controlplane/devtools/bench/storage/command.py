"""Run the storage bench's suites and print them (`controlplane bench storage`)."""

from __future__ import annotations

import argparse
import json

from controlplane.devtools.bench.snapshot import measure
from controlplane.devtools.bench.storage.mds import mds_figures
from controlplane.devtools.bench.storage.options import SUITES
from controlplane.devtools.bench.storage.reconcile import reconcile_figures

__all__ = ["run_storage_bench"]


def run_storage_bench(args: argparse.Namespace) -> int:
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SUITES)
    if unknown:
        print(f"--skip: unknown suites {sorted(unknown)}; known: {', '.join(SUITES)}")
        return 2
    if args.calls < 1 or args.runs < 1 or args.depth < 2 or args.snapshot_mib < 1:
        print("--calls, --runs and --snapshot-mib must be >= 1, --depth >= 2")
        return 2
    figures: dict[str, object] = {}
    if "mds" not in skip:
        figures["mds_failover"] = mds_figures(args.calls, args.attempt_timeout)
    if "reconcile" not in skip:
        figures["reconcile"] = reconcile_figures(args.depth, args.runs)
    if "snapshot" not in skip:
        figures["live_snapshot"] = measure(args.snapshot_mib)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for suite, values in figures.items():
            for key, value in values.items():  # type: ignore[attr-defined]
                print(f"{suite}.{key}: {value}")
    return 0
