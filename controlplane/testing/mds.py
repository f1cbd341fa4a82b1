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
        shared_state: str = "",
        session_timeout: float | None = None,
    ) -> None:
        """``shared_state``: the sessions file shared by every MDS of one simulated store
        (`controlplane mds --shared-state`); ``session_timeout``: set at start."""
        self.port = port
        self.shared_state = shared_state
        self.session_timeout = session_timeout
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
            *(["--shared-state", self.shared_state] if self.shared_state else []),
            *(["--session-timeout", repr(float(self.session_timeout))]
              if self.session_timeout is not None else []),
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

    def sessions(self) -> list[mds_pb2.MdsSession]:
        """Every client session the store knows (live and blocklisted)."""
        return list(self.sim().GetState(mds_pb2.GetStateRequest(), timeout=5).sessions)

    def set_session_timeout(self, seconds: float) -> None:
        self.sim().SetSessionTimeout(mds_pb2.SetSessionTimeoutRequest(
            session_timeout=wiretime.duration(seconds)), timeout=5)

    def volume_ids(self) -> list[str]:
        state = self.sim().GetState(mds_pb2.GetStateRequest(), timeout=5)
        return list(state.volume_ids)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return f"<MdsProcess {self.name} {self.address} {state} pid={self.pid}>"
