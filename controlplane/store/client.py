"""The etcd client: the one place in the project that imports the etcd library.

Built on etcd-sdk-python (`pyetcd`, the maintained python-etcd3 fork) for its channel and
endpoint handling and its generated stubs, with three things changed on purpose:
- `pyetcd.client()` blacklists its only endpoint for 300 s after one UNAVAILABLE, so every
  later call fails at once; endpoints here are retried after at most one second.
- Every call takes its own deadline (a gRPC handler passes what is left of its own), and
  transient errors are retried within a bounded budget, short attempts first (0.5 s for
  the first 2 s of a call, then `timeout`; store/retry.py): an etcd leader change takes
  about 1.5 s here, and a write lost with the old leader must not hold its caller for a
  whole 3 s attempt.
- gRPC keepalive pings on the channel, so a silently black-holed connection is noticed and
  reconnection backs off to at most one second instead of gRPC's default two minutes.

Transport: TLS with a client certificate (etcd runs with `--client-cert-auth`) unless the
endpoints say `http://` or no certificate is at hand (`etcd_transport` has the rule). All
endpoints of one store use the same transport: a cluster half behind TLS is a mistake.
A rotated client certificate (the files replaced on disk) is taken without a restart: new
channels for the calls after it, the streams already open left to finish (`_check_rotation`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exceptions
from pyetcd import utils as etcd_utils

from controlplane.channels import ROTATION_CHECK, reconnect_options
from controlplane.security.tls import (
    RotatingCredentials,
    TlsFiles,
    TlsMissing,
    transport_from_env,
)
from controlplane.store.auth import EtcdLogin, TokenCredentials, stale_token
from controlplane.store.errors import LeaseLost, StoreError, StoreUnavailable
from controlplane.store.retry import AttemptPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_RESPONSE_BYTES = 512 * 1024 * 1024
_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _overloaded(code: grpc.StatusCode | None, details: str) -> bool:
    """etcd's "too many requests" (RESOURCE_EXHAUSTED under load, e.g. a fleet's cold start)
    passes; the same code for an answer over gRPC's receive limit ("larger than max") does
    not, nor does a request over etcd's size limit (INVALID_ARGUMENT)."""
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in details


def _server_deadline(code: grpc.StatusCode | None, details: str) -> bool:
    """etcd's own side of a deadline: when the attempt's deadline (sent to etcd with the
    request) expires there first, etcd answers UNKNOWN "context deadline exceeded" before
    the client's DEADLINE_EXCEEDED fires. The same timeout, so the same transient error
    (with short attempts during a leader change it is a common answer, not a rare one)."""
    return code is grpc.StatusCode.UNKNOWN and "context deadline exceeded" in details


@dataclass(frozen=True)
class KV:
    """One key as etcd returned it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_proto(cls, kv: etcdrpc.KeyValue) -> KV:
        return cls(
            kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
        )


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    # For each op of the branch taken: the list of KVs a get returned, else [].
    ranges: tuple[tuple[KV, ...], ...]


def parse_endpoints(spec: str | Sequence[str]) -> list[tuple[str, int]]:
    """'h1:p1,h2:p2' (or http:// URLs) -> [(h1, p1), (h2, p2)]; ValueError if malformed."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    result = []
    for raw in items:
        item = raw.strip()
        for scheme in ("http://", "https://"):
            if item.startswith(scheme):
                item = item[len(scheme) :]
        host, sep, port = item.rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad etcd endpoint {raw!r}: expected host:port")
        result.append((host, int(port)))
    if not result:
        raise ValueError("no etcd endpoint given")
    return result


def endpoint_scheme(spec: str | Sequence[str]) -> str | None:
    """"https" or "http" when the endpoints name one (every one that names a scheme agrees),
    None when none does; ValueError for a mix."""
    items = [i.strip() for i in (spec.split(",") if isinstance(spec, str) else spec)]
    schemes = {i.split("://", 1)[0] for i in items if "://" in i}
    if len(schemes) > 1:
        raise ValueError(f"etcd endpoints {spec!r} mix https:// and http://: use one scheme")
    return schemes.pop() if schemes else None


def etcd_transport(spec: str | Sequence[str], tls: TlsFiles | None) -> TlsFiles | None:
    """The client certificate to dial etcd with, None for plaintext. Secure by default, as
    every other hop: `https://` needs a certificate (`tls`, else the identity
    CONTROLPLANE_TLS_DIR or _CA/_CERT/_KEY names, as the client library finds one), bare
    `host:port` uses TLS whenever there is one, and only `http://` forces plaintext.
    ValueError for https:// with no certificate."""
    scheme = endpoint_scheme(spec)
    if scheme == "http":
        return None
    if tls is None:
        try:
            found = transport_from_env()
        except TlsMissing as exc:
            found = None
            reason = str(exc)
        else:
            reason = "the environment says --insecure"
        tls = found if isinstance(found, TlsFiles) else None
        if tls is None and scheme == "https":
            raise ValueError(f"https:// etcd endpoints need a client certificate: {reason}")
    return tls


def _channel_options(keepalive_s: float) -> list[tuple[str, int]]:
    ms = int(keepalive_s * 1000)
    return [
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        *reconnect_options(),
        # A cache lists a whole prefix in one range: 100,000 VM records are ~20 MB, far
        # over gRPC's default 4 MiB receive limit.
        ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    ]


class Store:
    """A thread-safe etcd v3 client with deadlines, bounded retries and failover.

    `timeout` bounds one attempt; `budget` bounds all attempts of one call. Attempts in
    the first two seconds of a call get only `first_timeout` (store/retry.py says why: a
    write lost with a dead etcd leader must not hold its caller for a whole attempt).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout: float = 3.0,
        budget: float = 5.0,
        keepalive: float = 5.0,
        first_timeout: float = 0.5,
        tls: TlsFiles | None = None,
        login: EtcdLogin | None = None,
    ) -> None:
        """`tls`: the client certificate (see etcd_transport). `login`: act as this etcd
        user (store/auth.py), over TLS only; without one, a TLS store is the user its
        certificate's CN names when etcd has auth on."""
        self.endpoints = parse_endpoints(endpoints)
        self.tls = etcd_transport(endpoints, tls)
        self.secure = self.tls is not None
        self.keepalive = keepalive
        self.credentials = (RotatingCredentials(self.tls, ROTATION_CHECK)
                            if self.tls is not None else None)
        creds = self.credentials.current() if self.credentials is not None else None
        self.auth: TokenCredentials | None = None
        if login is not None:
            if creds is None:
                raise ValueError("an etcd login needs TLS to etcd (a password does not "
                                 "cross plaintext): give a certificate or https://")
            self.auth = TokenCredentials(login, [f"{h}:{p}" for h, p in self.endpoints],
                                         creds, timeout)
        self.timeout = timeout
        self.budget = budget
        self.policy = AttemptPolicy.short_first(first_timeout, timeout)
        self._client = self._new_client(creds)
        self._lock = threading.Lock()
        self._closed = False
        # etcd requests sent, by method (Range, Txn, Put, ...): benchmarks report
        # requests per sync round from it.
        self.requests: dict[str, int] = {}
        self.rotations = 0  # rotated client certificates taken (new channels to etcd)

    def __repr__(self) -> str:
        scheme = "https://" if self.secure else ""
        return f"Store({','.join(f'{scheme}{h}:{p}' for h, p in self.endpoints)})"

    # -- plumbing -------------------------------------------------------------------

    def _new_client(self, creds: grpc.ChannelCredentials | None
                    ) -> pyetcd.MultiEndpointEtcd3Client:
        if self.auth is not None and creds is not None:
            creds = grpc.composite_channel_credentials(
                creds, grpc.metadata_call_credentials(self.auth, name="etcd-token"))
        # With one endpoint there is nothing to fail over to: never blacklist it.
        time_retry = 1.0 if len(self.endpoints) > 1 else 0.0
        eps = [
            pyetcd.Endpoint(h, p, secure=self.secure, creds=creds, time_retry=time_retry,
                            opts=_channel_options(self.keepalive))
            for h, p in self.endpoints
        ]
        return pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=self.timeout,
                                               failover=True)

    def _check_rotation(self) -> None:
        """A rotated client certificate (security.tls.RotatingCredentials: looked at once a
        second at most, taken only when the new set loads and is valid now): new channels
        to etcd with it for every later call. The old client is dropped, not closed: a
        watch or keepalive stream open on its channel goes on until it ends (etcd checked
        the certificate at the handshake), and gRPC frees the channel after."""
        if self.credentials is None or not self.credentials.check():
            return
        creds = self.credentials.current()
        if self.auth is not None:
            self.auth.credentials = creds
        self._client = self._new_client(creds)  # one reference swapped: callers never lock
        self.rotations += 1
        log.info("etcd client certificate rotated: new channels to %s", self)

    def channel(self) -> grpc.Channel:
        """The channel to the endpoint in use (for the watch and keepalive streams)."""
        self._check_rotation()
        try:
            return self._client.channel
        except etcd_exceptions.NoServerAvailableError:
            self._use_least_recently_failed()
        try:
            return self._client.channel
        except (etcd_exceptions.NoServerAvailableError, ValueError) as exc:
            raise StoreUnavailable(f"no etcd endpoint available: {exc}") from exc

    def _use_least_recently_failed(self) -> None:
        """Every endpoint failed within the last second: use the one that failed longest ago
        instead of none. Marking an endpoint failed is a preference, not a ban: during an
        etcd election every member fails an attempt once (the dead leader refuses, the
        others time out), and the next attempt must still go somewhere, at once."""
        with self._lock:
            oldest = min(self._client.endpoints.values(), key=lambda ep: ep.last_failed)
            oldest.last_failed = 0
            self._client._current_endpoint_label = oldest.netloc

    def endpoint_failed(self) -> None:
        """Mark the endpoint in use as failed so the next call tries another one."""
        with self._lock:
            if len(self.endpoints) > 1:
                try:
                    self._client.endpoint_in_use.fail()
                    self._client._clear_old_stubs()
                except Exception:  # noqa: BLE001 - best effort bookkeeping only
                    log.debug("could not mark etcd endpoint failed", exc_info=True)

    def translate(self, exc: grpc.RpcError) -> StoreError:
        """Map a gRPC error from etcd to the store's error types."""
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        where = self._client._current_endpoint_label
        if code in _TRANSIENT or _server_deadline(code, details or ""):
            self.endpoint_failed()
            return StoreUnavailable(f"etcd {where}: {code.name}: {details}")
        if self.auth is not None and stale_token(details or ""):
            self.auth.invalidate()  # the retry authenticates again
            return StoreUnavailable(f"etcd {where}: token no longer valid: {details}")
        if _overloaded(code, details or ""):
            return StoreUnavailable(f"etcd {where}: overloaded: {details}")
        if details and "lease not found" in details:
            return LeaseLost(details)
        name = code.name if code is not None else "UNKNOWN"
        return StoreError(f"etcd {where}: {name}: {details}")

    def _unary(self, stub_name: str, method: str, request: object, timeout: float) -> object:
        with self._lock:
            self.requests[method] = self.requests.get(method, 0) + 1
        self._check_rotation()
        try:
            try:
                stub = getattr(self._client, stub_name)
            except etcd_exceptions.NoServerAvailableError:
                self._use_least_recently_failed()
                stub = getattr(self._client, stub_name)
            return getattr(stub, method)(request, timeout=timeout)
        except (etcd_exceptions.NoServerAvailableError, ValueError) as exc:
            raise StoreUnavailable(f"no etcd endpoint available: {exc}") from exc
        except grpc.RpcError as exc:
            raise self.translate(exc) from exc

    def run(
        self,
        attempt: Callable[[float], T],
        budget: float | None = None,
        timeout: float | None = None,
    ) -> T:
        """Call attempt(per_attempt_timeout) until it succeeds, retrying StoreUnavailable
        until `budget` seconds have passed. Attempts follow `self.policy` (short ones first,
        then `self.timeout`, see store/retry.py) unless `timeout` fixes them all. Never
        runs past the budget: the last attempt gets only what is left of it."""
        budget = self.budget if budget is None else max(budget, 0.0)
        policy = self.policy if timeout is None else self.policy.fixed(timeout)
        started = time.monotonic()
        per_attempt = policy.timeout(0.0, budget, first_attempt=True)
        fast_failures = 0
        while True:
            assert per_attempt is not None  # the first attempt always runs
            attempt_started = time.monotonic()
            try:
                return attempt(per_attempt)
            except StoreUnavailable:
                now = time.monotonic()
                slow = policy.timed_out(now - attempt_started, per_attempt)
                fast_failures = 0 if slow else fast_failures + 1
                step = policy.next_attempt(now - started, budget, fast_failures,
                                           random.random())
                if step is None:
                    raise
            pause, per_attempt = step
            time.sleep(pause)

    # -- key/value ------------------------------------------------------------------

    def get(self, key: str, budget: float | None = None) -> KV | None:
        request = etcdrpc.RangeRequest(key=key.encode())

        def attempt(timeout: float) -> KV | None:
            resp = self._unary("kvstub", "Range", request, timeout)
            return KV.from_proto(resp.kvs[0]) if resp.kvs else None

        return self.run(attempt, budget)

    def list_prefix(
        self, prefix: str, budget: float | None = None, timeout: float | None = None
    ) -> tuple[list[KV], int]:
        """Every key under prefix and the revision they were read at (linearizable)."""
        raw = prefix.encode()
        request = etcdrpc.RangeRequest(key=raw, range_end=etcd_utils.prefix_range_end(raw))

        def attempt(t: float) -> tuple[list[KV], int]:
            resp = self._unary("kvstub", "Range", request, t)
            return [KV.from_proto(kv) for kv in resp.kvs], resp.header.revision

        return self.run(attempt, budget, timeout)

    def put(self, key: str, value: bytes, lease: int = 0, budget: float | None = None) -> int:
        """Write key; returns the revision of the write."""
        request = etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease)
        return self.run(lambda t: self._unary("kvstub", "Put", request, t).header.revision, budget)

    def first_keys(self, prefix: str, limit: int, budget: float | None = None
                   ) -> tuple[list[str], int]:
        """(the first `limit` keys under prefix in key order, how many keys the prefix holds
        in all): a bounded collection finds its oldest entries without reading values."""
        raw = prefix.encode()
        request = etcdrpc.RangeRequest(key=raw, range_end=etcd_utils.prefix_range_end(raw),
                                       keys_only=True, limit=max(limit, 1))

        def attempt(t: float) -> tuple[list[str], int]:
            resp = self._unary("kvstub", "Range", request, t)
            keys = [kv.key.decode() for kv in resp.kvs][:limit] if limit > 0 else []
            return keys, resp.count

        return self.run(attempt, budget)

    def delete_range(self, start: str, end: str, budget: float | None = None) -> int:
        """Delete every key in [start, end); returns how many were deleted."""
        request = etcdrpc.DeleteRangeRequest(key=start.encode(), range_end=end.encode())
        return self.run(lambda t: self._unary("kvstub", "DeleteRange", request, t).deleted,
                        budget)

    def delete(self, key: str, budget: float | None = None) -> tuple[bool, int]:
        request = etcdrpc.DeleteRangeRequest(key=key.encode())

        def attempt(t: float) -> tuple[bool, int]:
            resp = self._unary("kvstub", "DeleteRange", request, t)
            return resp.deleted > 0, resp.header.revision

        return self.run(attempt, budget)

    def txn(
        self,
        compare: Sequence[etcdrpc.Compare],
        success: Sequence[etcdrpc.RequestOp] = (),
        failure: Sequence[etcdrpc.RequestOp] = (),
        budget: float | None = None,
    ) -> TxnResult:
        """One etcd transaction. Build compares and ops with controlplane.store.txn.

        Retried on transient errors: callers use compare-and-swap, so a retry of a txn that
        did apply fails its compare and the caller re-reads, which is the normal lost race.
        """
        request = etcdrpc.TxnRequest(compare=compare, success=success, failure=failure)

        def attempt(t: float) -> TxnResult:
            resp = self._unary("kvstub", "Txn", request, t)
            ranges = tuple(
                tuple(KV.from_proto(kv) for kv in r.response_range.kvs)
                if r.WhichOneof("response") == "response_range"
                else ()
                for r in resp.responses
            )
            return TxnResult(resp.succeeded, resp.header.revision, ranges)

        return self.run(attempt, budget)

    def compact(self, revision: int) -> None:
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        # physical=True waits for the compaction itself: not a call for short attempts
        self.run(lambda t: self._unary("kvstub", "Compact", request, t), timeout=self.timeout)

    # -- leases ---------------------------------------------------------------------

    def grant(self, ttl: int, budget: float | None = None) -> tuple[int, int]:
        """A new lease; returns (lease id, granted TTL: etcd may raise a too-small TTL)."""
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)

        def attempt(t: float) -> tuple[int, int]:
            resp = self._unary("leasestub", "LeaseGrant", request, t)
            if resp.error:
                raise StoreError(f"lease grant refused: {resp.error}")
            return resp.ID, resp.TTL

        return self.run(attempt, budget)

    def revoke(self, lease_id: int, budget: float | None = None) -> None:
        """Revoke a lease (its keys are deleted at once). A lease already gone is fine."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            self.run(lambda t: self._unary("leasestub", "LeaseRevoke", request, t), budget)
        except LeaseLost:
            pass

    def lease_ttl(self, lease_id: int, budget: float | None = None) -> int:
        """Remaining TTL in seconds; -1 when the lease has expired or never existed."""
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        return self.run(lambda t: self._unary("leasestub", "LeaseTimeToLive", request, t).TTL,
                        budget)

    def lease_stub(self) -> etcdrpc.LeaseStub:
        return etcdrpc.LeaseStub(self.channel())

    def watch_stub(self) -> etcdrpc.WatchStub:
        return etcdrpc.WatchStub(self.channel())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()
