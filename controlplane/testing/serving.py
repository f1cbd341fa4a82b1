"""What the harness does with any child process that serves gRPC with grpc.health.v1:
one shared channel, health probes, start/restart/kill/terminate that keep the channel
honest, and an environment that finds this package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import reconnect_options
from controlplane.procs import ChildProcess

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

# Reconnect quickly: a process restarted on the same port must be reachable again within a
# second, not after an exponential backoff grown while it was down.
CHANNEL_OPTIONS = reconnect_options()


class ServingProcess(ChildProcess):
    """A child serving gRPC. Subclasses give `address`, `argv()` and `kind`."""

    address: str
    kind = "process"
    extra_env: dict[str, str]
    channel_options: list[tuple[str, int]] = CHANNEL_OPTIONS
    _channel: grpc.Channel | None = None

    def env(self) -> dict[str, str]:
        env = {**os.environ, **getattr(self, "extra_env", {}), "PYTHONUNBUFFERED": "1"}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        return env

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn in its own session, output appended to ``log_path``."""
        self._close_channel()
        super().start()
        return self

    def restart(self) -> Self:
        """Start again with the same argv; the previous process must be gone."""
        if self.is_running():
            raise RuntimeError(f"{self.kind} {self.name} is still running (pid {self.pid}); "
                               "kill or terminate it first")
        return self.start()

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown hooks run."""
        self._close_channel()
        super().kill()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, SIGKILL after ``timeout``; returns the exit code."""
        self._close_channel()
        if self._proc is None:
            raise RuntimeError(f"{self.kind} {self.name} was never started")
        code = self.stop(timeout)
        assert code is not None
        return code

    # -- gRPC -----------------------------------------------------------------------

    def new_channel(self) -> grpc.Channel:
        """A fresh channel of its own (the caller closes it), e.g. to drop a caller mid-call."""
        return grpc.insecure_channel(self.address, options=self.channel_options)

    def channel(self) -> grpc.Channel:
        """The shared channel of this harness object (closed on kill/restart)."""
        if self._channel is None:
            self._channel = self.new_channel()
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def health_channel(self) -> grpc.Channel:
        return self.channel()

    def health(self, service: str = "readiness", timeout: float = 1.0) -> str | None:
        """Status name from grpc.health.v1 (``"SERVING"``, ``"NOT_SERVING"``...).

        ``None`` means the process did not answer (down, frozen, not listening yet);
        ``"SERVICE_UNKNOWN"`` means it answered but does not know ``service``.
        """
        stub = health_pb2_grpc.HealthStub(self.health_channel())
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return "SERVICE_UNKNOWN"
            return None
        except ValueError:  # the channel was closed by a restart in another thread
            return None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until readiness is SERVING; fail at once with the log if the process exits."""
        def probe(t: float) -> str | None:
            status = self.health("readiness", timeout=t)
            return "ok" if status == "SERVING" else f"readiness {status} at {self.address}"

        self.wait_up(probe, timeout, "ready")
