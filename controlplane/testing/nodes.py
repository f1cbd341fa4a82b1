"""Management nodes (``python -m controlplane serve``) as child processes for tests.

Real processes rather than in-process servers, because what is under test is how the cluster
behaves when a node crashes (SIGKILL), freezes (SIGSTOP) or shuts down (SIGTERM).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from controlplane.testing.serving import ServingProcess

__all__ = ["NodeProcess"]

# The directory that holds the ``controlplane`` package, so the child imports the same code
# as the parent even when the package is not installed (running from a checkout).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# Reconnect quickly: a node is restarted on the same port and a channel that backed off for
# seconds would make health checks report a live node as unreachable.
_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class NodeProcess(ServingProcess):
    """One management node process, with its log file kept across restarts."""

    kind = "node"

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
        super().__init__(node_id, os.path.join(self.base_dir, f"{node_id}.log"))
        self._channel: grpc.Channel | None = None

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
        ]  # fmt: skip
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        if self.reconcile_interval is not None:
            argv += ["--reconcile-interval", _num(self.reconcile_interval)]
        if self.prefix is not None:
            argv += ["--prefix", self.prefix]
        return argv + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        return env

    def start(self) -> NodeProcess:
        """Spawn the node in its own session, output appended to ``log_path``."""
        self._close_channel()
        super().start()
        return self

    def restart(self) -> NodeProcess:
        """Start again with the same argv; the previous process must have exited."""
        if self.is_running():
            raise RuntimeError(
                f"node {self.node_id} is still running (pid {self.pid}); kill or terminate it first"
            )
        return self.start()

    def _get_channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def health_channel(self) -> grpc.Channel:
        return self._get_channel()

    def kill(self) -> None:
        """Crash the node: no shutdown hooks, its etcd lease is left to expire."""
        self._close_channel()
        super().kill()

    def terminate(self, timeout: float = 15.0) -> int:
        """Graceful shutdown (SIGTERM), SIGKILL after ``timeout``; returns the exit code."""
        self._close_channel()
        if self._proc is None:
            raise RuntimeError(f"node {self.node_id} was never started")
        code = self.stop(timeout)
        assert code is not None
        return code

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"<NodeProcess {self.node_id} {self.address} {state} pid={self.pid}>"


def _num(value: float) -> str:
    """Render 2.0 as "2" and 0.5 as "0.5", as a user would type them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
