"""The `controlplane bench fleet` argument parser (argparse only: built on every CLI start)."""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.config.argtypes import positive_float, positive_int

PARTS = ("sync", "throughput", "ha")


def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(PARTS)}")
    return names


def add_fleet_parser(bench_subparsers: Any) -> argparse.ArgumentParser:
    """Add the `fleet` suite to `controlplane bench`'s subparsers; `run_fleet_bench` (in
    `controlplane.devtools.bench.fleet`) runs it."""
    p = bench_subparsers.add_parser(
        "fleet", help="VM sync at fleet scale, VM ops/s through the cluster, HA latency",
        description="Measures on this machine, each part on its own embedded etcd: (sync) "
        "one in-process node over HOSTS x VMS_PER_HOST running sim VMs: first and "
        "steady-state sync rounds, etcd requests per round (reads per VM must be 0), memory; "
        "(throughput) StartVm/StopVm ops/s through NODES node processes, with the client "
        "routing each call to the VM's owner and without (forwarded by the node asked), vs "
        "raw etcd CAS txn/s; (ha) time from a host powered off until its NEVER_STOP VM runs "
        "elsewhere.")
    p.add_argument("--hosts", type=positive_int, default=1000, help="sync: hosts (1000)")
    p.add_argument("--vms-per-host", type=positive_int, default=100,
                   help="sync: running VMs per host (100)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="sync: steady-state rounds (3)")
    p.add_argument("--ready-timeout", type=positive_float, default=600.0,
                   help="sync: seconds to wait for the node to be ready and for the first "
                   "round (600)")
    p.add_argument("--nodes", type=positive_int, default=3, help="throughput: nodes (3)")
    p.add_argument("--clients", type=positive_int, default=8,
                   help="throughput: client threads, each with its own VM (8)")
    p.add_argument("--ops", type=positive_int, default=400,
                   help="throughput: VM operations in all, for each of the two ways of "
                   "calling (routed, forwarded) (400)")
    p.add_argument("--agent-hosts", type=positive_int, default=10,
                   help="throughput: sim hosts (10)")
    p.add_argument("--tls", choices=("on", "off", "both"), default="on",
                   help="throughput: the cluster on mutual TLS (on, every process with its "
                   "certificate), --insecure (off), or one of each in the same run (both: "
                   "segments interleaved; prints the TLS cost and the handshakes per op) "
                   "(on)")
    p.add_argument("--etcd-seconds", type=positive_float, default=5.0,
                   help="throughput: seconds of raw etcd CAS txns (5)")
    p.add_argument("--ha-runs", type=positive_int, default=3, help="ha: runs (3)")
    p.add_argument("--ping-interval", type=positive_float, default=1.0,
                   help="ha: vm.syncInterval, seconds (1)")
    p.add_argument("--ping-failures", type=positive_int, default=3,
                   help="ha: host.pingFailures (3)")
    p.add_argument("--ping-timeout", type=positive_float, default=0.5,
                   help="ha: host.pingTimeout, seconds (0.5)")
    p.add_argument("--session-timeout", type=positive_float, default=2.0,
                   help="ha: the sim store's client session timeout, seconds (2), for the "
                        "storage-evidence runs")
    p.add_argument("--no-storage-ha", dest="storage_ha", action="store_false",
                   help="ha: skip the runs of HA on storage evidence (a VM with a disk on "
                        "primary storage, restarted without a fence)")
    p.add_argument("--skip", type=_parts, default=[], metavar="PARTS",
                   help="comma-separated parts not to run: sync,throughput,ha")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p
