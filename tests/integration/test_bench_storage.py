"""``controlplane bench storage`` runs and prints its figures (not timed asserts: figures)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_storage_prints_mds_and_reconcile_figures() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "bench", "storage", "--skip", "snapshot",
         "--calls", "1", "--attempt-timeout", "0.3", "--depth", "3", "--runs", "2", "--json"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    figures = json.loads(out)
    mds = figures["mds_failover"]
    # A call that drew the hung MDS first waited out its deadline, then succeeded.
    assert mds["hung_first_median_s"] >= 0.3
    assert figures["reconcile"]["depth"] == 3


def test_bench_storage_refuses_unknown_suites() -> None:
    proc = subprocess.run([sys.executable, "-m", "controlplane", "bench", "storage", "--skip",
                           "nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown suites" in proc.stdout


def test_the_parser_loads_without_the_measuring_modules() -> None:
    """`controlplane` builds the storage parser on every start: it must stay light."""
    code = ("import sys, argparse; from controlplane.devtools.bench.storage import"
            " add_storage_parser, run_storage_bench;"
            " add_storage_parser(argparse.ArgumentParser().add_subparsers());"
            " print([m for m in ('controlplane.server', 'controlplane.testing.mds',"
            " 'controlplane.devtools.bench.storage.command') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
