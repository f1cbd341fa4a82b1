"""gRPC client channels the project opens to its own processes: one set of options, one pool.

Why these options: gRPC's reconnect backoff grows to two minutes by default, so a channel to
a peer that restarted (a node, an agent, an MDS, etcd) would keep failing fast long after the
peer is back; the peers are internal addresses, never reached through an HTTP proxy from
the environment.
"""

from __future__ import annotations

import threading

import grpc


def reconnect_options(max_backoff_ms: int = 1000) -> list[tuple[str, int]]:
    """Reconnect within 100 ms .. `max_backoff_ms`, and no HTTP proxy."""
    return [
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


def open_channel(address: str, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """The one place a channel to one of our processes is opened (the pool, the client
    library and the harness all come here; transport credentials will be added here)."""
    return grpc.insecure_channel(address,
                                 options=reconnect_options() if options is None else options)


class ChannelPool:
    """One channel per address, shared by every caller (thread-safe)."""

    def __init__(self, options: list[tuple[str, int]] | None = None) -> None:
        self.options = reconnect_options() if options is None else options
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(address, self.options)
            return channel

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
