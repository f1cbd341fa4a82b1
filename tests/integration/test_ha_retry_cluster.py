"""HA that does not give up (issue 11, item 8): real etcd, a real node, sim agent processes.

Two ways HA used to stop trying for good, each with a VM that must end up running without
any operator action once a host can take it:
- the HA start fails (the only other host refuses the VM): the VM was left Stopped, a state
  HA never looked at again;
- a host is fenced while no other host is connected: its VMs stayed Unknown, because a
  FENCED host is never pulled, so nothing looked at them again.
Every attempt is audited; the retries are spaced by the backoff (ha.retryDelay, doubling up
to ha.retryMaxDelay, set short here).
"""

from __future__ import annotations

import grpc

from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

SETTINGS = {"vm.syncInterval": "0.3", "host.pingTimeout": "1", "host.pingFailures": "2",
            "ha.retryDelay": "0.3", "ha.retryMaxDelay": "1"}
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


def configure(node) -> None:
    for key, value in SETTINGS.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value), timeout=5)


def add_host(node, agent, host_id: str) -> None:
    c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                          timeout=10)


def get_vm(node, vm_id: str) -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def audit(node, vm_id: str) -> list[vm_pb2.HaAudit]:
    return list(c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id), timeout=5).records)


def host_status(node, host_id: str) -> int:
    return c.hosts(node).GetHost(host_pb2.GetHostRequest(host_id=host_id), timeout=5).host.status


def copies(agent, vm_id: str) -> list[tuple[str, int]]:
    """Where the sim runs the VM: (host, generation) for every copy. Called after the cut
    off host was fenced: it is powered off (DOWN, answering UNAVAILABLE) and runs nothing."""
    out = []
    for host_id in agent.host_ids:
        try:
            reply = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host_id),
                                         timeout=2)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "DOWN" in err.details()
            continue
        out += [(host_id, v.generation) for v in reply.vms if v.vm_id == vm_id]
    return out


def partition(agent, host_id: str) -> None:
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=host_id, condition=agent_pb2.HOST_CONDITION_PARTITIONED), timeout=2)


def test_a_failed_ha_start_is_retried_until_a_host_takes_the_vm(etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=3)
    configure(node)
    h0, h1, h2 = agent.host_ids
    add_host(node, agent, h0)
    add_host(node, agent, h1)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="db", image=IMAGE,
                                                ha=vm_pb2.HA_LEVEL_NEVER_STOP,
                                                host_id=h0, start=True, wait=True), timeout=10)
    # h1 refuses the VM: it once ran a copy of generation 1000 (seeded, then stopped by sync
    # as a stray), so it refuses every start of an older generation (FAILED_PRECONDITION).
    agent.sim().SeedVms(agent_pb2.SeedVmsRequest(
        host_id=h1, vms=[agent_pb2.AgentVm(vm_id="db", generation=1000)]), timeout=2)
    wait_until(lambda: copies(agent, "db") == [(h0, 1)], 10, message="stray stopped on h1")
    # h0 is cut off: fenced, and HA's start on h1, the only connected host, fails.
    partition(agent, h0)
    wait_until(lambda: host_status(node, h0) == host_pb2.HOST_STATUS_FENCED, 15,
               message="h0 fenced")
    failed = wait_until(
        lambda: len(f := [a for a in audit(node, "db") if a.action == "restart-failed"]) >= 2
        and f, 15, message="failed HA attempts audited")
    assert all(a.to_host == h1 and "FAILED_PRECONDITION" in a.evidence[0] for a in failed)
    # A host appears; no operator touches the VM.
    add_host(node, agent, h2)
    vm = wait_until(lambda: (v := get_vm(node, "db")).state == "Running" and v.host_id == h2
                    and v, 15, message="VM started on the new host")
    assert copies(agent, "db") == [(h2, vm.generation)]
    records = audit(node, "db")
    restarts = [a for a in records if a.action == "restart"]
    assert restarts[0].from_host == h0 and any("fenced" in e for e in restarts[0].evidence)
    assert restarts[-1].to_host == h2 and restarts[-1].generation == vm.generation
    # each start on h1 is paired with its failure record, and the successful one has none
    failed_ops = {a.op_id for a in records if a.action == "restart-failed"}
    assert {a.op_id for a in restarts[:-1]} == failed_ops
    assert restarts[-1].op_id not in failed_ops


def test_vms_of_a_host_fenced_with_no_room_anywhere_are_placed_later(
        etcd, nodes, agents) -> None:
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2)
    configure(node)
    h0, h1 = agent.host_ids
    add_host(node, agent, h0)
    for vm_id, level in (("a", vm_pb2.HA_LEVEL_NEVER_STOP), ("b", vm_pb2.HA_LEVEL_NEVER_STOP),
                         ("plain", vm_pb2.HA_LEVEL_UNSPECIFIED)):
        c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE, ha=level,
                                                    host_id=h0, start=True, wait=True),
                             timeout=10)
    partition(agent, h0)  # the only host: fenced, and no host to restart anything on
    wait_until(lambda: host_status(node, h0) == host_pb2.HOST_STATUS_FENCED, 15,
               message="h0 fenced")
    wait_until(lambda: get_vm(node, "plain").state == "Stopped", 10, message="plain Stopped")
    assert {get_vm(node, v).state for v in ("a", "b")} == {"Unknown"}
    # Room appears; no operator touches the VMs.
    add_host(node, agent, h1)
    for vm_id in ("a", "b"):
        vm = wait_until(lambda v=vm_id: (r := get_vm(node, v)).state == "Running"
                        and r.host_id == h1 and r, 15, message=f"{vm_id} placed on h1")
        assert copies(agent, vm_id) == [(h1, vm.generation)] and vm.generation == 2
        records = audit(node, vm_id)
        assert records[-1].action == "restart" and records[-1].to_host == h1
        assert any("fenced" in e for e in records[-1].evidence)
        no_host = [a for a in records if a.action == "no-host"]
        assert no_host and all(a.from_host == h0 and a.generation == 1 for a in no_host)
        assert [a.action for a in records] == ["no-host"] * len(no_host) + ["restart"]
    # the VM without HA stays where the fence put it
    plain = get_vm(node, "plain")
    assert (plain.state, plain.host_id) == ("Stopped", h0) and not audit(node, "plain")


def test_the_next_owner_continues_the_retries_of_a_dead_one(etcd, nodes, agents) -> None:
    """The retry state is in etcd: the owner of the fenced host is killed (-9) while its VM
    waits for room; the node that takes the host over keeps trying and places it."""
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=2) for i in range(2)]
    agent = agents.start("ag", hosts=2)
    configure(mns[0])
    h0, h1 = agent.host_ids
    add_host(mns[0], agent, h0)
    c.vms(mns[0]).CreateVm(vm_pb2.CreateVmRequest(vm_id="a", image=IMAGE,
                                                  ha=vm_pb2.HA_LEVEL_NEVER_STOP,
                                                  host_id=h0, start=True, wait=True),
                           timeout=10)
    (owner_id,) = c.owners(mns[0], [h0])
    owner = next(n for n in mns if n.node_id == owner_id)
    survivor = next(n for n in mns if n is not owner)
    partition(agent, h0)
    wait_until(lambda: len([a for a in audit(survivor, "a") if a.action == "no-host"]) >= 2,
               20, message="the owner's no-host attempts audited")
    owner.kill()
    wait_until(lambda: c.owners(survivor, [h0]) == [survivor.node_id], 15,
               message="the survivor owns the fenced host")
    add_host(survivor, agent, h1)
    vm = wait_until(lambda: (v := get_vm(survivor, "a")).state == "Running" and v, 20,
                    message="placed by the next owner")
    assert vm.host_id == h1 and copies(agent, "a") == [(h1, vm.generation)]
    records = audit(survivor, "a")
    assert {a.node_id for a in records if a.action == "no-host"} >= {owner_id}
    assert records[-1].action == "restart" and records[-1].node_id == survivor.node_id
