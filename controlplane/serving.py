"""Child processes that serve gRPC with grpc.health.v1: nodes, agents, MDS.

One process model for everyone who starts them: the test harness (controlplane.testing builds
its NodeProcess, AgentProcess and MdsProcess on ServingProcess) and `controlplane up` (whose
supervisor starts its nodes and agent as ServingProcess subclasses). It lives here, beside
procs.py, and not in testing/, because nothing outside testing/ and devtools/ may import the
harness; and not in procs.py itself, because procs.py is the plain-process layer that the
store (EtcdServer) and the qemu driver import, which need neither gRPC nor health probes.

What it adds to ChildProcess: an environment that finds this package (children run the same
code as their parent), one shared channel that is closed whenever the process is killed,
stopped or restarted (so no caller keeps talking to a dead incarnation through it), and the
readiness probe. Its channel presents `client_tls` (every subclass says what its process
serves and the parent calls with: the harness's admin identity, `up`'s, or PLAINTEXT for a
process run with --insecure).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import CHANNEL_OPTIONS, open_channel
from controlplane.procs import ChildProcess
from controlplane.security.tls import Transport

__all__ = ["CHANNEL_OPTIONS", "ServingProcess", "child_env", "health_status"]

# The directory holding the `controlplane` package.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


# The prefix of the settings variables (config.settings.ENV_PREFIX; this module sits below
# config, so it is spelled out here).
SETTINGS_PREFIX = "CONTROLPLANE_"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child running `python -m controlplane ...`: the
    package on PYTHONPATH (the same code as the parent, installed or not) and unbuffered
    output (a log read after a crash holds the last lines). The parent's CONTROLPLANE_*
    settings are not passed on (serve, agent and mds all read them: an exported
    CONTROLPLANE_METRICS_PORT would give every child the same port); a child gets only the
    settings in `extra`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    env = {**inherited, **(extra or {}), "PYTHONUNBUFFERED": "1"}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + path if path else "")
    return env


def health_status(future: grpc.Future) -> str | None:
    """The status name of a grpc.health.v1 Check answer (``"SERVING"``, ``"NOT_SERVING"``...).

    ``None`` means the process did not answer (down, frozen, not listening yet, or the channel
    was closed meanwhile); ``"SERVICE_UNKNOWN"`` means it answered but does not know the
    service asked about."""
    try:
        resp = future.result()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            return "SERVICE_UNKNOWN"
        return None
    except (ValueError, grpc.FutureCancelledError):
        return None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


class ServingProcess(ChildProcess):
    """A child serving gRPC. Subclasses give `address`, `argv()` and `kind`."""

    address: str
    kind = "process"
    extra_env: dict[str, str]
    channel_options: list[tuple[str, int]] = CHANNEL_OPTIONS
    _channel: grpc.Channel | None = None

    def __init__(self, name: str, log_path: str, with_parent: bool = False, *,
                 client_tls: Transport) -> None:
        super().__init__(name, log_path, with_parent)
        self.client_tls = client_tls
        self._channel = None

    def env(self) -> dict[str, str]:
        return child_env(getattr(self, "extra_env", None))

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn in its own session, output appended to ``log_path``."""
        self.close_channel()
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
        self.close_channel()
        super().kill()

    def send_stop(self) -> None:
        """SIGTERM without waiting; the channel is closed first, so no call of ours is in
        flight for the process to drain."""
        self.close_channel()
        super().send_stop()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, SIGKILL after ``timeout``; returns the exit code."""
        self.close_channel()
        if self._proc is None:
            raise RuntimeError(f"{self.kind} {self.name} was never started")
        code = self.stop(timeout)
        assert code is not None
        return code

    # -- gRPC -----------------------------------------------------------------------

    def new_channel(self) -> grpc.Channel:
        """A fresh channel of its own (the caller closes it), e.g. to drop a caller mid-call."""
        return open_channel(self.address, self.channel_options, tls=self.client_tls)

    def channel(self) -> grpc.Channel:
        """The shared channel of this object (closed on kill/stop/restart)."""
        if self._channel is None:
            self._channel = self.new_channel()
        return self._channel

    def close_channel(self) -> None:
        """Close the shared channel (calls in flight on it fail); the next channel() opens
        a new one."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def health_channel(self) -> grpc.Channel:
        return self.channel()

    def health_future(self, service: str = "readiness", timeout: float = 1.0) -> grpc.Future:
        """A grpc.health.v1 Check in flight (read it with health_status()): a supervisor asks
        every child at once, so one frozen child costs one timeout per poll, not one each."""
        stub = health_pb2_grpc.HealthStub(self.health_channel())
        return stub.Check.future(health_pb2.HealthCheckRequest(service=service), timeout=timeout)

    def health(self, service: str = "readiness", timeout: float = 1.0) -> str | None:
        """Status name from grpc.health.v1 (``"SERVING"``, ``"NOT_SERVING"``...); see
        health_status() for ``None`` and ``"SERVICE_UNKNOWN"``."""
        try:
            future = self.health_future(service, timeout)
        except ValueError:  # the channel was closed by a restart in another thread
            return None
        return health_status(future)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until readiness is SERVING; fail at once with the log if the process exits."""
        def probe(t: float) -> str | None:
            status = self.health("readiness", timeout=t)
            return "ok" if status == "SERVING" else f"readiness {status} at {self.address}"

        self.wait_up(probe, timeout, "ready")
