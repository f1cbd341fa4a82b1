"""Simulated metadata servers (``python -m controlplane.mds.main --backend sim``) as
child processes for tests.

Real processes, like the agents: what the tests exercise is the MDS client's try-next over
real gRPC channels, against MDS that hang, refuse, fail or die (kill -9). Faults are set
through :meth:`MdsProcess.set_fault` (the SimMdsControl service).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc

from controlplane import wiretime
from controlplane.security.tls import Transport
from controlplane.serving import ServingProcess
from controlplane.storage.mds import CHANNEL_OPTIONS
from controlplane.testing.pki import client_transport, harness_pki, server_args
from controlplane.v1 import mds_pb2, mds_pb2_grpc

__all__ = ["MdsProcess"]



class MdsProcess(ServingProcess):
    """One sim MDS process, its log file kept across restarts (a restarted one is empty)."""

    kind = "mds"
    channel_options = CHANNEL_OPTIONS

    def __init__(
        self,
        name: str,
        port: int,
        base_dir: str,
        *,
        log_level: str = "INFO",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls: Transport | None = None,
    ) -> None:
        self.port = port
        self.base_dir = str(base_dir)
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        # None: this mds's own certificate from the harness PKI; PLAINTEXT: --insecure
        self.tls = tls if tls is not None else harness_pki().mds(name)
        super().__init__(name, os.path.join(self.base_dir, f"{name}.log"),
                         client_tls=client_transport(self.tls, as_node=True))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane.mds.main",
            "--listen", self.address,
            "--backend", "sim",
            "--log-level", self.log_level,
            *server_args(self.tls),
            *self.extra_args,
        ]  # fmt: skip

    def stub(self) -> mds_pb2_grpc.StorageMdsServiceStub:
        """StorageMds on this MDS alone (no try-next): for seeding and checking."""
        return mds_pb2_grpc.StorageMdsServiceStub(self.channel())

    def sim(self) -> mds_pb2_grpc.SimMdsControlServiceStub:
        return mds_pb2_grpc.SimMdsControlServiceStub(self.channel())


    # -- fault injection shortcuts ----------------------------------------------------

    def set_fault(self, mode: int, method: str = "", *, delay: float = 0.0,
                  code: grpc.StatusCode | None = None, details: str = ""
                  ) -> mds_pb2.SetFaultResponse:
        """Fault ``mode`` (``mds_pb2.SIM_MDS_FAULT_MODE_HANG``...) on ``method`` ("": all)."""
        fault = mds_pb2.SetFaultRequest(method=method, mode=mode,
                                        delay_seconds=wiretime.duration(delay),
                                    code=code.value[0] if code is not None else 0,
                                    details=details)
        return self.sim().SetFault(fault, timeout=5)

    def reset(self, volumes: bool = True) -> mds_pb2.ResetResponse:
        """No faults, no call counts (and, by default, no volumes)."""
        return self.sim().Reset(mds_pb2.ResetRequest(volumes=volumes), timeout=5)

    def calls(self) -> dict[str, int]:
        """StorageMds calls received per method since start or the last reset."""
        state = self.sim().GetState(mds_pb2.GetStateRequest(), timeout=5)
        return dict(state.calls)

    def volume_ids(self) -> list[str]:
        state = self.sim().GetState(mds_pb2.GetStateRequest(), timeout=5)
        return list(state.volume_ids)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"<MdsProcess {self.name} {self.address} {state} pid={self.pid}>"
