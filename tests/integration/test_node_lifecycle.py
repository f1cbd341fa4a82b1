"""A node in-process: stop() ends every thread it started (no loop outlives it)."""

from __future__ import annotations

import threading

from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import open_channel
from controlplane.config.settings import Settings
from controlplane.server import ManagementNode
from controlplane.store import StoreError
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until


def test_stop_ends_every_thread_it_started(etcd: EtcdCluster) -> None:
    before = set(threading.enumerate())
    port = free_port()
    node = ManagementNode(Settings(node_id="solo", listen=f"127.0.0.1:{port}",
                                   advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                   lease_ttl=2, reconcile_interval=0.2, drain_grace=0.5,
                                   tls=harness_pki().node("solo")))
    node.start()
    wait_until(lambda: node.ready, timeout=15)
    started = {t.name for t in set(threading.enumerate()) - before}
    assert {"registration", "monitor", "keepalive"} <= started
    assert {"solo-apply", "solo-watch", "solo-reconcile"} <= started
    node.stop()
    ours = ("registration", "monitor", "keepalive", "solo-", "view-start")
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name.startswith(ours) and t not in before],
               timeout=10, message="threads left running after stop()")
    assert not node.ready


def test_a_cache_that_cannot_start_makes_the_node_not_live(etcd: EtcdCluster,
                                                           monkeypatch) -> None:
    """A permanent store error while the caches start (one no retry mends) must not leave a
    node that is live but never ready: liveness goes NOT_SERVING, so Kubernetes restarts it."""
    port = free_port()
    node = ManagementNode(Settings(node_id="broken", listen=f"127.0.0.1:{port}",
                                   advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                   lease_ttl=2, reconcile_interval=0.2, drain_grace=0.5,
                                   tls=harness_pki().node("broken")))

    def refuse() -> None:
        raise StoreError("etcdserver: request is too large")

    monkeypatch.setattr(node.images, "start", refuse)
    node.start()
    try:
        with open_channel(f"127.0.0.1:{port}", tls=harness_pki().admin()) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status(service: str) -> int:
                return health.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=2).status

            wait_until(lambda: status("liveness") == health_pb2.HealthCheckResponse.NOT_SERVING,
                       timeout=15, message="liveness still SERVING")
            assert status("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not node.ready
    finally:
        node.stop()
