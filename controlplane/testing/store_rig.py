"""A simulated block store for tests and benches: several sim MDS processes sharing one
sessions file (as one store's MDS share their metadata), a volume seeded on each, and the
primary storage record that names them.

Why shared sessions: a host's agent keeps its session alive on whichever MDS answers, and
HA may ask another; with per-process sessions the second would answer "no client" for a
VM that runs (see `controlplane/mds/sessions.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from controlplane.testing.mds import MdsProcess
from controlplane.testing.ports import free_ports
from controlplane.v1 import mds_pb2, storage_pb2

__all__ = ["add_storage", "seed_volume", "start_store"]


def start_store(base: str, count: int = 2, *, prefix: str = "mds",
                session_timeout: float = 2.0, log_level: str = "INFO") -> list[MdsProcess]:
    """``count`` sim MDS processes of one store (one sessions file in ``base``), ready.
    The caller terminates them (``MdsProcess.terminate``)."""
    os.makedirs(base, exist_ok=True)
    shared = os.path.join(base, f"{prefix}-sessions.db")
    procs = [MdsProcess(f"{prefix}-{i}", port, base, shared_state=shared,
                        session_timeout=session_timeout, log_level=log_level)
             for i, port in enumerate(free_ports(count))]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.wait_ready()
    return procs


def seed_volume(procs: Sequence[MdsProcess], volume_id: str, size_bytes: int = 1 << 30) -> None:
    """The volume on every MDS (each sim process has its own volumes)."""
    for proc in procs:
        proc.stub().CreateVolume(mds_pb2.CreateVolumeRequest(volume_id=volume_id,
                                                             size_bytes=size_bytes), timeout=5)


def add_storage(storage_stub: object, storage_id: str, procs: Sequence[MdsProcess],
                timeout: float = 15.0) -> storage_pb2.PrimaryStorage:
    """The primary storage record naming the MDS (``storage_stub``: a StorageService stub)."""
    return storage_stub.AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(  # type: ignore[attr-defined]
        storage_id=storage_id, mds_addresses=[p.address for p in procs]),
        timeout=timeout).storage
