"""Access control on real processes (issue 12, "Identities and roles", "Agents obey only
nodes", "Bad input"): a valid certificate is not enough, its identity must pass the method's
policy (controlplane/security/policy.py). Each refusal gets its code, the server keeps
serving, and nothing is written.

- a reader may read and may not destroy (PERMISSION_DENIED, the VM untouched);
- a user certificate (even admin) where a node certificate is required (AgentService,
  AgentBlockJobs, StorageMds called directly) is refused, and the host is not fenced;
- forwarded-call metadata (the original caller's identity) is believed only from a node
  certificate: from a user it is refused, so a reader cannot claim to be admin; from a node
  the owner judges the caller it names, not the node;
- a forwarded read reaches the owner as the reader who asked, and is served;
- SimControl is not on the agent's port;
- an agent speaks only for the hosts its certificate names (NodeRestriction): registering
  it for another host fails, and an impostor on a host's address gets its reports refused
  and cannot steer HA.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from controlplane.channels import open_channel
from controlplane.metadata import CALLER, FORWARDED_BY
from controlplane.security.identity import Identity
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import HarnessPki
from controlplane.testing.pytest_plugin import AgentFactory, NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    blockjob_pb2,
    blockjob_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    config_pb2,
    host_pb2,
    vm_pb2,
    vm_pb2_grpc,
)

IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
READER = Identity("user", "rita", "reader")
ADMIN = Identity("user", "admin", "admin")


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def node(etcd: EtcdCluster, nodes: NodeFactory) -> NodeProcess:
    return nodes.start("acl-0", etcd.endpoints)


@pytest.fixture
def reader(pki: HarnessPki, node: NodeProcess) -> Iterator[grpc.Channel]:
    with open_channel(node.address, tls=pki.user("rita", "reader")) as channel:
        yield channel


def make_vm(node: NodeProcess, vm_id: str) -> None:
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE), timeout=10)


def test_a_reader_reads_and_may_not_destroy(node: NodeProcess, reader: grpc.Channel) -> None:
    make_vm(node, "vm-r")
    before = c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="vm-r"), timeout=5)
    stub = vm_pb2_grpc.VmServiceStub(reader)
    assert stub.GetVm(vm_pb2.GetVmRequest(vm_id="vm-r"), timeout=5).vm.vm_id == "vm-r"
    with pytest.raises(grpc.RpcError) as refused:
        stub.DestroyVm(vm_pb2.DestroyVmRequest(vm_id="vm-r"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "needs role operator" in refused.value.details()
    assert code_of(lambda: stub.CreateVm(vm_pb2.CreateVmRequest(vm_id="vm-w", image=IMAGE),
                                         timeout=5)) is grpc.StatusCode.PERMISSION_DENIED
    # nothing written: the VM is as it was, the refused create left no record
    after = c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="vm-r"), timeout=5)
    assert after == before
    assert code_of(lambda: c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="vm-w"), timeout=5)
                   ) is grpc.StatusCode.NOT_FOUND
    # the refusal is logged once per (identity, reason), not per call
    for _ in range(3):
        code_of(lambda: stub.DestroyVm(vm_pb2.DestroyVmRequest(vm_id="vm-r"), timeout=5))
    wait_until(lambda: "refused rita" in node.log_text(), timeout=5)
    lines = [line for line in node.log_text().splitlines()
             if "refused rita" in line and "DestroyVm" in line]
    assert len(lines) == 1, lines


def test_agents_obey_only_node_certificates(pki: HarnessPki, agents: AgentFactory) -> None:
    agent = agents.start("acl-agent", hosts=1)
    host = agent.host_ids[0]
    with open_channel(agent.address, tls=pki.admin()) as admin:
        stub = agent_pb2_grpc.AgentServiceStub(admin)
        for call in (lambda: stub.Fence(agent_pb2.FenceRequest(host_id=host), timeout=5),
                     lambda: stub.ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host),
                                          timeout=5)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "node certificates only" in refused.value.details()
        jobs = blockjob_pb2_grpc.AgentBlockJobsServiceStub(admin)
        assert code_of(lambda: jobs.GetDiskChain(blockjob_pb2.GetDiskChainRequest(vm_id="v"),
                                                 timeout=5)) is grpc.StatusCode.PERMISSION_DENIED
    # the host was not fenced, and a node certificate is obeyed
    ping = agent.stub().Ping(agent_pb2.PingRequest(host_id=host), timeout=5)
    assert ping.host_id == host
    # fault injection is not on the agent's port, only on --sim-control-listen
    on_agent_port = agent_pb2_grpc.SimControlServiceStub(agent.channel())
    assert code_of(lambda: on_agent_port.Configure(agent_pb2.ConfigureRequest(), timeout=5)
                   ) is grpc.StatusCode.UNIMPLEMENTED
    agent.sim().Configure(agent_pb2.ConfigureRequest(), timeout=5)


def test_forwarded_identity_metadata_from_a_user_is_refused(node: NodeProcess,
                                                            reader: grpc.Channel) -> None:
    make_vm(node, "vm-f")
    stub = vm_pb2_grpc.VmServiceStub(reader)
    for metadata in (((CALLER, ADMIN.header()),), ((FORWARDED_BY, "acl-0"),),
                     ((FORWARDED_BY, "acl-0"), (CALLER, ADMIN.header()))):
        with pytest.raises(grpc.RpcError) as refused:
            stub.DestroyVm(vm_pb2.DestroyVmRequest(vm_id="vm-f"), metadata=metadata, timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "only from node certificates" in refused.value.details()
    # not even an admin may pass identities on
    admin = vm_pb2_grpc.VmServiceStub(node.channel())
    assert code_of(lambda: admin.GetVm(vm_pb2.GetVmRequest(vm_id="vm-f"),
                                       metadata=((CALLER, READER.header()),), timeout=5)
                   ) is grpc.StatusCode.PERMISSION_DENIED
    assert c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="vm-f"), timeout=5).vm.vm_id == "vm-f"


def test_a_node_passes_on_its_callers_identity_and_the_owner_judges_it(
        pki: HarnessPki, etcd: EtcdCluster, nodes: NodeFactory) -> None:
    a = nodes.start("acl-a", etcd.endpoints)
    b = nodes.start("acl-b", etcd.endpoints)
    wait_until(lambda: c.converged([a, b], {"acl-a", "acl-b"}), timeout=15,
               message="two nodes did not converge")
    # A reader's routed read, asked of the node that does not own it: forwarded (with the
    # reader's identity), and served by the owner.
    rid = next(r for r in (f"r-{i}" for i in range(100)) if c.owners(a, [r]) == ["acl-b"])
    with open_channel(a.address, tls=pki.user("rita", "reader")) as reader:
        located = cluster_pb2_grpc.ClusterServiceStub(reader).Locate(
            cluster_pb2.LocateRequest(resource_id=rid), timeout=10)
    assert located.served_by == "acl-b" and located.forwarded
    # A node certificate's forwarded call is judged as the caller it names.
    make_vm(a, "vm-n")
    with open_channel(b.address, tls=pki.node("acl-a")) as as_node:
        stub = vm_pb2_grpc.VmServiceStub(as_node)
        forwarded_for_reader = ((FORWARDED_BY, "acl-a"), (CALLER, READER.header()))
        with pytest.raises(grpc.RpcError) as refused:
            stub.DestroyVm(vm_pb2.DestroyVmRequest(vm_id="vm-n"),
                           metadata=forwarded_for_reader, timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "rita" in refused.value.details() and "forwarded by node:acl-a" \
            in refused.value.details()
        bad = ((FORWARDED_BY, "acl-a"), (CALLER, "user root rita"))
        assert code_of(lambda: stub.GetVm(vm_pb2.GetVmRequest(vm_id="vm-n"), metadata=bad,
                                          timeout=5)) is grpc.StatusCode.UNAUTHENTICATED
    assert c.vms(a).GetVm(vm_pb2.GetVmRequest(vm_id="vm-n"), timeout=5).vm.vm_id == "vm-n"


FAST = {"vm.syncInterval": "0.3", "host.pingTimeout": "1", "host.pingFailures": "2"}


def test_an_agent_speaks_only_for_the_hosts_its_certificate_names(
        pki: HarnessPki, etcd: EtcdCluster, nodes: NodeFactory, agents: AgentFactory) -> None:
    """NodeRestriction: a sim agent would answer for any host it serves; the node believes
    it only for the hosts its certificate names (here CN agent:h-1, no host SANs)."""
    node = nodes.start("acl-h", etcd.endpoints)
    for key, value in FAST.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)
    real = agents.start("real", hosts=2, host_prefix="h-")  # certificate: host SAN h-*
    impostor = agents.start("imp", hosts=2, host_prefix="h-", tls=pki.agent("h-1"))
    hosts = c.hosts(node)
    hosts.AddHost(host_pb2.AddHostRequest(host_id="h-1", address=impostor.address), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        hosts.AddHost(host_pb2.AddHostRequest(host_id="h-0", address=impostor.address),
                      timeout=10)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "may not speak for host 'h-0'" in refused.value.details()
    assert code_of(lambda: hosts.GetHost(host_pb2.GetHostRequest(host_id="h-0"), timeout=5)
                   ) is grpc.StatusCode.NOT_FOUND
    # h-0 registered with its real agent, an HA VM on it
    hosts.AddHost(host_pb2.AddHostRequest(host_id="h-0", address=real.address), timeout=10)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="db", image=IMAGE, ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id="h-0", start=True,
        wait=True), timeout=10)
    # The real agent dies and an impostor with h-1's certificate takes its port: it reports
    # h-0 empty (read as a crash, HA would restart db elsewhere) and would take a fence.
    real.kill()
    agents.start("imp2", hosts=2, host_prefix="h-", port=real.port, tls=pki.agent("h-1"))
    wait_until(lambda: f"the agent at {real.address} presents 'agent:h-1', which may not "
               "speak for host 'h-0'" in node.log_text(), timeout=20,
               message="the node never refused the impostor's reports")
    wait_until(lambda: "fence failed" in node.log_text(), timeout=20,
               message="HA never tried (and failed) to fence h-0 through the impostor")
    db = c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="db"), timeout=5).vm
    assert db.host_id == "h-0" and db.generation == 1  # not restarted on the impostor's word
    status = hosts.GetHost(host_pb2.GetHostRequest(host_id="h-0"), timeout=5).host.status
    assert status != host_pb2.HOST_STATUS_CONNECTED
