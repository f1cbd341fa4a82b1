"""Part 2 of the fleet bench: VM operations through the cluster, next to raw etcd.

`--nodes` node processes, `--clients` threads each doing StartVm(wait) then StopVm(wait) on
its own VM through the client library, in two ways measured in the same run:

- **routed**: one shared `Client` over every node with owner-aware routing: each call goes
  straight to the VM's owner and is served there (no forward hop);
- **forwarded**: clients without routing, call k of thread i to node (i + k) mod N, so with
  three nodes two thirds of the calls reach a node that forwards them to the owner.

The two are interleaved in four segments (routed, forwarded, forwarded, routed) so a drift of
the machine's load during the run weighs on both alike. Then the same number of threads do
bare compare-and-swap txns on the etcd. A VM operation costs at least two CAS txns plus
reads, so the ratio says how much of etcd's capacity the operation path turns into
operations.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane.client import Client
from controlplane.devtools.bench.fleet.common import (
    BenchError,
    add_hosts,
    cluster_client,
    cpu_by_role,
    diff_counts,
    diff_cpu,
    etcd_requests,
    image,
    percentile,
    process_cpu_s,
    progress,
    split_requests,
    start_agent,
    start_etcd,
    start_nodes,
)
from controlplane.store import Keys, Store
from controlplane.store import txn as t
from controlplane.testing.nodes import NodeProcess
from controlplane.v1 import vm_pb2

MODES = ("routed", "forwarded")
# Segments in run order: ABBA, so a linear drift of the load weighs on both modes alike.
ORDER = ("routed", "forwarded", "forwarded", "routed")

# pick(thread index, call number) -> the Client that makes the call
Picker = Callable[[int, int], Client]


def vm_ids_owned(client: Client, owners: Sequence[str], prefix: str) -> list[str]:
    """One VM id per client thread, thread i's owned by owners[i], so the load is spread
    evenly over the nodes whatever the ring looks like. Looked up in the client's copy of
    the ring: the same owner the nodes compute, with no call per candidate."""
    ring = client.refresh_ring().ring
    chosen: list[str] = []
    k = 0
    for want in owners:
        while ring.owner(f"{prefix}-{k}") != want:
            k += 1
            if k > 100_000:
                raise BenchError(f"could not find a VM id owned by {want}")
        chosen.append(f"{prefix}-{k}")
        k += 1
    return chosen


@dataclass
class Segment:
    """What the client threads did in one timed run."""

    seconds: float = 0.0
    latencies: list[tuple[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    forwarded: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)

    def add(self, other: Segment) -> None:
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.errors += other.errors
        self.forwarded += other.forwarded
        for role, s in other.cpu_s.items():
            self.cpu_s[role] = self.cpu_s.get(role, 0.0) + s
        for method, n in other.requests.items():
            self.requests[method] = self.requests.get(method, 0) + n


def _client_thread(pick: Picker, index: int, vm_id: str, owner_address: str, first: int,
                   ops: int, out: Segment, lock: threading.Lock) -> None:
    """StartVm(wait) then StopVm(wait) on one VM: calls first .. first + ops - 1 of this
    thread (even calls start, odd ones stop, across segments)."""
    latencies: list[tuple[str, float]] = []
    errors: list[str] = []
    forwarded = 0
    for k in range(first, first + ops):
        client = pick(index, k)
        kind = "start" if k % 2 == 0 else "stop"
        call = client.vms.StartVm if kind == "start" else client.vms.StopVm
        request = (vm_pb2.StartVmRequest if kind == "start" else vm_pb2.StopVmRequest)(
            vm_id=vm_id, wait=True)
        began = time.perf_counter()
        try:
            vm = call(request, timeout=60).vm
        except grpc.RpcError as err:
            errors.append(f"{vm_id} {kind} via {client.endpoint}: {err.code().name}: "
                          f"{err.details()}")
            continue
        latencies.append((kind, time.perf_counter() - began))
        if client.endpoint != owner_address:
            forwarded += 1
        want = "Running" if kind == "start" else "Stopped"
        if vm.state != want:
            errors.append(f"{vm_id}: {vm.state} after {kind}, wanted {want}")
    with lock:
        out.latencies += latencies
        out.errors += errors
        out.forwarded += forwarded


def run_clients(pick: Picker, vm_ids: Sequence[str], owner_addresses: Sequence[str],
                ops_each: Sequence[int], done_before: list[int] | None = None) -> Segment:
    """All client threads at once; returns what they did and how long it took.
    `done_before[i]`: calls thread i made on its VM before (updated)."""
    done_before = done_before if done_before is not None else [0] * len(vm_ids)
    out = Segment()
    lock = threading.Lock()
    threads = [threading.Thread(target=_client_thread, name=f"bench-client-{i}",
                                args=(pick, i, vm_ids[i], owner_addresses[i],
                                      done_before[i], ops_each[i], out, lock), daemon=True)
               for i in range(len(vm_ids))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.seconds = time.monotonic() - started
    for i, ops in enumerate(ops_each):
        done_before[i] += ops
    return out


def split_ops(total: int, parts: int) -> list[int]:
    """`total` as evenly as possible over `parts`, the remainder on the first ones."""
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def cas_figures(endpoints: str, etcd_pid: int, keys: Keys, clients: int,
                seconds: float) -> dict[str, Any]:
    """`clients` threads each doing get + CAS txn (mod_revision compare + put) on its own
    key for `seconds`, through one Store (as one node has one): etcd's txn/s as this code
    base's client sees it."""
    store = Store(endpoints)
    etcd_cpu = process_cpu_s(etcd_pid)
    own_cpu = time.process_time()
    done = [0] * clients
    conflicts = [0] * clients
    stop_at = time.monotonic() + seconds

    def loop(i: int) -> None:
        key = keys.collection("bench") + f"cas-{i}"
        value = b"x" * 200  # about a VM record's size
        while time.monotonic() < stop_at:
            kv = store.get(key)
            result = store.txn([t.mod_revision_is(key, kv.mod_revision if kv else 0)],
                               [t.put(key, value)])
            if result.succeeded:
                done[i] += 1
            else:
                conflicts[i] += 1

    try:
        started = time.monotonic()
        with futures.ThreadPoolExecutor(clients, thread_name_prefix="bench-cas") as pool:
            list(pool.map(loop, range(clients)))
        elapsed = time.monotonic() - started
        etcd_cpu = process_cpu_s(etcd_pid) - etcd_cpu
        own_cpu = time.process_time() - own_cpu
    finally:
        store.close()
    txns = max(1, sum(done))
    return {"cas_txns": sum(done), "cas_conflicts": sum(conflicts), "cas_seconds": elapsed,
            "cas_txn_per_s": sum(done) / elapsed,
            "cas_cpu_ms_per_txn": {"etcd": 1000 * etcd_cpu / txns,
                                   "clients": 1000 * own_cpu / txns},
            "cas_cpu_cores_busy": (etcd_cpu + own_cpu) / elapsed}


def mode_figures(segment: Segment) -> dict[str, Any]:
    """The per-mode figures of the segments of one mode, summed."""
    done = len(segment.latencies)
    if not done:
        raise BenchError(f"no VM operation succeeded: {segment.errors[:3]}")
    reads, writes, other = split_requests(segment.requests)
    lat = [s for _, s in segment.latencies]
    return {
        "vm_ops_done": done,
        "vm_op_errors": len(segment.errors),
        "vm_op_error_samples": segment.errors[:5],
        "vm_ops_seconds": segment.seconds,
        "vm_ops_per_s": done / segment.seconds,
        "vm_op_latency_median_s": statistics.median(lat),
        "vm_op_latency_p95_s": percentile(lat, 0.95),
        "start_latency_median_s": statistics.median(
            [s for k, s in segment.latencies if k == "start"] or [0.0]),
        "stop_latency_median_s": statistics.median(
            [s for k, s in segment.latencies if k == "stop"] or [0.0]),
        "forwarded_fraction": segment.forwarded / done,
        "cpu_ms_per_op": {role: 1000 * s / done for role, s in segment.cpu_s.items()},
        "cpu_cores_busy": sum(segment.cpu_s.values()) / segment.seconds,
        "etcd_requests": segment.requests,
        "etcd_reads_per_op": reads / done,
        "etcd_txns_per_op": segment.requests.get("Txn", 0) / done,
        "etcd_requests_per_op": (reads + writes + other) / done,
    }


def throughput_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 2: VM start/stop ops/s through N node processes, routed by the client and
    forwarded by the nodes, vs raw CAS txn/s on the etcd."""
    figures: dict[str, Any] = {"nodes": args.nodes, "clients": args.clients, "ops": args.ops,
                               "agent_hosts": args.agent_hosts,
                               "cores": os.cpu_count() or 0, "order": list(ORDER)}
    with contextlib.ExitStack() as stack:
        progress(f"throughput: etcd, {args.nodes} node processes, one agent with "
                 f"{args.agent_hosts} hosts")
        etcd = start_etcd(stack, os.path.join(tmp, "tp-etcd"))
        agent = start_agent(stack, tmp, "tp-agent", args.agent_hosts, "t")
        nodes: list[NodeProcess] = start_nodes(stack, os.path.join(tmp, "tp-nodes"),
                                               etcd.endpoints, args.nodes)
        routed = cluster_client(stack, nodes, timeout=60)
        plain = [cluster_client(stack, [n], timeout=60, route=False) for n in nodes]
        add_hosts(routed, agent)
        owners = [nodes[i % len(nodes)].node_id for i in range(args.clients)]
        vm_ids = vm_ids_owned(routed, owners, "tp-vm")
        owner_addresses = [routed.ring.addresses[o] for o in owners]
        for vm_id in vm_ids:
            routed.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image()))
        pickers: dict[str, Picker] = {
            "routed": lambda i, k: routed,
            "forwarded": lambda i, k: plain[(i + k) % len(plain)],
        }
        progress("throughput: warm-up (one start + stop per client each way, not counted)")
        for mode in MODES:
            warm = run_clients(pickers[mode], vm_ids, owner_addresses, [2] * args.clients)
            if warm.errors:
                raise BenchError(f"warm-up operations ({mode}) failed: {warm.errors[:3]}")
        client_url = etcd.members[0].client_url
        pids = {"nodes": [n.pid for n in nodes], "agent": [agent.pid],
                "etcd": [m.pid for m in etcd.members]}
        # Each mode's --ops in two segments; a thread's starts and stops alternate across
        # segments (its VM is Stopped after the warm-up).
        halves = split_ops(args.ops, 2)
        calls = [0] * args.clients
        totals = {mode: Segment() for mode in MODES}
        seen = dict.fromkeys(MODES, 0)
        for mode in ORDER:
            ops = halves[seen[mode]]
            seen[mode] += 1
            ops_each = split_ops(ops, args.clients)
            progress(f"throughput: {ops} operations from {args.clients} clients, {mode}")
            before, cpu_before = etcd_requests(client_url), cpu_by_role(pids)
            segment = run_clients(pickers[mode], vm_ids, owner_addresses, ops_each, calls)
            segment.cpu_s = diff_cpu(cpu_by_role(pids), cpu_before)
            segment.requests = diff_counts(etcd_requests(client_url), before)
            totals[mode].add(segment)
        figures["modes"] = {mode: mode_figures(totals[mode]) for mode in MODES}
        rates = ", ".join(f"{m} {figures['modes'][m]['vm_ops_per_s']:.1f}" for m in MODES)
        progress(f"throughput: VM ops/s {rates}; now raw etcd CAS txns for "
                 f"{args.etcd_seconds:g}s")
        figures.update(cas_figures(etcd.endpoints, etcd.members[0].pid, Keys(), args.clients,
                                   args.etcd_seconds))
        for mode in MODES:
            figures["modes"][mode]["ratio"] = (figures["modes"][mode]["vm_ops_per_s"]
                                               / figures["cas_txn_per_s"])
        figures["routed_client_retries"] = routed.retries
    return figures
