"""`controlplane bench cluster`: the foundation's figures, measured on this machine.

Timings are wall-clock from the moment the signal is sent to the moment the last survivor's
GetRing no longer lists the node (polled every 10 ms, so figures are +-10 ms). The floor of
kill -9 failover is the lease TTL: etcd is the failure detector.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import string
import tempfile
import time
from collections.abc import Sequence

import grpc

from controlplane.channels import reconnect_options
from controlplane.client import Client
from controlplane.cluster.ring import Ring
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2


def worst_busiest_share(samples: int, vnodes: int = 256, seed: int = 1) -> float:
    """Balance is statistical: the worst busiest/fair ratio over random 3-member name sets."""
    rnd = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    worst = 0.0
    for _ in range(samples):
        names: set[str] = set()
        while len(names) < 3:
            names.add("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 10))))
        worst = max(worst, max(Ring.build(names, vnodes=vnodes).shares().values()) * 3)
    return worst


def ring_figures(lookups: int) -> dict[str, float]:
    """Lookups/s on one core, busiest member's share vs fair, keys moved by a 4th member."""
    members = ["node-0", "node-1", "node-2"]
    ring = Ring.build(members)
    ids = [f"vm-{i}" for i in range(lookups)]
    owner = ring.owner
    started = time.perf_counter()
    for rid in ids:
        owner(rid)
    elapsed = time.perf_counter() - started
    bigger = Ring.build([*members, "node-3"])
    sample = ids[:50_000]
    moved = sum(ring.owner(r) != bigger.owner(r) for r in sample) / len(sample)
    return {
        "worst_busiest_share_2000_random_sets": worst_busiest_share(2000),
        "ring_lookups_per_s": lookups / elapsed,
        "busiest_share_vs_fair": max(ring.shares().values()) * len(members),
        "keys_moved_adding_4th": moved,
    }


def _members(client: Client) -> set[str]:
    return {m.node_id for m in client.cluster.GetRing(cluster_pb2.GetRingRequest()).members}


def _gone(survivors: Sequence[Client], node_id: str) -> bool:
    """True when no survivor's ring lists node_id (each asked itself: no routing, no
    retry on another node, half a second each)."""
    try:
        return all(node_id not in _members(s) for s in survivors)
    except grpc.RpcError:  # a survivor busy restarting: not yet
        return False


def _listed(survivors: Sequence[Client], node_id: str) -> bool:
    try:
        return all(node_id in _members(s) for s in survivors)
    except grpc.RpcError:
        return False


def cluster_figures(runs: int, ttl: int) -> dict[str, object]:
    """Kill -9 and SIGTERM of a node in a 3-node cluster on a real embedded etcd."""
    failover: list[float] = []
    leave: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp, \
            EtcdCluster(os.path.join(tmp, "etcd"), size=1) as etcd:
        nodes = [NodeProcess(f"node-{i}", free_port(), etcd.endpoints, tmp, lease_ttl=ttl,
                             reconcile_interval=1.0) for i in range(3)]
        everyone = {n.node_id for n in nodes}
        # One client per node, asking that node only: the figure is each node's own view.
        # Fast reconnects: a node killed in one run is a survivor polled in the next.
        clients = {n.node_id: Client(n.address, timeout=0.5, route=False, max_attempts=1,
                                     options=reconnect_options(200),
                                     tls=harness_pki().admin())
                   for n in nodes}
        try:
            for n in nodes:
                n.start()
            for n in nodes:
                n.wait_ready(30)
            for how, figures in (("kill", failover), ("term", leave)):
                for run in range(runs):
                    wait_until(lambda: c.converged(nodes, everyone), timeout=30)
                    victim = nodes[run % 3]
                    survivors = [clients[n.node_id] for n in nodes if n is not victim]
                    # Every survivor answers and lists the victim before the clock starts
                    # (no channel still reconnecting from an earlier run).
                    wait_until(lambda v=victim, s=survivors: _listed(s, v.node_id), 30)
                    started = time.monotonic()
                    os.kill(victim.pid, signal.SIGKILL if how == "kill" else signal.SIGTERM)
                    wait_until(lambda v=victim, s=survivors: _gone(s, v.node_id),
                               timeout=ttl + 30, interval=0.01)
                    figures.append(time.monotonic() - started)
                    wait_until(lambda v=victim: not v.is_running(), timeout=20)
                    victim.restart().wait_ready(30)
        finally:
            for client in clients.values():
                client.close()
            for n in nodes:
                n.kill()
    return {
        "lease_ttl_s": ttl,
        "runs": runs,
        "failover_kill9_median_s": statistics.median(failover),
        "failover_kill9_min_s": min(failover),
        "failover_kill9_max_s": max(failover),
        "graceful_leave_median_s": statistics.median(leave),
        "graceful_leave_max_s": max(leave),
    }


def run_cluster_bench(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.lease_ttl < 2 or args.lookups < 1000:
        print("need --runs >= 1, --lease-ttl >= 2, --lookups >= 1000")
        return 2
    figures: dict[str, object] = dict(ring_figures(args.lookups))
    if not args.json:
        print(f"ring lookups/s (one core)        {figures['ring_lookups_per_s']:>12,.0f}"
              "   target >= 500,000")
        print(f"busiest member / fair share (3)  {figures['busiest_share_vs_fair']:>12.3f}"
              "   target <= 1.2")
        print(f"keys moved adding a 4th member   {figures['keys_moved_adding_4th']:>12.1%}"
              "   ideal 25%")
        worst = figures["worst_busiest_share_2000_random_sets"]
        print(f"worst busiest/fair, 2000 random  {worst:>12.3f}   (3-member name sets, 256 vnodes)")
    figures.update(cluster_figures(args.runs, args.lease_ttl))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    ttl = args.lease_ttl
    print(f"failover after kill -9, median   {figures['failover_kill9_median_s']:>11.2f}s"
          f"   (min {figures['failover_kill9_min_s']:.2f}s, max "
          f"{figures['failover_kill9_max_s']:.2f}s, {args.runs} runs; lease TTL {ttl}s, "
          f"target <= {ttl + 1}s)")
    print(f"graceful leave (SIGTERM), median {figures['graceful_leave_median_s']:>11.3f}s"
          f"   (max {figures['graceful_leave_max_s']:.3f}s; target < 1s)")
    return 0
