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
import re
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
from controlplane.security.tls import PLAINTEXT
from controlplane.store import Keys, Store
from controlplane.store import txn as t
from controlplane.testing.cluster import scrape_metrics
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.ports import free_port
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


TRANSPORTS: dict[str, tuple[str, ...]] = {"on": ("tls",), "off": ("insecure",),
                                          "both": ("tls", "insecure")}
HANDSHAKES = re.compile(r"^controlplane_tls_handshakes_total (\S+)$", re.M)


@dataclass
class Rig:
    """One cluster of the throughput part: etcd, nodes, agent and the clients on them."""

    transport: str
    nodes: list[NodeProcess]
    pickers: dict[str, Picker]
    vm_ids: list[str]
    owner_addresses: list[str]
    pids: dict[str, list[int]]
    client_url: str
    etcd_endpoints: str
    routed: Client
    metrics_ports: list[int]
    calls: list[int]

    def handshakes(self) -> float:
        """TLS handshakes the nodes' and the agent's servers began so far (their metric)."""
        total = 0.0
        for port in self.metrics_ports:
            found = HANDSHAKES.search(scrape_metrics(port))
            total += float(found.group(1)) if found else 0.0
        return total


def start_rig(stack: contextlib.ExitStack, args: argparse.Namespace, tmp: str,
              transport: str) -> Rig:
    """A cluster on mutual TLS (every process with its harness certificate) or, for
    "insecure", every process with --insecure and plaintext clients."""
    tls = PLAINTEXT if transport == "insecure" else None
    base = os.path.join(tmp, f"tp-{transport}")
    progress(f"throughput ({transport}): etcd, {args.nodes} node processes, one agent with "
             f"{args.agent_hosts} hosts")
    etcd = start_etcd(stack, os.path.join(base, "etcd"))
    agent_metrics = free_port()
    agent = start_agent(stack, base, "tp-agent", args.agent_hosts, "t", tls=tls,
                        metrics_port=agent_metrics)
    nodes: list[NodeProcess] = start_nodes(stack, os.path.join(base, "nodes"), etcd.endpoints,
                                           args.nodes, tls=tls, metrics=True)
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
    # Warm-up: a start + stop per client and node each way (thread i's call k goes to node
    # (i + k) mod N), so every channel (client -> node, node -> node, node -> agent) is
    # open, and its handshake made, before the timed segments.
    warm_ops = 2 * len(nodes)
    progress(f"throughput ({transport}): warm-up ({warm_ops} operations per client each "
             "way, not counted)")
    calls = [0] * args.clients
    for mode in MODES:
        warm = run_clients(pickers[mode], vm_ids, owner_addresses,
                           [warm_ops] * args.clients, calls)
        if warm.errors:
            raise BenchError(f"warm-up operations ({mode}) failed: {warm.errors[:3]}")
    return Rig(transport, nodes, pickers, vm_ids, owner_addresses,
               {"nodes": [n.pid for n in nodes], "agent": [agent.pid],
                "etcd": [m.pid for m in etcd.members]},
               etcd.members[0].metrics_url, etcd.endpoints, routed,
               [n.metrics_port for n in nodes if n.metrics_port] + [agent_metrics], calls)


def plan(transports: Sequence[str]) -> list[tuple[str, str]]:
    """(transport, mode) of every timed segment, in run order: each transport's own ORDER,
    in two blocks of two segments, the blocks of two transports interleaved ABBA (tls,
    insecure, insecure, tls), so a drift of the machine's load weighs on all alike."""
    blocks = list(transports) + list(reversed(transports))
    queues = {t: list(ORDER) for t in transports}
    out: list[tuple[str, str]] = []
    for transport in (blocks if len(transports) > 1 else list(transports) * 2):
        out += [(transport, queues[transport].pop(0)) for _ in range(2)]
    return out


def throughput_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 2: VM start/stop ops/s through N node processes, routed by the client and
    forwarded by the nodes, vs raw CAS txn/s on the etcd; with `--tls both`, on a mutual
    TLS cluster and an --insecure one in the same run (segments interleaved), with the TLS
    handshakes the servers began per operation."""
    transports = TRANSPORTS[getattr(args, "tls", "on")]
    figures: dict[str, Any] = {"nodes": args.nodes, "clients": args.clients, "ops": args.ops,
                               "agent_hosts": args.agent_hosts,
                               "cores": os.cpu_count() or 0, "order": list(ORDER),
                               "transports": {}}
    with contextlib.ExitStack() as stack:
        rigs = {t: start_rig(stack, args, tmp, t) for t in transports}
        # Each mode's --ops in two segments; a thread's starts and stops alternate across
        # segments (its VM is Stopped after the warm-up).
        halves = split_ops(args.ops, 2)
        totals = {t: {mode: Segment() for mode in MODES} for t in transports}
        seen = {t: dict.fromkeys(MODES, 0) for t in transports}
        handshakes = dict.fromkeys(transports, 0.0)
        for transport, mode in plan(transports):
            rig = rigs[transport]
            ops = halves[seen[transport][mode]]
            seen[transport][mode] += 1
            ops_each = split_ops(ops, args.clients)
            progress(f"throughput ({transport}): {ops} operations from {args.clients} "
                     f"clients, {mode}")
            before, cpu_before = etcd_requests(rig.client_url), cpu_by_role(rig.pids)
            shakes = rig.handshakes()
            segment = run_clients(rig.pickers[mode], rig.vm_ids, rig.owner_addresses,
                                  ops_each, rig.calls)
            handshakes[transport] += rig.handshakes() - shakes
            segment.cpu_s = diff_cpu(cpu_by_role(rig.pids), cpu_before)
            segment.requests = diff_counts(etcd_requests(rig.client_url), before)
            totals[transport][mode].add(segment)
        for transport in transports:
            modes = {mode: mode_figures(totals[transport][mode]) for mode in MODES}
            done = sum(m["vm_ops_done"] for m in modes.values())
            figures["transports"][transport] = {
                "modes": modes, "handshakes": handshakes[transport],
                "handshakes_per_op": handshakes[transport] / max(1, done),
                "routed_client_retries": rigs[transport].routed.retries}
        first = rigs[transports[0]]
        rates = "; ".join(f"{t}: " + ", ".join(
            f"{m} {figures['transports'][t]['modes'][m]['vm_ops_per_s']:.1f}" for m in MODES)
            for t in transports)
        progress(f"throughput: VM ops/s {rates}; now raw etcd CAS txns for "
                 f"{args.etcd_seconds:g}s")
        etcd_pid = first.pids["etcd"][0]
        figures.update(cas_figures(first.etcd_endpoints, etcd_pid, Keys(), args.clients,
                                   args.etcd_seconds))
        for transport in transports:
            for m in figures["transports"][transport]["modes"].values():
                m["ratio"] = m["vm_ops_per_s"] / figures["cas_txn_per_s"]
        if len(transports) > 1:
            tls_modes = figures["transports"]["tls"]["modes"]
            plain_modes = figures["transports"]["insecure"]["modes"]
            figures["tls_cost"] = {mode: 1 - tls_modes[mode]["vm_ops_per_s"]
                                   / plain_modes[mode]["vm_ops_per_s"] for mode in MODES}
        # the first transport's figures where they always were (one transport: the only one)
        figures["modes"] = figures["transports"][transports[0]]["modes"]
        figures["routed_client_retries"] = first.routed.retries
    return figures

