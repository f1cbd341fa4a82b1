"""Part 3 of the fleet bench: HA restart latency.

One node, two hosts; a NEVER_STOP VM's host is powered off (sim DOWN) and the time until
GetVm shows the VM Running on the other host is measured, next to ping interval x failures:
the host is only declared lost after that many failed pulls, the first of which comes up to
one interval after the power-off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from typing import Any

import grpc

from controlplane.devtools.bench.fleet.common import (
    BenchError,
    add_hosts,
    cluster_client,
    image,
    progress,
    set_config,
    start_agent,
    start_etcd,
    start_nodes,
)
from controlplane.v1 import agent_pb2, host_pb2, vm_pb2


def ha_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Part 3: host powered off -> its NEVER_STOP VM Running on the other host, per run."""
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
        client = cluster_client(stack, [node], timeout=30)
        set_config(client, {"vm.syncInterval": f"{args.ping_interval:g}",
                          "host.pingFailures": str(args.ping_failures),
                          "host.pingTimeout": f"{args.ping_timeout:g}"})
        h0, h1 = add_hosts(client, agent)
        vms, hosts, sim = client.vms, client.hosts, agent.sim()
        limit = 30 + 3 * args.ping_interval * args.ping_failures
        for run in range(args.ha_runs):
            vm_id = f"ha-{run}"
            vm = vms.CreateVm(vm_pb2.CreateVmRequest(
                vm_id=vm_id, image=image(), ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=h0, start=True,
                wait=True)).vm
            if vm.state != "Running" or vm.host_id != h0:
                raise BenchError(f"{vm_id} is {vm.state} on {vm.host_id!r}, wanted Running "
                                 f"on {h0}")
            sim.SetHostCondition(agent_pb2.SetHostConditionRequest(
                host_id=h0, condition=agent_pb2.HOST_CONDITION_DOWN), timeout=5)
            started = time.monotonic()
            while True:
                try:
                    vm = vms.GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=2).vm
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
            sim.SetHostCondition(agent_pb2.SetHostConditionRequest(
                host_id=h0, condition=agent_pb2.HOST_CONDITION_UP), timeout=5)
            hosts.ReconnectHost(host_pb2.ReconnectHostRequest(host_id=h0))
            started = time.monotonic()
            while True:
                host = hosts.GetHost(host_pb2.GetHostRequest(host_id=h0), timeout=5).host
                if (host.status == host_pb2.HOST_STATUS_CONNECTED
                        and not host.HasField("unreachable_since")):
                    break
                if time.monotonic() - started > 30:
                    raise BenchError(f"host {h0} not CONNECTED again after reconnect")
                time.sleep(0.05)
    figures.update({"runs_s": runs, "median_s": statistics.median(runs), "min_s": min(runs),
                    "max_s": max(runs)})
    if args.storage_ha:
        from controlplane.devtools.bench.fleet.ha_storage import ha_storage_figures

        figures["storage"] = ha_storage_figures(args, tmp)
    return figures
