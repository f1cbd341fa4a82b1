"""Capacity-aware placement and host maintenance (issue 14, sections 2 and 3) on real etcd,
real node processes and sim agent processes.

- many concurrent starts through three nodes (the VMs' owners differ) onto one nearly full
  host: never over-committed, every loser answered RESOURCE_EXHAUSTED naming its request
  and the host's free room;
- HA respects capacity: with no room, a no-host attempt audited with the reason, then a
  restart once room is made;
- a disabled host takes no placement; `host list` shows state and used/total;
- maintenance, policy stop and migrate (live migration), with no room elsewhere, and with
  the host's owner killed -9 mid-maintenance;
- a live migration goes only where the VM fits, and moves its reservation.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest

from controlplane import wiretime
from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

SETTINGS = {"vm.syncInterval": "0.3", "host.pingTimeout": "1", "host.pingFailures": "2",
            "ha.retryDelay": "0.3", "ha.retryMaxDelay": "1", "vm.orphanedSkipTimeout": "3"}
IMAGE = vm_pb2.ImageInfo(virtual_size=1 << 30, actual_size=1 << 28)


def configure(node, **extra: str) -> None:
    for key, value in {**SETTINGS, **extra}.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)


def add_hosts(node, agent) -> None:
    for host_id in agent.host_ids:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)


def get_host(node, host_id: str) -> host_pb2.Host:
    return c.hosts(node).GetHost(host_pb2.GetHostRequest(host_id=host_id), timeout=5).host


def get_vm(node, vm_id: str) -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def create(node, vm_id: str, *, cpus: int = 1, memory_mb: int = 256, host_id: str = "",
           start: bool = True, ha: int = vm_pb2.HA_LEVEL_UNSPECIFIED) -> vm_pb2.Vm:
    return c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id=vm_id, image=IMAGE, cpus=cpus, memory_mb=memory_mb, host_id=host_id,
        start=start, wait=start, ha=ha), timeout=20).vm


def running_on(agent, host_id: str) -> dict[str, int]:
    """vm id -> generation of every copy the sim runs on the host."""
    reply = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host_id),
                                 timeout=2)
    return {v.vm_id: v.generation for v in reply.vms
            if v.state == agent_pb2.AGENT_VM_STATE_RUNNING}


def test_concurrent_starts_onto_a_nearly_full_host_never_over_commit(etcd, nodes,
                                                                     agents) -> None:
    members = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(3)]
    wait_until(lambda: c.converged(members, {m.node_id for m in members}), 15,
               message="ring converged")
    # one host: 2 cpus x 4.0 = 8 cpus to reserve, memory far from binding
    agent = agents.start("ag", hosts=1, cpus=2, memory_mb=16384)
    node = members[0]
    configure(node)
    add_hosts(node, agent)
    (h0,) = agent.host_ids
    create(node, "base", cpus=5)  # nearly full: 3 cpus left
    ids = [f"vm-{i:02d}" for i in range(12)]
    for vm_id in ids:
        create(node, vm_id, start=False)
    owners = set(c.owners(node, ids))
    assert len(owners) > 1  # several owners race for the host's last cpus
    barrier = threading.Barrier(len(ids))

    def start(i: int) -> tuple[str, grpc.StatusCode, str]:
        target = members[i % len(members)]
        barrier.wait(10)
        try:
            c.vms(target).StartVm(vm_pb2.StartVmRequest(vm_id=ids[i], wait=True), timeout=30)
        except grpc.RpcError as err:
            return ids[i], err.code(), err.details() or ""
        return ids[i], grpc.StatusCode.OK, ""

    with futures.ThreadPoolExecutor(len(ids)) as pool:
        results = list(pool.map(start, range(len(ids))))
    won = [vm_id for vm_id, code, _ in results if code == grpc.StatusCode.OK]
    lost = [(vm_id, details) for vm_id, code, details in results
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(won) == 3, results
    assert len(lost) == len(ids) - 3, results
    for vm_id, details in lost:
        assert f"VM {vm_id}" in details and "1 cpus, 256 MB" in details
        assert f"host {h0} has 0 of 8 cpus" in details
    host = get_host(node, h0)
    assert (host.allocated_cpus, host.cpu_capacity) == (8, 8)
    assert set(running_on(agent, h0)) == {"base", *won}
    for vm_id, _ in lost:
        assert get_vm(node, vm_id).state == "Created"
    # a stop releases the share: one more start fits
    c.vms(node).StopVm(vm_pb2.StopVmRequest(vm_id=won[0], wait=True), timeout=20)
    wait_until(lambda: get_host(node, h0).allocated_cpus == 7, 10, message="released")
    c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id=lost[0][0], wait=True), timeout=20)
    assert get_host(node, h0).allocated_cpus == 8


def test_ha_waits_for_room_and_audits_why(etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2, cpus=1, memory_mb=16384)  # 4 cpus to reserve each
    configure(node)
    add_hosts(node, agent)
    h0, h1 = agent.host_ids
    create(node, "db", cpus=2, host_id=h0, ha=vm_pb2.HA_LEVEL_NEVER_STOP)
    for vm_id in ("f1", "f2", "f3"):
        create(node, vm_id, host_id=h1)
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=h0, condition=agent_pb2.HOST_CONDITION_PARTITIONED), timeout=2)
    audits = wait_until(
        lambda: [a for a in c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="db"),
                                                    timeout=5).records
                 if a.action == "no-host"], 20, message="no-host attempt audited")
    assert "no host fits 2 cpus" in audits[0].reason
    assert f"host {h1} has 1 of 4 cpus" in audits[0].reason
    assert get_vm(node, "db").state != "Running"
    c.vms(node).StopVm(vm_pb2.StopVmRequest(vm_id="f1", wait=True), timeout=20)
    wait_until(lambda: (v := get_vm(node, "db")).state == "Running" and v.host_id == h1, 20,
               message="db restarted on h1 once it had room")
    assert get_host(node, h1).allocated_cpus == 4


def test_disabled_host_takes_no_placements_and_list_shows_capacity(etcd, nodes,
                                                                   agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2, cpus=2, memory_mb=4096)
    configure(node, **{"placement.hostSubsetSize": "1"})  # always the best: deterministic
    add_hosts(node, agent)
    h0, h1 = agent.host_ids
    c.hosts(node).DisableHost(host_pb2.DisableHostRequest(host_id=h0), timeout=5)
    for i in range(3):
        assert create(node, f"v{i}").host_id == h1
    with pytest.raises(grpc.RpcError) as info:
        create(node, "pinned", host_id=h0)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "DISABLED" in info.value.details() or "disabled" in info.value.details()
    out = subprocess.run([sys.executable, "-m", "controlplane", "host", "list", "--endpoint",
                          node.address], capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    row0 = next(line for line in out if line.startswith(h0)).split()
    row1 = next(line for line in out if line.startswith(h1)).split()
    assert row0[1:5] == ["CONNECTED", "DISABLED", "cpus=0/8", "mem=0/3584MB"]
    assert row1[1:5] == ["CONNECTED", "ENABLED", "cpus=3/8", "mem=768/3584MB"]
    c.hosts(node).EnableHost(host_pb2.EnableHostRequest(host_id=h0), timeout=5)
    assert create(node, "v3").host_id == h0  # spread: the emptier host


def maintenance(node, host_id: str, policy: int) -> host_pb2.Host:
    return c.hosts(node).StartHostMaintenance(host_pb2.StartHostMaintenanceRequest(
        host_id=host_id, policy=policy), timeout=10).host


def in_maintenance(node, host_id: str) -> host_pb2.Host | None:
    host = get_host(node, host_id)
    return host if host.scheduling == host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE else None


def test_maintenance_policy_stop_stops_every_vm(etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2)
    configure(node)
    add_hosts(node, agent)
    h0, _ = agent.host_ids
    for i in range(3):
        create(node, f"v{i}", host_id=h0)
    host = maintenance(node, h0, host_pb2.MAINTENANCE_POLICY_STOP)
    assert host.scheduling == host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE
    host = wait_until(lambda: in_maintenance(node, h0), 20, message="host empty")
    assert (host.maintenance.stopped, host.maintenance.migrated) == (3, 0)
    assert host.maintenance.vms_at_start == 3 and not host.maintenance.left
    assert host.allocated_cpus == 0 and running_on(agent, h0) == {}
    assert all(get_vm(node, f"v{i}").state == "Stopped" for i in range(3))
    # no placement on a host in maintenance; enable ends it
    assert create(node, "new").host_id != h0
    c.hosts(node).EnableHost(host_pb2.EnableHostRequest(host_id=h0), timeout=5)
    assert get_host(node, h0).scheduling == host_pb2.HOST_SCHEDULING_STATE_ENABLED


def test_maintenance_policy_migrate_moves_vms_and_stops_what_does_not_fit(
        etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2, cpus=1, memory_mb=16384)  # 4 cpus to reserve each
    configure(node)
    add_hosts(node, agent)
    h0, h1 = agent.host_ids
    create(node, "other", cpus=1, host_id=h1)  # h1: 3 cpus left
    for vm_id in ("a", "b", "c", "d"):
        create(node, vm_id, host_id=h0)
    wait_until(lambda: len(running_on(agent, h0)) == 4, 10, message="4 VMs on h0")
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "host", "maintenance", h0, "--policy",
         "migrate", "--wait", "--timeout", "60", "--endpoint", node.address],
        capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "PREPARING_MAINTENANCE" in out.stdout and "MAINTENANCE" in out.stdout
    host = get_host(node, h0)
    assert host.scheduling == host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE
    assert (host.maintenance.migrated, host.maintenance.stopped) == (3, 1)
    assert running_on(agent, h0) == {}
    moved = {v for v in "abcd" if get_vm(node, v).state == "Running"}
    assert len(moved) == 3 and all(get_vm(node, v).host_id == h1 for v in moved)
    assert set(running_on(agent, h1)) == {"other", *moved}
    assert get_host(node, h1).allocated_cpus == 4  # full, never over
    # live migrations (the VMs never stopped): each a migrate op, generation + 1
    assert all(get_vm(node, v).last_op.kind == "migrate" and get_vm(node, v).generation == 2
               for v in moved), [get_vm(node, v) for v in moved]
    wait_until(lambda: get_host(node, h0).allocated_cpus == 0, 10,
               message="nothing left reserved on the empty host")


def test_a_migration_goes_only_where_the_vm_fits_and_moves_its_reservation(
        etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2, cpus=1, memory_mb=16384)  # 4 cpus to reserve each
    configure(node)
    add_hosts(node, agent)
    h0, h1 = agent.host_ids
    create(node, "big", cpus=3, host_id=h0)
    create(node, "filler", cpus=2, host_id=h1)  # h1: 2 cpus left, "big" needs 3
    for target in (h1, ""):  # named, or chosen by placement: refused either way
        with pytest.raises(grpc.RpcError) as err:
            c.vms(node).MigrateVm(vm_pb2.MigrateVmRequest(vm_id="big", host_id=target,
                                                          wait=True), timeout=20)
        assert err.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.FAILED_PRECONDITION), err.value.details()
        assert "3 cpus" in err.value.details() or "no connected host" in err.value.details()
    assert get_vm(node, "big").host_id == h0 and get_host(node, h1).allocated_cpus == 2
    c.vms(node).StopVm(vm_pb2.StopVmRequest(vm_id="filler", wait=True), timeout=20)
    wait_until(lambda: get_host(node, h1).allocated_cpus == 0, 10, message="h1 freed")
    moved = c.vms(node).MigrateVm(vm_pb2.MigrateVmRequest(vm_id="big", wait=True),
                                  timeout=30).vm
    assert (moved.state, moved.host_id, moved.generation) == ("Running", h1, 2)
    assert get_host(node, h1).allocated_cpus == 3
    wait_until(lambda: get_host(node, h0).allocated_cpus == 0, 10,
               message="the source's share released")
    # and the freed source takes what did not fit before
    create(node, "after", cpus=4, host_id=h0)


@pytest.mark.slow
def test_maintenance_survives_its_owner_killed(etcd, nodes, agents) -> None:
    members = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(3)]
    wait_until(lambda: c.converged(members, {m.node_id for m in members}), 15,
               message="ring converged")
    # slow ops: the kill lands mid-evacuation
    agent = agents.start("ag", hosts=3, start_delay=0.8, stop_delay=0.8)
    node = members[0]
    configure(node)
    add_hosts(node, agent)
    h0 = next(h for h in agent.host_ids if c.owners(node, [h])[0] != node.node_id)
    vm_ids = [f"v{i:02d}" for i in range(12)]
    for vm_id in vm_ids:
        create(node, vm_id, host_id=h0)
    # live migrations that take a while (the sim's transfer): the kill lands mid-migration
    agent.sim().Configure(agent_pb2.ConfigureRequest(
        migrate_transfer_delay=wiretime.duration(1.5)), timeout=5)
    owner = next(m for m in members if m.node_id == c.owners(node, [h0])[0])
    maintenance(node, h0, host_pb2.MAINTENANCE_POLICY_MIGRATE)
    wait_until(lambda: any(get_vm(node, v).state == "Migrating" for v in vm_ids), 10,
               message="evacuating (live migrations in flight)")
    owner.kill()
    survivors = [m for m in members if m is not owner]
    host = wait_until(lambda: in_maintenance(survivors[0], h0), 60,
                      message="the next owner finished the maintenance")
    assert c.owners(survivors[0], [h0])[0] != owner.node_id
    assert running_on(agent, h0) == {}
    # every VM runs once, elsewhere: none was left stopped by the owner's death
    placed = {v: get_vm(survivors[0], v) for v in vm_ids}
    wait_until(lambda: all(get_vm(survivors[0], v).state == "Running" for v in vm_ids), 30,
               message="every VM running")
    copies = {}
    for h in agent.host_ids:
        for vm_id in running_on(agent, h):
            copies.setdefault(vm_id, []).append(h)
    assert all(len(copies.get(v, [])) == 1 and copies[v][0] != h0 for v in vm_ids), copies
    assert host.maintenance.migrated + host.maintenance.stopped <= len(vm_ids)
    assert all(p.host_id != h0 for p in placed.values() if p.state == "Running")
