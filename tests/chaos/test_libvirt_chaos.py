"""Slow tier: a fleet of real guests on simulated libvirt hosts, management nodes killed -9
and guests crashed (their QEMU killed -9) at random.

The invariant is the project's: at the end every VM runs exactly once, on the host its
record names, with the generation its record names (copies counted on every host's
daemon, through every agent). 12 guests of 128 MiB on 3 hosts (session daemons of the
harness), 3 nodes; each crash costs an HA restart, i.e. another boot.
"""

from __future__ import annotations

import os
import random
import signal

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.testing import cluster as c  # noqa: E402
from controlplane.testing.agents import vm_copies  # noqa: E402
from controlplane.testing.libvirt import LibvirtAgent, LibvirtHosts  # noqa: E402
from controlplane.testing.ports import free_port  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402
from controlplane.v1 import config_pb2, host_pb2, vm_pb2  # noqa: E402

pytestmark = pytest.mark.slow
HOSTS = 3
VMS = [f"lvc-{i}" for i in range(12)]
ROUNDS = 5
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


def settled(node, agents) -> bool:  # type: ignore[no-untyped-def]
    copies = vm_copies(agents)  # every state: a crashed stray counts too
    for vm_id in VMS:
        vm = c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm
        if vm.state != "Running" or vm.op.op_id:
            return False
        if copies.get(vm_id) != [(vm.host_id, vm.generation)]:
            return False
    return True


def test_real_guests_survive_nodes_killed_and_qemus_killed(
        etcd, nodes, libvirt_hosts: LibvirtHosts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(13)
    hosts = libvirt_hosts.hosts(HOSTS)
    for host in hosts:
        host.cleanup()
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=2) for i in range(3)]
    wait_until(lambda: all(len(c.ring(n).members) == 3 for n in mns), 15)
    agents = [LibvirtAgent(f"lvc{i}", free_port(), str(tmp_path), f"lvc-h{i}", host,
                           libvirt_hosts.shared_dir(f"chaos{i}"), boot_timeout=120).start()
              for i, host in enumerate(hosts)]
    try:
        for agent in agents:
            agent.wait_ready(30)
        for key, value in {"vm.syncInterval": "1", "host.pingTimeout": "3",
                           "host.pingFailures": "3", "vm.orphanedSkipTimeout": "30"}.items():
            c.config(mns[0]).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                          timeout=5)
        for agent in agents:
            c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=agent.host_id,
                                                            address=agent.address), timeout=10)
        for i, vm_id in enumerate(VMS):
            c.vms(mns[0]).CreateVm(vm_pb2.CreateVmRequest(
                vm_id=vm_id, image=IMAGE, ha=vm_pb2.HA_LEVEL_NEVER_STOP,
                host_id=agents[i % HOSTS].host_id, cpus=1, memory_mb=128, start=True),
                timeout=10)
        wait_until(lambda: settled(mns[0], agents), 240, interval=1,
                   message="the fleet of real guests Running")
        for _round in range(ROUNDS):
            victim = rng.choice(mns)
            victim.kill()
            # a guest dies too: its QEMU killed -9 on whichever host runs it
            where = {vm: h for vm, copies in vm_copies(agents, running_only=True).items()
                     for h, _ in copies}
            vm_id = rng.choice(sorted(where))
            host = hosts[[a.host_id for a in agents].index(where[vm_id])]
            try:
                os.kill(host.qemu_pid(vm_id), signal.SIGKILL)
            except (OSError, ValueError):
                pass  # it stopped meanwhile: fine
            victim.restart()
            victim.wait_ready(30)
            # while the dust settles: never two copies of one VM with the same generation
            for vm, copies in vm_copies(agents, running_only=True).items():
                generations = [g for _, g in copies]
                assert len(generations) == len(set(generations)), (vm, copies)
            wait_until(lambda: settled(mns[0], agents), 180, interval=1,
                       message=f"round {_round}: every VM Running exactly once where its "
                               "record says")
    finally:
        for agent in agents:
            agent.kill()
        for host in hosts:
            host.cleanup()
