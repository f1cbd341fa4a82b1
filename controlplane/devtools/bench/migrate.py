"""Live migration: time and downtime per VM, on sim agents and on real guests.

`controlplane bench migrate` starts a test etcd, one node and two one-host agents, starts
VMs on the first host and live-migrates each to the second through VmService.MigrateVm
(wait), one after another: the call's wall time is the migration as a user sees it (begin
txn, prepare on the target, transfer, switchover, settling from both agents' reports, the
record written); the downtime is the one the source agent measured (the guest paused,
running nowhere). Then all of them back at once. The sim's transfer and downtime are set
(--sim-transfer, --sim-downtime), so its figures are the control plane's own overhead on
top of them. With --libvirt, the same through libvirt agents on two session daemons with
real TCG guests (128 MiB; the project's guest image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from concurrent import futures
from typing import Any

__all__ = ["add_migrate_parser", "measure", "run_migrate_bench"]

_DOWNTIME = re.compile(r"downtime ([0-9.]+) ms")


def _progress(message: str) -> None:
    print(f"[bench migrate] {message}", file=sys.stderr, flush=True)


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "n": len(ordered)}


def _migrate_all(client: Any, vm_ids: list[str], target: str) -> tuple[list[float], list[float]]:
    from controlplane.v1 import vm_pb2

    took, downtimes = [], []
    for vm_id in vm_ids:
        began = time.monotonic()
        vm = client.vms.MigrateVm(vm_pb2.MigrateVmRequest(vm_id=vm_id, host_id=target,
                                                          wait=True), timeout=120).vm
        took.append(time.monotonic() - began)
        if vm.host_id != target or vm.op.op_id:
            raise RuntimeError(f"{vm_id} did not move: {vm}")
        found = _DOWNTIME.search(vm.last_op.detail)
        if found:
            downtimes.append(float(found.group(1)) / 1000)
    return took, downtimes


def _run(stack: contextlib.ExitStack, base: str, agents: list[Any], vms: int,
         out: dict[str, Any], label: str) -> None:
    from controlplane.devtools.bench.fleet.common import (
        add_hosts,
        cluster_client,
        image,
        set_config,
        start_etcd,
        start_nodes,
    )
    from controlplane.v1 import vm_pb2

    etcd = start_etcd(stack, base)
    node = start_nodes(stack, base, etcd.endpoints, 1)[0]
    client = cluster_client(stack, [node])
    set_config(client, {"vm.syncInterval": "2"})
    hosts = [add_hosts(client, agent)[0] for agent in agents]
    vm_ids = [f"mig-{i}" for i in range(vms)]
    for vm_id in vm_ids:
        client.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image(), memory_mb=128,
                                                   host_id=hosts[0], start=True, wait=True),
                            timeout=120)
    _progress(f"{label}: {vms} migrations, one at a time")
    took, downtimes = _migrate_all(client, vm_ids, hosts[1])
    out[f"{label}_migrate_call_s"] = _stats(took)
    if downtimes:
        out[f"{label}_downtime_s"] = _stats(downtimes)
    _progress(f"{label}: {vms} migrations back at once")
    began = time.monotonic()
    with futures.ThreadPoolExecutor(vms) as pool:
        list(pool.map(lambda v: _migrate_all(client, [v], hosts[0]), vm_ids))
    out[f"{label}_all_back_at_once_s"] = round(time.monotonic() - began, 3)


def measure(vms: int = 10, transfer: float = 0.2, downtime: float = 0.02,
            libvirt_vms: int = 0) -> dict[str, Any]:
    from controlplane import wiretime
    from controlplane.devtools.bench.fleet.common import start_agent
    from controlplane.v1 import agent_pb2

    out: dict[str, Any] = {"vms": vms, "sim_set_transfer_s": transfer,
                           "sim_set_downtime_s": downtime}
    with contextlib.ExitStack() as stack:
        base = tempfile.mkdtemp(prefix="cp-bench-migrate-")
        stack.callback(shutil.rmtree, base, True)
        agents = [start_agent(stack, base, name, 1, f"{name}-") for name in ("ma", "mb")]
        for agent in agents:
            agent.sim().Configure(agent_pb2.ConfigureRequest(
                migrate_transfer_delay=wiretime.duration(transfer),
                migrate_downtime=wiretime.duration(downtime)), timeout=5)
        _run(stack, base, agents, vms, out, "sim")
    if libvirt_vms:
        out["libvirt_vms"] = libvirt_vms
        _measure_libvirt(libvirt_vms, out)
    return out


def _measure_libvirt(vms: int, out: dict[str, Any]) -> None:
    from controlplane.testing.libvirt import LibvirtAgent, LibvirtHosts
    from controlplane.testing.ports import free_port

    with contextlib.ExitStack() as stack:
        base = tempfile.mkdtemp(prefix="cp-bench-migrate-lv-")
        stack.callback(shutil.rmtree, base, True)
        pool = LibvirtHosts(base, prefix="cp-bench-mig")
        stack.callback(pool.stop)
        hosts = pool.hosts(2)
        for host in hosts:
            host.cleanup()
            stack.callback(host.cleanup)
        agents = []
        for i, host in enumerate(hosts):
            agent = LibvirtAgent(f"mlv{i}", free_port(), base, f"mlvh-{i}", host,
                                 str(pool.shared_dir(f"agent{i}")), disk_mb=0,
                                 boot_timeout=60.0)
            stack.callback(agent.kill)
            agents.append(agent.start())
        for agent in agents:
            agent.wait_ready(60)
        _run(stack, base, agents, vms, out, "libvirt")


def add_migrate_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "migrate", help="live migration: time and downtime per VM (sim; --libvirt: real "
        "guests)", description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--vms", type=int, default=10, help="sim VMs migrated (default 10)")
    p.add_argument("--sim-transfer", type=float, default=0.2,
                   help="seconds the sim's transfer takes (default 0.2)")
    p.add_argument("--sim-downtime", type=float, default=0.02,
                   help="seconds the sim pauses the guest at the switchover (default 0.02)")
    p.add_argument("--libvirt", type=int, default=0, metavar="N",
                   help="also migrate N real guests through libvirt agents (default 0)")
    p.add_argument("--json", action="store_true")
    return p


def run_migrate_bench(args: argparse.Namespace) -> int:
    figures = measure(max(1, args.vms), args.sim_transfer, args.sim_downtime,
                      max(0, args.libvirt))
    if args.json:
        print(json.dumps(figures))
        return 0
    print("live migration (seconds: median p95 [min-max] n)")
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"  {key:<32} {value['median']:7.3f} {value['p95']:7.3f}  "
                  f"[{value['min']:.3f}-{value['max']:.3f}] {value['n']}")
        else:
            print(f"  {key:<32} {value}")
    return 0
