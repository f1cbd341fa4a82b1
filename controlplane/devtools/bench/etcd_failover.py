"""`controlplane bench etcd-failover`: how long clients wait when the etcd leader dies.

A 3-member test etcd, `--nodes` node processes, one sim agent and `--vms` running VMs. One
client thread per VM alternates StopVm(wait) and StartVm(wait) through `client.Client`, and
one thread writes a key through a `Store` (what every node builds, with the same defaults).
Then the etcd leader is killed with -9 and the bench prints, for each of `--runs` kills, the
time from the kill to the first successful VM operation and to the first successful store
write. Only calls *started* after the kill count: one that began before it and finished
after could have done all its etcd work before the kill. The killed member is restarted
and the cluster is healthy again before the next run.

What sets the floor: etcd needs one election timeout (plus a random part of up to one
more) to notice its leader is gone and elect another; `--etcd-election-ms` and
`--etcd-heartbeat-ms` pass etcd's own flags (its defaults: 1000 and 100). Everything above
that floor is the client side: a write forwarded to the dead leader is lost and its
attempt waits for its whole deadline, which is what the store's short first attempts cut.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane.client import Client
from controlplane.devtools.bench.fleet.common import (
    add_hosts,
    cluster_client,
    image,
    start_agent,
    start_nodes,
)
from controlplane.store import Store, StoreError
from controlplane.store.embedded import EtcdServer
from controlplane.testing.etcd import TEST_ETCD_ARGS, EtcdCluster
from controlplane.testing.waiting import wait_until
from controlplane.v1 import vm_pb2


def progress(message: str) -> None:
    print(f"[bench etcd-failover {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


@dataclass
class Loop:
    """Calls made by loop threads: (started, ended, error kind or '', error message)."""

    calls: list[tuple[float, float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, kind: str = "", message: str = "") -> None:
        with self.lock:
            self.calls.append((started, time.monotonic(), kind, message))

    def first_ok_after(self, t0: float) -> float | None:
        """Seconds from t0 to the end of the first successful call started at or after t0."""
        with self.lock:
            ends = [end for start, end, kind, _ in self.calls if start >= t0 and not kind]
        return min(ends) - t0 if ends else None

    def errors_after(self, t0: float) -> tuple[Counter[str], list[str]]:
        """Failed calls that ended after t0, by kind, and the first message of each kind."""
        with self.lock:
            failed = [(kind, msg) for _, end, kind, msg in self.calls if end >= t0 and kind]
        first: dict[str, str] = {}
        for kind, msg in failed:
            first.setdefault(kind, msg)
        return Counter(kind for kind, _ in failed), list(first.values())


def _vm_loop(client: Client, vm_id: str, out: Loop, stop: threading.Event) -> None:
    """Stop a running VM, start a stopped one, and again; the next call follows the state
    the last answer (or a GetVm) gave, so a call that failed cannot desynchronise it."""
    state: str | None = None
    while not stop.is_set():
        try:
            if state is None:
                state = client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=15).vm.state
        except grpc.RpcError:
            stop.wait(0.05)
            continue
        stopping = state == "Running"
        call = client.vms.StopVm if stopping else client.vms.StartVm
        request = (vm_pb2.StopVmRequest if stopping else vm_pb2.StartVmRequest)(
            vm_id=vm_id, wait=True)
        started = time.monotonic()
        try:
            state = call(request, timeout=15).vm.state
        except grpc.RpcError as err:
            out.record(started, f"vm {err.code().name}",
                       f"{vm_id}: {err.code().name}: {err.details()}")
            state = None
            stop.wait(0.05)  # a refusal must not spin
            continue
        out.record(started)


def _store_loop(store: Store, key: str, out: Loop, stop: threading.Event) -> None:
    for n in itertools.count():
        if stop.is_set():
            return
        started = time.monotonic()
        try:
            store.put(key, str(n).encode())
        except StoreError as exc:
            out.record(started, f"store {type(exc).__name__}", str(exc))
            continue
        out.record(started)


def _health_loop(member: EtcdServer, out: Loop, stop: threading.Event) -> None:
    """etcd's own view: /health is true only with a leader that answers a read. A probe
    that hangs counts as not yet (0.25 s each, so one started after the election ends
    within a quarter second of it)."""
    while not stop.is_set():
        started = time.monotonic()
        if member.healthy(timeout=0.25):
            out.record(started)
        else:
            out.record(started, "unhealthy")
        stop.wait(0.02)


def _healthy(etcd: EtcdCluster) -> bool:
    return all(m.is_running() and m.healthy() for m in etcd.members)


def one_kill(etcd: EtcdCluster, client: Client, store: Store, vm_ids: list[str],
             run: int) -> dict[str, Any]:
    """Start the loops, kill the leader once they all run, wait for both firsts."""
    vm_loop, store_loop, stop = Loop(), Loop(), threading.Event()
    threads = [threading.Thread(target=_vm_loop, args=(client, v, vm_loop, stop),
                                name=f"bench-vm-{v}", daemon=True) for v in vm_ids]
    threads.append(threading.Thread(target=_store_loop,
                                    args=(store, f"/bench/failover/{run}", store_loop, stop),
                                    name="bench-store", daemon=True))
    health_loop = Loop()
    leader = etcd.leader_index()
    threads += [threading.Thread(target=_health_loop, args=(m, health_loop, stop),
                                 name=f"bench-health-{m.name}", daemon=True)
                for i, m in enumerate(etcd.members) if i != leader]
    for thread in threads:
        thread.start()
    try:
        warm = time.monotonic()
        wait_until(lambda: vm_loop.first_ok_after(warm) is not None
                   and store_loop.first_ok_after(warm) is not None, 60,
                   message="VM operations and store writes succeed before the kill")
        victim = etcd.members[leader]
        assert victim.pid is not None
        t0 = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        loops = (vm_loop, store_loop, health_loop)
        wait_until(lambda: all(loop.first_ok_after(t0) is not None for loop in loops), 60,
                   interval=0.01, message="a VM operation, a store write and etcd's /health "
                   "succeed after the kill")
        vm_s, store_s, etcd_s = (loop.first_ok_after(t0) for loop in loops)
        vm_errors, vm_samples = vm_loop.errors_after(t0)
        store_errors, store_samples = store_loop.errors_after(t0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    victim.kill()  # reap it
    victim.restart(wait=True)
    wait_until(lambda: _healthy(etcd), 30, message="etcd healthy again after the restart")
    return {"killed": victim.name, "vm_op_s": vm_s, "store_write_s": store_s,
            "etcd_health_s": etcd_s,
            "errors": dict(vm_errors + store_errors), "error_samples": vm_samples + store_samples}


def _summary(values: list[float]) -> dict[str, float]:
    return {"min_s": min(values), "median_s": statistics.median(values), "max_s": max(values)}


def etcd_failover_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    extra = list(TEST_ETCD_ARGS)
    if args.etcd_heartbeat_ms:
        extra.append(f"--heartbeat-interval={args.etcd_heartbeat_ms}")
    if args.etcd_election_ms:
        extra.append(f"--election-timeout={args.etcd_election_ms}")
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        progress(f"3-member etcd, {args.nodes} node(s), a sim agent, {args.vms} VMs")
        etcd = EtcdCluster(os.path.join(tmp, "etcd"), size=3, extra_args=extra)
        stack.callback(etcd.stop)
        etcd.start()
        agent = start_agent(stack, tmp, "agent", 2, "h")
        nodes = start_nodes(stack, os.path.join(tmp, "nodes"), etcd.endpoints, args.nodes)
        client = cluster_client(stack, nodes, timeout=15)
        add_hosts(client, agent)
        vm_ids = [f"failover-{i}" for i in range(args.vms)]
        for vm_id in vm_ids:
            client.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image(), start=True,
                                                       wait=True))
        store = Store(etcd.endpoints)
        stack.callback(store.close)
        for run in range(args.runs):
            runs.append(one_kill(etcd, client, store, vm_ids, run))
            r = runs[-1]
            progress(f"run {run + 1}/{args.runs}: killed {r['killed']}: first VM op "
                     f"{r['vm_op_s']:.2f}s, first store write {r['store_write_s']:.2f}s, "
                     f"etcd /health {r['etcd_health_s']:.2f}s, "
                     f"errors {r['errors'] or 'none'}"
                     + "".join(f"\n    {sample}" for sample in r["error_samples"]))
    return {"runs": runs, "etcd_args": extra,
            "vm_op": _summary([r["vm_op_s"] for r in runs]),
            "store_write": _summary([r["store_write_s"] for r in runs]),
            "etcd_health": _summary([r["etcd_health_s"] for r in runs])}


def run_etcd_failover_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cp-bench-failover-") as tmp:
        figures = etcd_failover_figures(args, tmp)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    n = len(figures["runs"])
    for label, key in (("kill -> first VM operation", "vm_op"),
                       ("kill -> first store write", "store_write"),
                       ("kill -> etcd /health true", "etcd_health")):
        f = figures[key]
        target = "   (the floor: etcd's election)" if key == "etcd_health" else \
            "   target <= 2s"
        print(f"{label:<28} median {f['median_s']:.2f}s  (min {f['min_s']:.2f}s, "
              f"max {f['max_s']:.2f}s, {n} runs){target}")
    errors: Counter[str] = Counter()
    for r in figures["runs"]:
        errors.update(r["errors"])
    print(f"{'failed calls after the kills':<28} {dict(errors) or 'none'}")
    print(f"{'etcd flags':<28} {' '.join(figures['etcd_args'])}")
    return 0
