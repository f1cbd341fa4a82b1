"""The fleet bench's text output: one block of rows per part, from the figures' dict (the
same dict `--json` prints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.devtools.bench.fleet.throughput import MODES

LABELS = {"routed": "ops/s (client routes to owner)", "forwarded": "ops/s (any node, forwarded)"}


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def print_sync(f: dict[str, Any]) -> None:
    print(f"== sync: {f['hosts']:,} hosts x {f['vms_per_host']:,} VMs = {f['vms']:,} VMs, "
          f"one node in-process, {f['workers']} sync workers")
    print(f"seeding: agent {f['seed_agent_s']:.1f}s; etcd {f['seed_etcd_s']:.1f}s "
          f"({f['seed_etcd_records_per_s']:,.0f} records/s)")
    print(f"node start -> ready (caches listed)   {f['node_ready_s']:>9.2f}s   etcd requests: "
          f"{_counts_text(f['node_start_requests'])}")
    print(f"first full round (every host pulled)  {f['first_round_s']:>9.2f}s   etcd requests: "
          f"{_counts_text(f['first_round_requests'])}")
    for i, r in enumerate(f["rounds"], 1):
        print(f"steady round {i}                        {r['seconds']:>9.2f}s   reads "
              f"{r['reads']}, writes {r['writes']}, other {r['other']}; reads/VM "
              f"{r['reads_per_vm']:.6f}; CPU: node {r['node_cpu_s']:.2f}s, agent "
              f"{r['agent_cpu_s']:.2f}s; host pull median {r['host_seconds_median'] * 1000:.0f}"
              f" ms, max {r['host_seconds_max'] * 1000:.0f} ms; unreachable "
              f"{r['unreachable_hosts']}")
    interval = f["sync_interval_default_s"]
    print(f"steady round, median                  {f['round_s_median']:>9.2f}s   "
          f"= {f['round_s_median'] / interval:.1%} of the default sync interval "
          f"({interval:g}s); target: reads/VM 0, writes 0")
    print(f"memory (RSS of the bench process)     {f['rss_caches_full_mb']:>8.0f}MiB   "
          f"caches full ({f['cached_vms']:,} VMs, {f['cached_hosts']:,} hosts); "
          f"{f['rss_before_node_mb']:.0f} MiB before the node, "
          f"{f['rss_after_rounds_mb']:.0f} MiB after the rounds")


TRANSPORT_LABELS = {"tls": "mutual TLS", "insecure": "--insecure (plaintext)"}


def print_throughput(f: dict[str, Any]) -> None:
    transports = f.get("transports") or {"tls": {"modes": f["modes"]}}
    print(f"== throughput: {f['nodes']} nodes, {f['clients']} clients, {f['agent_hosts']} "
          f"sim hosts (zero delays); VM start/stop with wait=True, {f['ops']} ops each way, "
          f"interleaved ({', '.join(f['order'])})"
          + (f"; clusters {' and '.join(TRANSPORT_LABELS[t] for t in transports)}, their "
             "segments interleaved ABBA" if len(transports) > 1 else ""))
    for transport, tf in transports.items():
        if len(transports) > 1 or "handshakes" in tf:
            print(f"-- {TRANSPORT_LABELS[transport]}: TLS handshakes begun by the servers "
                  f"during the timed ops {tf.get('handshakes', 0):.0f} "
                  f"({tf.get('handshakes_per_op', 0):.4f} per op)")
        _print_modes(f, tf["modes"])
    print(f"raw etcd CAS txn/s (get + txn)        {f['cas_txn_per_s']:>9.1f}    "
          f"{f['clients']} threads, one Store, {f['cas_seconds']:.1f}s, "
          f"{f['cas_conflicts']} conflicts; CPU per txn: "
          + ", ".join(f"{role} {ms:.2f} ms" for role, ms in f["cas_cpu_ms_per_txn"].items())
          + f"; {f['cas_cpu_cores_busy']:.2f} cores busy")
    for transport, tf in transports.items():
        routed, forwarded = tf["modes"]["routed"]["ratio"], tf["modes"]["forwarded"]["ratio"]
        label = f" ({transport})" if len(transports) > 1 else ""
        print(f"VM ops/s / raw txn/s{label:<18}{routed:>9.1%}    routed (target >= 30%); "
              f"{forwarded:.1%} forwarded")
    if "tls_cost" in f:
        for mode in MODES:
            tls_rate = transports["tls"]["modes"][mode]["vm_ops_per_s"]
            plain_rate = transports["insecure"]["modes"][mode]["vm_ops_per_s"]
            print(f"TLS / plaintext ops/s, {mode:<14}{tls_rate / plain_rate:>9.3f}    "
                  f"{tls_rate:.1f} / {plain_rate:.1f}: TLS costs {f['tls_cost'][mode]:.1%} "
                  "(target <= 15%)")
    for transport, tf in transports.items():
        for mode in MODES:
            for sample in tf["modes"][mode]["vm_op_error_samples"]:
                print(f"  error ({transport}, {mode}): {sample}")


def _print_modes(f: dict[str, Any], modes: dict[str, Any]) -> None:
    for mode in MODES:
        m = modes[mode]
        print(f"VM {LABELS[mode]:<33}{m['vm_ops_per_s']:>8.1f}    "
              f"ratio to raw etcd txn/s {m['ratio']:.1%}; {m['vm_ops_done']} ops in "
              f"{m['vm_ops_seconds']:.2f}s, {m['vm_op_errors']} errors, "
              f"{m['forwarded_fraction']:.0%} forwarded; latency median "
              f"{m['vm_op_latency_median_s'] * 1000:.0f} ms (start "
              f"{m['start_latency_median_s'] * 1000:.0f}, stop "
              f"{m['stop_latency_median_s'] * 1000:.0f}), p95 "
              f"{m['vm_op_latency_p95_s'] * 1000:.0f} ms")
    for mode in MODES:
        m = modes[mode]
        cpu = m["cpu_ms_per_op"]
        print(f"  {mode:<9} etcd requests per op {m['etcd_requests_per_op']:.2f} (Txn "
              f"{m['etcd_txns_per_op']:.2f}, Range {m['etcd_reads_per_op']:.2f}); CPU per op "
              f"{sum(cpu.values()):.1f} ms: "
              + ", ".join(f"{role} {ms:.1f}" for role, ms in cpu.items())
              + f"; {m['cpu_cores_busy']:.2f} of {f['cores']} cores busy")


def print_ha(f: dict[str, Any]) -> None:
    runs = ", ".join(f"{r:.2f}s" for r in f["runs_s"])
    print(f"== ha: ping interval {f['ping_interval_s']:g}s x {f['ping_failures']} failures "
          f"(ping timeout {f['ping_timeout_s']:g}s)")
    print(f"host down -> VM Running elsewhere     {f['median_s']:>9.2f}s   median of "
          f"{len(f['runs_s'])} ({runs}); detection takes (failures - 1) to failures x "
          f"interval = {f['detect_min_s']:g}-{f['interval_x_failures_s']:g}s, then fence + restart")
    s = f.get("storage")
    if s:
        runs = ", ".join(f"{r:.2f}s" for r in s["runs_s"])
        print(f"host down -> VM Running elsewhere, on storage evidence (no fence) "
              f"{s['median_s']:>6.2f}s   median of {len(s['runs_s'])} ({runs}); ping "
              f"{s['ping_interval_s']:g}s x {s['ping_failures']} = "
              f"{s['interval_x_failures_s']:g}s, session timeout {s['session_timeout_s']:g}s, "
              f"then 2 checks one interval apart; fenced in {s['fenced_runs']} runs")


PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sync": print_sync, "throughput": print_throughput, "ha": print_ha}
