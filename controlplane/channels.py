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

Transport: every channel is opened by `open_channel` with the caller's transport
(`controlplane.security.tls`): mutual TLS with its certificate files, or plaintext when the
process was started with an explicit `--insecure`. There is no default: a caller that does
not say is a TypeError, not a plaintext channel. The server's certificate is checked against
the address dialed (its SANs), with no target-name override. A pool re-opens its channels
once the certificate files changed (checked at most every `ROTATION_CHECK` seconds, on use).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from controlplane.security.tls import (
    Plaintext,
    RotatingCredentials,
    Transport,
    channel_credentials,
)

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


ROTATION_CHECK = 1.0  # seconds between two looks at a pool's certificate files


def open_channel(address: str, options: list[tuple[str, int]] | None = None, *,
                 tls: Transport | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """The one place a channel is opened (the pool, the client library, the harness and the
    store's one-shot etcd auth channels all come here): mutual TLS with `tls`'s files (read
    now, unless `credentials` already holds them: a pool's, or etcd's root identity), or
    plaintext for PLAINTEXT. RuntimeError when the files cannot be read or do not match."""
    if tls is None and credentials is None:
        raise ValueError("open_channel needs tls= or credentials=")
    opts = CHANNEL_OPTIONS if options is None else options
    if credentials is None and isinstance(tls, Plaintext):
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, credentials or channel_credentials(tls),  # type: ignore[arg-type]
                               options=opts)


class ChannelPool:
    """One channel per address, and one stub per (stub class, address), shared by every
    caller (thread-safe).

    Stubs are cached too because building one is not free (a multicallable per method) and
    hot callers build them per call: the client library on every RPC, the VM tracker for
    every owned host every interval.

    Rotation (`security.tls.RotatingCredentials`): when `tls`'s files change and the new set
    loads and is valid now, the next use after the check interval opens new channels with
    it; the old ones are dropped, not closed, so calls in flight on them finish (gRPC frees
    a channel once nothing uses it). A set that does not load yet (the new key beside the
    old certificate, mid-replacement) or is expired / not yet valid leaves the channels as
    they are: a bad rotation costs a log line, not the calls."""

    def __init__(self, options: list[tuple[str, int]] | None = None, *,
                 tls: Transport) -> None:
        self.options = CHANNEL_OPTIONS if options is None else options
        self.tls = tls
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[Callable[..., Any], str], Any] = {}
        self._lock = threading.Lock()
        self.credentials = (None if isinstance(tls, Plaintext)
                            else RotatingCredentials(tls, ROTATION_CHECK))

    @property
    def rotations(self) -> int:
        """How many rotated sets of files this pool took."""
        return 0 if self.credentials is None else self.credentials.rotations

    def _check_rotation(self) -> None:
        if self.credentials is None or not self.credentials.check():
            return
        with self._lock:
            self._channels, self._stubs = {}, {}

    def _channel_locked(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(
                address, self.options, tls=self.tls,
                credentials=None if self.credentials is None else self.credentials.current())
        return channel

    def get(self, address: str) -> grpc.Channel:
        """The channel to `address`, opened on first use."""
        self._check_rotation()
        with self._lock:
            return self._channel_locked(address)

    def stub(self, stub_class: Callable[[grpc.Channel], S], address: str) -> S:
        """The `stub_class` stub on the channel to `address`, built once."""
        self._check_rotation()
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
