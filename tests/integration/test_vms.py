"""Hosts and VMs end to end: real etcd, real management nodes, real sim agent processes."""

from __future__ import annotations

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

FAST = {"vm.syncInterval": "0.3", "host.pingTimeout": "1", "host.pingFailures": "2"}


def configure(node, **settings: str) -> None:
    for key, value in {**FAST, **settings}.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value), timeout=5)


def add_hosts(node, agent) -> list[str]:
    for host_id in agent.host_ids:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)
    return agent.host_ids


def image(virtual=1 << 30, actual=1 << 28) -> vm_pb2.ImageInfo:
    return vm_pb2.ImageInfo(image_id="img", virtual_size=virtual, actual_size=actual)


def agent_vms(agent, host_id: str) -> dict[str, agent_pb2.AgentVm]:
    reply = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host_id), timeout=2)
    return {v.vm_id: v for v in reply.vms}


def get_vm(node, vm_id: str) -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def frozen_decisions(metrics_port: int) -> float:
    for line in c.scrape_metrics(metrics_port).splitlines():
        if line.startswith('controlplane_ha_decisions_total{action="frozen"}'):
            return float(line.split()[-1])
    return 0.0


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture
def fleet(etcd, nodes, agents):
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2)
    configure(node)
    add_hosts(node, agent)
    return node, agent


def test_lifecycle_start_stop_destroy_with_device_info(fleet) -> None:
    node, agent = fleet
    h0, h1 = agent.host_ids
    vm = c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="web-1", image=image(),
                                                     cpus=2, memory_mb=1024), timeout=5).vm
    assert vm.state == "Created" and vm.root_disk_size == 1 << 30
    started = c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="web-1", wait=True, host_id=h1),
                                  timeout=10).vm
    assert started.state == "Running" and started.host_id == h1 and started.generation == 1
    assert started.last_op.outcome == "completed"
    assert agent_vms(agent, h1)["web-1"].generation == 1
    # device info is stored after Running (asynchronously, never failing the start)
    wait_until(lambda: get_vm(node, "web-1").devices.devices, 5, message="device info")
    # an operation not allowed in the state names the state
    with pytest.raises(grpc.RpcError) as info:
        c.vms(node).ResumeVm(vm_pb2.ResumeVmRequest(vm_id="web-1"), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Running" in info.value.details()
    stopped = c.vms(node).StopVm(vm_pb2.StopVmRequest(vm_id="web-1", wait=True), timeout=10).vm
    assert stopped.state == "Stopped" and "web-1" not in agent_vms(agent, h1)
    destroyed = c.vms(node).DestroyVm(vm_pb2.DestroyVmRequest(vm_id="web-1", wait=True),
                                      timeout=10).vm
    assert destroyed.state == "Destroyed"


def test_bad_input_is_refused_and_writes_nothing(fleet) -> None:
    node, agent = fleet
    vms = c.vms(node)
    assert code_of(lambda: vms.GetVm(vm_pb2.GetVmRequest(vm_id="nope"), timeout=5).vm) \
        == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: vms.StartVm(vm_pb2.StartVmRequest(vm_id="nope"), timeout=5).vm) \
        == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: vms.GetVm(vm_pb2.GetVmRequest(vm_id="a/b"), timeout=5).vm) \
        == grpc.StatusCode.INVALID_ARGUMENT
    # a missing image size without an offering, and negative sizes
    no_size = vm_pb2.ImageInfo(image_id="img", virtual_size=10)
    assert code_of(lambda: vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="x", image=no_size),
                                        timeout=5).vm) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: vms.CreateVm(vm_pb2.CreateVmRequest(
        vm_id="x", image=image(), root_disk_offering_size=-5), timeout=5).vm) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: vms.GetVm(vm_pb2.GetVmRequest(vm_id="x"), timeout=5).vm) \
        == grpc.StatusCode.NOT_FOUND  # nothing half-written
    # config: unknown key, out of range
    cfg = c.config(node)
    assert code_of(lambda: cfg.UpdateConfig(config_pb2.UpdateConfigRequest(key="no.such",
                                                                           value="1"),
                                            timeout=5).entry) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: cfg.UpdateConfig(config_pb2.UpdateConfigRequest(
        key="vm.orphanedSkipTimeout", value="-1"), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    assert cfg.GetConfig(config_pb2.GetConfigRequest(key="vm.orphanedSkipTimeout"),
                         timeout=5).entry.value \
        == "600"
    # hosts: duplicate, an agent that does not serve the id, unknown host for a start
    hosts = c.hosts(node)
    assert code_of(lambda: hosts.AddHost(host_pb2.AddHostRequest(
        host_id=agent.host_ids[0], address=agent.address), timeout=5).host) \
        == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: hosts.AddHost(host_pb2.AddHostRequest(
        host_id="stranger", address=agent.address), timeout=5).host) \
        == grpc.StatusCode.FAILED_PRECONDITION
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="y", image=image()), timeout=5)
    assert code_of(lambda: vms.StartVm(vm_pb2.StartVmRequest(vm_id="y", host_id="nohost"),
                                       timeout=5).vm) == grpc.StatusCode.NOT_FOUND
    assert get_vm(node, "y").state == "Created"
    # a create that cannot start writes nothing
    assert code_of(lambda: vms.CreateVm(vm_pb2.CreateVmRequest(
        vm_id="z", image=image(), start=True, host_id="nohost"), timeout=5).vm) \
        == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: vms.GetVm(vm_pb2.GetVmRequest(vm_id="z"), timeout=5).vm) \
        == grpc.StatusCode.NOT_FOUND


def test_sync_picks_up_a_crash_and_ha_restarts_on_another_host(fleet) -> None:
    node, agent = fleet
    h0, h1 = agent.host_ids
    vms = c.vms(node)
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="db", image=image(), ha=vm_pb2.HA_LEVEL_NEVER_STOP,
                                        host_id=h0, start=True, wait=True), timeout=10)
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="plain", image=image(), host_id=h0, start=True,
                                        wait=True), timeout=10)
    agent.sim().CrashVm(agent_pb2.CrashVmRequest(host_id=h0, vm_id="db"), timeout=2)
    agent.sim().CrashVm(agent_pb2.CrashVmRequest(host_id=h0, vm_id="plain"), timeout=2)
    moved = wait_until(lambda: (v := get_vm(node, "db")).state == "Running"
                       and v.host_id == h1 and v, 10, message="HA restart on the other host")
    assert moved.generation == 2 and moved.last_host_id == h0
    (audit,) = vms.ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="db"), timeout=5).records
    assert (audit.action, audit.from_host, audit.to_host) == ("restart", h0, h1)
    assert any("reachable" in e for e in audit.evidence)
    # the non-HA VM is only marked Crashed
    wait_until(lambda: get_vm(node, "plain").state == "Crashed", 5)
    assert not vms.ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="plain"), timeout=5).records


def test_watch_vms_streams_changes(fleet) -> None:
    node, agent = fleet
    stream = c.vms(node).WatchVms(vm_pb2.WatchVmsRequest(vm_id="w", initial=True), timeout=20)
    first = next(stream)
    assert first.kind == vm_pb2.WatchVmsResponse.KIND_SYNCED
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="w", image=image(), start=True,
                                                wait=False), timeout=5)
    seen = []
    for event in stream:
        seen.append(event.vm.state)
        if event.vm.state == "Running":
            break
    stream.cancel()
    assert seen[0] == "Created" and "Starting" in seen and seen[-1] == "Running"


def test_unreachable_host_goes_disconnected_then_fenced_and_ha_moves_the_vm(fleet) -> None:
    node, agent = fleet
    h0, h1 = agent.host_ids
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="ha1", image=image(),
                                                ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=h0,
                                                start=True, wait=True), timeout=10)
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=h0, condition=agent_pb2.HOST_CONDITION_PARTITIONED), timeout=2)
    moved = wait_until(lambda: (v := get_vm(node, "ha1")).state == "Running"
                       and v.host_id == h1 and v, 15, message="VM restarted after fence")
    assert moved.generation == 2
    host = c.hosts(node).GetHost(host_pb2.GetHostRequest(host_id=h0), timeout=5).host
    assert host.status == host_pb2.HOST_STATUS_FENCED
    (audit,) = c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="ha1"), timeout=5).records
    assert any("fenced" in e for e in audit.evidence)
    # exactly one copy runs: the fenced host is powered off
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=h0, condition=agent_pb2.HOST_CONDITION_UP), timeout=2)
    assert "ha1" not in agent_vms(agent, h0) and "ha1" in agent_vms(agent, h1)


def test_partition_breaker_freezes_ha_when_most_hosts_vanish_at_once(etcd, nodes, agents) -> None:
    metrics_port = free_port()
    node = nodes.start("mn-0", etcd.endpoints, metrics_port=metrics_port)
    agent = agents.start("ag", hosts=3)
    configure(node)
    h0, h1, h2 = add_hosts(node, agent)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="ha", image=image(), host_id=h0,
                                                ha=vm_pb2.HA_LEVEL_NEVER_STOP, start=True,
                                                wait=True),
                         timeout=10)
    for host_id in (h0, h1):  # 2 of 3 hosts cut off within one interval: a partition
        agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
            host_id=host_id, condition=agent_pb2.HOST_CONDITION_PARTITIONED), timeout=2)
    wait_until(lambda: get_vm(node, "ha").state == "Unknown", 10, message="VM Unknown")
    # several more intervals: no fence, no restart while the breaker is open
    wait_until(lambda: all(c.hosts(node).GetHost(host_pb2.GetHostRequest(host_id=h), timeout=2).host
                           .status == host_pb2.HOST_STATUS_DISCONNECTED for h in (h0, h1)), 10)
    wait_until(lambda: frozen_decisions(metrics_port) >= 3, 10,
               message="HA considered and frozen in several rounds")
    vm = get_vm(node, "ha")
    assert (vm.state, vm.host_id, vm.generation) == ("Unknown", h0, 1)
    assert not c.vms(node).ListHaAudit(vm_pb2.ListHaAuditRequest(vm_id="ha"), timeout=5).records
    # heal: the VM is found running where it always was
    for host_id in (h0, h1):
        agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
            host_id=host_id, condition=agent_pb2.HOST_CONDITION_UP), timeout=2)
    back = wait_until(lambda: (v := get_vm(node, "ha")).state == "Running" and v, 10)
    assert (back.host_id, back.generation) == (h0, 1)
    assert "ha" in agent_vms(agent, h0) and "ha" not in agent_vms(agent, h2)


def test_device_info_failures_are_retried_and_never_fail_the_start(fleet) -> None:
    node, agent = fleet
    agent.sim().Configure(agent_pb2.ConfigureRequest(device_info_failure_rate=0.6), timeout=2)
    for i in range(4):
        vm = c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id=f"d{i}", image=image(),
                                                         start=True, wait=True), timeout=10).vm
        assert vm.state == "Running"
    wait_until(lambda: all(get_vm(node, f"d{i}").devices.devices for i in range(4)), 20,
               message="device info stored despite injected failures")


def test_live_config_reaches_every_node(etcd, nodes) -> None:
    a = nodes.start("mn-0", etcd.endpoints)
    b = nodes.start("mn-1", etcd.endpoints)
    c.config(a).UpdateConfig(config_pb2.UpdateConfigRequest(key="vm.orphanedSkipTimeout",
                                                    value="42.5"), timeout=5)
    entry = wait_until(lambda: (e := c.config(b).GetConfig(config_pb2.GetConfigRequest(
        key="vm.orphanedSkipTimeout"), timeout=2).entry).value == "42.5" and e, 5)
    assert not entry.is_default and entry.default_value == "600"
    listed = {e.key for e in c.config(b).ListConfig(config_pb2.ListConfigRequest(),
                                                      timeout=2).entries}
    assert {"vm.orphanedSkipTimeout", "vm.syncInterval", "host.pingFailures"} <= listed


def test_remove_and_reconnect_host(fleet) -> None:
    node, agent = fleet
    h0, h1 = agent.host_ids
    hosts = c.hosts(node)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="r1", image=image(), host_id=h0,
                                                start=True, wait=True), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        hosts.RemoveHost(host_pb2.RemoveHostRequest(host_id=h0), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "r1" in \
        info.value.details()
    # a fenced host stays FENCED until an operator reconnects it
    agent.stub().Fence(agent_pb2.FenceRequest(host_id=h1), timeout=2)
    wait_until(lambda: hosts.GetHost(host_pb2.GetHostRequest(host_id=h1), timeout=2).host.status
               == host_pb2.HOST_STATUS_DISCONNECTED, 10, message="fenced host seen unreachable")
    agent.sim().SetHostCondition(agent_pb2.SetHostConditionRequest(
        host_id=h1, condition=agent_pb2.HOST_CONDITION_UP), timeout=2)
    back = hosts.ReconnectHost(host_pb2.ReconnectHostRequest(host_id=h1), timeout=5).host
    assert back.status == host_pb2.HOST_STATUS_CONNECTED and not back.HasField("unreachable_since")
    removed = hosts.RemoveHost(host_pb2.RemoveHostRequest(host_id=h1), timeout=5).host
    assert removed.host_id == h1
    assert code_of(lambda: hosts.GetHost(host_pb2.GetHostRequest(host_id=h1), timeout=5).host) \
        == grpc.StatusCode.NOT_FOUND
    assert [h.host_id for h in hosts.ListHosts(host_pb2.ListHostsRequest(), timeout=5).hosts] \
        == [h0]
