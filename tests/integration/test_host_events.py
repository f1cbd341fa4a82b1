"""Host events make the owner pull at once: with a sync interval far longer than the test,
a crash on the sim is seen (and HA acts) within a couple of seconds, through
AgentService.WatchHostEvents and the tracker's poke. Real etcd, node and agent processes."""

from __future__ import annotations

import time

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

SLOW_SYNC = {"vm.syncInterval": "120", "host.pingTimeout": "1", "host.pingFailures": "2"}
EVENT_DEADLINE = 3.0  # an event is a poke + one pull: well under a second here


def configure(node, settings: dict[str, str]) -> None:
    for key, value in settings.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)


def get_vm(node, vm_id: str) -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def image() -> vm_pb2.ImageInfo:
    return vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


@pytest.fixture
def fleet(etcd, nodes, agents):
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ev", hosts=2)
    configure(node, SLOW_SYNC)
    for host_id in agent.host_ids:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)
    # every host had its first pull (the one full sync HA needs) before anything happens
    wait_until(lambda: all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in
                           c.hosts(node).ListHosts(host_pb2.ListHostsRequest(),
                                                   timeout=5).hosts), 10)
    return node, agent


def test_crash_is_seen_at_once_and_ha_restarts(fleet) -> None:
    node, agent = fleet
    h0, h1 = agent.host_ids
    vms = c.vms(node)
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="db", image=image(), ha=vm_pb2.HA_LEVEL_NEVER_STOP,
                                        host_id=h0, start=True, wait=True), timeout=10)
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="plain", image=image(), host_id=h0, start=True,
                                        wait=True), timeout=10)
    crashed_at = time.monotonic()
    agent.sim().CrashVm(agent_pb2.CrashVmRequest(host_id=h0, vm_id="plain"), timeout=2)
    agent.sim().CrashVm(agent_pb2.CrashVmRequest(host_id=h0, vm_id="db"), timeout=2)
    # 120 s sync interval: only the event can make these true before the deadline
    wait_until(lambda: get_vm(node, "plain").state == "Crashed", EVENT_DEADLINE,
               message="crash seen through the host event")
    moved = wait_until(lambda: (v := get_vm(node, "db")).state == "Running"
                       and v.host_id == h1 and v, EVENT_DEADLINE,
                       message="HA restart on the other host after the event")
    print(f"crash -> Crashed + HA Running elsewhere: {time.monotonic() - crashed_at:.3f}s")
    assert moved.generation == 2 and moved.last_host_id == h0


def test_stream_resyncs_after_the_agent_restarts(fleet, agents) -> None:
    """Events sent while no stream was open are not replayed: the first message of the
    reopened stream says resync and every owned host is pulled."""
    node, agent = fleet
    h0, _ = agent.host_ids
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="r", image=image(), host_id=h0,
                                                start=True, wait=True), timeout=10)
    agent.kill()
    agent.restart()  # a sim agent restarted has no VMs: only a pull can tell
    agent.wait_ready()
    wait_until(lambda: get_vm(node, "r").state == "Stopped", EVENT_DEADLINE + 5,
               message="the resync pull after the agent came back")


def test_watch_stream_first_message_is_a_resync(fleet) -> None:
    _, agent = fleet
    stream = agent.stub().WatchHostEvents(agent_pb2.AgentServiceWatchHostEventsRequest(),
                                          timeout=10)
    first = next(stream)
    assert first.resync and not first.events
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=agent.host_ids[1], condition=agent_pb2.HOST_CONDITION_PARTITIONED), timeout=2)
    event = next(m for m in stream if m.events).events[0]
    assert (event.host_id, event.vm_id) == (agent.host_ids[1], "")
    stream.cancel()
    with pytest.raises(grpc.RpcError):
        next(stream)
