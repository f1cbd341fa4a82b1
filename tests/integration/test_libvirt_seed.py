"""The seed scenario on real guests (test_seed_scenario.py is the sim version), and an agent
killed -9 in the middle of a start.

The start is slowed by the guest itself: its kernel command line says ``cp.slow_boot=S``
(the guest sleeps S seconds before its ready marker) and the agent runs with
``--boot-timeout``, so its start is in progress until the guest has booted, like a slow
boot on any hypervisor. Hosts are the harness's session daemons (``libvirt_hosts``), shared
with every libvirt test of the session; each test boots one guest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent import guest  # noqa: E402
from controlplane.testing import cluster as c  # noqa: E402
from controlplane.testing.agents import vm_copies  # noqa: E402
from controlplane.testing.libvirt import LibvirtAgent, LibvirtHost, LibvirtHosts  # noqa: E402
from controlplane.testing.ports import free_port  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402
from controlplane.v1 import agent_pb2, cluster_pb2, config_pb2, host_pb2, vm_pb2  # noqa: E402

SLOW_BOOT = 8.0  # longer than the lease TTL (2 s): the node dies mid-start
TTL = 2.0
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


@pytest.fixture
def hosts(libvirt_hosts: LibvirtHosts) -> Iterator[list[LibvirtHost]]:
    found = libvirt_hosts.hosts(2)
    for host in found:
        host.cleanup()
    yield found
    for host in found:
        host.cleanup()


@pytest.fixture
def started():  # type: ignore[no-untyped-def]
    """The agents a test started, killed when it ends however it ends (a failed assert
    must not leave agent processes behind)."""
    agents: list[LibvirtAgent] = []
    yield agents
    for agent in agents:
        agent.kill()


def start_agents(hosts: list[LibvirtHost], libvirt_hosts: LibvirtHosts,
                 tmp_path: Path, name: str, started: list[LibvirtAgent]) -> list[LibvirtAgent]:
    """Host 0 boots slowly, host 1 (the spare HA could pick) quickly."""
    agents = started
    for i, host in enumerate(hosts):
        cmdline = guest.kernel_cmdline(slow_boot=SLOW_BOOT if i == 0 else None)
        agent = LibvirtAgent(f"{name}{i}", free_port(), str(tmp_path), f"{name}-h{i}", host,
                             libvirt_hosts.shared_dir(f"{name}{i}"), boot_timeout=60,
                             cmdline=cmdline)
        agents.append(agent.start())
    for agent in agents:
        agent.wait_ready(30)
    return agents


def configure(node, **settings: str) -> None:  # type: ignore[no-untyped-def]
    for key, value in settings.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)


def add_hosts(node, agents: list[LibvirtAgent]) -> None:  # type: ignore[no-untyped-def]
    for agent in agents:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=agent.host_id,
                                                      address=agent.address), timeout=10)
    wait_until(lambda: all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in
                           c.hosts(node).ListHosts(host_pb2.ListHostsRequest(),
                                                   timeout=5).hosts), 20)


def start_reached_agent(agent: LibvirtAgent, vm_id: str) -> bool:
    return any(op.vm_id == vm_id for op in agent.stub().ListVms(
        agent_pb2.AgentServiceListVmsRequest(host_id=agent.host_id), timeout=2).ops)


def get_vm(node, vm_id: str) -> vm_pb2.Vm:  # type: ignore[no-untyped-def]
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def test_node_killed_while_a_real_guest_boots_slowly_no_ha_one_copy(
        etcd, nodes, hosts, libvirt_hosts, tmp_path, started) -> None:  # type: ignore[no-untyped-def]
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=TTL) for i in range(3)]
    wait_until(lambda: all(len(c.ring(n).members) == 3 for n in mns), 10)
    slow, spare = agents = start_agents(hosts, libvirt_hosts, tmp_path, "seed", started)
    configure(mns[0], **{"vm.syncInterval": "0.3", "host.pingTimeout": "1",
                         "vm.orphanedSkipTimeout": "600"})
    add_hosts(mns[0], agents)
    # The node handling the start also owns the VM's host (the hardest case, as in the sim
    # version): both the VM and the host's sync move to nodes that know nothing of it.
    def owner(resource_id: str) -> str:
        return c.stub(mns[0]).WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id=resource_id),
                                      timeout=2).owner

    host_owner = owner(slow.host_id)
    vm_id = next(f"seed-{i}" for i in range(1000) if owner(f"seed-{i}") == host_owner)
    victim = next(n for n in mns if n.node_id == host_owner)
    survivor = next(n for n in mns if n is not victim)
    c.vms(victim).CreateVm(vm_pb2.CreateVmRequest(
        vm_id=vm_id, image=IMAGE, ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=slow.host_id,
        cpus=1, memory_mb=128, start=True), timeout=10)
    wait_until(lambda: start_reached_agent(slow, vm_id), 10, message="the start reached "
               "the agent")
    victim.kill()
    assert guest.READY_MARKER not in slow.console(vm_id)  # killed while the guest boots
    final = wait_until(lambda: (v := get_vm(survivor, vm_id)).state == "Running"
                       and not v.op.op_id and v, SLOW_BOOT + 30, message="VM Running")
    assert (final.host_id, final.generation) == (slow.host_id, 1)
    assert guest.READY_MARKER in slow.console(vm_id)  # Running after the guest booted
    audit = c.vms(survivor).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id),
                                        timeout=5).records
    assert not audit, [str(a) for a in audit]
    assert vm_copies(agents) == {vm_id: [(slow.host_id, 1)]}
    assert set(hosts[1].domains()) == set()  # nothing was ever defined on the spare
    spare.kill()
    slow.kill()


def test_agent_killed_9_and_restarted_mid_start_loses_nothing_and_starts_no_second_copy(
        etcd, nodes, hosts, libvirt_hosts, tmp_path, started) -> None:  # type: ignore[no-untyped-def]
    node = nodes.start("mn-0", etcd.endpoints, lease_ttl=TTL)
    slow, spare = agents = start_agents(hosts, libvirt_hosts, tmp_path, "akill", started)
    configure(node, **{"vm.syncInterval": "0.5", "host.pingTimeout": "2",
                       "host.pingFailures": "3"})
    add_hosts(node, agents)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="akill-vm", image=IMAGE, ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=slow.host_id,
        cpus=1, memory_mb=128, start=True), timeout=10)
    wait_until(lambda: start_reached_agent(slow, "akill-vm"), 10,
               message="the start reached the agent")
    wait_until(lambda: "slow boot" in slow.console("akill-vm"), 30,
               message="the guest is booting (its slow boot began)")
    qemu = hosts[0].qemu_pid("akill-vm")
    slow.kill()  # -9, while the guest is still booting (slow boot)
    assert guest.READY_MARKER not in slow.console("akill-vm")
    slow.restart().wait_ready(30)
    # the restarted agent carries on with the start it found in the domain's metadata:
    # still in progress (listed) until the guest has booted
    assert start_reached_agent(slow, "akill-vm") or \
        guest.READY_MARKER in slow.console("akill-vm")
    final = wait_until(lambda: (v := get_vm(node, "akill-vm")).state == "Running"
                       and not v.op.op_id and v, SLOW_BOOT + 30, message="VM Running")
    assert guest.READY_MARKER in slow.console("akill-vm")  # Running = booted, still
    assert (final.host_id, final.generation) == (slow.host_id, 1)
    # the same QEMU: the restarted agent adopted the domain, it did not boot it again
    assert hosts[0].qemu_pid("akill-vm") == qemu
    os.kill(qemu, 0)
    assert vm_copies(agents) == {"akill-vm": [(slow.host_id, 1)]}
    assert set(hosts[1].domains()) == set()
    audit = c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="akill-vm"),
                                    timeout=5).records
    assert not audit, [str(a) for a in audit]
    for agent in agents:
        agent.kill()
