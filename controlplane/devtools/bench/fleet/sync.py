"""Part 1 of the fleet bench: VM sync at fleet scale.

A fleet of `--hosts` sim hosts x `--vms-per-host` running VMs (one sim agent process;
records written straight into etcd in batches) and ONE management node in this process, so
the bench can reach its tracker and its etcd request counters. It times the first full sync
round (the tracker pulls every newly owned host at once) and then `--rounds` steady-state
rounds driven by the bench through a pool as large as the tracker's, and counts the etcd
requests each round sent. The design promise is that a round reads no VM from etcd (the
watch-fed caches hold them) and writes nothing when nothing changed; the figures show
whether that holds at scale.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

from controlplane import wiretime
from controlplane.config.live import SETTINGS
from controlplane.config.settings import Settings
from controlplane.devtools.bench.fleet.common import (
    BenchError,
    devices,
    diff_counts,
    image,
    process_cpu_s,
    progress,
    rss_mb,
    split_requests,
    start_agent,
    start_etcd,
)
from controlplane.procs import log_tail
from controlplane.server import ManagementNode
from controlplane.store import Keys, Store
from controlplane.store import txn as t
from controlplane.testing.agents import AgentProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.v1 import agent_pb2, host_pb2, vm_pb2

SYNC_NODE_ID = "bench-sync"
# etcd's default limit is 128 ops per txn; 100 keeps a batch well under it and under the
# 1.5 MiB request limit with realistic records.
PUTS_PER_TXN = 100


def _vm_ids(host_id: str, per_host: int) -> list[str]:
    return [f"{host_id}-vm-{j}" for j in range(per_host)]


def seed_agent(agent: AgentProcess, host_ids: list[str], per_host: int) -> None:
    """Every host runs its VMs at generation 1 (SeedVms: no start operations)."""
    sim = agent.sim()

    def seed(host_id: str) -> None:
        vms = [agent_pb2.AgentVm(vm_id=v, state=agent_pb2.AGENT_VM_STATE_RUNNING, generation=1)
               for v in _vm_ids(host_id, per_host)]
        sim.SeedVms(agent_pb2.SeedVmsRequest(host_id=host_id, vms=vms), timeout=30)

    with futures.ThreadPoolExecutor(8, thread_name_prefix="seed-agent") as pool:
        list(pool.map(seed, host_ids))


def seed_records(store: Store, keys: Keys, agent: AgentProcess, host_ids: list[str],
                 per_host: int) -> int:
    """Host and VM records, as AddHost and CreateVm + a completed start leave them but
    without device info and last_op (so about half the size of real ones: 95 bytes a VM
    record instead of about 220), written in txns of PUTS_PER_TXN puts from a few threads;
    returns the records written."""
    now = wiretime.now()
    batches: list[list[Any]] = []
    batch: list[Any] = []

    def add(key: str, value: bytes) -> None:
        nonlocal batch
        batch.append(t.put(key, value))
        if len(batch) == PUTS_PER_TXN:
            batches.append(batch)
            batch = []

    for host_id in host_ids:
        host = host_pb2.Host(host_id=host_id, address=agent.address,
                             status=host_pb2.HOST_STATUS_CONNECTED,
                             added_at=now, cpus=16, memory_mb=65536)
        add(keys.host(host_id), host.SerializeToString())
    vm_devices = devices()
    for host_id in host_ids:
        for vm_id in _vm_ids(host_id, per_host):
            vm = vm_pb2.Vm(vm_id=vm_id, name=vm_id, state="Running", host_id=host_id,
                           generation=1, cpus=1, memory_mb=512, image=image(),
                           root_disk_size=1 << 30, created_at=now, state_changed_at=now,
                           devices=vm_devices)
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
                            reconcile_interval=3600.0, tls=harness_pki().node(SYNC_NODE_ID))
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

        workers = tracker.loop.workers  # as many as the tracker syncs with
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
