"""`controlplane bench fleet`: the host/VM layer's figures, measured on this machine.

Three parts, each on its own embedded etcd, every figure taken from the run itself:

- **sync** (`sync.py`): a fleet of `--hosts` sim hosts x `--vms-per-host` running VMs and ONE
  management node in this process, so the bench can reach its tracker and its etcd request
  counters: the first full sync round, `--rounds` steady-state rounds, and the etcd requests
  each round sent (the design promise: no VM read from etcd, nothing written when nothing
  changed).
- **throughput** (`throughput.py`): `--nodes` node processes and `--clients` threads doing
  StartVm(wait) then StopVm(wait) on their own VM through the client library, twice in the
  same run: with owner-aware routing (each call straight to the VM's owner) and without
  (call k to node k mod N, so two thirds are forwarded), next to what etcd does with the
  same number of threads doing bare compare-and-swap txns.
- **ha** (`ha.py`): one node, two hosts; a NEVER_STOP VM's host is powered off and the time
  until the VM runs on the other host is measured, next to ping interval x failures.

A part that cannot be measured is reported with the reason instead of its figures, the
other parts still run, and the exit code is 1. `command.py` runs the parts, `report.py`
prints them, `options.py` is the argument parser.

Why `run_fleet_bench` and `main` here load the measuring modules when called: the
`controlplane` command builds every parser on each start, and this package's parser needs
argparse only, while the measuring modules pull in the node, the harness and the client
(about 0.1 s more for every `controlplane status`).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from controlplane.devtools.bench.fleet.options import PARTS, add_fleet_parser

__all__ = ["PARTS", "add_fleet_parser", "main", "run_fleet_bench"]


def run_fleet_bench(args: argparse.Namespace) -> int:
    """Run the parts not skipped (see `command.run_fleet_bench`)."""
    return int(importlib.import_module(f"{__name__}.command").run_fleet_bench(args))


def main(argv: Sequence[str] | None = None) -> int:
    """`controlplane bench fleet ...` without the rest of the command (see `command.main`)."""
    return int(importlib.import_module(f"{__name__}.command").main(argv))
