"""What an operator sees: metrics, JSON logs naming node and incarnation, health, reflection."""

from __future__ import annotations

import json
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.mds import MdsProcess
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import AgentFactory, NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import host_pb2, vm_pb2


def test_metrics_logs_health_and_reflection(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    port = free_port()
    node = nodes.start("node-0", etcd.endpoints, metrics_port=port,
                       extra_args=("--log-format", "json"))
    other = nodes.start("node-1", etcd.endpoints)
    wait_until(lambda: c.converged([node, other], {"node-0", "node-1"}), timeout=15)
    c.ring(node)
    other.kill()
    wait_until(lambda: "node-1" not in c.ring_members(node), timeout=10)

    text = wait_until(
        lambda: (t := c.scrape_metrics(port)) and "controlplane_members 1.0" in t and t,
        timeout=5)
    assert f"controlplane_ring_epoch {float(c.ring(node).epoch)}" in text
    assert 'controlplane_evictions_total{how="leave"} 1.0' in text
    assert 'controlplane_rpcs_total{code="OK",method="GetRing"}' in text
    assert "controlplane_keepalive_latency_seconds_count" in text
    assert "controlplane_fenced 0.0" in text

    lines = [json.loads(line) for line in node.log_text().splitlines()
             if line.startswith("{")]
    registered = [d for d in lines if "registered node-0" in d["msg"]]
    assert registered and all(d["node_id"] == "node-0" for d in lines)
    incarnation = c.ring(node).incarnation
    assert any(d["incarnation"] == incarnation for d in lines)

    with node.new_channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("liveness", "readiness", "", "controlplane.v1.ClusterService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"controlplane.v1.ClusterService", "grpc.health.v1.Health"} <= names


def test_json_log_lines_of_a_vm_operation_carry_its_ids(etcd: EtcdCluster, nodes: NodeFactory,
                                                        agents: AgentFactory) -> None:
    node = nodes.start("mn-0", etcd.endpoints, extra_args=("--log-format", "json"))
    agent = agents.start("ag")
    (host_id,) = agent.host_ids
    c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                          timeout=10)
    vm = c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="log-1", image=vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30,
                                              actual_size=1 << 28),
        start=True, wait=True, host_id=host_id), timeout=20).vm
    assert vm.state == "Running"
    op_id = vm.last_op.op_id

    def lines() -> list[dict]:
        return [json.loads(line) for line in node.log_text().splitlines()
                if line.startswith("{")]

    ids = {"vm_id": "log-1", "host_id": host_id, "op_id": op_id}
    finished = wait_until(lambda: [d for d in lines() if d.get("op_id") == op_id
                                   and "completed" in d["msg"]], timeout=5)
    assert finished[0].items() >= ids.items()
    begun = [d for d in lines() if "begun as op" in d["msg"]]
    assert begun and begun[0].items() >= {**ids, "node_id": "mn-0"}.items()
    created = [d for d in lines() if "created" in d["msg"] and d.get("vm_id") == "log-1"]
    assert created


def test_agent_and_mds_take_log_format_and_metrics_from_the_environment(
        agents: AgentFactory, tmp_path: Path) -> None:
    """The same CONTROLPLANE_* variables as serve: JSON lines naming the process, and a
    Prometheus endpoint on 127.0.0.1 (the default --metrics-address: the host of --listen)."""
    agent_port, mds_port = free_port(), free_port()
    agent = agents.start("ag", env={"CONTROLPLANE_LOG_FORMAT": "json",
                                    "CONTROLPLANE_METRICS_PORT": str(agent_port)})
    mds = MdsProcess("md", free_port(), str(tmp_path),
                     env={"CONTROLPLANE_LOG_FORMAT": "json",
                          "CONTROLPLANE_METRICS_PORT": str(mds_port)}).start()
    try:
        mds.wait_ready()
        for port in (agent_port, mds_port):
            assert "process_cpu_seconds_total" in wait_until(
                lambda p=port: c.scrape_metrics(p), timeout=5)
        for proc, name in ((agent, f"agent@{agent.address}"), (mds, f"mds@{mds.address}")):
            docs = wait_until(lambda p=proc: [json.loads(line) for line in
                                              p.log_text().splitlines()
                                              if line.startswith("{")], timeout=5)
            assert all(d["node_id"] == name for d in docs), docs
    finally:
        mds.kill()

