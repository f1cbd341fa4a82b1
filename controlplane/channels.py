"""gRPC client channels the project opens to its own processes: one set of options, one pool.

Why these options: gRPC's reconnect backoff grows to two minutes by default, so a channel to
a peer that restarted (a node, an agent, an MDS, etcd) would keep failing fast long after the
peer is back; the peers are internal addresses, never reached through an HTTP proxy from
the environment.

The variants, defined once here and imported by everyone who opens a channel:

- CHANNEL_OPTIONS: the default (reconnect within 100 ms .. 1 s, no proxy);
- LARGE_MESSAGE_OPTIONS: the same without gRPC's 4 MiB receive limit, for callers that list
  a whole fleet (a `vm list` of 20,000 VMs is about 4 MB at some 200 bytes a VM): the CLI
  and `up`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

__all__ = ["CHANNEL_OPTIONS", "LARGE_MESSAGE_OPTIONS", "ChannelPool", "open_channel",
           "reconnect_options"]

S = TypeVar("S")


def reconnect_options(max_backoff_ms: int = 1000) -> list[tuple[str, int]]:
    """Reconnect within 100 ms .. `max_backoff_ms`, and no HTTP proxy."""
    return [
        ("grpc.enable_http_proxy", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


CHANNEL_OPTIONS: list[tuple[str, int]] = reconnect_options()
LARGE_MESSAGE_OPTIONS: list[tuple[str, int]] = [
    *CHANNEL_OPTIONS, ("grpc.max_receive_message_length", -1)]


def open_channel(address: str, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """The one place a channel to one of our processes is opened (the pool, the client
    library and the harness all come here; transport credentials will be added here)."""
    return grpc.insecure_channel(address,
                                 options=CHANNEL_OPTIONS if options is None else options)


class ChannelPool:
    """One channel per address, and one stub per (stub class, address), shared by every
    caller (thread-safe).

    Stubs are cached too because building one is not free (a multicallable per method) and
    hot callers build them per call: the client library on every RPC, the VM tracker for
    every owned host every interval."""

    def __init__(self, options: list[tuple[str, int]] | None = None) -> None:
        self.options = CHANNEL_OPTIONS if options is None else options
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[Callable[..., Any], str], Any] = {}
        self._lock = threading.Lock()

    def _channel_locked(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(address, self.options)
        return channel

    def get(self, address: str) -> grpc.Channel:
        """The channel to `address`, opened on first use."""
        with self._lock:
            return self._channel_locked(address)

    def stub(self, stub_class: Callable[[grpc.Channel], S], address: str) -> S:
        """The `stub_class` stub on the channel to `address`, built once."""
        key = (stub_class, address)
        stub = self._stubs.get(key)  # the hot path takes no lock (a dict read is atomic)
        if stub is None:
            with self._lock:
                stub = self._stubs.get(key)
                if stub is None:
                    stub = self._stubs[key] = stub_class(self._channel_locked(address))
        return stub

    def close(self) -> None:
        """Close every channel (calls in flight on them are cancelled); the pool can be used
        again afterwards (it opens new channels)."""
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
            self._stubs = {}
        for channel in channels:
            channel.close()
