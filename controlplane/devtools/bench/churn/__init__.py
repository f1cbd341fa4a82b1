"""`controlplane bench churn`: VM operations through the client library while management
nodes are killed -9 and restarted under the same id (the run and what it reports: `run.py`).

This module holds the argument parser only: the `controlplane` command builds every parser
on each start, and the run pulls in the harness and the client.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from controlplane.config.argtypes import (
    lease_ttl,
    non_negative_seconds,
    positive_float,
    positive_int,
)

__all__ = ["add_churn_parser", "run_churn_bench"]


def add_churn_parser(bench_subparsers: Any) -> argparse.ArgumentParser:
    """Add the `churn` suite to `controlplane bench` (argparse only: built on every start)."""
    p = bench_subparsers.add_parser(
        "churn", help="VM operations while nodes are killed -9 and restarted",
        description="Client threads run start/stop/reboot (wait) on their own NEVER_STOP VMs "
        "through the client library while a random node is killed -9 every KILL_INTERVAL "
        "seconds and restarted under the same id. Prints: operations, ok, failed by status "
        "code, the longest a client waited, and the safety checks (no VM on two hosts, no "
        "HA audit record).")
    p.add_argument("--duration", type=positive_float, default=60.0,
                   help="seconds of client load (60)")
    p.add_argument("--nodes", type=positive_int, default=3, help="node processes (3)")
    p.add_argument("--clients", type=positive_int, default=6, help="client threads (6)")
    p.add_argument("--vms-per-client", type=positive_int, default=2,
                   help="VMs each client works on (2)")
    p.add_argument("--hosts", type=positive_int, default=4, help="sim hosts (4)")
    p.add_argument("--kill-interval", type=positive_float, default=4.0,
                   help="mean seconds between two kills (4)")
    p.add_argument("--max-down", type=non_negative_seconds, default=3.0,
                   help="a killed node stays down 0..MAX_DOWN seconds (3)")
    p.add_argument("--lease-ttl", type=lease_ttl, default=2,
                   help="the nodes' lease TTL, seconds (2)")
    p.add_argument("--op-timeout", type=positive_float, default=15.0,
                   help="each operation's client deadline, seconds (15)")
    p.add_argument("--routing", choices=("owner", "node", "mixed"), default="mixed",
                   help="owner: clients send each call to the VM's owner; node: to a node "
                   "that forwards it (route=False, as the CLI does); mixed: half each "
                   "(mixed)")
    p.add_argument("--seed", type=int, default=1, help="of the kills and the operations (1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p



def run_churn_bench(args: argparse.Namespace) -> int:
    """Run it (see `run.run_churn_bench`)."""
    return int(importlib.import_module(f"{__name__}.run").run_churn_bench(args))
