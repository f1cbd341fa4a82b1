"""What an operator sees: metrics, JSON logs naming node and incarnation, health, reflection."""

from __future__ import annotations

import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until


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

    with grpc.insecure_channel(node.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("liveness", "readiness", "", "controlplane.v1.ClusterService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"controlplane.v1.ClusterService", "grpc.health.v1.Health"} <= names
