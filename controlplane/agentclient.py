"""Clients of the host agents: one channel per agent address, reused by every caller."""

from __future__ import annotations

import threading

from controlplane.channels import ChannelPool
from controlplane.v1 import agent_pb2_grpc, blockjob_pb2_grpc


class AgentClients:
    def __init__(self) -> None:
        self._pool = ChannelPool()
        # Stubs are cached too: sync asks every owned host each interval.
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        self._lock = threading.Lock()

    def stub(self, address: str) -> agent_pb2_grpc.AgentServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                stub = self._stubs[address] = agent_pb2_grpc.AgentServiceStub(
                    self._pool.get(address))
            return stub

    def block_jobs(self, address: str) -> blockjob_pb2_grpc.AgentBlockJobsStub:
        """The agent's block-job service, on the same channel (rarely used: not cached)."""
        return blockjob_pb2_grpc.AgentBlockJobsStub(self._pool.get(address))

    def close(self) -> None:
        with self._lock:
            self._stubs = {}
        self._pool.close()
