"""Certificate rotation without a restart, on real processes (issue 12), while clients call
without a pause: a node, an agent and a client each read their files from a directory that
the test rewrites, either the way the kubelet updates a mounted Secret (`..data` symlink
swap: all three files switch at once) or by plain file replacement (ca.crt, tls.key, then
tls.crt renamed into place one after the other: for a moment the new key sits beside the
old certificate, a set every reader must refuse and keep the old one through).

The rotation, in the order an operator follows:
1. new leaves from the same CA (node, agent, client);
2. a second CA added to every ca.crt beside the first (the leaves unchanged);
3. new leaves from the second CA;
4. the first CA dropped from every ca.crt.

Through all of it two reader threads (GetRing, ListVms, GetVm) and two VM threads (stop and
start, each through the node to the agent) call without a pause; not one call may fail.
After each step the new certificates are seen in use: the serial the node and the agent
present to a new handshake, the client pool's and the node's agent pool's rotation count
(the node's log line naming the new serial), the node's reload counter. After step 4 a
client with a first-CA certificate is refused by the node (so the node trusts the second CA
only) while the VM calls, node to agent on new channels, still succeed.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.channels import ChannelPool, open_channel
from controlplane.security import pki as pki_files
from controlplane.security import x509 as cx509
from controlplane.security.tls import TlsFiles
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import HarnessPki
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import AgentFactory, NodeFactory
from controlplane.testing.rotation import (
    Callers,
    RotatingIdentity,
    pool_reloads_logged,
    presented_serial,
)
from controlplane.testing.waiting import wait_until
from controlplane.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
CALL_TIMEOUT = 15.0
STEP_TIMEOUT = 20.0


def reloads(metrics_port: int) -> float:
    text = c.scrape_metrics(metrics_port)
    found = re.search(r"^controlplane_tls_reloads_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def fleet(request: pytest.FixtureRequest, etcd: EtcdCluster, nodes: NodeFactory,
          agents: AgentFactory, pki: HarnessPki, tmp_path: Path) -> Iterator[dict]:
    layout = request.param
    ca_a = pki_files.read_ca(pki.base)
    bundle_a = cx509.pem_cert(ca_a.cert)
    prefix = "rot-host-"
    node_id = f"rot-{layout}"
    ids = {
        "node": RotatingIdentity(tmp_path / "node", layout, "node", node_id),
        "agent": RotatingIdentity(tmp_path / "agent", layout, "agent", "rot-ag",
                                  hosts=(f"{prefix}*",)),
        "client": RotatingIdentity(tmp_path / "client", layout, "user", "rot-admin",
                                   role="admin"),
    }
    for ident in ids.values():
        ident.issue(ca_a, bundle_a)
    metrics_port = free_port()
    etcd_dir = str(Path(pki.node(node_id).cert).parent)  # etcd stays on the session CA
    node = nodes.start(node_id, etcd.endpoints, tls=ids["node"].files,
                       metrics_port=metrics_port, extra_args=["--etcd-tls-dir", etcd_dir])
    agent = agents.start("rot-ag", hosts=1, host_prefix=prefix, tls=ids["agent"].files)
    pool = ChannelPool(tls=ids["client"].files)
    host_pb2_grpc.HostServiceStub(pool.get(node.address)).AddHost(
        host_pb2.AddHostRequest(host_id=agent.host_ids[0], address=agent.address),
        timeout=CALL_TIMEOUT)
    vm_ids = ["rot-vm-0", "rot-vm-1"]
    for vm_id in vm_ids:
        vm = vm_pb2_grpc.VmServiceStub(pool.get(node.address)).CreateVm(
            vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE, start=True, wait=True),
            timeout=30).vm
        assert vm.state == "Running", vm
    try:
        yield {"ids": ids, "node": node, "agent": agent, "pool": pool, "vm_ids": vm_ids,
               "ca_a": ca_a, "bundle_a": bundle_a, "metrics_port": metrics_port,
               "tmp_path": tmp_path}
    finally:
        pool.close()


@pytest.mark.parametrize("fleet", ["secret", "files"], indirect=True)
def test_rotation_under_continuous_calls_fails_no_call(fleet: dict) -> None:
    ids: dict[str, RotatingIdentity] = fleet["ids"]
    node, agent, pool = fleet["node"], fleet["agent"], fleet["pool"]
    metrics_port = fleet["metrics_port"]
    ca_a: cx509.Issued = fleet["ca_a"]
    bundle_a: bytes = fleet["bundle_a"]
    ca_b = cx509.build_ca(dt.datetime.now(dt.UTC), name="controlplane-next")
    bundle_b = cx509.pem_cert(ca_b.cert)
    callers = Callers(pool, node.address, fleet["vm_ids"])
    callers.start()
    client = ids["client"]

    def step_done(rotations: int, node_serial: int | None = None,
                  agent_serial: int | None = None, node_reloads: int | None = None) -> None:
        wait_until(lambda: pool.rotations >= rotations, STEP_TIMEOUT,
                   message=f"the client pool takes rotation {rotations}")
        wait_until(lambda: len(pool_reloads_logged(node.log_text(), ids["node"].files))
                   >= rotations, STEP_TIMEOUT,
                   message=f"the node's agent pool takes rotation {rotations}")
        if node_serial is not None:
            wait_until(lambda: presented_serial(node.address, client.files) == node_serial,
                       STEP_TIMEOUT, message="the node presents its new certificate")
        if agent_serial is not None:
            wait_until(lambda: presented_serial(agent.address, client.files) == agent_serial,
                       STEP_TIMEOUT, message="the agent presents its new certificate")
        if node_reloads is not None:
            wait_until(lambda: reloads(metrics_port) >= node_reloads, STEP_TIMEOUT,
                       message=f"the node's server reloaded {node_reloads} times")

    try:
        wait_until(lambda: all(callers.successes_since(n, 0) >= 2 for n in callers.names()),
                   STEP_TIMEOUT, message="every caller got calls through before the rotation")
        # 1. new leaves from the same CA
        for ident in ids.values():
            ident.issue(ca_a, bundle_a)
        step_done(1, ids["node"].serial, ids["agent"].serial, node_reloads=1)
        assert pool_reloads_logged(node.log_text(), ids["node"].files)[-1] == format(
            ids["node"].serial, "x")
        # 2. the second CA beside the first, leaves unchanged
        both = bundle_a + bundle_b
        for ident in ids.values():
            ident.publish(both)
        step_done(2, node_reloads=2)
        # 3. leaves from the second CA
        for ident in ids.values():
            ident.issue(ca_b, both)
        step_done(3, ids["node"].serial, ids["agent"].serial, node_reloads=3)
        # 4. the first CA dropped
        for ident in ids.values():
            ident.publish(bundle_b)
        step_done(4, node_reloads=4)
        final = time.monotonic()
        # a first-CA client, even one that trusts both CAs, is refused now
        old = pki_files.write_identity(
            fleet["tmp_path"] / "old-ca-client", both,
            cx509.issue(ca_a, "user", "rot-admin", dt.datetime.now(dt.UTC), role="admin"))
        with open_channel(node.address, tls=TlsFiles.from_dir(old)) as refused:
            with pytest.raises(grpc.RpcError) as err:
                cluster_pb2_grpc.ClusterServiceStub(refused).GetRing(
                    cluster_pb2.GetRingRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # VM calls (node -> agent on channels opened after step 4) still go through
        wait_until(lambda: all(callers.successes_since(f"vm-{v}", final) >= 2
                               for v in callers.vm_ids), STEP_TIMEOUT,
                   message="VM calls through the node to the agent after the last step")
    finally:
        callers.join()
    assert callers.failures == [], callers.failures
    assert pool.rotations == 4 and pool.credentials is not None
    assert pool.credentials.serial == format(client.serial, "x")
    assert {n: len(t) for n, t in callers.ok.items()}, callers.ok
