"""What `up` runs: the embedded etcd, the management nodes and the sim agent.

Nodes and agent are ServingProcess subclasses (controlplane.serving, the process model the
test harness shares), started with_parent: each gets SIGTERM when `up` dies, even by
`kill -9`, so a crashed `up` leaves no orphans. Each runs in its own session, so a
terminal's Ctrl-C reaches only `up`, which stops nodes before etcd.

Mutual TLS by default: `up_pki` makes a CA in DATA/tls (kept when the data directory is
reused) and issues each node, the agent and the user `admin` (DATA/tls/admin, what `up`
tells the user to export as CONTROLPLANE_TLS_DIR) a certificate; `up` itself calls as admin.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from controlplane.channels import LARGE_MESSAGE_OPTIONS
from controlplane.security import pki
from controlplane.security.tls import (
    PLAINTEXT,
    Plaintext,
    TlsFiles,
    Transport,
    channel_credentials,
)
from controlplane.serving import ServingProcess
from controlplane.store.auth import ROOT, EtcdLogin, enable_auth_at
from controlplane.store.embedded import EtcdServer

__all__ = ["CHANNEL_OPTIONS", "ETCD_ARGS", "HOST_PREFIX", "AgentChild", "NodeChild",
           "UpPki", "embedded_etcd", "tls_args", "up_pki"]

HOST_PREFIX = "host-"

# ListVms of a large fleet (about 200 bytes a VM) is beyond the default 4 MiB limit.
CHANNEL_OPTIONS = LARGE_MESSAGE_OPTIONS

# etcd closes connections whose clients ping more often than every 5 s ("too_many_pings");
# nodes ping every min(5, ttl/2) s, so short TTLs need a lower floor.
ETCD_ARGS = ("--grpc-keepalive-min-time=500ms",)
# the embedded etcd's auth: the nodes' user (a role limited to the key prefix), and the CN
# of the certificate `up` sets it up with
ETCD_USER = "controlplane"
ETCD_ROOT = ROOT


@dataclass(frozen=True)
class UpPki:
    """The transport of every child and of `up` itself (all PLAINTEXT with --insecure)."""

    nodes: dict[str, Transport]
    agent: Transport
    admin: Transport
    admin_dir: Path | None  # what the user exports as CONTROLPLANE_TLS_DIR
    etcd: TlsFiles | None = None  # the embedded etcd member's certificate
    etcd_root: TlsFiles | None = None  # CN root: sets up etcd auth (store/auth.py)
    etcd_password_file: Path | None = None  # the nodes' etcd user's password


def up_pki(data_dir: str, node_ids: list[str], agent: bool, insecure: bool) -> UpPki:
    """A CA in DATA/tls (the one already there when DATA is reused) and fresh certificates
    for the nodes, the agent and the admin user, or PLAINTEXT for all with --insecure."""
    if insecure:
        return UpPki({n: PLAINTEXT for n in node_ids}, PLAINTEXT, PLAINTEXT, None)
    base = Path(data_dir) / "tls"
    if not (base / pki.CA_DIR / pki.CERT_FILE).exists():
        pki.init_ca(base, name="controlplane-up")
    nodes: dict[str, Transport] = {
        n: TlsFiles.from_dir(pki.issue_identity(base, "node", n)) for n in node_ids}
    # the sim agent speaks for host-0.. (a host SAN `host-*`: controlplane.security.x509)
    agent_tls: Transport = (TlsFiles.from_dir(pki.issue_identity(
        base, "agent", "agent", hosts=[f"{HOST_PREFIX}*"])) if agent else PLAINTEXT)
    admin_dir = pki.issue_identity(base, "user", "admin", role="admin")
    etcd_tls = TlsFiles.from_dir(pki.issue_identity(base, "etcd", "up"))
    root = TlsFiles.from_dir(pki.issue_identity(base, "user", ETCD_ROOT, role="admin"))
    password_file = base / "etcd-password"
    if not password_file.exists():  # kept with the data dir: etcd has the user already
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return UpPki(nodes, agent_tls, TlsFiles.from_dir(admin_dir), admin_dir, etcd_tls, root,
                 password_file)


def etcd_login(pki_: UpPki) -> EtcdLogin | None:
    """The etcd user the nodes log in as (None with --insecure or an external etcd)."""
    if pki_.etcd_password_file is None:
        return None
    return EtcdLogin(ETCD_USER, pki_.etcd_password_file.read_text().strip())


def setup_etcd_auth(pki_: UpPki, endpoint: str, prefix: str) -> None:
    """Turn the embedded etcd's auth on (idempotent: a reused data dir has it on already)."""
    login = etcd_login(pki_)
    if login is None or pki_.etcd_root is None:
        return
    enable_auth_at(endpoint, channel_credentials(pki_.etcd_root), prefix, login)


def tls_args(tls: Transport) -> list[str]:
    """The flags that give a child `tls`."""
    if isinstance(tls, Plaintext):
        return ["--insecure"]
    return ["--ca", tls.ca, "--cert", tls.cert, "--key", tls.key]


def embedded_etcd(data_dir: str, port: int, tls: TlsFiles | None = None) -> EtcdServer:
    """The single-member etcd of a local cluster: data in DATA/etcd, log in DATA/etcd.log,
    client port `port`, peer port `port`+1; with `tls` (not --insecure) client and peer
    TLS with client certificates required, /health on port+2."""
    return EtcdServer(
        "up", os.path.join(data_dir, "etcd"), client_port=port, peer_port=port + 1,
        extra_args=ETCD_ARGS, log_path=os.path.join(data_dir, "etcd.log"), with_parent=True,
        tls=tls, metrics_port=port + 2 if tls is not None else None,
    )


class NodeChild(ServingProcess):
    """One management node (`controlplane serve`), its log in DATA/logs/NODE.log."""

    kind = "node"
    channel_options = CHANNEL_OPTIONS

    def __init__(self, node_id: str, port: int, metrics_port: int, etcd: str, lease_ttl: int,
                 data_dir: str, tls: Transport, client_tls: Transport,
                 etcd_password_file: Path | None = None) -> None:
        self.etcd_password_file = etcd_password_file
        self.node_id = node_id
        self.port = port
        self.metrics_port = metrics_port
        self.etcd = etcd
        self.lease_ttl = lease_ttl
        self.data_dir = data_dir
        self.tls = tls
        super().__init__(node_id, os.path.join(data_dir, "logs", f"{node_id}.log"),
                         with_parent=True, client_tls=client_tls)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane", "serve",
            "--node-id", self.node_id,
            "--listen", self.address,
            "--etcd", self.etcd,
            "--lease-ttl", str(self.lease_ttl),
            "--metrics-port", str(self.metrics_port),
            # loopback like everything else `up` runs (stated, not left to the default)
            "--metrics-address", "127.0.0.1",
            "--log-format", "text",
            # one directory for every node: on one box it is "mounted everywhere"
            "--image-dir", os.path.join(self.data_dir, "images"),
            *tls_args(self.tls),
            *(["--etcd-user", ETCD_USER, "--etcd-password-file", str(self.etcd_password_file)]
              if self.etcd_password_file is not None else []),
        ]  # fmt: skip


class AgentChild(ServingProcess):
    """The sim agent serving every host of the local fleet (host-0..), its log in
    DATA/logs/agent.log. Never restarted by `up`: a restarted sim agent has lost its VMs."""

    kind = "agent"
    channel_options = CHANNEL_OPTIONS

    def __init__(self, port: int, hosts: int, data_dir: str, tls: Transport,
                 client_tls: Transport) -> None:
        self.port = port
        self.hosts = hosts
        self.tls = tls
        super().__init__("agent", os.path.join(data_dir, "logs", "agent.log"),
                         with_parent=True, client_tls=client_tls)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host_ids(self) -> list[str]:
        return [f"{HOST_PREFIX}{i}" for i in range(self.hosts)]

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", self.address,
            "--backend", "sim",
            "--hosts", str(self.hosts),
            "--host-prefix", HOST_PREFIX,
            # fault injection on a port of its own (AGENT_PORT+1), never the agent's
            "--sim-control-listen", f"127.0.0.1:{self.port + 1}",
            *tls_args(self.tls),
        ]  # fmt: skip
