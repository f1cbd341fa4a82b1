"""Part 3b of the fleet bench: HA on storage evidence (issue 14, section 1).

One node, two hosts, a simulated block store of two MDS sharing their sessions; a
NEVER_STOP VM with a disk on it runs on h0, whose agent holds a session on the volume. h0
is powered off (sim DOWN): its keepalives stop, the store expires and blocklists the
session, two checks of the store one ping interval apart find no session from h0, and the
VM is restarted on h1 *without a fence*. Measured: power-off -> GetVm shows it Running on
h1, printed next to ping interval x failures and the store's session timeout (the restart
waits for the later of the two, plus one check interval).
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
    progress,
    set_config,
    start_agent,
    start_etcd,
    start_nodes,
)
from controlplane.testing.store_rig import add_storage, seed_volume, start_store
from controlplane.v1 import agent_pb2, host_pb2, vm_pb2


def ha_storage_figures(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    """Host powered off -> its VM (disk on primary storage) Running on the other host,
    restarted on storage evidence; per run, with the fenced flag of each."""
    figures: dict[str, Any] = {"ping_interval_s": args.ping_interval,
                               "ping_failures": args.ping_failures,
                               "session_timeout_s": args.session_timeout,
                               "interval_x_failures_s": args.ping_interval * args.ping_failures}
    runs: list[float] = []
    fenced: list[bool] = []
    with contextlib.ExitStack() as stack:
        progress("ha-storage: etcd, one node, one agent with 2 hosts, a store of 2 sim MDS")
        etcd = start_etcd(stack, os.path.join(tmp, "has-etcd"))
        store = start_store(os.path.join(tmp, "has-store"), 2,
                            session_timeout=args.session_timeout, log_level="WARNING")
        for proc in store:
            stack.callback(proc.terminate)
        agent = start_agent(stack, tmp, "has-agent", 2, "s")
        (node,) = start_nodes(stack, os.path.join(tmp, "has-nodes"), etcd.endpoints, 1)
        client = cluster_client(stack, [node], timeout=30)
        set_config(client, {"vm.syncInterval": f"{args.ping_interval:g}",
                            "host.pingFailures": str(args.ping_failures),
                            "host.pingTimeout": f"{args.ping_timeout:g}"})
        h0, h1 = add_hosts(client, agent)
        add_storage(client.storage, "ps", store)
        vms, hosts, sim = client.vms, client.hosts, agent.sim()
        limit = 30 + 3 * (args.ping_interval * (args.ping_failures + 2) + args.session_timeout)
        for run in range(args.ha_runs):
            vm_id, volume = f"has-{run}", f"vol-{run}"
            seed_volume(store, volume)
            vm = vms.CreateVm(vm_pb2.CreateVmRequest(
                vm_id=vm_id, ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=h0, start=True, wait=True,
                disks=[vm_pb2.VmDisk(primary_storage_id="ps", volume_id=volume, root=True)])).vm
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
            host = hosts.GetHost(host_pb2.GetHostRequest(host_id=h0), timeout=5).host
            fenced.append(host.HasField("fenced_at"))
            progress(f"ha-storage: run {run + 1}/{args.ha_runs}: {runs[-1]:.2f}s"
                     f"{' (fenced!)' if fenced[-1] else ' (no fence)'}")
            # Power h0 back on (DOWN -> UP: no VMs) and wait until it is CONNECTED again.
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
                    "max_s": max(runs), "fenced_runs": sum(fenced)})
    return figures
