"""Mutual TLS on real processes (issue 12, transport): every bad client gets a clean
connection failure (UNAVAILABLE: the handshake is refused, no call reaches a handler), the
server keeps serving a good client, and nothing is written; plaintext only with an explicit
--insecure; a server given neither refuses to start, naming both options.

The bad clients: no client certificate, a certificate from another CA, an expired one, a
plaintext client on a TLS port, and a TLS client on an --insecure server.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import ChannelPool, open_channel
from controlplane.rpc import RpcServer
from controlplane.security import pki as pki_files
from controlplane.security.identity import Identity, peer_identity
from controlplane.security.peercert import server_certificate
from controlplane.security.tls import PLAINTEXT, TlsFiles
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.mds import MdsProcess
from controlplane.testing.pki import HarnessPki
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import AgentFactory, NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, host_pb2, vm_pb2, vm_pb2_grpc

IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


def create(channel: grpc.Channel, vm_id: str) -> grpc.StatusCode:
    """CreateVm on `channel`: the code it ends with (OK when it got through)."""
    try:
        vm_pb2_grpc.VmServiceStub(channel).CreateVm(
            vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def health(channel: grpc.Channel) -> str:
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def assert_refused_and_unharmed(node, bad: grpc.Channel, vm_id: str) -> None:  # type: ignore[no-untyped-def]
    """The bad client's write fails to connect; the node still answers a good client and
    holds no record of the write."""
    try:
        assert create(bad, vm_id) == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as err:
            health(bad)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        bad.close()
    assert health(node.channel()) == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert create(node.channel(), f"{vm_id}-good") == grpc.StatusCode.OK  # writes still work


@pytest.fixture
def node(etcd: EtcdCluster, nodes: NodeFactory):  # type: ignore[no-untyped-def]
    return nodes.start("tls-0", etcd.endpoints)


def test_no_client_certificate(node, pki: HarnessPki) -> None:  # type: ignore[no-untyped-def]
    bad = grpc.secure_channel(node.address, grpc.ssl_channel_credentials(
        root_certificates=Path(pki.admin().ca).read_bytes()))
    assert_refused_and_unharmed(node, bad, "vm-nocert")


def test_a_certificate_from_another_ca(node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stranger = HarnessPki(tmp_path / "other-pki").admin()  # same names, another CA
    assert_refused_and_unharmed(node, open_channel(node.address, tls=stranger), "vm-otherca")


def test_an_expired_certificate(node, pki: HarnessPki) -> None:  # type: ignore[no-untyped-def]
    now = dt.datetime.now(dt.UTC)
    out = pki.base / "expired-admin"
    pki_files.issue_identity(pki.base, "user", "admin", role="admin", out=out, now=now,
                             days=-1, not_before=now - dt.timedelta(days=2))
    assert_refused_and_unharmed(node, open_channel(node.address, tls=TlsFiles.from_dir(out)),
                                "vm-expired")


def test_a_plaintext_client_on_a_tls_port(node) -> None:  # type: ignore[no-untyped-def]
    assert_refused_and_unharmed(node, open_channel(node.address, tls=PLAINTEXT),
                                "vm-plain")


def test_a_tls_client_on_an_insecure_server(etcd: EtcdCluster, nodes: NodeFactory,
                                            pki: HarnessPki) -> None:
    plain = nodes.start("plain-0", etcd.endpoints, tls=PLAINTEXT)
    assert plain.client_tls is PLAINTEXT  # the harness talks plaintext to it
    assert_refused_and_unharmed(plain, open_channel(plain.address, tls=pki.admin()),
                                "vm-tls-on-plain")


def test_insecure_serves_plaintext_and_says_so(etcd: EtcdCluster, nodes: NodeFactory,
                                               agents: AgentFactory) -> None:
    """--insecure end to end: a plaintext node drives a plaintext agent (node -> agent
    without certificates), and both logged the warning at start."""
    node = nodes.start("plain-1", etcd.endpoints, tls=PLAINTEXT)
    agent = agents.start("plain-ag", tls=PLAINTEXT)
    c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                  address=agent.address), timeout=10)
    vm = c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="vm-p", image=IMAGE, start=True, wait=True), timeout=30).vm
    assert vm.state == "Running" and vm.host_id == agent.host_ids[0]
    for process in (node, agent):
        assert re.search(r"WARNING .*serving PLAINTEXT .*--insecure", process.log_text()), \
            process.log_text()[-2000:]


@pytest.mark.parametrize("command", [
    ["serve", "--node-id", "n-x", "--listen", "127.0.0.1:{port}"],
    ["agent", "--listen", "127.0.0.1:{port}"],
    ["mds", "--listen", "127.0.0.1:{port}"],
])
def test_a_server_without_certificates_or_insecure_does_not_start(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "controlplane",
                           *(a.format(port=port) for a in command)],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 2, done
    assert "--tls-dir" in done.stderr and "--insecure" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("command", "state"), [
    (["serve", "--node-id", "n-x", "--listen", "127.0.0.1:{port}", "--etcd", "127.0.0.1:1"],
     "expired"),
    (["agent", "--listen", "127.0.0.1:{port}"], "expired"),
    (["mds", "--listen", "127.0.0.1:{port}"], "expired"),
    (["serve", "--node-id", "n-x", "--listen", "127.0.0.1:{port}", "--etcd", "127.0.0.1:1"],
     "not yet valid"),
])
def test_a_server_with_an_invalid_own_certificate_does_not_start(
        pki: HarnessPki, tmp_path: Path, command: list[str], state: str) -> None:
    """serve, agent and mds check their own certificate before anything starts (a node
    before it touches etcd): exit 1, one error line naming the file, subject, serial and
    dates, no traceback, nothing listening."""
    out = tmp_path / "bad-identity"
    now = dt.datetime.now(dt.UTC)
    if state == "expired":
        pki_files.issue_identity(pki.base, "node", "n-x", out=out, now=now, days=-1,
                                 not_before=now - dt.timedelta(days=2))
    else:
        pki_files.issue_identity(pki.base, "node", "n-x", out=out,
                                 now=now + dt.timedelta(days=2), days=30,
                                 not_before=now + dt.timedelta(days=1))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROLPLANE_")}
    done = subprocess.run([sys.executable, "-m", "controlplane",
                           *(a.format(port=port) for a in command), "--tls-dir", str(out),
                           "--log-format", "text"],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if "refusing to start" in ln]
    assert str(out / "tls.crt") in line and "CN=node:n-x" in line, line
    assert ("expired at" if state == "expired" else "not valid before") in line, line
    assert f"tls_file={out / 'tls.crt'}" in line and "not_after=" in line, line


def test_another_ca_is_refused_by_agents_and_mds_too(agents: AgentFactory, tmp_path,
                                                     pki: HarnessPki) -> None:
    """Agents and MDS require client certificates from the CA like nodes do: a node of
    another installation cannot drive them."""
    agent = agents.start("strict-ag")
    mds = MdsProcess("strict-mds", free_port(), str(tmp_path)).start()
    try:
        mds.wait_ready()
        stranger = HarnessPki(tmp_path / "other-pki").node("tls-0")
        for process in (agent, mds):
            bad = open_channel(process.address, tls=stranger)
            try:
                with pytest.raises(grpc.RpcError) as err:
                    health(bad)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            finally:
                bad.close()
            assert health(process.channel()) == "SERVING"
    finally:
        mds.kill()


def test_channels_are_reused_so_handshakes_stand_still(etcd: EtcdCluster,
                                                       nodes: NodeFactory) -> None:
    """The server's handshake count (controlplane_tls_handshakes_total) after 50 calls on
    one channel is what it was after the first: one handshake per channel, not per call."""
    port = free_port()
    node = nodes.start("hs-0", etcd.endpoints, metrics_port=port)

    def handshakes() -> float:
        text = c.scrape_metrics(port)
        return float(re.search(r"^controlplane_tls_handshakes_total (\S+)$", text,
                               re.M).group(1))  # type: ignore[union-attr]

    channel = open_channel(node.address, tls=node.client_tls)
    try:
        stub = cluster_pb2_grpc.ClusterServiceStub(channel)
        stub.GetRing(cluster_pb2.GetRingRequest(), timeout=5)
        before = handshakes()
        for _ in range(50):
            stub.GetRing(cluster_pb2.GetRingRequest(), timeout=5)
        assert handshakes() == before
    finally:
        channel.close()


class WhoAmI(cluster_pb2_grpc.ClusterServiceServicer):
    def WhoOwns(self, request, context):  # type: ignore[no-untyped-def]
        who = peer_identity(context)
        return cluster_pb2.WhoOwnsResponse(owner=repr(who))


@pytest.mark.parametrize(("kind", "name", "role", "expected"), [
    ("user", "alice", "reader", Identity("user", "alice", "reader")),
    ("node", "node-7", None, Identity("node", "node-7", "node")),
    ("agent", "host-3", None, None),  # read, and refused: agents call no node service
])
def test_the_server_reads_the_callers_identity_from_its_certificate(
        pki: HarnessPki, kind: str, name: str, role: str | None,
        expected: Identity | None) -> None:
    """peer_identity: the one reading of the verified peer certificate (CN, O), which the
    access policy keys on (an agent's certificate passes no level of it)."""
    server = RpcServer("127.0.0.1:0", tls=pki.node("whoami"))
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, WhoAmI(),
               "controlplane.v1.ClusterService")
    port = server.start()
    try:
        with open_channel(f"127.0.0.1:{port}", tls=pki.files(kind, name, role)) as channel:
            stub = cluster_pb2_grpc.ClusterServiceStub(channel)
            if expected is None:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
                assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert f"{kind}:{name}" in refused.value.details()
                return
            answer = stub.WhoOwns(cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
        assert answer.owner == repr(expected)
    finally:
        server.stop(0)


def test_a_plaintext_caller_has_no_identity() -> None:
    server = RpcServer("127.0.0.1:0", tls=PLAINTEXT)
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, WhoAmI(),
               "controlplane.v1.ClusterService")
    port = server.start()
    try:
        with open_channel(f"127.0.0.1:{port}", tls=PLAINTEXT) as channel:
            answer = cluster_pb2_grpc.ClusterServiceStub(channel).WhoOwns(
                cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
        assert answer.owner == "None"
    finally:
        server.stop(0)


def test_certs_commands_make_files_a_server_takes(tmp_path: Path) -> None:
    """`certs init` + `certs issue` (the CLI a user runs) produce a CA and identities that a
    server and a client accept; --help answers."""
    def cp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controlplane", *args],
                              capture_output=True, text=True, timeout=30, check=False)

    base = tmp_path / "pki"
    assert cp("certs", "init", "--dir", str(base)).returncode == 0
    assert cp("certs", "init", "--dir", str(base)).returncode == 1  # never replaced
    issued = cp("certs", "issue", "--dir", str(base), "--kind", "node", "--name", "n1")
    assert issued.returncode == 0 and "CN=node:n1 O=node" in issued.stdout, issued
    assert cp("certs", "issue", "--dir", str(base), "--kind", "user", "--name", "ops",
              "--role", "operator").returncode == 0
    refused = cp("certs", "issue", "--dir", str(base), "--kind", "user", "--name", "x")
    assert refused.returncode == 1 and "needs a role" in refused.stderr
    shown = cp("certs", "show", str(base / "ops"))
    assert "CN=ops O=operator" in shown.stdout and "valid now" in shown.stdout
    for sub in ([], ["init"], ["issue"], ["show"]):
        helped = cp("certs", *sub, "--help")
        assert helped.returncode == 0 and "usage:" in helped.stdout
    server = RpcServer("127.0.0.1:0", tls=TlsFiles.from_dir(base / "node-n1"))
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, WhoAmI(),
               "controlplane.v1.ClusterService")
    port = server.start()
    try:
        with open_channel(f"localhost:{port}", tls=TlsFiles.from_dir(base / "ops")) as ch:
            answer = cluster_pb2_grpc.ClusterServiceStub(ch).WhoOwns(
                cluster_pb2.WhoOwnsRequest(resource_id="r"), timeout=5)
        assert answer.owner == repr(Identity("user", "ops", "operator"))
    finally:
        server.stop(0)
    assert pki_files.identity_dir("user", "ops") == "ops"


def _expired(base: Path, kind: str, name: str, role: str | None, out: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    pki_files.issue_identity(base, kind, name, role=role, out=out, now=now, days=-1,
                             not_before=now - dt.timedelta(days=2))


def test_a_server_picks_up_rotated_files_without_a_restart(pki: HarnessPki,
                                                           tmp_path: Path) -> None:
    """Rotated files are taken at the next handshake, no restart; an expired set in their
    place is refused (logged, the pair in use kept: new handshakes still succeed with it)."""
    out = tmp_path / "rotating-node"
    pki_files.issue_identity(pki.base, "node", "rot", out=out)
    server = RpcServer("127.0.0.1:0", tls=TlsFiles.from_dir(out))
    server.add(cluster_pb2_grpc.add_ClusterServiceServicer_to_server, WhoAmI(),
               "controlplane.v1.ClusterService")
    port = server.start()
    address = f"127.0.0.1:{port}"
    assert server.tls_config is not None
    first = server.tls_config.serial

    def presented() -> str:
        return format(server_certificate(address, pki.admin(), 5).serial_number, "x")

    try:
        assert presented() == first
        _expired(pki.base, "node", "rot", None, out)  # a bad rotation
        assert presented() == first  # refused at this handshake's reload: the old pair
        with open_channel(address, tls=pki.admin()) as channel:
            assert health(channel) == "SERVING"
        assert server.tls_config.refusals == 1 and server.tls_config.reloads == 0
        pki_files.issue_identity(pki.base, "node", "rot", out=out)  # the good rotation
        assert presented() == server.tls_config.serial != first
        assert server.tls_config.reloads == 1
    finally:
        server.stop(0)


def test_a_client_pool_picks_up_rotated_files(node, pki: HarnessPki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pool whose client certificate has expired fails to connect; once valid files
    replace it, the pool opens new channels with them (checked at most every second)."""
    out = tmp_path / "rotating-admin"
    _expired(pki.base, "user", "admin", "admin", out)
    pool = ChannelPool(tls=TlsFiles.from_dir(out))
    try:
        stub = pool.stub(cluster_pb2_grpc.ClusterServiceStub, node.address)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetRing(cluster_pb2.GetRingRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        pki_files.issue_identity(pki.base, "user", "admin", role="admin", out=out)
        wait_until(lambda: pool.stub(cluster_pb2_grpc.ClusterServiceStub, node.address)
                   .GetRing(cluster_pb2.GetRingRequest(), timeout=2).members, 10,
                   message="a call with the rotated client certificate")
        assert pool.rotations == 1
    finally:
        pool.close()


@pytest.mark.parametrize("state", ["expired", "not yet valid"])
def test_a_node_names_an_agent_certificate_that_does_not_verify(
        pki: HarnessPki, tmp_path: Path, caplog: pytest.LogCaptureFixture, state: str) -> None:
    """An agent presenting an expired (or not yet valid) certificate gets no call, and the
    node's log line names the address, the reason, the certificate's subject and dates
    (gRPC's failed handshake says none of it). The agent here is a bare gRPC server: ours
    refuse to start with such a certificate."""
    from concurrent import futures

    from controlplane.agentclient import AgentClients, NotThisHostsAgent

    out = tmp_path / "agent-bad"
    now = dt.datetime.now(dt.UTC)
    if state == "expired":
        pki_files.issue_identity(pki.base, "agent", "h-bad", out=out, now=now, days=-1,
                                 not_before=now - dt.timedelta(days=2))
    else:
        pki_files.issue_identity(pki.base, "agent", "h-bad", out=out,
                                 now=now + dt.timedelta(days=2), days=30,
                                 not_before=now + dt.timedelta(days=1))
    files = TlsFiles.from_dir(out)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(Path(files.key).read_bytes(), Path(files.cert).read_bytes())],
        root_certificates=Path(files.ca).read_bytes(), require_client_auth=True))
    server.start()
    clients = AgentClients(tls=pki.node("names-0"))
    try:
        with caplog.at_level("ERROR"):
            for _ in range(2):
                with pytest.raises(NotThisHostsAgent) as err:
                    clients.stub(f"127.0.0.1:{port}", "h-bad")
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert ("expired" if state == "expired" else "not yet valid") in err.value.details()
        (line,) = [r for r in caplog.records if getattr(r, "peer", None)]  # once, not per call
        assert line.peer == f"127.0.0.1:{port}" and line.host_id == "h-bad"
        assert "CN=agent:h-bad" in line.subject and line.not_after and line.serial
        assert "CN=agent:h-bad" in line.getMessage()
    finally:
        server.stop(0)
