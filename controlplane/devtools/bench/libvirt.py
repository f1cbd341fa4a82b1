"""Figures of the libvirt backend on real guests (QEMU TCG here, the project's guest image).

- guest boot: define + start of the domain XML on a host's session daemon until the ready
  marker is on the serial console (no control plane involved);
- VM start through the cluster: CreateVm(start, wait) on a management node until the call
  answers Running; the agents run with --boot-timeout, so Running means the guest has
  booted (median, p95 of ``--vms`` starts, one at a time);
- crash -> detected: QEMU of a running VM killed -9, until the VM record leaves Running,
  with host events on (the agent's libvirt lifecycle event makes the owner pull at once)
  and off (``host.events`` false: only the periodic pull, every ``--sync-interval`` s);
- agent RSS and CPU per running guest: the agent process of a host running all ``--vms``
  guests, RSS and CPU over ``--idle`` seconds, against the same agent with no guest.

Every host is a session daemon of the harness (controlplane.testing.libvirt), run as user
``cp-bench-lv<i>``. Progress on stderr, figures on stdout.

    controlplane bench libvirt --vms 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

__all__ = ["add_libvirt_parser", "measure", "run_libvirt_bench"]


def _progress(message: str) -> None:
    print(f"[bench libvirt {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _stats(values: list[float]) -> dict[str, float]:
    from controlplane.devtools.bench.fleet.common import percentile

    return {"median": round(statistics.median(values), 3),
            "p95": round(percentile(values, 0.95), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def measure(vms: int = 6, boots: int = 3, crashes: int = 3, sync_interval: float = 10.0,
            idle: float = 10.0) -> dict[str, Any]:
    """Run every part; the figures as a dict."""
    from controlplane.agent import domainxml, guest
    from controlplane.devtools.bench.fleet.common import (
        cluster_client,
        process_cpu_s,
        set_config,
        start_etcd,
        start_nodes,
    )
    from controlplane.testing.libvirt import LibvirtAgent, LibvirtHosts
    from controlplane.testing.ports import free_port
    from controlplane.testing.waiting import wait_until
    from controlplane.v1 import host_pb2, vm_pb2

    image = guest.ensure_image()
    out: dict[str, Any] = {"accel": "tcg", "vms": vms}
    with contextlib.ExitStack() as stack:
        base = tempfile.mkdtemp(prefix="cp-bench-libvirt-")
        stack.callback(shutil.rmtree, base, True)
        pool = LibvirtHosts(base, prefix="cp-bench-lv")
        stack.callback(pool.stop)
        hosts = pool.hosts(2)
        for host in hosts:
            host.cleanup()
        files = pool.shared_dir("guests")

        _progress(f"guest boot x{boots}")
        boot_s = []
        for i in range(boots):
            spec = domainxml.DomainSpec(
                vm_id=f"boot-{i}", cpus=1, memory_mb=128, disk="", generation=1,
                accel="tcg", kernel=str(image.kernel), initrd=str(image.initrd),
                cmdline=guest.kernel_cmdline(), console_log=str(files / f"boot-{i}.log"))
            started = time.monotonic()
            hosts[0].boot(spec, timeout=120)
            boot_s.append(time.monotonic() - started)
            hosts[0].cleanup()
        out["guest_boot_to_ready_s"] = _stats(boot_s)

        etcd = start_etcd(stack, base)
        node = start_nodes(stack, base, etcd.endpoints, 1)[0]
        client = cluster_client(stack, [node], timeout=180)
        set_config(client, {"vm.syncInterval": repr(sync_interval), "host.pingTimeout": "5"})
        agents = []
        for i, host in enumerate(hosts):
            agent = LibvirtAgent(f"bench-lv{i}", free_port(), base, f"bench-h{i}", host,
                                 pool.shared_dir(f"agent{i}"), boot_timeout=120)
            agent.log_level = "WARNING"
            stack.callback(agent.kill)
            agents.append(agent.start())
        for agent in agents:
            agent.wait_ready(60)
            client.hosts.AddHost(host_pb2.AddHostRequest(host_id=agent.host_id,
                                                         address=agent.address))
        wait_until(lambda: all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in
                               client.hosts.ListHosts(host_pb2.ListHostsRequest()).hosts),
                   30, message="hosts connected")
        agent = agents[0]
        time.sleep(1.0)  # settle after the connect burst before the idle figure
        cpu0, t0 = process_cpu_s(agent.pid), time.monotonic()
        time.sleep(idle)
        idle_cpu = (process_cpu_s(agent.pid) - cpu0) / (time.monotonic() - t0)
        idle_rss = _rss_mb(agent.pid)

        _progress(f"VM start through the cluster x{vms}")
        starts = []
        img = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
        for i in range(vms):
            started = time.monotonic()
            client.vms.CreateVm(vm_pb2.CreateVmRequest(
                vm_id=f"bvm-{i}", image=img, host_id=agent.host_id, cpus=1, memory_mb=128,
                start=True, wait=True))
            starts.append(time.monotonic() - started)
            state = client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=f"bvm-{i}")).vm.state
            if state != "Running":
                raise RuntimeError(f"bvm-{i} is {state} after CreateVm(wait)")
        out["vm_start_through_cluster_to_running_s"] = _stats(starts)

        _progress(f"agent with {vms} running guests: RSS, CPU over {idle:.0f}s")
        time.sleep(1.0)
        cpu0, t0 = process_cpu_s(agent.pid), time.monotonic()
        time.sleep(idle)
        busy_cpu = (process_cpu_s(agent.pid) - cpu0) / (time.monotonic() - t0)
        busy_rss = _rss_mb(agent.pid)
        out["agent"] = {
            "rss_mb_no_guest": round(idle_rss, 1), f"rss_mb_{vms}_guests": round(busy_rss, 1),
            "rss_mb_per_guest": round((busy_rss - idle_rss) / vms, 2),
            "cpu_percent_no_guest": round(100 * idle_cpu, 2),
            f"cpu_percent_{vms}_guests": round(100 * busy_cpu, 2),
            "cpu_percent_per_guest": round(100 * (busy_cpu - idle_cpu) / vms, 3),
        }

        def crash_detect(vm_id: str) -> float:
            pid = hosts[0].qemu_pid(vm_id)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: client.vms.GetVm(vm_pb2.GetVmRequest(vm_id=vm_id)).vm
                       .vm.state != "Running", 3 * sync_interval + 30, interval=0.02,
                       message=f"{vm_id} still Running after its QEMU was killed")
            return time.monotonic() - killed

        victims = [f"bvm-{i}" for i in range(vms)]
        for events in (True, False):
            set_config(client, {"host.events": "true" if events else "false"})
            time.sleep(1.0)
            figures = []
            for _ in range(min(crashes, len(victims))):
                vm_id = victims.pop()
                _progress(f"crash of {vm_id}, host events {'on' if events else 'off'}")
                figures.append(crash_detect(vm_id))
            if figures:
                key = "events" if events else f"polling_only_sync_{sync_interval:g}s"
                out[f"crash_to_detected_s_{key}"] = _stats(figures)
        for host in hosts:
            host.cleanup()
    return out


def add_libvirt_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "libvirt", help="real guests: boot time, start through the cluster, crash "
        "detection (events vs polling), agent RSS/CPU per guest",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--vms", type=int, default=6, help="guests started through the cluster "
                   "on one host (default 6)")
    p.add_argument("--boots", type=int, default=3, help="bare guest boots (default 3)")
    p.add_argument("--crashes", type=int, default=3,
                   help="QEMU kills each way, events and polling (default 3)")
    p.add_argument("--sync-interval", type=float, default=10.0,
                   help="vm.syncInterval, seconds (default 10; what polling only waits for)")
    p.add_argument("--idle", type=float, default=10.0,
                   help="seconds over which the agent's CPU is measured (default 10)")
    p.add_argument("--json", action="store_true")
    return p


def run_libvirt_bench(args: argparse.Namespace) -> int:
    figures = measure(max(1, args.vms), max(1, args.boots), max(0, args.crashes),
                      args.sync_interval, args.idle)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"libvirt ({figures['accel']}; seconds: median p95 [min-max] n)")
    for key, value in figures.items():
        if isinstance(value, dict) and "median" in value:
            print(f"  {key:<44} {value['median']:7.3f} {value['p95']:7.3f}  "
                  f"[{value['min']:.3f}-{value['max']:.3f}] n={value['n']}")
    for key, value in figures["agent"].items():
        print(f"  agent {key:<38} {value}")
    return 0
