"""Run the fleet bench's parts and print them (`controlplane bench fleet`)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from controlplane.devtools.bench.fleet.common import BenchError, progress
from controlplane.devtools.bench.fleet.ha import ha_figures
from controlplane.devtools.bench.fleet.options import PARTS, add_fleet_parser
from controlplane.devtools.bench.fleet.report import PRINTERS
from controlplane.devtools.bench.fleet.sync import sync_figures
from controlplane.devtools.bench.fleet.throughput import throughput_figures

__all__ = ["MEASURERS", "main", "run_fleet_bench"]

MEASURERS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "sync": sync_figures, "throughput": throughput_figures, "ha": ha_figures}


def run_fleet_bench(args: argparse.Namespace) -> int:
    """Run the parts not skipped; 0 when every part was measured, 1 when one could not be
    (its error is printed and in the JSON), 130 on Ctrl-C. Every process and the temporary
    directory are gone when it returns, whatever happened."""
    parts = [p for p in PARTS if p not in args.skip]
    figures: dict[str, Any] = {}
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="cp-bench-fleet-") as tmp:
            for part in parts:
                try:
                    figures[part] = MEASURERS[part](args, tmp)
                except Exception as exc:  # noqa: BLE001 - reported; the other parts still run
                    failed = True
                    text = (f"{exc.code().name}: {exc.details()}"
                            if isinstance(exc, grpc.RpcError) else str(exc))
                    if not isinstance(exc, BenchError):
                        traceback.print_exc(file=sys.stderr)
                    figures[part] = {"error": text}
                    first_line = text.splitlines()[0] if text else repr(exc)
                    progress(f"{part}: FAILED: {first_line}")
                    if not args.json:
                        print(f"== {part}: not measured: {text}")
                    continue
                if not args.json:
                    PRINTERS[part](figures[part])
                    sys.stdout.flush()
    except KeyboardInterrupt:
        progress("interrupted; every process stopped")
        return 130
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m controlplane.devtools.bench.fleet.command fleet ...`: the same as
    `controlplane bench fleet ...`."""
    parser = argparse.ArgumentParser(prog="controlplane bench")
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="SUITE")
    add_fleet_parser(sub)
    return run_fleet_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
