"""`controlplane bench placement`: capacity placement and host maintenance, printed.

1. Starts onto a nearly full fleet: `--hosts` sim hosts of `--host-cpus` cpus each (x the
   default host.cpuAllocationRatio 4.0 = slots of 1-cpu VMs), filled to `--fill` of their
   slots, then `--clients` threads start VMs through the client library (owner-routed)
   until every host is full, with 20% more VMs than free slots: every start either lands
   (starts/s counted) or is answered RESOURCE_EXHAUSTED. Afterwards every host's
   allocation and the copies its agent runs are checked against its capacity (the
   over-commit count, which must be 0).
2. Maintenance of a host with `--maintenance-vms` VMs: the time from StartHostMaintenance to
   the host being empty (MAINTENANCE), policy migrate (a cold migration per VM until
   MigrateVm lands) and policy stop, with `--op-delay` seconds per sim start/stop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module for its parser: the harness only when run
    from controlplane.client import Client
    from controlplane.testing.agents import AgentProcess


def add_placement_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "placement", help="starts/s onto a nearly full fleet; time to empty a host",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    p.add_argument("--hosts", type=int, default=4, help="sim hosts (default 4)")
    p.add_argument("--host-cpus", type=int, default=8,
                   help="cpus of each host (default 8: 32 slots of 1-cpu VMs at ratio 4)")
    p.add_argument("--fill", type=float, default=0.75,
                   help="share of the slots filled before the timed starts (default 0.75)")
    p.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--maintenance-vms", type=int, default=20,
                   help="VMs on the host put into maintenance (default 20)")
    p.add_argument("--op-delay", type=float, default=0.0,
                   help="seconds each sim start and stop takes (default 0)")
    p.add_argument("--json", action="store_true")
    return p


def _agent(stack: contextlib.ExitStack, base: str, name: str, hosts: int, cpus: int,
           delay: float) -> AgentProcess:
    from controlplane.testing.agents import AgentProcess
    from controlplane.testing.ports import free_port

    agent = AgentProcess(name, free_port(), base, hosts=hosts, host_prefix=f"{name}-",
                         cpus=cpus, memory_mb=1 << 20, start_delay=delay, stop_delay=delay,
                         log_level="WARNING")
    stack.callback(agent.kill)
    agent.start()
    agent.wait_ready(60)
    return agent


def _create(client: Client, vm_ids: list[str]) -> None:
    from controlplane.devtools.bench.fleet.common import image
    from controlplane.v1 import vm_pb2

    for vm_id in vm_ids:
        client.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image(), cpus=1,
                                                   memory_mb=256))


def _start_all(client: Client, vm_ids: list[str], clients: int) -> tuple[Counter[str], float]:
    import grpc

    from controlplane.devtools.bench.fleet.common import progress
    from controlplane.v1 import vm_pb2

    todo = list(vm_ids)
    lock = threading.Lock()
    codes: Counter[str] = Counter()

    def work() -> None:
        while True:
            with lock:
                if not todo:
                    return
                vm_id = todo.pop()
            try:
                client.vms.StartVm(vm_pb2.StartVmRequest(vm_id=vm_id, wait=True), timeout=60)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name
                if code not in ("RESOURCE_EXHAUSTED",):
                    progress(f"{vm_id}: {code}: {err.details()}")
            with lock:
                codes[code] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes, time.monotonic() - started


def _over_commits(client: Client, agent: AgentProcess) -> int:
    from controlplane.v1 import agent_pb2, host_pb2

    over = 0
    for host_id in agent.host_ids:
        host = client.hosts.GetHost(host_pb2.GetHostRequest(host_id=host_id)).host
        running = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host_id))
        if host.allocated_cpus > host.cpu_capacity or len(running.vms) > host.cpu_capacity:
            over += 1
    return over


def _maintenance(client: Client, host_id: str, policy: int) -> float:
    from controlplane.testing.waiting import wait_until
    from controlplane.v1 import host_pb2

    started = time.monotonic()
    client.hosts.StartHostMaintenance(host_pb2.StartHostMaintenanceRequest(
        host_id=host_id, policy=policy))
    wait_until(lambda: client.hosts.GetHost(host_pb2.GetHostRequest(host_id=host_id)).host
               .scheduling == host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE, 600,
               interval=0.05, message=f"{host_id} empty")
    return time.monotonic() - started


def placement_figures(args: argparse.Namespace, base: str) -> dict[str, Any]:
    from controlplane.devtools.bench.fleet.common import (
        add_hosts,
        cluster_client,
        image,
        progress,
        set_config,
        start_etcd,
        start_nodes,
    )
    from controlplane.v1 import host_pb2, vm_pb2

    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        etcd = start_etcd(stack, base)
        nodes = start_nodes(stack, base, etcd.endpoints, args.nodes)
        client = cluster_client(stack, nodes, timeout=30)
        set_config(client, {"vm.syncInterval": "2"})
        agent = _agent(stack, base, "fleet", args.hosts, args.host_cpus, 0.0)
        add_hosts(client, agent)
        slots = args.hosts * args.host_cpus * 4
        filled = int(slots * args.fill)
        progress(f"filling {filled} of {slots} slots")
        fill_ids = [f"fill-{i:05d}" for i in range(filled)]
        _create(client, fill_ids)
        fill_codes, _ = _start_all(client, fill_ids, args.clients)
        timed = [f"vm-{i:05d}" for i in range(int((slots - filled) * 1.2) + 1)]
        _create(client, timed)
        progress(f"starting {len(timed)} VMs onto {slots - filled} free slots")
        codes, seconds = _start_all(client, timed, args.clients)
        out["fleet"] = {"hosts": args.hosts, "slots": slots, "filled_before": filled,
                        "starts": len(timed), "codes": dict(codes), "seconds": seconds,
                        "starts_per_s": codes.get("OK", 0) / seconds if seconds else 0.0,
                        "calls_per_s": len(timed) / seconds if seconds else 0.0,
                        "over_committed_hosts": _over_commits(client, agent),
                        "fill_codes": dict(fill_codes),
                        "allocated_cpus": sum(
                            client.hosts.GetHost(host_pb2.GetHostRequest(host_id=h)).host
                            .allocated_cpus for h in agent.host_ids),
                        "clients": args.clients, "nodes": args.nodes}
        runs = []
        for policy, name in ((host_pb2.MAINTENANCE_POLICY_MIGRATE, "migrate"),
                             (host_pb2.MAINTENANCE_POLICY_STOP, "stop")):
            pair = _agent(stack, base, f"m{name}", 2, 64, args.op_delay)
            add_hosts(client, pair)
            h0 = pair.host_ids[0]
            ids = [f"{name}-{i:04d}" for i in range(args.maintenance_vms)]
            for vm_id in ids:
                client.vms.CreateVm(vm_pb2.CreateVmRequest(
                    vm_id=vm_id, image=image(), cpus=1, memory_mb=256, host_id=h0,
                    start=True, wait=True), timeout=60)
            progress(f"maintenance of {h0} with {len(ids)} VMs, policy {name}")
            seconds = _maintenance(client, h0, policy)
            host = client.hosts.GetHost(host_pb2.GetHostRequest(host_id=h0)).host
            runs.append({"policy": name, "vms": len(ids), "seconds": seconds,
                         "migrated": host.maintenance.migrated,
                         "stopped": host.maintenance.stopped, "op_delay_s": args.op_delay})
        out["maintenance"] = runs
    return out


def run_placement_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cp-bench-placement-") as tmp:
        figures = placement_figures(args, tmp)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    f = figures["fleet"]
    print(f"starts onto a nearly full fleet  {f['starts_per_s']:.1f} starts/s landed "
          f"({f['calls_per_s']:.1f} calls/s; {f['starts']} starts onto "
          f"{f['slots'] - f['filled_before']} free slots of {f['slots']} on {f['hosts']} hosts, "
          f"{f['clients']} clients, {f['nodes']} nodes): {f['codes']}")
    print(f"over-committed hosts             {f['over_committed_hosts']} (cpus reserved "
          f"afterwards: {f['allocated_cpus']} of {f['slots']}; the fill's starts: "
          f"{f['fill_codes']})")
    for run in figures["maintenance"]:
        print(f"maintenance, policy {run['policy']:<8}    {run['seconds']:.2f} s to empty a "
              f"host of {run['vms']} VMs ({run['migrated']} migrated, {run['stopped']} "
              f"stopped; sim op delay {run['op_delay_s']:g} s)")
    return 0
