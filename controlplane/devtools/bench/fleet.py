"""`controlplane bench fleet`: the host/VM layer's figures, measured on this machine.

Three parts, each on its own embedded etcd, every figure taken from the run itself:

- **sync**: a fleet of `--hosts` sim hosts x `--vms-per-host` running VMs (one sim agent
  process; records written straight into etcd in batches) and ONE management node in this
  process, so the bench can reach its tracker and its etcd request counters. It times the
  first full sync round (the tracker pulls every newly owned host at once) and then
  `--rounds` steady-state rounds driven by the bench through a pool as large as the
  tracker's, and counts the etcd requests each round sent. The design promise is that a
  round reads no VM from etcd (the watch-fed caches hold them) and writes nothing when
  nothing changed; the figures show whether that holds at scale.
- **throughput**: `--nodes` node processes, `--clients` threads doing StartVm(wait) then
  StopVm(wait) on their own VM, each call sent to the next node round-robin (so most are
  forwarded to the owner), next to what etcd does with the same number of threads doing
  bare compare-and-swap txns. A VM operation costs at least two CAS txns plus reads, so the
  ratio says how much of etcd's capacity the operation path turns into operations.
- **ha**: one node, two hosts; a NEVER_STOP VM's host is powered off (sim DOWN) and the
  time until GetVm shows the VM Running on the other host is measured, next to ping
  interval x failures: the host is only declared lost after that many failed pulls, the
  first of which comes up to one interval after the power-off.

A part that cannot be measured (e.g. the node never becomes ready) is reported with the
reason instead of its figures, the other parts still run, and the exit code is 1.

The etcd is the test one (`--unsafe-no-fsync`, as the test harness runs it): absolute txn
rates are higher than on a production etcd with fsync; the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc

PARTS = ("sync", "throughput", "ha")
SYNC_NODE_ID = "bench-sync"
# What a VM record carries after its start (device info stored): steady-state records.
def _devices():  # type: ignore[no-untyped-def]
    from controlplane.v1 import agent_pb2

    return agent_pb2.DeviceInfo(devices=[
        agent_pb2.Device(name="disk0", address="0000:00:04.0"),
        agent_pb2.Device(name="nic0", address="0000:00:03.0", mac="52:54:00:12:34:56")])

# etcd's default limit is 128 ops per txn; 100 keeps a batch well under it and under the
# 1.5 MiB request limit with realistic records.
PUTS_PER_TXN = 100
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A part could not be measured; the message says why (with log tails)."""


def progress(message: str) -> None:
    """Progress of long phases, on stderr so that stdout stays the figures."""
    print(f"[bench fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    """Resident memory of this process in MiB (VmRSS), 0.0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc), 0.0 without it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes, and by this one ("clients":
    the bench's client threads are what runs here during a throughput run)."""
    out = {role: sum(process_cpu_s(p) for p in group) for role, group in pids.items()}
    out["clients"] = time.process_time()
    return out


def diff_cpu(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in after}


def etcd_requests(client_url: str) -> dict[str, int]:
    """KV requests etcd itself has answered, by method (Range, Txn, Put, ...), from its
    /metrics: the only count that includes what the node processes sent."""
    with _NO_PROXY.open(client_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("grpc_server_handled_total{") or "etcdserverpb.KV" not in line:
            continue
        labels, _, value = line.rpartition(" ")
        method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
        counts[method] = counts.get(method, 0) + int(float(value))
    return counts


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def split_requests(counts: dict[str, int]) -> tuple[int, int, int]:
    """(reads, writes, other) of a request count by method. A Txn counts as a write: the
    node's read-modify-write txns are, and a read-only txn is still a round trip to the
    leader."""
    reads = counts.get("Range", 0)
    writes = sum(counts.get(m, 0) for m in ("Txn", "Put", "DeleteRange"))
    return reads, writes, sum(counts.values()) - reads - writes


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- processes ------------------------------------------------------------------------


def start_etcd(stack: contextlib.ExitStack, base: str) -> Any:
    """A one-member test etcd, stopped when `stack` unwinds.

    No child here is started with `with_parent` (PR_SET_PDEATHSIG): that needs a
    preexec_fn, i.e. Python code run between fork and exec, and in this process gRPC is
    live (the sync part's in-process node): the forked child then aborted in gRPC's fork
    handler ("epoll_wait error: Bad file descriptor", exit -6). Cleanup relies on the
    ExitStacks instead, which also run on Ctrl-C and errors."""
    from controlplane.testing.etcd import EtcdCluster

    cluster = EtcdCluster(base, size=1)
    stack.callback(cluster.stop)
    return cluster.start()


def start_agent(stack: contextlib.ExitStack, base: str, name: str, hosts: int,
                prefix: str) -> Any:
    """One sim agent serving `hosts` hosts with zero delays, logging warnings only (it
    would log a line per seeded host and per operation otherwise)."""
    from controlplane.testing.agents import AgentProcess
    from controlplane.testing.ports import free_port

    agent = AgentProcess(name, free_port(), base, hosts=hosts, host_prefix=prefix,
                         log_level="WARNING")
    stack.callback(agent.kill)
    agent.start()
    agent.wait_ready(60)
    return agent


def start_nodes(stack: contextlib.ExitStack, base: str, etcd: str, count: int) -> list[Any]:
    """`count` `controlplane serve` processes with the production lease TTL and reconcile
    interval (a bench on 2 busy cores must not fence itself on a short TTL)."""
    from controlplane.testing import cluster as c
    from controlplane.testing.nodes import NodeProcess
    from controlplane.testing.ports import free_port
    from controlplane.testing.waiting import wait_until

    nodes = [NodeProcess(f"node-{i}", free_port(), etcd, base, lease_ttl=10,
                         reconcile_interval=3.0) for i in range(count)]
    for node in nodes:
        stack.callback(node.kill)
        node.start()
    for node in nodes:
        node.wait_ready(60)
    everyone = {n.node_id for n in nodes}
    wait_until(lambda: c.converged(nodes, everyone), 60, message="rings converged")
    return nodes


def set_config(node: Any, settings: dict[str, str]) -> None:
    from controlplane.testing import cluster as c
    from controlplane.v1 import config_pb2

    for key, value in settings.items():
        c.config(node).UpdateConfig(config_pb2.ConfigEntry(key=key, value=value), timeout=10)


def add_hosts(node: Any, agent: Any) -> list[str]:
    from controlplane.testing import cluster as c
    from controlplane.v1 import host_pb2

    for host_id in agent.host_ids:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)
    return list(agent.host_ids)


def image() -> Any:
    from controlplane.v1 import vm_pb2

    return vm_pb2.ImageInfo(image_id="bench-img", virtual_size=1 << 30, actual_size=1 << 28)


# -- part 1: sync at fleet scale ------------------------------------------------------


def _vm_ids(host_id: str, per_host: int) -> list[str]:
    return [f"{host_id}-vm-{j}" for j in range(per_host)]


def seed_agent(agent: Any, host_ids: list[str], per_host: int) -> None:
    """Every host runs its VMs at generation 1 (SeedVms: no start operations)."""
    from controlplane.v1 import agent_pb2

    sim = agent.sim()

    def seed(host_id: str) -> None:
        vms = [agent_pb2.AgentVm(vm_id=v, state=agent_pb2.AGENT_VM_RUNNING, generation=1)
               for v in _vm_ids(host_id, per_host)]
        sim.SeedVms(agent_pb2.SeedVmsRequest(host_id=host_id, vms=vms), timeout=30)

    with futures.ThreadPoolExecutor(8, thread_name_prefix="seed-agent") as pool:
        list(pool.map(seed, host_ids))


def seed_records(store: Any, keys: Any, agent: Any, host_ids: list[str],
                 per_host: int) -> int:
    """Host and VM records, as AddHost and CreateVm + a completed start leave them but
    without device info and last_op (so about half the size of real ones: 95 bytes a VM
    record instead of about 220), written in txns of PUTS_PER_TXN puts from a few threads;
    returns the records written."""
    from controlplane.store import txn as t
    from controlplane.v1 import host_pb2, vm_pb2

    now = time.time()
    batches: list[list[Any]] = []
    batch: list[Any] = []

    def add(key: str, value: bytes) -> None:
        nonlocal batch
        batch.append(t.put(key, value))
        if len(batch) == PUTS_PER_TXN:
            batches.append(batch)
            batch = []

    for host_id in host_ids:
        host = host_pb2.Host(host_id=host_id, address=agent.address, status=host_pb2.CONNECTED,
                             added_at=now, cpus=16, memory_mb=65536)
        add(keys.host(host_id), host.SerializeToString())
    devices = _devices()
    for host_id in host_ids:
        for vm_id in _vm_ids(host_id, per_host):
            vm = vm_pb2.Vm(vm_id=vm_id, name=vm_id, state="Running", host_id=host_id,
                           generation=1, cpus=1, memory_mb=512, image=image(),
                           root_disk_size=1 << 30, created_at=now, state_changed_at=now,
                           devices=devices)
            add(keys.vm(vm_id), vm.SerializeToString())
    if batch:
        batches.append(batch)
    total = len(host_ids) * (1 + per_host)
    done = 0
    step = max(1, len(batches) // 10)
    lock = threading.Lock()

    def write(ops: list[Any]) -> None:
        nonlocal done
        store.txn([], ops)
        with lock:
            done += 1
            if done % step == 0 or done == len(batches):
                progress(f"  records: {min(done * PUTS_PER_TXN, total):,} of {total:,}")

    with futures.ThreadPoolExecutor(4, thread_name_prefix="seed-etcd") as pool:
        list(pool.map(write, batches))
    return total


# Errors no retry can cure: the node would wait for them forever (its cache start retries
# every StoreError), so the bench stops at the first one and says why.
PERMANENT_ERRORS = ("RESOURCE_EXHAUSTED",)


class PermanentErrors(logging.Handler):
    """Remembers the first log line of the node that names a permanent error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:
            text = record.getMessage()
            if any(marker in text for marker in PERMANENT_ERRORS):
                self.first = f"{record.name}: {text}"


@contextlib.contextmanager
def node_log(path: str) -> Iterator[PermanentErrors]:
    """Send the in-process node's log lines to a file (INFO, as `serve` logs) instead of
    this process's stderr, and put logging back as it was afterwards. Yields the handler
    that spots permanent errors in them."""
    logger = logging.getLogger("controlplane")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    errors = PermanentErrors()
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.addHandler(errors)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield errors
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(errors)
        handler.close()
        logger.setLevel(old[0])
        logger.propagate = old[1]


def _log_tail(path: str) -> str:
    from controlplane.procs import log_tail

    return log_tail(path, 3000)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log_path: str,
          errors: PermanentErrors, interval: float = 0.05) -> float:
    """Seconds until predicate() holds; BenchError on timeout (with the node's log tail)
    or as soon as the node logs a permanent error."""
    started = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - started
        if errors.first is not None:
            raise BenchError(f"{what} cannot be reached: after {elapsed:.1f}s the node logged "
                             f"an error no retry cures (it keeps retrying):\n  {errors.first}")
        if elapsed > timeout:
            raise BenchError(f"{what} not reached after {timeout:.0f}s; node log tail "
                             f"({log_path}):\n{_log_tail(log_path)}")
        time.sleep(interval)
    return time.monotonic() - started


def sync_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 1: first and steady-state sync rounds of one in-process node over a big fleet."""
    from controlplane.config.live import SETTINGS
    from controlplane.config.settings import Settings
    from controlplane.server import ManagementNode
    from controlplane.store import Keys, Store
    from controlplane.testing.ports import free_port

    hosts, per_host = args.hosts, args.vms_per_host
    total_vms = hosts * per_host
    figures: dict[str, Any] = {"hosts": hosts, "vms_per_host": per_host, "vms": total_vms}
    log_path = os.path.join(tmp, "sync-node.log")
    with contextlib.ExitStack() as stack:
        progress(f"sync: etcd and one sim agent serving {hosts:,} hosts")
        etcd = start_etcd(stack, os.path.join(tmp, "sync-etcd"))
        agent = start_agent(stack, tmp, "sync-agent", hosts, "h")
        host_ids = list(agent.host_ids)
        keys = Keys()
        store = Store(etcd.endpoints, timeout=30, budget=60)
        stack.callback(store.close)
        progress(f"sync: seeding {total_vms:,} running VMs into the agent")
        started = time.monotonic()
        seed_agent(agent, host_ids, per_host)
        figures["seed_agent_s"] = time.monotonic() - started
        progress(f"sync: writing {hosts:,} host + {total_vms:,} VM records into etcd "
                 f"({PUTS_PER_TXN} puts per txn)")
        started = time.monotonic()
        written = seed_records(store, keys, agent, host_ids, per_host)
        figures["seed_etcd_s"] = time.monotonic() - started
        figures["seed_etcd_records_per_s"] = written / figures["seed_etcd_s"]
        # Rounds are driven by the bench: the tracker's own schedule must not add any.
        store.put(keys.config_key("vm.syncInterval"), b"3600")
        figures["rss_before_node_mb"] = rss_mb()

        progress("sync: starting the management node in this process")
        port = free_port()
        # Reconcile (a member list every few seconds) is membership upkeep, not sync: kept
        # out of the rounds' request counts.
        settings = Settings(node_id=SYNC_NODE_ID, listen=f"127.0.0.1:{port}",
                            advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                            reconcile_interval=3600.0)
        errors = stack.enter_context(node_log(log_path))
        node = ManagementNode(settings)
        started = time.monotonic()
        node.start()
        stack.callback(node.stop, 1.0)
        timeout = args.ready_timeout
        figures["node_ready_s"] = _wait(lambda: node.ready, timeout, "node ready", log_path,
                                     errors)
        ready_requests = dict(node.store.requests)
        figures["node_start_requests"] = ready_requests
        progress(f"sync: node ready after {figures['node_ready_s']:.1f}s (caches listed); "
                 "waiting for the tracker's first round over every host")
        tracker = node.tracker

        def first_round_done() -> bool:
            return all((s := tracker.state(h)) is not None and s.rounds >= 1
                       for h in host_ids)

        figures["first_round_s"] = _wait(first_round_done, timeout, "first sync round",
                                         log_path, errors, interval=0.02)
        first = diff_counts(dict(node.store.requests), ready_requests)
        figures["first_round_requests"] = first
        figures["rss_caches_full_mb"] = rss_mb()
        figures["cached_vms"] = len(node.vms)
        figures["cached_hosts"] = len(node.hosts)

        workers = getattr(tracker._pool, "_max_workers", 16)
        figures["workers"] = workers
        figures["sync_interval_default_s"] = SETTINGS["vm.syncInterval"].default
        rounds = []
        with futures.ThreadPoolExecutor(workers, thread_name_prefix="bench-sync") as pool:
            for number in range(args.rounds):
                before = dict(node.store.requests)
                cpu, agent_cpu = time.process_time(), process_cpu_s(agent.pid)
                started = time.monotonic()
                results = list(pool.map(tracker.sync_host, host_ids))
                elapsed = time.monotonic() - started
                cpu, agent_cpu = (time.process_time() - cpu,
                                  process_cpu_s(agent.pid) - agent_cpu)
                counts = diff_counts(dict(node.store.requests), before)
                reads, writes, other = split_requests(counts)
                rounds.append({
                    "seconds": elapsed,
                    "node_cpu_s": cpu,
                    "agent_cpu_s": agent_cpu,
                    "requests": counts,
                    "reads": reads,
                    "writes": writes,
                    "other": other,
                    "reads_per_vm": reads / total_vms,
                    "unreachable_hosts": sum(not r.reachable for r in results),
                    "sync_writes": sum(r.applied.writes for r in results),
                    "host_seconds_median": statistics.median(r.seconds for r in results),
                    "host_seconds_max": max(r.seconds for r in results),
                })
                progress(f"sync: steady round {number + 1}/{args.rounds}: {elapsed:.2f}s, "
                         f"{reads} reads, {writes} writes")
        figures["rounds"] = rounds
        figures["round_s_median"] = statistics.median(r["seconds"] for r in rounds)
        figures["round_reads_max"] = max(r["reads"] for r in rounds)
        figures["round_writes_max"] = max(r["writes"] for r in rounds)
        figures["reads_per_vm_max"] = max(r["reads_per_vm"] for r in rounds)
        figures["rss_after_rounds_mb"] = rss_mb()
    return figures


# -- part 2: VM operations through the cluster vs raw etcd ----------------------------


def _vm_ids_owned(node: Any, owners: list[str], prefix: str) -> list[str]:
    """One VM id per client, client i's owned by owners[i] (asked of the cluster), so the
    operation load is spread evenly over the nodes whatever the ring looks like."""
    from controlplane.testing import cluster as c

    wanted = list(owners)
    chosen: list[str | None] = [None] * len(wanted)
    k = 0
    while any(v is None for v in chosen):
        candidates = [f"{prefix}-{k + j}" for j in range(64)]
        k += 64
        for vm_id, owner in zip(candidates, c.owners(node, candidates), strict=True):
            for i, want in enumerate(wanted):
                if chosen[i] is None and owner == want:
                    chosen[i] = vm_id
                    break
        if k > 100_000:
            raise BenchError("could not find VM ids for every owner")
    return [v for v in chosen if v is not None]


def _client(nodes: list[Any], index: int, vm_id: str, owner: str, ops: int,
            latencies: list[tuple[str, float]], errors: list[str],
            forwarded: list[int]) -> None:
    """StartVm(wait) then StopVm(wait), call k to node (index + k) mod N."""
    from controlplane.testing import cluster as c
    from controlplane.v1 import vm_pb2

    for k in range(ops):
        node = nodes[(index + k) % len(nodes)]
        start = k % 2 == 0
        request = vm_pb2.VmOpRequest(vm_id=vm_id, wait=True)
        stub = c.vms(node)
        began = time.perf_counter()
        try:
            vm = (stub.StartVm if start else stub.StopVm)(request, timeout=60)
        except grpc.RpcError as err:
            errors.append(f"{vm_id} {'start' if start else 'stop'} via {node.node_id}: "
                          f"{err.code().name}: {err.details()}")
            continue
        latencies.append(("start" if start else "stop", time.perf_counter() - began))
        if node.node_id != owner:
            forwarded.append(1)
        want = "Running" if start else "Stopped"
        if vm.state != want:
            errors.append(f"{vm_id}: {vm.state} after {'start' if start else 'stop'}, "
                          f"wanted {want}")


def run_clients(nodes: list[Any], vm_ids: list[str], owners: list[str],
                ops_each: list[int]) -> tuple[float, list[tuple[str, float]], list[str], int]:
    """All clients at once; (elapsed, (kind, latency) of each op, errors, forwarded calls)."""
    latencies: list[tuple[str, float]] = []
    errors: list[str] = []
    forwarded: list[int] = []
    threads = [threading.Thread(target=_client, name=f"bench-client-{i}",
                                args=(nodes, i, vm_ids[i], owners[i], ops_each[i], latencies,
                                      errors, forwarded), daemon=True)
               for i in range(len(vm_ids))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started, latencies, errors, len(forwarded)


def cas_figures(endpoints: str, etcd_pid: int, keys: Any, clients: int,
                seconds: float) -> dict[str, Any]:
    """`clients` threads each doing get + CAS txn (mod_revision compare + put) on its own
    key for `seconds`, through one Store (as one node has one): etcd's txn/s as this code
    base's client sees it."""
    from controlplane.store import Store
    from controlplane.store import txn as t

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


def throughput_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 2: VM start/stop ops/s through N node processes vs raw CAS txn/s on the etcd."""
    from controlplane.store import Keys
    from controlplane.testing import cluster as c
    from controlplane.v1 import vm_pb2

    figures: dict[str, Any] = {"nodes": args.nodes, "clients": args.clients, "ops": args.ops,
                               "agent_hosts": args.agent_hosts}
    with contextlib.ExitStack() as stack:
        progress(f"throughput: etcd, {args.nodes} node processes, one agent with "
                 f"{args.agent_hosts} hosts")
        etcd = start_etcd(stack, os.path.join(tmp, "tp-etcd"))
        agent = start_agent(stack, tmp, "tp-agent", args.agent_hosts, "t")
        nodes = start_nodes(stack, os.path.join(tmp, "tp-nodes"), etcd.endpoints, args.nodes)
        add_hosts(nodes[0], agent)
        owners = [nodes[i % len(nodes)].node_id for i in range(args.clients)]
        vm_ids = _vm_ids_owned(nodes[0], owners, "tp-vm")
        for vm_id in vm_ids:
            c.vms(nodes[0]).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image()),
                                     timeout=10)
        progress("throughput: warm-up (one start + stop per client, not counted)")
        _, _, errors, _ = run_clients(nodes, vm_ids, owners, [2] * args.clients)
        if errors:
            raise BenchError(f"warm-up operations failed: {errors[:3]}")
        ops_each = [args.ops // args.clients + (1 if i < args.ops % args.clients else 0)
                    for i in range(args.clients)]
        progress(f"throughput: {args.ops} operations from {args.clients} clients")
        client_url = etcd.members[0].client_url
        pids = {"nodes": [n.pid for n in nodes], "agent": [agent.pid],
                "etcd": [m.pid for m in etcd.members]}
        before = etcd_requests(client_url)
        cpu_before = cpu_by_role(pids)
        elapsed, latencies, errors, forwarded = run_clients(nodes, vm_ids, owners, ops_each)
        cpu = diff_cpu(cpu_by_role(pids), cpu_before)
        counts = diff_counts(etcd_requests(client_url), before)
        done = len(latencies)
        if not done:
            raise BenchError(f"no VM operation succeeded: {errors[:3]}")
        figures["cpu_ms_per_op"] = {role: 1000 * s / done for role, s in cpu.items()}
        figures["cpu_cores_busy"] = sum(cpu.values()) / elapsed
        figures["cores"] = os.cpu_count() or 0
        reads, writes, other = split_requests(counts)
        figures.update({
            "vm_ops_done": done,
            "vm_op_errors": len(errors),
            "vm_op_error_samples": errors[:5],
            "vm_ops_seconds": elapsed,
            "vm_ops_per_s": done / elapsed,
            "vm_op_latency_median_s": statistics.median(s for _, s in latencies),
            "vm_op_latency_p95_s": percentile([s for _, s in latencies], 0.95),
            "start_latency_median_s": statistics.median(
                [s for k, s in latencies if k == "start"] or [0.0]),
            "stop_latency_median_s": statistics.median(
                [s for k, s in latencies if k == "stop"] or [0.0]),
            "forwarded_fraction": forwarded / done,
            "etcd_requests": counts,
            "etcd_reads_per_op": reads / done,
            "etcd_txns_per_op": counts.get("Txn", 0) / done,
            "etcd_requests_per_op": (reads + writes + other) / done,
        })
        progress(f"throughput: {done / elapsed:.1f} VM ops/s; now raw etcd CAS txns for "
                 f"{args.etcd_seconds:g}s")
        figures.update(cas_figures(etcd.endpoints, etcd.members[0].pid, Keys(), args.clients,
                                   args.etcd_seconds))
        figures["ratio"] = figures["vm_ops_per_s"] / figures["cas_txn_per_s"]
    return figures


# -- part 3: HA restart latency --------------------------------------------------------


def ha_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 3: host powered off -> its NEVER_STOP VM Running on the other host, per run."""
    from controlplane.testing import cluster as c
    from controlplane.v1 import agent_pb2, host_pb2, vm_pb2

    figures: dict[str, Any] = {"ping_interval_s": args.ping_interval,
                               "ping_failures": args.ping_failures,
                               "ping_timeout_s": args.ping_timeout,
                               "interval_x_failures_s": args.ping_interval * args.ping_failures,
                               # the first failed pull comes up to one interval after the
                               # power-off, the last one (failures - 1) intervals later
                               "detect_min_s": args.ping_interval * (args.ping_failures - 1)}
    runs: list[float] = []
    with contextlib.ExitStack() as stack:
        progress("ha: etcd, one node process, one agent with 2 hosts")
        etcd = start_etcd(stack, os.path.join(tmp, "ha-etcd"))
        agent = start_agent(stack, tmp, "ha-agent", 2, "a")
        (node,) = start_nodes(stack, os.path.join(tmp, "ha-nodes"), etcd.endpoints, 1)
        set_config(node, {"vm.syncInterval": f"{args.ping_interval:g}",
                          "host.pingFailures": str(args.ping_failures),
                          "host.pingTimeout": f"{args.ping_timeout:g}"})
        h0, h1 = add_hosts(node, agent)
        vms, hosts, sim = c.vms(node), c.hosts(node), agent.sim()
        limit = 30 + 3 * args.ping_interval * args.ping_failures
        for run in range(args.ha_runs):
            vm_id = f"ha-{run}"
            vm = vms.CreateVm(vm_pb2.CreateVmRequest(
                vm_id=vm_id, image=image(), ha=vm_pb2.NEVER_STOP, host_id=h0, start=True,
                wait=True), timeout=30)
            if vm.state != "Running" or vm.host_id != h0:
                raise BenchError(f"{vm_id} is {vm.state} on {vm.host_id!r}, wanted Running "
                                 f"on {h0}")
            sim.SetHostCondition(agent_pb2.SimHostCondition(
                host_id=h0, condition=agent_pb2.HOST_DOWN), timeout=5)
            started = time.monotonic()
            while True:
                try:
                    vm = vms.GetVm(vm_pb2.VmRef(vm_id=vm_id), timeout=2)
                    if vm.state == "Running" and vm.host_id == h1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() - started > limit:
                    raise BenchError(f"{vm_id} not Running on {h1} {limit:.0f}s after its "
                                     f"host went down (last: {vm.state} on {vm.host_id}); "
                                     f"node log tail:\n{node.log_tail(3000)}")
                time.sleep(0.01)
            runs.append(time.monotonic() - started)
            progress(f"ha: run {run + 1}/{args.ha_runs}: {runs[-1]:.2f}s")
            # Power the host back on and bring it back (FENCED -> pinged -> CONNECTED).
            sim.SetHostCondition(agent_pb2.SimHostCondition(
                host_id=h0, condition=agent_pb2.HOST_UP), timeout=5)
            hosts.ReconnectHost(host_pb2.HostRef(host_id=h0), timeout=30)
            started = time.monotonic()
            while True:
                host = hosts.GetHost(host_pb2.HostRef(host_id=h0), timeout=5)
                if host.status == host_pb2.CONNECTED and not host.unreachable_since:
                    break
                if time.monotonic() - started > 30:
                    raise BenchError(f"host {h0} not CONNECTED again after reconnect")
                time.sleep(0.05)
    figures.update({"runs_s": runs, "median_s": statistics.median(runs), "min_s": min(runs),
                    "max_s": max(runs)})
    return figures


# -- output ---------------------------------------------------------------------------


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


def print_throughput(f: dict[str, Any]) -> None:
    print(f"== throughput: {f['nodes']} nodes, {f['clients']} clients, {f['agent_hosts']} "
          "sim hosts (zero delays)")
    print(f"VM start/stop ops/s (wait=True)       {f['vm_ops_per_s']:>9.1f}    "
          f"{f['vm_ops_done']} ops in {f['vm_ops_seconds']:.2f}s, {f['vm_op_errors']} errors; "
          f"latency median {f['vm_op_latency_median_s'] * 1000:.0f} ms (start "
          f"{f['start_latency_median_s'] * 1000:.0f}, stop "
          f"{f['stop_latency_median_s'] * 1000:.0f}), p95 "
          f"{f['vm_op_latency_p95_s'] * 1000:.0f} ms; {f['forwarded_fraction']:.0%} forwarded")
    print(f"etcd requests per VM op (all nodes)   {f['etcd_requests_per_op']:>9.2f}    "
          f"Txn {f['etcd_txns_per_op']:.2f}, Range {f['etcd_reads_per_op']:.2f} "
          f"(etcd's own counters, background included)")
    cpu = f["cpu_ms_per_op"]
    print(f"CPU per VM op                         {sum(cpu.values()):>8.1f}ms   "
          + ", ".join(f"{role} {ms:.1f} ms" for role, ms in cpu.items())
          + f"; {f['cpu_cores_busy']:.2f} of {f['cores']} cores busy")
    print(f"raw etcd CAS txn/s (get + txn)        {f['cas_txn_per_s']:>9.1f}    "
          f"{f['clients']} threads, one Store, {f['cas_seconds']:.1f}s, "
          f"{f['cas_conflicts']} conflicts; CPU per txn: "
          + ", ".join(f"{role} {ms:.2f} ms" for role, ms in f["cas_cpu_ms_per_txn"].items())
          + f"; {f['cas_cpu_cores_busy']:.2f} cores busy")
    print(f"VM ops/s / raw txn/s                  {f['ratio']:>9.1%}    target >= 30%")
    for sample in f["vm_op_error_samples"]:
        print(f"  error: {sample}")


def print_ha(f: dict[str, Any]) -> None:
    runs = ", ".join(f"{r:.2f}s" for r in f["runs_s"])
    print(f"== ha: ping interval {f['ping_interval_s']:g}s x {f['ping_failures']} failures "
          f"(ping timeout {f['ping_timeout_s']:g}s)")
    print(f"host down -> VM Running elsewhere     {f['median_s']:>9.2f}s   median of "
          f"{len(f['runs_s'])} ({runs}); detection takes (failures - 1) to failures x "
          f"interval = {f['detect_min_s']:g}-{f['interval_x_failures_s']:g}s, then fence + restart")


PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sync": print_sync, "throughput": print_throughput, "ha": print_ha}
MEASURERS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "sync": sync_figures, "throughput": throughput_figures, "ha": ha_figures}


# -- command --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parts(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(PARTS)}")
    return names


def add_fleet_parser(bench_subparsers: Any) -> argparse.ArgumentParser:
    """Add the `fleet` suite to `controlplane bench`'s subparsers; `run_fleet_bench` runs it
    (also set as the `bench_run` default)."""
    p = bench_subparsers.add_parser(
        "fleet", help="VM sync at fleet scale, VM ops/s through the cluster, HA latency",
        description="Measures on this machine, each part on its own embedded etcd: (sync) "
        "one in-process node over HOSTS x VMS_PER_HOST running sim VMs: first and "
        "steady-state sync rounds, etcd requests per round (reads per VM must be 0), memory; "
        "(throughput) StartVm/StopVm ops/s through NODES node processes vs raw etcd CAS "
        "txn/s; (ha) time from a host powered off until its NEVER_STOP VM runs elsewhere.")
    p.add_argument("--hosts", type=_positive_int, default=1000, help="sync: hosts (1000)")
    p.add_argument("--vms-per-host", type=_positive_int, default=100,
                   help="sync: running VMs per host (100)")
    p.add_argument("--rounds", type=_positive_int, default=3,
                   help="sync: steady-state rounds (3)")
    p.add_argument("--ready-timeout", type=_positive_float, default=600.0,
                   help="sync: seconds to wait for the node to be ready and for the first "
                   "round (600)")
    p.add_argument("--nodes", type=_positive_int, default=3, help="throughput: nodes (3)")
    p.add_argument("--clients", type=_positive_int, default=8,
                   help="throughput: client threads, each with its own VM (8)")
    p.add_argument("--ops", type=_positive_int, default=400,
                   help="throughput: VM operations in all (400)")
    p.add_argument("--agent-hosts", type=_positive_int, default=10,
                   help="throughput: sim hosts (10)")
    p.add_argument("--etcd-seconds", type=_positive_float, default=5.0,
                   help="throughput: seconds of raw etcd CAS txns (5)")
    p.add_argument("--ha-runs", type=_positive_int, default=3, help="ha: runs (3)")
    p.add_argument("--ping-interval", type=_positive_float, default=1.0,
                   help="ha: vm.syncInterval, seconds (1)")
    p.add_argument("--ping-failures", type=_positive_int, default=3,
                   help="ha: host.pingFailures (3)")
    p.add_argument("--ping-timeout", type=_positive_float, default=0.5,
                   help="ha: host.pingTimeout, seconds (0.5)")
    p.add_argument("--skip", type=_parts, default=[], metavar="PARTS",
                   help="comma-separated parts not to run: sync,throughput,ha")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(bench_run=run_fleet_bench)
    return p


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
    """`python -c "from controlplane.devtools.bench.fleet import main; main()" fleet ...` until the
    suite is wired into `controlplane bench`."""
    parser = argparse.ArgumentParser(prog="controlplane bench")
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="SUITE")
    add_fleet_parser(sub)
    return run_fleet_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
