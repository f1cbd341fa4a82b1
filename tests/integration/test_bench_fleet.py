"""Smoke test of `controlplane bench fleet` at tiny sizes: every part runs end to end on real
etcd, agent and node processes, and the sync figures keep the design's promise (a
steady-state round reads no VM from etcd and writes nothing). Speed is printed by the
bench, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from controlplane.devtools.bench import fleet as benchfleet
from controlplane.devtools.bench.fleet.report import PRINTERS

TINY = ["fleet", "--hosts", "20", "--vms-per-host", "5", "--rounds", "2",
        "--ready-timeout", "60", "--nodes", "3", "--clients", "4", "--ops", "24",
        "--agent-hosts", "3", "--etcd-seconds", "0.5", "--ha-runs", "1",
        "--ping-interval", "0.5", "--ping-failures", "2", "--ping-timeout", "0.3",
        "--tls", "both", "--json"]


def test_fleet_bench_tiny_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchfleet.main(TINY) == 0
    figures = json.loads(capsys.readouterr().out)
    assert set(figures) == {"sync", "throughput", "ha"}

    sync = figures["sync"]
    assert sync["vms"] == 100 and sync["cached_vms"] == 100 and sync["cached_hosts"] == 20
    assert sync["node_ready_s"] > 0 and sync["first_round_s"] > 0
    assert len(sync["rounds"]) == 2
    for r in sync["rounds"]:
        assert r["unreachable_hosts"] == 0
        # the promise: no etcd read per VM, and nothing written when nothing changed
        assert r["reads"] == 0 and r["reads_per_vm"] == 0 and r["writes"] == 0, r
    assert sync["rss_caches_full_mb"] > 0

    tp = figures["throughput"]
    routed, forwarded = tp["modes"]["routed"], tp["modes"]["forwarded"]
    for mode in (routed, forwarded):
        assert mode["vm_ops_done"] == 24 and mode["vm_op_errors"] == 0
        assert mode["etcd_txns_per_op"] >= 2  # begin and finish are CAS txns at least
        assert mode["ratio"] > 0
    assert routed["forwarded_fraction"] == 0  # every call went straight to the owner
    assert 0 < forwarded["forwarded_fraction"] < 1  # round-robin: most calls are forwarded
    assert tp["cas_txn_per_s"] > 0
    # --tls both: a mutual TLS cluster and an --insecure one, the same figures for each
    assert set(tp["transports"]) == {"tls", "insecure"}
    assert tp["modes"] == tp["transports"]["tls"]["modes"]
    for transport in tp["transports"].values():
        for mode in transport["modes"].values():
            assert mode["vm_ops_done"] == 24 and mode["vm_op_errors"] == 0
    # every channel opened in the warm-up: no handshake during the timed operations
    assert tp["transports"]["tls"]["handshakes"] == 0
    assert tp["transports"]["insecure"]["handshakes"] == 0
    assert set(tp["tls_cost"]) == {"routed", "forwarded"}

    ha = figures["ha"]
    assert len(ha["runs_s"]) == 1 and ha["median_s"] > 0

    # the text table renders from the same figures
    for part, printer in PRINTERS.items():
        printer(figures[part])
    text = capsys.readouterr().out
    for label in ("steady round 1", "reads 0, writes 0", "ops/s (client routes to owner)",
                  "ops/s (any node, forwarded)", "raw etcd CAS txn/s", "VM ops/s / raw txn/s",
                  "host down -> VM Running", "TLS / plaintext ops/s, routed",
                  "handshakes begun by the servers"):
        assert label in text


def test_the_parser_loads_without_the_measuring_modules() -> None:
    """`controlplane` builds the fleet parser on every start: it must stay light."""
    code = ("import sys, argparse; from controlplane.devtools.bench.fleet import add_fleet_parser;"
            " add_fleet_parser(argparse.ArgumentParser().add_subparsers());"
            " heavy = [m for m in ('controlplane.server', 'controlplane.client',"
            " 'controlplane.testing.nodes', 'controlplane.devtools.bench.fleet.command')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_skip_rejects_unknown_parts() -> None:
    with pytest.raises(SystemExit):
        benchfleet.main(["fleet", "--skip", "sync,nope"])
