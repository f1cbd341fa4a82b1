"""Host agents (``python -m controlplane agent --backend sim``) as child processes for tests.

Real processes, like the management nodes: what the tests exercise is a management plane
talking gRPC to agents that can be slow, crash (kill -9), be cut off or fenced. The sim's
fault injection is reached through :meth:`AgentProcess.sim` (the SimControl service).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from controlplane.testing.serving import ServingProcess
from controlplane.v1 import agent_pb2_grpc

__all__ = ["CHANNEL_OPTIONS", "AgentProcess"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# Reconnect quickly: an agent restarted on the same port must be reachable again within a
# second, not after an exponential backoff grown while it was down.
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class AgentProcess(ServingProcess):
    """One agent process serving ``hosts`` sim hosts (``host_prefix`` + index), its log file
    kept across restarts. A restarted sim agent starts with no VMs (its state is memory)."""

    kind = "agent"

    def __init__(
        self,
        name: str,
        port: int,
        base_dir: str,
        *,
        hosts: int = 1,
        host_prefix: str = "host-",
        start_delay: float = 0.0,
        stop_delay: float = 0.0,
        reboot_delay: float = 0.0,
        pause_delay: float = 0.0,
        report_ops: bool = True,
        cpus: int | None = None,
        memory_mb: int | None = None,
        seed: int | None = None,
        log_level: str = "INFO",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.base_dir = str(base_dir)
        self.hosts = hosts
        self.host_prefix = host_prefix
        self.start_delay = start_delay
        self.stop_delay = stop_delay
        self.reboot_delay = reboot_delay
        self.pause_delay = pause_delay
        self.report_ops = report_ops
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.seed = seed
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        super().__init__(name, os.path.join(self.base_dir, f"{name}.log"))
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host_ids(self) -> list[str]:
        """The host ids this agent serves, in order."""
        return [f"{self.host_prefix}{i}" for i in range(self.hosts)]

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", self.address,
            "--backend", "sim",
            "--hosts", str(self.hosts),
            "--host-prefix", self.host_prefix,
            "--start-delay", repr(float(self.start_delay)),
            "--stop-delay", repr(float(self.stop_delay)),
            "--reboot-delay", repr(float(self.reboot_delay)),
            "--pause-delay", repr(float(self.pause_delay)),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if not self.report_ops:
            argv.append("--no-report-ops")
        if self.cpus is not None:
            argv += ["--cpus", str(self.cpus)]
        if self.memory_mb is not None:
            argv += ["--memory-mb", str(self.memory_mb)]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        return argv + list(self.extra_args)

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        return env

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> AgentProcess:
        """Spawn the agent in its own session, output appended to ``log_path``."""
        self._close_channel()
        super().start()
        return self

    def restart(self) -> AgentProcess:
        """Start again with the same argv (and no VMs); the previous process must be gone."""
        if self.is_running():
            raise RuntimeError(f"agent {self.name} is still running (pid {self.pid}); "
                               "kill or terminate it first")
        return self.start()

    def kill(self) -> None:
        """Crash the agent (SIGKILL): every simulated VM goes with it."""
        self._close_channel()
        super().kill()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM (operations in progress are aborted), SIGKILL after ``timeout``; returns
        the exit code."""
        self._close_channel()
        if self._proc is None:
            raise RuntimeError(f"agent {self.name} was never started")
        code = self.stop(timeout)
        assert code is not None
        return code

    # -- gRPC -----------------------------------------------------------------------

    def new_channel(self) -> grpc.Channel:
        """A fresh channel of its own (the caller closes it), e.g. to drop a caller mid-call."""
        return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    def channel(self) -> grpc.Channel:
        """The shared channel of this harness object (closed on kill/restart)."""
        if self._channel is None:
            self._channel = self.new_channel()
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def stub(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel())

    def sim(self) -> agent_pb2_grpc.SimControlStub:
        return agent_pb2_grpc.SimControlStub(self.channel())

    def health_channel(self) -> grpc.Channel:
        return self.channel()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return (f"<AgentProcess {self.name} {self.address} hosts={self.hosts} {state} "
                f"pid={self.pid}>")
