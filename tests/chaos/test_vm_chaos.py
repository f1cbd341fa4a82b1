"""Slow tier: management nodes killed and VMs crashed again and again under an HA fleet.

The invariant checked at the end is the one the project exists for: every HA VM runs
exactly once, on the host its record names, with the generation its record names.
"""

from __future__ import annotations

import random

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.agents import vm_copies
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

pytestmark = pytest.mark.slow
VMS = [f"vm-{i}" for i in range(8)]


def fleet_copies(agents) -> dict[str, list[tuple[str, int]]]:
    return vm_copies(agents, running_only=True)


def settled(node, agents) -> bool:
    copies = fleet_copies(agents)
    for vm_id in VMS:
        vm = c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=2).vm
        if vm.state != "Running" or vm.op.op_id:
            return False
        if copies.get(vm_id) != [(vm.host_id, vm.generation)]:
            return False
    return True


def test_nodes_killed_and_vms_crashed_under_an_ha_fleet(etcd, nodes, agents) -> None:
    rng = random.Random(7)
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=2) for i in range(3)]
    fleet = [agents.start(name, hosts=2, start_delay=1.0) for name in ("a", "b")]
    for key, value in {"vm.syncInterval": "0.3", "host.pingTimeout": "1",
                       "vm.orphanedSkipTimeout": "3"}.items():
        c.config(mns[0]).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                      timeout=5)
    for agent in fleet:
        for host_id in agent.host_ids:
            c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=host_id,
                                                            address=agent.address), timeout=10)
    image = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
    for vm_id in VMS:
        c.vms(mns[0]).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image,
                                                      ha=vm_pb2.HA_LEVEL_NEVER_STOP, start=True),
                               timeout=10)
    wait_until(lambda: settled(mns[0], fleet), 30, message="fleet running")
    for _round in range(6):
        victim = rng.choice(mns)
        victim.kill()
        agent = rng.choice(fleet)
        host_id = rng.choice(agent.host_ids)
        running = [v.vm_id for v in agent.stub().ListVms(
            agent_pb2.AgentServiceListVmsRequest(host_id=host_id), timeout=2).vms]
        if running:
            agent.sim().CrashVm(agent_pb2.CrashVmRequest(host_id=host_id,
                                                         vm_id=rng.choice(running)), timeout=2)
        alive = next(n for n in mns if n is not victim)
        try:
            c.vms(alive).StopVm(vm_pb2.StopVmRequest(vm_id=rng.choice(VMS)), timeout=5)
        except grpc.RpcError:
            pass  # not allowed in its state right now, or its owner just died: both fine
        victim.restart()
        victim.wait_ready(20)
        # HA VMs a user stopped stay stopped: start them again so the end state is known
        for vm_id in VMS:
            vm = c.vms(alive).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm
            if vm.state == "Stopped" and not vm.op.op_id:
                try:
                    c.vms(alive).StartVm(vm_pb2.StartVmRequest(vm_id=vm_id), timeout=5)
                except grpc.RpcError:
                    pass
        # while the dust settles: never two copies of one VM with the same generation
        for vm_id, where in fleet_copies(fleet).items():
            generations = [g for _, g in where]
            assert len(generations) == len(set(generations)), (vm_id, where)

    def restart_stopped() -> bool:
        for vm_id in VMS:
            vm = c.vms(mns[0]).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm
            if vm.state == "Stopped" and not vm.op.op_id:
                c.vms(mns[0]).StartVm(vm_pb2.StartVmRequest(vm_id=vm_id), timeout=5)
        return settled(mns[0], fleet)

    wait_until(restart_stopped, 60, interval=0.5,
               message="every VM Running exactly once where its record says")
