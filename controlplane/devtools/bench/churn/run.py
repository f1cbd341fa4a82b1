"""The run behind `controlplane bench churn`: VM operations through the client library
while management nodes are killed -9 and restarted under the same id.

What it runs, all real processes on one embedded etcd: `nodes` node processes, one sim
agent, NEVER_STOP VMs; `clients` threads, each with its own `client.Client` over every node
and its own VMs, doing start / stop / reboot (wait=true) for `duration` seconds; and a
killer that every `kill_interval` seconds kills a random node -9, leaves it down for a
random 0..`max_down` seconds (so it is sometimes dropped from the ring, sometimes back
before), and restarts it under the same id and port.

What it reports (and `tests/chaos/test_churn.py` asserts): operations, how many succeeded,
the failures by status code (a clean code, never UNKNOWN/INTERNAL), the longest any client
waited for one operation, and the two safety facts asked of the agents and of etcd: no VM
ever seen running on two hosts at once (the agents are asked every `check_interval`), and
no HA audit record for any VM (none crashed: HA had nothing to do).

An operation answered with its op still in flight (wait ran out) counts as ok: the call
succeeded; the next operation on that VM is then refused (FAILED_PRECONDITION) until the op
settles, which shows in the failures by code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane.client import Client
from controlplane.devtools.bench.fleet.common import (
    add_hosts,
    cluster_client,
    image,
    percentile,
    set_config,
    start_etcd,
    start_nodes,
)
from controlplane.testing.agents import AgentProcess, vm_copies
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.ports import free_port
from controlplane.v1 import vm_pb2

__all__ = ["CLEAN_CODES", "ChurnOptions", "ChurnResult", "run_churn", "run_churn_bench"]

# Codes an operation may end with besides OK: each says what happened (state not allowing
# it, an op in flight, a node or dependency out of reach, out of time). UNKNOWN and
# INTERNAL never are: they mean a server bug.
CLEAN_CODES = frozenset({"FAILED_PRECONDITION", "ABORTED", "UNAVAILABLE",
                         "DEADLINE_EXCEEDED", "NOT_FOUND", "RESOURCE_EXHAUSTED"})
FAST_CONFIG = {"vm.syncInterval": "0.3", "host.pingTimeout": "1",
               "vm.orphanedSkipTimeout": "3"}


@dataclass(frozen=True)
class ChurnOptions:
    """The run's shape (the bench's flags)."""

    duration: float = 60.0
    nodes: int = 3
    clients: int = 6
    vms_per_client: int = 2
    hosts: int = 4
    kill_interval: float = 4.0
    max_down: float = 3.0
    lease_ttl: float = 2.0
    op_timeout: float = 15.0
    op_delay: float = 0.2
    check_interval: float = 1.0
    seed: int = 1
    # "owner": clients route each call to the VM's owner (the client's ring); "node": they
    # do not (route=False, as the CLI), so the node asked forwards; "mixed": half each.
    routing: str = "mixed"


@dataclass
class ChurnResult:
    """What the run saw."""

    ops: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    failure_samples: list[str] = field(default_factory=list)
    longest_wait_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    kills: int = 0
    seconds: float = 0.0
    double_placements: list[str] = field(default_factory=list)
    placement_checks: int = 0
    ha_records: dict[str, int] = field(default_factory=dict)
    client_retries: int = 0

    @property
    def unclean(self) -> dict[str, int]:
        """Failures by a code no operation may end with."""
        return {code: n for code, n in self.failed.items() if code not in CLEAN_CODES}

    def figures(self) -> dict[str, Any]:
        lat = self.latencies or [0.0]
        return {
            "ops": self.ops, "ok": self.ok, "failed": sum(self.failed.values()),
            "failed_by_code": dict(sorted(self.failed.items())),
            "failure_samples": self.failure_samples[:8],
            "longest_wait_s": self.longest_wait_s,
            "op_latency_median_s": statistics.median(lat),
            "op_latency_p99_s": percentile(lat, 0.99),
            "kills": self.kills, "seconds": self.seconds,
            "client_retries": self.client_retries,
            "placement_checks": self.placement_checks,
            "vms_on_two_hosts": self.double_placements,
            "ha_audit_records": self.ha_records,
        }


def _progress(message: str) -> None:
    print(f"[bench churn {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.result = ChurnResult()
        self.killer_error: Exception | None = None

    def record(self, elapsed: float, code: str, sample: str = "") -> None:
        with self.lock:
            r = self.result
            r.ops += 1
            r.latencies.append(elapsed)
            r.longest_wait_s = max(r.longest_wait_s, elapsed)
            if code == "OK":
                r.ok += 1
            else:
                r.failed[code] += 1
                if sample and len(r.failure_samples) < 20:
                    r.failure_samples.append(sample)


def _routes(routing: str, index: int) -> bool:
    """Whether client `index` routes to owners itself (see ChurnOptions.routing)."""
    return routing == "owner" or (routing == "mixed" and index % 2 == 0)


def _choose(rng: random.Random, vm: vm_pb2.Vm) -> str | None:
    """The next operation for a VM in this state, or None while it has an op in flight."""
    if vm.op.op_id:
        return None
    if vm.state in ("Created", "Stopped"):
        return "start"
    if vm.state == "Running":
        return rng.choice(("stop", "reboot"))
    return None


def _client_loop(client: Client, vm_ids: Sequence[str], stop_at: float, options: ChurnOptions,
                 seed: int, recorder: _Recorder) -> None:
    rng = random.Random(seed)
    calls = {"start": client.vms.StartVm, "stop": client.vms.StopVm,
             "reboot": client.vms.RebootVm}
    k = 0
    while time.monotonic() < stop_at:
        vm_id = vm_ids[k % len(vm_ids)]
        k += 1
        try:
            vm = client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=vm_id),
                                  timeout=options.op_timeout).vm
        except grpc.RpcError:
            time.sleep(0.05)  # a read that failed is not an operation; the next try will do
            continue
        kind = _choose(rng, vm)
        if kind is None:
            time.sleep(0.05)  # an op in flight (or orphaned): give it a moment to settle
            continue
        began = time.monotonic()
        try:
            request = getattr(vm_pb2, f"{kind.capitalize()}VmRequest")(vm_id=vm_id, wait=True)
            calls[kind](request, timeout=options.op_timeout)
        except grpc.RpcError as err:
            code = err.code().name
            recorder.record(time.monotonic() - began, code,
                            f"{kind} {vm_id}: {code}: {(err.details() or '')[:200]}")
            continue
        recorder.record(time.monotonic() - began, "OK")


def _killer(nodes: Sequence[NodeProcess], stop_at: float, options: ChurnOptions,
            recorder: _Recorder, stopping: threading.Event) -> None:
    rng = random.Random(options.seed)
    try:
        while not stopping.wait(options.kill_interval * rng.uniform(0.5, 1.5)):
            if time.monotonic() >= stop_at:
                return
            victim = rng.choice(list(nodes))
            victim.kill()
            with recorder.lock:
                recorder.result.kills += 1
            stopping.wait(rng.uniform(0.0, options.max_down))
            victim.restart()
            victim.wait_ready(60)
    except Exception as exc:  # noqa: BLE001 - reported by run_churn, which stops the run
        recorder.killer_error = exc


def _placement_checker(agents: Sequence[AgentProcess], vm_ids: Sequence[str],
                       options: ChurnOptions, recorder: _Recorder,
                       stopping: threading.Event) -> None:
    wanted = set(vm_ids)
    while not stopping.wait(options.check_interval):
        _check_placements(agents, wanted, recorder)


def _check_placements(agents: Sequence[AgentProcess], wanted: set[str],
                      recorder: _Recorder) -> None:
    try:
        copies = vm_copies(agents, running_only=True)
    except grpc.RpcError:
        return
    with recorder.lock:
        recorder.result.placement_checks += 1
        for vm_id, where in copies.items():
            if vm_id in wanted and len(where) > 1:
                recorder.result.double_placements.append(f"{vm_id}: {where}")


def run_churn(options: ChurnOptions, base_dir: str) -> ChurnResult:
    """Run one churn (processes under `base_dir`, all gone when it returns)."""
    with contextlib.ExitStack() as stack:
        _progress(f"etcd, {options.nodes} nodes (lease TTL {options.lease_ttl:g}s), one "
                  f"agent with {options.hosts} hosts")
        etcd = start_etcd(stack, os.path.join(base_dir, "etcd"))
        agent = AgentProcess("churn-agent", free_port(), base_dir, hosts=options.hosts,
                             host_prefix="ch", start_delay=options.op_delay,
                             stop_delay=options.op_delay, reboot_delay=options.op_delay,
                             log_level="WARNING")
        stack.callback(agent.kill)
        agent.start().wait_ready(60)
        nodes = start_nodes(stack, os.path.join(base_dir, "nodes"), etcd.endpoints,
                            options.nodes, prefix="mn-", lease_ttl=options.lease_ttl,
                            reconcile_interval=1.0)
        admin = cluster_client(stack, nodes, timeout=30)
        set_config(admin, FAST_CONFIG)
        add_hosts(admin, agent)
        vm_ids = [f"churn-{i}-{j}" for i in range(options.clients)
                  for j in range(options.vms_per_client)]
        for vm_id in vm_ids:
            admin.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image(),
                                                      ha=vm_pb2.HA_LEVEL_NEVER_STOP))
        recorder = _Recorder()
        stopping = threading.Event()
        clients = [cluster_client(stack, nodes, timeout=options.op_timeout,
                                  route=_routes(options.routing, i))
                   for i in range(options.clients)]
        started = time.monotonic()
        stop_at = started + options.duration
        threads = [threading.Thread(
            target=_client_loop, name=f"churn-client-{i}", daemon=True,
            args=(clients[i], vm_ids[i * options.vms_per_client:
                                     (i + 1) * options.vms_per_client],
                  stop_at, options, options.seed * 1000 + i, recorder))
            for i in range(options.clients)]
        helpers = [
            threading.Thread(target=_killer, name="churn-killer", daemon=True,
                             args=(nodes, stop_at, options, recorder, stopping)),
            threading.Thread(target=_placement_checker, name="churn-checker", daemon=True,
                             args=([agent], vm_ids, options, recorder, stopping)),
        ]
        _progress(f"{options.clients} clients x {options.vms_per_client} VMs for "
                  f"{options.duration:g}s, a node killed -9 about every "
                  f"{options.kill_interval:g}s")
        for thread in (*threads, *helpers):
            thread.start()
        for thread in threads:
            thread.join()
        stopping.set()
        for thread in helpers:
            thread.join(90)
        if recorder.killer_error is not None:
            raise RuntimeError(f"the killer failed: {recorder.killer_error}") \
                from recorder.killer_error
        result = recorder.result
        result.seconds = time.monotonic() - started
        for node in nodes:  # the killer may have left one down at the very end
            if not node.is_running():
                node.restart()
            node.wait_ready(60)
        _check_placements([agent], set(vm_ids), recorder)
        for vm_id in vm_ids:
            records = admin.vms.ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id)).records
            if records:
                result.ha_records[vm_id] = len(records)
        result.client_retries = sum(client.retries for client in clients)
        return result


# -- the command ------------------------------------------------------------------------


def print_figures(figures: dict[str, Any]) -> None:
    failed = ", ".join(f"{code} {n}" for code, n in figures["failed_by_code"].items())
    print(f"operations                  {figures['ops']:>8}   ({figures['kills']} kills -9 in "
          f"{figures['seconds']:.0f}s)")
    print(f"ok                          {figures['ok']:>8}")
    print(f"failed                      {figures['failed']:>8}   {failed or '-'}")
    print(f"longest a client waited     {figures['longest_wait_s']:>7.2f}s   (median "
          f"{figures['op_latency_median_s']:.2f}s, p99 {figures['op_latency_p99_s']:.2f}s)")
    print(f"client retries              {figures['client_retries']:>8}")
    print(f"VMs seen on two hosts       {len(figures['vms_on_two_hosts']):>8}   "
          f"({figures['placement_checks']} checks of the agents)")
    print(f"VMs with an HA audit record {len(figures['ha_audit_records']):>8}")
    for sample in figures["failure_samples"]:
        print(f"  e.g. {sample}")


def run_churn_bench(args: argparse.Namespace) -> int:
    """`controlplane bench churn`: 0 when the run kept both safety facts and no operation
    ended UNKNOWN/INTERNAL, else 1."""
    options = ChurnOptions(duration=args.duration, nodes=args.nodes, clients=args.clients,
                           vms_per_client=args.vms_per_client, hosts=args.hosts,
                           kill_interval=args.kill_interval, max_down=args.max_down,
                           lease_ttl=args.lease_ttl, op_timeout=args.op_timeout,
                           seed=args.seed, routing=args.routing)
    try:
        with tempfile.TemporaryDirectory(prefix="cp-bench-churn-") as tmp:
            result = run_churn(options, tmp)
    except KeyboardInterrupt:
        _progress("interrupted; every process stopped")
        return 130
    figures = result.figures()
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_figures(figures)
    bad = result.unclean or result.double_placements or result.ha_records
    return 1 if bad else 0
