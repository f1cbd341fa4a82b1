"""Losing the etcd leader: store writes resume with nothing but clean store errors, an
endpoint list that is all marked failed is still used, and a VM operation whose begin txn
applied although its answer was lost still runs (the hazard of retrying a timed-out write).

Times are printed by `controlplane bench etcd-failover`, never asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from controlplane.client import Client
from controlplane.config.settings import Settings
from controlplane.server import ManagementNode
from controlplane.store import Store, StoreError, StoreUnavailable
from controlplane.testing.agents import AgentProcess
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import host_pb2, vm_pb2


def test_store_writes_resume_after_the_leader_is_killed(etcd3: EtcdCluster) -> None:
    store = Store(etcd3.endpoints)
    results: list[tuple[float, BaseException | None]] = []  # (started, error) per write
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                store.put("/failover/k", str(n).encode())
                results.append((started, None))
            except Exception as exc:  # noqa: BLE001 - the test checks what kind it is
                results.append((started, exc))
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: any(err is None for _, err in results), 10, message="writes run")
        victim = etcd3.members[etcd3.leader_index()]
        assert victim.pid is not None
        killed = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: sum(1 for s, err in results if s >= killed and err is None) >= 20,
                   30, message="writes resume after the leader kill")
    finally:
        stop.set()
        thread.join(10)
        store.close()
    odd = [err for _, err in results if err is not None and not isinstance(err, StoreError)]
    assert not odd, f"errors other than the store's own: {odd[:3]}"


def test_an_endpoint_list_all_marked_failed_is_still_used(etcd3: EtcdCluster) -> None:
    """During an election every member fails an attempt once; the next attempt must still
    go somewhere rather than fail with "no endpoint available" until a mark expires."""
    store = Store(etcd3.endpoints)
    try:
        store.put("/failover/m", b"1")
        for _ in etcd3.members:
            store.endpoint_failed()  # marks the one in use; the next call picks another
            store.channel()
        store.endpoint_failed()
        # the marks last one second; a 0.3 s budget ends long before any expires
        assert store.put("/failover/m", b"2", budget=0.3) > 0
        assert store.get("/failover/m", budget=0.3).value == b"2"
    finally:
        store.close()


@pytest.fixture
def node(etcd: EtcdCluster) -> Iterator[ManagementNode]:
    port = free_port()
    mn = ManagementNode(Settings(node_id="mn-f", listen=f"127.0.0.1:{port}",
                                 advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                 lease_ttl=5, reconcile_interval=0.5, drain_grace=0.5,
                                 tls=harness_pki().node("mn-f")))
    mn.start()
    wait_until(lambda: mn.ready, 15, message="node ready")
    yield mn
    mn.stop()


def test_an_operation_whose_begin_answer_was_lost_still_runs(node: ManagementNode,
                                                             agents) -> None:
    """The begin txn commits but its answer is lost (as when the etcd leader dies after
    replicating it); the store retries, the retry fails its compare, and begin must see
    that the op in etcd is its own instead of refusing the VM as busy with it."""
    agent: AgentProcess = agents.start("fa", hosts=1)
    client = Client(node.settings.advertise, timeout=15)
    try:
        host_id = agent.host_ids[0]
        client.hosts.AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address))
        image = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
        client.vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="lost-1", image=image))
        op_key = node.keys.op("lost-1").encode()
        real = node.store._unary
        lost: list[str] = []

        def answer_lost_once(stub: str, method: str, request, timeout: float):
            response = real(stub, method, request, timeout)
            if method == "Txn" and not lost and response.succeeded and any(
                    op.request_put.key == op_key for op in request.success):
                lost.append("begin")
                raise StoreUnavailable("injected: the txn applied, its answer was lost")
            return response

        node.store._unary = answer_lost_once  # type: ignore[method-assign]
        vm = client.vms.StartVm(vm_pb2.StartVmRequest(vm_id="lost-1", wait=True)).vm
        assert lost == ["begin"]
        assert vm.state == "Running"
        assert node.store.get(node.keys.op("lost-1")) is None  # finished, not left behind
    finally:
        client.close()


def test_bench_etcd_failover_prints_its_figures() -> None:
    """The bench end to end at its smallest (one kill, one node, two VMs); it prints the
    figures, this checks they are there and no VM call failed other than cleanly."""
    out = subprocess.run([sys.executable, "-m", "controlplane", "bench", "etcd-failover",
                          "--runs", "1", "--nodes", "1", "--vms", "2",
                          "--etcd-election-ms", "500", "--json"],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    figures = json.loads(out)
    (run,) = figures["runs"]
    assert run["vm_op_s"] > 0 and run["store_write_s"] > 0 and run["etcd_health_s"] > 0
    assert set(figures["vm_op"]) == {"min_s", "median_s", "max_s"}
    assert "--election-timeout=500" in figures["etcd_args"]
