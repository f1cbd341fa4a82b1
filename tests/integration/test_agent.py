"""The host agent as a real process (sim backend), driven over gRPC as a management node would.

Delays are short (0.5-1.5 s) and every wait is on an observable condition with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane import wiretime
from controlplane.testing.agents import AgentProcess
from controlplane.testing.pytest_plugin import AgentFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2 as pb
from controlplane.v1 import agent_pb2_grpc

RUNNING = pb.AGENT_VM_STATE_RUNNING


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def vms(agent: AgentProcess, host: str) -> dict[str, tuple[int, int]]:
    resp = agent.stub().ListVms(pb.AgentServiceListVmsRequest(host_id=host), timeout=5)
    return {v.vm_id: (v.state, v.generation) for v in resp.vms}


def ops(agent: AgentProcess, host: str) -> list[tuple[str, str, str, int]]:
    resp = agent.stub().ListVms(pb.AgentServiceListVmsRequest(host_id=host), timeout=5)
    return [(o.op_id, o.vm_id, o.kind, o.generation) for o in resp.ops]


def start_req(host: str, vm: str, generation: int, op_id: str = ""
              ) -> pb.AgentServiceStartVmRequest:
    return pb.AgentServiceStartVmRequest(host_id=host, vm_id=vm, generation=generation,
                                         op_id=op_id, cpus=2, memory_mb=2048)


def set_condition(agent: AgentProcess, host: str, condition: int) -> None:
    resp = agent.sim().SetHostCondition(pb.SetHostConditionRequest(host_id=host,
                                                                   condition=condition),
                                        timeout=5)
    assert resp.condition == condition


def test_start_list_stop_round_trip(agents: AgentFactory) -> None:
    agent = agents.start("a", hosts=3, cpus=8, memory_mb=4096)
    h = agent.host_ids[1]
    assert agent.host_ids == ["a-host-0", "a-host-1", "a-host-2"]
    stub = agent.stub()
    listed = stub.ListHosts(pb.AgentServiceListHostsRequest(), timeout=5)
    assert list(listed.host_ids) == agent.host_ids and listed.backend == "sim"
    started = stub.StartVm(start_req(h, "vm-1", 1, "op-1"), timeout=5)
    assert (started.host_id, started.vm.vm_id, started.vm.state, started.vm.generation) == \
        (h, "vm-1", RUNNING, 1)
    assert vms(agent, h) == {"vm-1": (RUNNING, 1)}
    assert vms(agent, agent.host_ids[0]) == {}
    ping = stub.Ping(pb.PingRequest(host_id=h), timeout=5)
    assert (ping.cpus, ping.memory_mb, ping.vm_count, ping.backend) == (8, 4096, 1, "sim")
    stopped = stub.StopVm(pb.AgentServiceStopVmRequest(host_id=h, vm_id="vm-1", op_id="op-2"),
                          timeout=5)
    assert stopped.vm.state == pb.AGENT_VM_STATE_STOPPED and stopped.vm.generation == 1
    assert vms(agent, h) == {}
    again = stub.StopVm(pb.AgentServiceStopVmRequest(host_id=h, vm_id="vm-1"), timeout=5)
    assert again.vm.state == pb.AGENT_VM_STATE_STOPPED  # idempotent
    assert "start begun" in agent.log_text() and "op-1" in agent.log_text()


def test_slow_start_shows_its_op_and_the_vm_only_after(agents: AgentFactory) -> None:
    agent = agents.start("a", start_delay=1.5)
    h = agent.host_ids[0]
    future = agent.stub().StartVm.future(start_req(h, "vm-1", 4, "op-slow"), timeout=10)
    wait_until(lambda: ops(agent, h), 5, message="start op never listed")
    resp = agent.stub().ListVms(pb.AgentServiceListVmsRequest(host_id=h), timeout=5)
    assert [(o.op_id, o.vm_id, o.kind, o.generation) for o in resp.ops] == \
        [("op-slow", "vm-1", "start", 4)]
    assert wiretime.seconds(resp.ops[0].started_at) > 0 and resp.reports_ops
    assert not resp.vms  # not running yet
    assert future.result().vm.state == RUNNING
    assert vms(agent, h) == {"vm-1": (RUNNING, 4)}
    assert ops(agent, h) == []


_CALLER = """
import sys
from controlplane.channels import open_channel
from controlplane.security.tls import TlsFiles
from controlplane.v1 import agent_pb2 as pb, agent_pb2_grpc
tls = TlsFiles(*sys.argv[3:6])
stub = agent_pb2_grpc.AgentServiceStub(open_channel(sys.argv[1], tls=tls))
stub.StartVm(pb.AgentServiceStartVmRequest(host_id=sys.argv[2], vm_id="vm-killed", generation=1,
                               op_id="op-killed"), timeout=60)
"""


def test_start_completes_after_its_caller_has_gone(agents: AgentFactory) -> None:
    """A management node is killed, drops its channel or gives up (deadline) mid-start: the
    VM must run anyway, which is what makes the op an orphan worth resolving."""
    agent = agents.start("a", start_delay=1.5)
    h = agent.host_ids[0]
    tls = agent.client_tls
    caller = subprocess.Popen([sys.executable, "-c", _CALLER, agent.address, h,
                               tls.ca, tls.cert, tls.key], env=agent.env())
    try:
        wait_until(lambda: ops(agent, h), 10, message="the caller process never began a start")
    finally:
        caller.kill()
        caller.wait()
    channel = agent.new_channel()
    future = agent_pb2_grpc.AgentServiceStub(channel).StartVm.future(
        start_req(h, "vm-closed", 1, "op-closed"), timeout=10)
    wait_until(lambda: len(ops(agent, h)) == 2, 5)
    channel.close()
    assert future.exception() is not None  # the caller saw its call cancelled
    err = rpc_error(lambda: agent.stub().StartVm(start_req(h, "vm-deadline", 1, "op-dl"),
                                                 timeout=0.2))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert {o[0] for o in ops(agent, h)} == {"op-killed", "op-closed", "op-dl"}
    assert not vms(agent, h)
    wanted = {"vm-killed": (RUNNING, 1), "vm-closed": (RUNNING, 1), "vm-deadline": (RUNNING, 1)}
    wait_until(lambda: vms(agent, h) == wanted, 5,
               message="starts whose callers left did not complete")
    assert ops(agent, h) == []


def test_generations_stale_refused_same_idempotent(agents: AgentFactory) -> None:
    agent = agents.start("a")
    h = agent.host_ids[0]
    stub = agent.stub()
    stub.StartVm(start_req(h, "vm-1", 7), timeout=5)
    assert stub.StartVm(start_req(h, "vm-1", 7), timeout=5).vm.generation == 7
    err = rpc_error(lambda: stub.StartVm(start_req(h, "vm-1", 6), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "6" in err.details() and "7" in err.details() and "stale" in err.details()
    err = rpc_error(lambda: stub.StartVm(start_req(h, "vm-1", 8), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # another generation runs
    stub.DestroyVm(pb.AgentServiceDestroyVmRequest(host_id=h, vm_id="vm-1"), timeout=5)
    err = rpc_error(lambda: stub.StartVm(start_req(h, "vm-1", 6), timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION  # still stale after the stop
    assert vms(agent, h) == {}


def test_fence_during_a_start_aborts_it(agents: AgentFactory) -> None:
    delay = 1.0
    agent = agents.start("a", start_delay=delay)
    h = agent.host_ids[0]
    agent.sim().SeedVms(pb.SeedVmsRequest(host_id=h, vms=[pb.AgentVm(vm_id="vm-old")]),
                        timeout=5)
    begun = time.monotonic()
    future = agent.stub().StartVm.future(start_req(h, "vm-1", 1, "op-f"), timeout=10)
    wait_until(lambda: ops(agent, h), 5)
    fenced = agent.stub().Fence(pb.FenceRequest(host_id=h), timeout=5)
    assert list(fenced.vms_killed) == ["vm-old"]
    assert future.exception(timeout=5).code() == grpc.StatusCode.ABORTED
    set_condition(agent, h, pb.HOST_CONDITION_UP)
    # past the moment the start would have completed, the VM is still not there
    time.sleep(max(0.0, begun + delay + 0.3 - time.monotonic()))
    assert vms(agent, h) == {} and ops(agent, h) == []
    assert "fenced" in agent.log_text()


def test_partitioned_host(agents: AgentFactory) -> None:
    agent = agents.start("a", hosts=2, start_delay=0.5)
    h, other = agent.host_ids
    stub = agent.stub()
    agent.sim().SeedVms(pb.SeedVmsRequest(host_id=h, vms=[
        pb.AgentVm(vm_id="vm-a", generation=1),
        pb.AgentVm(vm_id="vm-b", state=pb.AGENT_VM_STATE_PAUSED, generation=2)]), timeout=5)
    future = stub.StartVm.future(start_req(h, "vm-c", 3), timeout=10)
    wait_until(lambda: ops(agent, h), 5)
    set_condition(agent, h, pb.HOST_CONDITION_PARTITIONED)
    for call in (lambda: stub.ListVms(pb.AgentServiceListVmsRequest(host_id=h), timeout=5),
                 lambda: stub.Ping(pb.PingRequest(host_id=h), timeout=5),
                 lambda: stub.StopVm(pb.AgentServiceStopVmRequest(host_id=h, vm_id="vm-a"),
                                     timeout=5)):
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "PARTITIONED" in err.details()
    # the start finishes on the host, but its answer is lost in the partition
    assert future.exception(timeout=5).code() == grpc.StatusCode.UNAVAILABLE
    assert stub.ListHosts(pb.AgentServiceListHostsRequest(), timeout=5).host_ids  # agent is fine
    assert vms(agent, other) == {}  # other hosts are unaffected
    set_condition(agent, h, pb.HOST_CONDITION_UP)  # healed: VMs intact, the start done
    assert vms(agent, h) == {"vm-a": (RUNNING, 1), "vm-b": (pb.AGENT_VM_STATE_PAUSED, 2),
                             "vm-c": (RUNNING, 3)}
    set_condition(agent, h, pb.HOST_CONDITION_PARTITIONED)
    fenced = stub.Fence(pb.FenceRequest(host_id=h), timeout=5)
    assert sorted(fenced.vms_killed) == ["vm-a", "vm-b", "vm-c"]
    err = rpc_error(lambda: stub.ListVms(pb.AgentServiceListVmsRequest(host_id=h), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "DOWN" in err.details()


def test_down_and_back_up_is_empty(agents: AgentFactory) -> None:
    agent = agents.start("a")
    h = agent.host_ids[0]
    agent.stub().StartVm(start_req(h, "vm-1", 1), timeout=5)
    set_condition(agent, h, pb.HOST_CONDITION_DOWN)
    err = rpc_error(lambda: agent.stub().StartVm(start_req(h, "vm-2", 1), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "DOWN" in err.details()
    assert list(agent.stub().Fence(pb.FenceRequest(host_id=h), timeout=5).vms_killed) == []
    set_condition(agent, h, pb.HOST_CONDITION_UP)
    assert vms(agent, h) == {}
    assert "UP -> DOWN" in agent.log_text() and "DOWN -> UP" in agent.log_text()


def test_no_report_ops_hides_ops(agents: AgentFactory) -> None:
    agent = agents.start("a", start_delay=0.5, report_ops=False)
    h = agent.host_ids[0]
    future = agent.stub().StartVm.future(start_req(h, "vm-1", 1, "op-1"), timeout=10)
    wait_until(lambda: "start begun" in agent.log_text(), 5)
    resp = agent.stub().ListVms(pb.AgentServiceListVmsRequest(host_id=h), timeout=5)
    assert not resp.ops and not resp.reports_ops and not resp.vms
    assert future.result().vm.state == RUNNING
    # Configure turns reporting back on at run time and answers the whole config
    config = agent.sim().Configure(pb.ConfigureRequest(
        report_ops=True, stop_delay=wiretime.duration(0.5)), timeout=5)
    assert config.report_ops and wiretime.span(config.stop_delay) == 0.5 \
        and wiretime.span(config.start_delay) == 0.5
    stop = agent.stub().StopVm.future(pb.AgentServiceStopVmRequest(host_id=h, vm_id="vm-1",
                                                        op_id="op-2"), timeout=10)
    wait_until(lambda: ops(agent, h) == [("op-2", "vm-1", "stop", 1)], 5)
    assert stop.result().vm.state == pb.AGENT_VM_STATE_STOPPED
    err = rpc_error(lambda: agent.sim().Configure(
        pb.ConfigureRequest(start_delay=wiretime.duration(-1)), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_host_and_bad_ids(agents: AgentFactory) -> None:
    agent = agents.start("a")
    stub = agent.stub()
    for call in (lambda: stub.ListVms(pb.AgentServiceListVmsRequest(host_id="nope"), timeout=5),
                 lambda: stub.Fence(pb.FenceRequest(host_id="nope"), timeout=5),
                 lambda: stub.StartVm(start_req("nope", "vm-1", 1), timeout=5),
                 lambda: agent.sim().SetHostCondition(
                     pb.SetHostConditionRequest(host_id="nope",
                                                condition=pb.HOST_CONDITION_DOWN), timeout=5)):
        assert rpc_error(call).code() == grpc.StatusCode.NOT_FOUND
    h = agent.host_ids[0]
    for vm_id in ("", "a/b"):
        err = rpc_error(lambda vm_id=vm_id: stub.StartVm(start_req(h, vm_id, 1), timeout=5))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_device_info_and_injected_failure(agents: AgentFactory) -> None:
    agent = agents.start("a", seed=1)
    h = agent.host_ids[0]
    stub = agent.stub()
    req = pb.SyncVmDeviceInfoRequest(host_id=h, vm_id="vm-1")
    assert rpc_error(lambda: stub.SyncVmDeviceInfo(req, timeout=5)).code() == \
        grpc.StatusCode.NOT_FOUND
    stub.StartVm(start_req(h, "vm-1", 1), timeout=5)
    info = stub.SyncVmDeviceInfo(req, timeout=5)
    devices = {d.name: (d.address, d.mac) for d in info.devices}
    assert devices["disk0"][0] == "0000:00:04.0"
    assert devices["nic0"][0] == "0000:00:03.0" and devices["nic0"][1].startswith("52:54:00:")
    assert stub.SyncVmDeviceInfo(req, timeout=5) == info  # stable
    agent.sim().Configure(pb.ConfigureRequest(device_info_failure_rate=1.0), timeout=5)
    err = rpc_error(lambda: stub.SyncVmDeviceInfo(req, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "injected failure" in err.details()
    agent.sim().Configure(pb.ConfigureRequest(device_info_failure_rate=0.0), timeout=5)
    assert stub.SyncVmDeviceInfo(req, timeout=5) == info


def test_crash_reboot_pause_resume(agents: AgentFactory) -> None:
    agent = agents.start("a")
    h = agent.host_ids[0]
    stub, sim = agent.stub(), agent.sim()
    stub.StartVm(start_req(h, "vm-1", 1), timeout=5)
    req = pb.AgentServicePauseVmRequest(host_id=h, vm_id="vm-1")
    assert stub.PauseVm(req, timeout=5).vm.state == pb.AGENT_VM_STATE_PAUSED
    assert stub.ResumeVm(req, timeout=5).vm.state == RUNNING
    assert stub.RebootVm(req, timeout=5).vm.state == RUNNING
    assert sim.CrashVm(req, timeout=5).vm.state == pb.AGENT_VM_STATE_CRASHED
    assert vms(agent, h) == {"vm-1": (pb.AGENT_VM_STATE_CRASHED, 1)}
    err = rpc_error(lambda: stub.RebootVm(req, timeout=5))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "CRASHED" in err.details()
    assert stub.StopVm(req, timeout=5).vm.state == pb.AGENT_VM_STATE_STOPPED
    assert rpc_error(lambda: sim.CrashVm(req, timeout=5)).code() == grpc.StatusCode.NOT_FOUND


def test_health_reflection_and_sigterm_during_a_start(agents: AgentFactory) -> None:
    agent = agents.start("a", start_delay=30)
    for service in ("", "liveness", "readiness"):
        assert agent.health(service) == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(agent.channel())
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert "controlplane.v1.AgentService" in names
    assert "controlplane.v1.SimControlService" not in names  # on --sim-control-listen only
    sim = reflection_pb2_grpc.ServerReflectionStub(agent.sim_channel())
    answers = sim.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert "controlplane.v1.SimControlService" in names
    h = agent.host_ids[0]
    future = agent.stub().StartVm.future(start_req(h, "vm-1", 1), timeout=60)
    wait_until(lambda: ops(agent, h), 5)
    started = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5  # the 30 s start did not hold the exit
    assert future.exception(timeout=5) is not None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True,
                          text=True, timeout=60)


def test_agent_help_and_bad_flags() -> None:
    done = run_cli("agent", "--help")
    assert done.returncode == 0 and "sim" in done.stdout and "--start-delay" in done.stdout
    for args in (["--listen", "nope"], ["--listen", "127.0.0.1:1", "--hosts", "0"],
                 ["--listen", "127.0.0.1:1", "--start-delay", "-1"],
                 ["--listen", "127.0.0.1:1", "--backend", "qemu"],
                 ["--listen", "127.0.0.1:1", "--memory-mb", "x"],
                 ["--listen", "127.0.0.1:1", "--log-level", "loud"]):
        done = run_cli("agent", *args)
        assert done.returncode == 2 and "error: argument" in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
