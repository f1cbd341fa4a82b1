"""A rolling update rehearsed with processes, configured exactly as the manifests do it.

Three `controlplane serve` processes get their settings only from the environment the
rendered dev overlay gives a pod (ConfigMap via envFrom, downward API pod name as node id),
with only what differs on one machine replaced: every "pod" is on 127.0.0.1, so each gets
its own port, and etcd is the test's. A Service is emulated the way
Kubernetes does it: clients go round-robin to endpoints whose readiness probe (the
manifests' httpGet /readyz on the metrics port) last answered 200, and retry another
endpoint on UNAVAILABLE. Calls are mutual TLS, as in the cluster. The pods are then rolled
one at a time, highest ordinal first, each SIGTERMed and restarted and waited for Ready
before the next.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import urllib.request

import grpc
from test_manifests import DEPLOY, MN, find, main_container, pod_environment, render

from controlplane.channels import open_channel
from controlplane.cluster.view import ClusterView
from controlplane.store import Keys, Store
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc

NAMES = [f"controlplane-{i}" for i in range(3)]


class Pod(NodeProcess):
    """`controlplane serve` with no flags: everything from the environment, as in the pod."""

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "controlplane", "serve"]


def pod(name: str, etcd: str, base_dir: str) -> Pod:
    docs = render(DEPLOY / "overlays/dev")
    workload = find(docs, "StatefulSet", MN)
    env = pod_environment(docs, workload, main_container(workload), name)
    port = free_port()
    tls = harness_pki().node(name)  # where the pod has cert-manager's Secrets mounted
    local = {
        "CONTROLPLANE_LISTEN": f"127.0.0.1:{port}",
        "CONTROLPLANE_ADVERTISE": f"127.0.0.1:{port}",
        "CONTROLPLANE_ETCD": etcd,
        "CONTROLPLANE_METRICS_PORT": str(free_port()),  # the probes' port
        "CONTROLPLANE_IMAGE_DIR": os.path.join(base_dir, "images"),  # the volume's mount
        "CONTROLPLANE_TLS_DIR": os.path.dirname(tls.cert),
        "CONTROLPLANE_ETCD_TLS_DIR": os.path.dirname(tls.cert),
    }
    assert set(local) <= set(env), "the manifest no longer sets what the rehearsal overrides"
    assert "CONTROLPLANE_INSECURE" not in env  # the pods run mutual TLS only
    env.update(local)
    assert env["CONTROLPLANE_NODE_ID"] == name
    return Pod(name, port, etcd, base_dir, env=env, tls=tls,
               metrics_port=int(env["CONTROLPLANE_METRICS_PORT"]))


def ready(pod: Pod) -> bool:
    """The readiness probe as the kubelet runs it: GET /readyz on the metrics port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{pod.metrics_port}/readyz",
                                    timeout=0.3) as reply:
            return reply.status == 200
    except OSError:
        return False


class ServiceClient:
    """Round-robin over Ready endpoints with retry on another endpoint, like a client of a
    ClusterIP Service whose endpoints follow the readiness probes."""

    def __init__(self, pods: list[Pod]) -> None:
        self.pods = pods
        self.ready: list[Pod] = list(pods)
        self.calls = self.retried = 0
        self.failures: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}

    def probe_loop(self) -> None:
        """The endpoints controller: readiness every 100 ms."""
        while not self.stop.wait(0.1):
            self.ready = [p for p in self.pods if p.is_running() and ready(p)]

    def _stub(self, address: str) -> pb_grpc.ClusterServiceStub:
        if address not in self._channels:
            # A client of a Service that rolls should not back off for long from an endpoint
            # that restarted (gRPC's default reconnect backoff grows to 120 s).
            self._channels[address] = open_channel(address, tls=harness_pki().admin(),
                                                   options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
            ])
        return pb_grpc.ClusterServiceStub(self._channels[address])

    def call_loop(self) -> None:
        turn = itertools.count()
        for i in itertools.count():
            if self.stop.is_set():
                return
            request = pb.LocateRequest(resource_id=f"vm-{i % 500}")
            self.calls += 1
            errors = []
            for attempt in range(3):
                if attempt:  # a client's retry policy backs off (50 ms, then 100 ms)
                    self.stop.wait(0.05 * attempt)
                endpoints = self.ready
                if not endpoints:
                    self.stop.wait(0.05)
                    continue
                target = endpoints[next(turn) % len(endpoints)]
                try:
                    self._stub(target.address).Locate(request, timeout=3)
                    break
                except grpc.RpcError as err:
                    errors.append(f"{target.node_id}: {err.code().name} {err.details()}")
                    self.errors.append(errors[-1])
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.CANCELLED):
                        break
                    self.retried += 1
            else:
                self.failures.append("; ".join(errors) or "no ready endpoint")
                continue
            if errors and len(errors) == 3:
                self.failures.append("; ".join(errors))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def test_rolling_update_loses_no_call_and_keeps_two_members(
    etcd: EtcdCluster, tmp_path: os.PathLike
) -> None:
    store = Store(etcd.endpoints)
    sizes: list[int] = []
    view = ClusterView(store, Keys(), reconcile_interval=None)
    view.add_listener(lambda table, changes: sizes.append(len(table.members)))
    view.start(timeout=10)
    pods = [pod(name, etcd.endpoints, str(tmp_path)) for name in NAMES]
    client = ServiceClient(pods)
    threads = []
    try:
        for p in pods:
            p.start()
        for p in pods:
            p.wait_ready(30)
        assert view.wait_for(lambda t: set(t.members) == set(NAMES), 10)
        sizes.clear()
        threads = [threading.Thread(target=client.probe_loop, daemon=True),
                   threading.Thread(target=client.call_loop, daemon=True)]
        for t in threads:
            t.start()
        wait_until(lambda: client.calls > 20, timeout=10)
        for p in reversed(pods):  # a StatefulSet rolls the highest ordinal first
            before = client.calls
            assert p.terminate(timeout=20) == 0
            p.restart().wait_ready(30)
            assert view.wait_for(lambda t: set(t.members) == set(NAMES), 10)
            wait_until(lambda b=before: client.calls > b + 20, timeout=10)
        client.stop.set()
        for t in threads:
            t.join(10)
    finally:
        client.stop.set()
        client.close()
        for p in pods:
            p.kill()
        view.stop()
        store.close()
    assert not client.failures, (client.failures[:5], client.errors[-5:])
    assert sizes and min(sizes) >= 2, sizes
    assert client.calls > 100, (client.calls, client.retried)
    print(f"calls={client.calls} retried={client.retried} ring sizes seen={sorted(set(sizes))}")
