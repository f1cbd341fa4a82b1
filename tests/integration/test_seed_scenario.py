"""The seed scenario: a management node dies while an HA VM is still starting.

ZStack shipped this bug: the node handling a start left, its in-flight operation was
forgotten, the next VM sync saw a VM that did not run (yet) and HA started a second copy
elsewhere. Here the op lives in etcd, becomes an orphan, and the agent's own op list keeps
the VM skipped; the generation guard is the last line for an agent that cannot say.

Documented behaviour, by orphan timeout (`vm.orphanedSkipTimeout`):
- longer than the start: the orphan op stays until the agent reports the start finished,
  then it is resolved in the same txn that records Running (last_op "orphan-resolved").
- shorter than the start: the orphan op expires (last_op "orphan-expired"), the VM stays
  Starting with no op, and the agent's in-progress start keeps sync from touching it until
  the VM appears and is recorded Running. No HA either way.
- shorter, with an agent too old to report its operations: sync cannot tell a slow start
  from a dead VM, so HA restarts the VM elsewhere with a new generation; when the late
  start finishes on the first host, that copy has the older generation and is stopped as a
  stray. Still exactly one copy in the end, with audit records of both decisions.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.agents import vm_copies
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, cluster_pb2, config_pb2, host_pb2, vm_pb2

START_DELAY = 6.0  # longer than the lease TTL (2 s): the node dies mid-start
TTL = 2.0


def copies(agents, vm_id: str) -> list[tuple[str, int]]:
    """(host, generation) of every copy of the VM any agent runs."""
    return vm_copies(agents).get(vm_id, [])


def owner(node, resource_id: str) -> str:
    return c.stub(node).WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id=resource_id),
                                timeout=2).owner


@pytest.mark.parametrize("case", [
    "long-orphan-timeout", "short-orphan-timeout",
    "short-timeout-agent-without-op-reports"])
def test_node_killed_while_ha_vm_is_starting(case, etcd, nodes, agents) -> None:
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=TTL) for i in range(3)]
    wait_until(lambda: all(len(c.ring(n).members) == 3 for n in mns), 10)
    report_ops = case != "short-timeout-agent-without-op-reports"
    # The agent reports its ops until the start has reached it, in every case: the test must
    # know the start is under way on the first host before it kills the node (CreateVm answers
    # once the op is in etcd; the call to the agent follows). Without that wait the node could
    # die before the agent heard of the start, and there would be no late copy to stop.
    slow = agents.start("a", hosts=1, start_delay=START_DELAY)
    spare = agents.start("b", hosts=1, start_delay=0.2)
    timeout = "600" if case == "long-orphan-timeout" else "1"
    for key, value in {"vm.syncInterval": "0.3", "host.pingTimeout": "1",
                       "vm.orphanedSkipTimeout": timeout}.items():
        c.config(mns[0]).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                      timeout=5)
    origin, other = slow.host_ids[0], spare.host_ids[0]
    for agent in (slow, spare):
        c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                        address=agent.address), timeout=10)
    # The hardest case: the node handling the start also owns the VM's host, so both the
    # VM and the host's sync move to nodes that know nothing about the start.
    host_owner = owner(mns[0], origin)
    vm_id = next(f"ha-{i}" for i in range(1000) if owner(mns[0], f"ha-{i}") == host_owner)
    victim = next(n for n in mns if n.node_id == host_owner)
    survivor = next(n for n in mns if n is not victim)

    seen: list[tuple[str, str, int]] = []
    stream = c.vms(survivor).WatchVms(vm_pb2.WatchVmsRequest(vm_id=vm_id), timeout=60)

    def watch() -> None:
        try:
            for event in stream:
                seen.append((event.vm.state, event.vm.host_id, event.vm.generation))
        except grpc.RpcError:
            pass  # cancelled at the end of the test

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    image = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
    c.vms(victim).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=image,
                                                  ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=origin,
                                                  start=True), timeout=5)
    wait_until(lambda: any(op.vm_id == vm_id for op in slow.stub().ListVms(
        agent_pb2.AgentServiceListVmsRequest(host_id=origin), timeout=2).ops), 5,
        message="the start reached the agent")
    if not report_ops:  # from now on the agent is one too old to say what it is doing
        slow.sim().Configure(agent_pb2.ConfigureRequest(report_ops=False), timeout=5)
        assert not slow.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=origin),
                                       timeout=2).reports_ops
    victim.kill()

    if case == "long-orphan-timeout":
        # skipped as an orphan while the agent works: the op is still there, stamped
        wait_until(lambda: c.vms(survivor).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=2).vm
                   .op.HasField("orphaned_at"), 10, message="the op was found orphaned")
    final = wait_until(lambda: (v := c.vms(survivor).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id),
                                                             timeout=2).vm).state == "Running"
                       and not v.op.op_id and v, START_DELAY + 20, message="VM Running")
    audit = c.vms(survivor).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id), timeout=5).records
    everyone = [slow, spare]
    if report_ops:
        assert (final.host_id, final.generation) == (origin, 1)
        assert final.last_op.outcome == ("orphan-resolved" if case == "long-orphan-timeout"
                                         else "orphan-expired")
        assert copies(everyone, vm_id) == [(origin, 1)]
        assert not audit, [str(a) for a in audit]
        # never seen stopped/unknown, never moved
        assert {state for state, _, _ in seen} <= {"Created", "Starting", "Running"}, seen
        assert {host for _, host, _ in seen} <= {"", origin}, seen
    else:
        # HA could not tell; the generation guard leaves exactly one copy once the late
        # start on the first host has finished and been stopped as a stray
        assert (final.host_id, final.generation) == (other, 2)
        def stray_stopped():  # type: ignore[no-untyped-def]
            records = c.vms(survivor).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id=vm_id),
                                                  timeout=5).records
            return any(r.action == "stop-stray" for r in records) and records

        audit = wait_until(stray_stopped, START_DELAY + 30,
            message="the late copy on the first host is stopped as a stray")
        assert [a.action for a in audit] == ["restart", "stop-stray"], [str(a) for a in audit]
        assert audit[1].from_host == origin and audit[1].generation == 1
        wait_until(lambda: copies(everyone, vm_id) == [(other, 2)], 5, message="one copy")
    stream.cancel()
