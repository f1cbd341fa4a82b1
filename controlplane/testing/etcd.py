"""Throwaway etcd clusters (1 or 3 members) on loopback for tests.

Secure as a deployment's: client and peer TLS with client certificates required
(`--client-cert-auth`), each member with an `etcd:<name>` certificate from the harness CA
(testing/pki.py), so a node presents its own certificate and a test's Store the admin
identity (CONTROLPLANE_TLS_DIR). `endpoints` stays bare `host:port` (a Store with a
certificate dials it with TLS; a TcpProxy forwards it as bytes); `urls` spells https://.
`tls=False` gives the old plaintext cluster.

`auth=True` (with TLS) also turns etcd auth on after the start (store/auth.py): a user
`controlplane` whose role may touch only `auth_prefix`, its password in
`<base_dir>/etcd-password`; `node_args()` are the flags a node logs in with. Then a client
without a login acts as its certificate's CN (the admin identity: no such etcd user, so
refused): tests opt in, the default cluster has no auth.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType

import grpc

from controlplane.security.tls import TlsFiles, channel_credentials
from controlplane.store.auth import ROOT, EtcdLogin, enable_auth
from controlplane.store.embedded import EtcdServer, etcd_binary
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_ports

__all__ = ["TEST_ETCD_ARGS", "EtcdCluster"]

# Clients may send keepalive pings every 1 s (etcd's default minimum is 5 s and it would close
# the connection with GOAWAY "too_many_pings"); fsync only costs time in tests.
TEST_ETCD_ARGS = ("--grpc-keepalive-min-time=500ms", "--unsafe-no-fsync")


class EtcdCluster:
    """A set of etcd members started together, with one data dir and log each under base_dir."""

    def __init__(
        self, base_dir: str, size: int = 1, extra_args: Sequence[str] = TEST_ETCD_ARGS,
        tls: bool = True,
        auth: bool = False,
        auth_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if auth and not tls:
            raise ValueError("etcd auth needs TLS (passwords do not cross plaintext)")
        if size < 1:
            raise ValueError("size must be >= 1")
        self.base_dir = str(base_dir)
        ports = free_ports(3 * size)
        names = [f"m{i}" for i in range(size)]
        scheme = "https" if tls else "http"
        peers = ",".join(
            f"{name}={scheme}://127.0.0.1:{ports[3 * i + 1]}" for i, name in enumerate(names)
        )
        pki = harness_pki() if tls else None
        self.tls: TlsFiles | None = pki.files("user", "etcd-admin", "admin") if pki else None
        self.auth_prefix = auth_prefix
        self.login = EtcdLogin("controlplane", secrets.token_urlsafe(16)) if auth else None
        self.password_file = os.path.join(self.base_dir, "etcd-password")
        if auth:
            # etcd hashes passwords with bcrypt at cost 10 by default: a login took 180-290
            # ms here (2 shared cores), and every auth cluster's start adds users; cost 4
            # (etcd's minimum) makes a login ~10 ms. A test cluster's passwords protect
            # nothing worth the time.
            extra_args = (*extra_args, "--bcrypt-cost=4")
        self.members: list[EtcdServer] = [
            EtcdServer(
                name,
                os.path.join(self.base_dir, name),
                client_port=ports[3 * i],
                peer_port=ports[3 * i + 1],
                initial_cluster=peers,
                extra_args=extra_args,
                tls=pki.files("etcd", name) if pki else None,
                metrics_port=ports[3 * i + 2] if pki else None,
            )
            for i, name in enumerate(names)
        ]

    @property
    def endpoints(self) -> str:
        """All client endpoints, in the comma-separated form clients and ``--etcd`` take."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def urls(self) -> str:
        """All client endpoints with their scheme (https:// with TLS)."""
        return ",".join(m.client_url for m in self.members)

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        """Start every member at once (a member of 3 cannot be healthy alone), then wait."""
        os.makedirs(self.base_dir, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            for m in self.members:
                m.start()
            for m in self.members:
                m.wait_ready(timeout=max(0.1, deadline - time.monotonic()))
            if self.login is not None:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def _enable_auth(self) -> None:
        assert self.login is not None
        with open(self.password_file, "w", encoding="utf-8") as f:
            f.write(self.login.password + "\n")
        root = harness_pki().files("user", ROOT, "admin")  # CN root: etcd's root user
        with grpc.secure_channel(self.members[0].endpoint, channel_credentials(root)) as ch:
            enable_auth(ch, self.auth_prefix, self.login)

    def node_args(self) -> list[str]:
        """The flags a node reaches this cluster with (its etcd login, if auth is on)."""
        if self.login is None:
            return []
        return ["--etcd-user", self.login.user, "--etcd-password-file", self.password_file]

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def leader_index(self, timeout: float = 5.0) -> int:
        """Index in ``members`` of the current leader, retrying through an election."""
        deadline = time.monotonic() + timeout
        last = "no member running"
        while True:
            running = [m for m in self.members if m.is_running()]
            if running:
                found, last = self._leader_once(running)
                if found is not None:
                    return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no etcd leader after {timeout}s: {last}")
            time.sleep(0.1)

    def _leader_once(self, running: list[EtcdServer]) -> tuple[int | None, str]:
        cmd = [
            etcd_binary("etcdctl"),
            "--endpoints=" + ",".join(m.client_url for m in running),
            *self.etcdctl_tls_args(),
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "endpoint", "status", "-w", "json",
        ]  # fmt: skip
        env = {**os.environ, "ETCDCTL_API": "3"}
        try:
            # etcdctl exits 1 if any endpoint failed but still prints the others' status.
            out = subprocess.run(cmd, capture_output=True, env=env, timeout=10, check=False)
            statuses = json.loads(out.stdout or b"[]")
        except (subprocess.TimeoutExpired, ValueError) as exc:
            return None, f"etcdctl: {exc}"
        by_endpoint = {m.client_url: i for i, m in enumerate(self.members)}
        for entry in statuses:
            status = entry.get("Status", {})
            leader = status.get("leader")
            if leader and status.get("header", {}).get("member_id") == leader:
                index = by_endpoint.get(entry.get("Endpoint"))
                if index is not None:
                    return index, ""
        return None, f"etcdctl rc={out.returncode}: {out.stdout!r} {out.stderr[-500:]!r}"

    def etcdctl_tls_args(self) -> list[str]:
        """etcdctl's flags for this cluster's client certificate (none without TLS)."""
        if self.tls is None:
            return []
        return ["--cacert", self.tls.ca, "--cert", self.tls.cert, "--key", self.tls.key]

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.endpoints} members={self.members!r}>"
