"""Smoke test of `controlplane bench fleet` at tiny sizes: every part runs end to end on real
etcd, agent and node processes, and the sync figures keep the design's promise (a
steady-state round reads no VM from etcd and writes nothing). Speed is printed by the
bench, never asserted here."""

from __future__ import annotations

import json

import pytest

from controlplane.devtools.bench import fleet as benchfleet

TINY = ["fleet", "--hosts", "20", "--vms-per-host", "5", "--rounds", "2",
        "--ready-timeout", "60", "--nodes", "3", "--clients", "4", "--ops", "24",
        "--agent-hosts", "3", "--etcd-seconds", "0.5", "--ha-runs", "1",
        "--ping-interval", "0.5", "--ping-failures", "2", "--ping-timeout", "0.3", "--json"]


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
    assert tp["vm_ops_done"] == 24 and tp["vm_op_errors"] == 0
    assert 0 < tp["forwarded_fraction"] < 1  # round-robin: most calls are forwarded
    assert tp["etcd_txns_per_op"] >= 2  # begin and finish are CAS txns at least
    assert tp["cas_txn_per_s"] > 0 and tp["ratio"] > 0

    ha = figures["ha"]
    assert len(ha["runs_s"]) == 1 and ha["median_s"] > 0

    # the text table renders from the same figures
    for part, printer in benchfleet.PRINTERS.items():
        printer(figures[part])
    text = capsys.readouterr().out
    for label in ("steady round 1", "reads 0, writes 0", "VM start/stop ops/s",
                  "raw etcd CAS txn/s", "VM ops/s / raw txn/s", "host down -> VM Running"):
        assert label in text


def test_skip_rejects_unknown_parts() -> None:
    with pytest.raises(SystemExit):
        benchfleet.main(["fleet", "--skip", "sync,nope"])
