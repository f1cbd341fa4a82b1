"""The probes Kubernetes runs against a TLS node: /livez and /readyz on the plaintext metrics
port say exactly what grpc.health.v1's `liveness` and `readiness` say on the TLS port
(deploy/README.md, "Probes": the kubelet's gRPC probes speak no mutual TLS)."""

from __future__ import annotations

import urllib.error
import urllib.request

from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.rpc import RpcServer, serve_metrics
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_probes_follow_the_grpc_health_of_the_server() -> None:
    server = RpcServer(f"127.0.0.1:{free_port()}", tls=harness_pki().node("probe-node"))
    server.start(ready=False)
    port = free_port()
    serve_metrics(port, "127.0.0.1", health=server.health)
    try:
        assert http_get(port, "/livez") == (200, "ok\n")
        assert http_get(port, "/readyz") == (503, "not serving\n")
        server.set_health(live=True, ready=True)
        assert http_get(port, "/readyz") == (200, "ok\n")
        server.set_health(live=False, ready=False)
        assert http_get(port, "/livez")[0] == 503
        server.set_health(live=True, ready=True)
        status, text = http_get(port, "/metrics")
        assert status == 200 and "python_info" in text  # Prometheus still answers
    finally:
        server.stop(0)
    # a stopping server is NOT_SERVING everywhere (enter_graceful_shutdown)
    assert http_get(port, "/livez")[0] == 503
    assert http_get(port, "/readyz")[0] == 503


def test_a_tls_node_answers_http_probes_on_its_metrics_port(
        etcd: EtcdCluster, nodes: NodeFactory) -> None:
    port = free_port()
    node = nodes.start("node-0", etcd.endpoints, metrics_port=port)
    with node.new_channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        wait_until(lambda: stub.Check(health_pb2.HealthCheckRequest(service="readiness"),
                                      timeout=2).status == health_pb2.HealthCheckResponse.SERVING,
                   timeout=15)
    assert http_get(port, "/readyz") == (200, "ok\n")
    assert http_get(port, "/livez") == (200, "ok\n")
