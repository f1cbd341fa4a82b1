"""Management nodes (``python -m controlplane serve``) as child processes for tests.

Real processes rather than in-process servers, because what is under test is how the cluster
behaves when a node crashes (SIGKILL), freezes (SIGSTOP) or shuts down (SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from controlplane.channels import reconnect_options
from controlplane.security.tls import Plaintext, Transport
from controlplane.serving import ServingProcess
from controlplane.testing.pki import client_transport, harness_pki, server_args

__all__ = ["NodeProcess"]

class NodeProcess(ServingProcess):
    """One management node process, with its log file kept across restarts."""

    kind = "node"
    # Health checks right after a restart on the same port must not wait out a backoff.
    channel_options = reconnect_options(500)

    def __init__(
        self,
        node_id: str,
        port: int,
        etcd: str,
        base_dir: str,
        lease_ttl: float = 2.0,
        reconcile_interval: float | None = 0.5,
        prefix: str | None = None,
        metrics_port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls: Transport | None = None,
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.etcd = etcd
        self.base_dir = str(base_dir)
        self.lease_ttl = lease_ttl
        self.reconcile_interval = reconcile_interval
        self.prefix = prefix
        self.metrics_port = metrics_port
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        # None: this node's own certificate from the harness PKI; PLAINTEXT: --insecure
        self.tls = tls if tls is not None else harness_pki().node(node_id)
        super().__init__(node_id, os.path.join(self.base_dir, f"{node_id}.log"),
                         client_tls=client_transport(self.tls))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "controlplane", "serve",
            "--node-id", self.node_id,
            "--listen", self.address,
            "--etcd", self.etcd,
            "--lease-ttl", _num(self.lease_ttl),
            "--log-format", "text",
            "--image-dir", os.path.join(self.base_dir, "images"),
        ]  # fmt: skip
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        if self.reconcile_interval is not None:
            argv += ["--reconcile-interval", _num(self.reconcile_interval)]
        if self.prefix is not None:
            argv += ["--prefix", self.prefix]
        if isinstance(self.tls, Plaintext) and not self.etcd.startswith("http://"):
            # an --insecure node still reaches the harness's TLS etcd with a certificate
            node_dir = os.path.dirname(harness_pki().node(self.node_id).cert)
            argv += ["--etcd-tls-dir", node_dir]
        return argv + server_args(self.tls) + list(self.extra_args)

    def terminate(self, timeout: float = 15.0) -> int:
        """Graceful shutdown (SIGTERM), SIGKILL after ``timeout``; returns the exit code."""
        return super().terminate(timeout)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"<NodeProcess {self.node_id} {self.address} {state} pid={self.pid}>"


def _num(value: float) -> str:
    """Render 2.0 as "2" and 0.5 as "0.5", as a user would type them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
