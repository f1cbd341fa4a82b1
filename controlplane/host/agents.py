"""Clients of the host agents: one channel per agent address, reused by every caller.

Channels use a short reconnect backoff (gRPC's default grows to two minutes, and a host
that came back must be seen at the next ping, not minutes later).
"""

from __future__ import annotations

import threading

import grpc

from controlplane.v1 import agent_pb2_grpc


class AgentClients:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}
        self._lock = threading.Lock()

    def stub(self, address: str) -> agent_pb2_grpc.AgentServiceStub:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                channel = grpc.insecure_channel(address, options=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ])
                self._channels[address] = channel
                stub = self._stubs[address] = agent_pb2_grpc.AgentServiceStub(channel)
            return stub

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            channel.close()
