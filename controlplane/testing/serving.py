"""What the harness asks of any child process that serves gRPC with grpc.health.v1."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.procs import ChildProcess


class ServingProcess(ChildProcess):
    """A child serving gRPC: subclasses give `address` and `health_channel()`."""

    address: str

    def health_channel(self) -> grpc.Channel:
        raise NotImplementedError

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
