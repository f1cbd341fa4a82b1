"""Throwaway etcd clusters (1 or 3 members) on loopback for tests."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType

from controlplane.store.embedded import EtcdServer, etcd_binary
from controlplane.testing.ports import free_ports

__all__ = ["TEST_ETCD_ARGS", "EtcdCluster"]

# Clients may send keepalive pings every 1 s (etcd's default minimum is 5 s and it would close
# the connection with GOAWAY "too_many_pings"); fsync only costs time in tests.
TEST_ETCD_ARGS = ("--grpc-keepalive-min-time=500ms", "--unsafe-no-fsync")


class EtcdCluster:
    """A set of etcd members started together, with one data dir and log each under base_dir."""

    def __init__(
        self, base_dir: str, size: int = 1, extra_args: Sequence[str] = TEST_ETCD_ARGS
    ) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.base_dir = str(base_dir)
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        peers = ",".join(
            f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        self.members: list[EtcdServer] = [
            EtcdServer(
                name,
                os.path.join(self.base_dir, name),
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                initial_cluster=peers,
                extra_args=extra_args,
            )
            for i, name in enumerate(names)
        ]

    @property
    def endpoints(self) -> str:
        """All client endpoints, in the comma-separated form clients and ``--etcd`` take."""
        return ",".join(m.endpoint for m in self.members)

    def start(self, timeout: float = 20.0) -> EtcdCluster:
        """Start every member at once (a member of 3 cannot be healthy alone), then wait."""
        os.makedirs(self.base_dir, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            for m in self.members:
                m.start()
            for m in self.members:
                m.wait_ready(timeout=max(0.1, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def leader_index(self, timeout: float = 5.0) -> int:
        """Index in ``members`` of the current leader, retrying through an election."""
        deadline = time.monotonic() + timeout
        last = "no member running"
        while True:
            running = [m for m in self.members if m.is_running()]
            if running:
                found, last = self._leader_once(running)
                if found is not None:
                    return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no etcd leader after {timeout}s: {last}")
            time.sleep(0.1)

    def _leader_once(self, running: list[EtcdServer]) -> tuple[int | None, str]:
        cmd = [
            etcd_binary("etcdctl"),
            "--endpoints=" + ",".join(m.endpoint for m in running),
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "endpoint", "status", "-w", "json",
        ]  # fmt: skip
        env = {**os.environ, "ETCDCTL_API": "3"}
        try:
            # etcdctl exits 1 if any endpoint failed but still prints the others' status.
            out = subprocess.run(cmd, capture_output=True, env=env, timeout=10, check=False)
            statuses = json.loads(out.stdout or b"[]")
        except (subprocess.TimeoutExpired, ValueError) as exc:
            return None, f"etcdctl: {exc}"
        by_endpoint = {m.endpoint: i for i, m in enumerate(self.members)}
        for entry in statuses:
            status = entry.get("Status", {})
            leader = status.get("leader")
            if leader and status.get("header", {}).get("member_id") == leader:
                index = by_endpoint.get(entry.get("Endpoint"))
                if index is not None:
                    return index, ""
        return None, f"etcdctl rc={out.returncode}: {out.stdout!r} {out.stderr[-500:]!r}"

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.endpoints} members={self.members!r}>"
