"""The MDS client: one call, tried on the healthy metadata servers in turn (try-next).

Why it looks like this (seeds: ZStack's ZBS tryNext; DESIGN.md section 7):
- A block store's MDS can hang (a stuck disk, a GC pause) as well as die. A hung MDS must
  cost one short per-attempt deadline (30 s by default, not the minutes a TCP timeout takes),
  then the call goes on to the next MDS when that is safe (:mod:`controlplane.storage.retry`
  says when: always after a transport error, after a timeout or an operation error only for
  idempotent calls).
- The order is shuffled per call, so one hung MDS slows only the calls that drew it first.
- tenacity has no per-attempt timeout: the gRPC deadline is the attempt's timeout (never
  more than what is left of the total budget). tenacity's ``reraise`` keeps only the last
  error, but an operator needs every MDS's answer (one refused, one timed out, one said
  INTERNAL...): the attempts are collected here and raised together in :class:`MdsError`.
- The total budget stops with ``stop_before_delay``: no attempt starts once it is spent.
- Channels reconnect with a short backoff (0.1-1 s): an MDS that restarts is reachable again
  within a second, not after the exponential backoff gRPC grew while it was down.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import tenacity
from google.protobuf.message import Message

from controlplane.channels import CHANNEL_OPTIONS, ChannelPool
from controlplane.security.tls import PLAINTEXT, Transport
from controlplane.storage.retry import (
    Decision,
    MdsEndpoint,
    Outcome,
    attempt_order,
    classify,
    decide,
    not_tried,
)
from controlplane.v1 import mds_pb2, mds_pb2_grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_ATTEMPT_TIMEOUT",
    "READ_ONLY_METHODS",
    "Attempt",
    "Invoke",
    "MdsClient",
    "MdsEndpoint",
    "MdsError",
    "MdsResult",
]

log = logging.getLogger(__name__)

DEFAULT_ATTEMPT_TIMEOUT = 30.0
# An attempt with less time than this left of the budget is not started: it could only time
# out, and its DEADLINE_EXCEEDED would hide the real reason (the budget).
MIN_ATTEMPT_SECONDS = 0.01

_SERVICE = mds_pb2.DESCRIPTOR.services_by_name["StorageMdsService"]
_METHODS = {m.name: m for m in _SERVICE.methods}
# The read-only StorageMds methods: what callers may mark idempotent without thinking.
READ_ONLY_METHODS: frozenset[str] = frozenset({"GetVolumeClients", "GetVolume"})

# (address, method name, request, timeout) -> response; raises grpc.RpcError. Replaced by a
# fake in unit tests (no network), the channel's stub otherwise.
Invoke = Callable[[str, str, Message, float], Message]


@dataclass(frozen=True)
class Attempt:
    """One try of a call on one MDS."""

    address: str
    outcome: Outcome
    code: str  # grpc status code name; "OK" when it answered
    details: str
    seconds: float  # how long the attempt took (printed by tests, never asserted)

    def __str__(self) -> str:
        if self.outcome is Outcome.OK:
            return f"{self.address}: OK"
        return f"{self.address}: {self.code}: {self.details} ({self.outcome.value})"


@dataclass(frozen=True)
class MdsResult:
    """A successful call: the response and every attempt it took (the last one answered)."""

    response: Any
    attempts: tuple[Attempt, ...]

    @property
    def address(self) -> str:
        """The MDS that answered."""
        return self.attempts[-1].address


class MdsError(Exception):
    """A call that failed on every MDS it was allowed to try.

    Carries every attempt (``attempts``: address, outcome, code, details), the healthy MDS it
    did not try (``not_tried``) and why it stopped (``reason``); the message names each MDS
    with its error, so one log line says the whole story."""

    def __init__(self, method: str, attempts: Sequence[Attempt], untried: Sequence[str],
                 reason: str) -> None:
        self.method = method
        self.attempts = tuple(attempts)
        self.not_tried = tuple(untried)
        self.reason = reason
        parts = [f"MDS call {method} failed: {reason}"]
        if self.attempts:
            parts.append("; ".join(str(a) for a in self.attempts))
        if self.not_tried:
            parts.append("not tried: " + ", ".join(self.not_tried))
        super().__init__(" | ".join(parts))

    @property
    def errors(self) -> tuple[tuple[str, str, str], ...]:
        """(address, status code name, details) of every MDS tried, in order."""
        return tuple((a.address, a.code, a.details) for a in self.attempts)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(a.code for a in self.attempts)


class _TryNext(Exception):
    """Internal: the attempt failed and the policy says go on (what tenacity retries)."""


class _BudgetSpent(Exception):
    """Internal: not enough of the budget is left to start another attempt."""


class MdsClient:
    """Calls StorageMds on the healthy MDS of one primary storage, with try-next.

    ``endpoints``: the MDS a primary storage record lists, with each one's health.
    ``attempt_timeout``: the gRPC deadline of one attempt on one MDS; meant to come from the
    global config key ``storage.mdsAttemptTimeout`` (default 30 s: long enough for a busy
    MDS, short enough that a hung one does not hold a VM operation for minutes).
    ``budget``: total seconds for one call, all attempts included (``stop_before_delay``: no
    attempt starts once it is spent, the last one gets only what is left); ``None`` gives
    every healthy MDS one full attempt (``attempt_timeout`` x their number).
    ``rng``: draws the order of each call (pass a seeded one to choose the order).
    ``invoke``: the transport, for tests without a network; gRPC channels by default.
    ``tls``: what the channels present (the node's own certificate), required with them.

    Thread-safe: endpoints are an immutable tuple swapped by :meth:`update_endpoints`,
    channels are created once per address under a lock.
    """

    def __init__(
        self,
        endpoints: Iterable[MdsEndpoint],
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        budget: float | None = None,
        *,
        rng: random.Random | None = None,
        invoke: Invoke | None = None,
        tls: Transport | None = None,
    ) -> None:
        if not attempt_timeout > 0:
            raise ValueError(f"attempt_timeout must be > 0, got {attempt_timeout}")
        if budget is not None and not budget > 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        self.attempt_timeout = float(attempt_timeout)
        self.budget = budget
        self._endpoints = _checked(endpoints)
        if tls is None and invoke is None:
            raise TypeError("MdsClient needs tls= (TlsFiles, or PLAINTEXT for --insecure)")
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()
        self._invoke: Invoke = invoke if invoke is not None else self._grpc_invoke
        self._lock = threading.Lock()
        self._channels = ChannelPool(CHANNEL_OPTIONS, tls=tls or PLAINTEXT)
        self._closed = False

    # -- endpoints and channels ------------------------------------------------------

    @property
    def endpoints(self) -> tuple[MdsEndpoint, ...]:
        return self._endpoints

    def update_endpoints(self, endpoints: Iterable[MdsEndpoint]) -> None:
        """New endpoint list or health (from the primary storage record). Calls in flight
        keep the list they started with; channels of dropped addresses stay open until
        :meth:`close` (closing one would cancel a call in flight on it)."""
        self._endpoints = _checked(endpoints)

    def _stub(self, address: str) -> mds_pb2_grpc.StorageMdsServiceStub:
        with self._lock:
            if self._closed:
                raise RuntimeError("MdsClient is closed")
        return self._channels.stub(mds_pb2_grpc.StorageMdsServiceStub, address)

    def _grpc_invoke(self, address: str, method: str, request: Message,
                     timeout: float) -> Message:
        return getattr(self._stub(address), method)(request, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._channels.close()

    def __enter__(self) -> MdsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls --------------------------------------------------------------------------

    def call(self, method: str, request: Message, *, idempotent: bool,
             budget: float | None = None, attempt_timeout: float | None = None) -> MdsResult:
        """Call StorageMds ``method`` with try-next; raises :class:`MdsError`.

        ``idempotent``: the caller's promise that doing the call twice is harmless (read-only
        calls, :data:`READ_ONLY_METHODS`, always are); only then does a timeout or an
        operation error go on to the next MDS. ``attempt_timeout``: this call's per-attempt
        deadline (default: the client's)."""
        _check_request(method, request)
        per_attempt = self.attempt_timeout if attempt_timeout is None else attempt_timeout
        endpoints = self._endpoints
        with self._rng_lock:
            order = attempt_order(endpoints, self._rng)
        if not order:
            listed = ", ".join(e.address for e in endpoints) or "none listed"
            raise MdsError(method, (), (), f"no healthy MDS ({listed})")
        if budget is None:
            budget = self.budget if self.budget is not None else per_attempt * len(order)
        if not budget > 0:
            raise ValueError(f"budget must be > 0, got {budget}")
        attempts: list[Attempt] = []
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_TryNext),
            stop=tenacity.stop_before_delay(budget) | tenacity.stop_after_attempt(len(order)),
            wait=tenacity.wait_none(),  # the next MDS is another server: no reason to wait
            reraise=True,
        )
        try:
            for trial in retrying:
                with trial:
                    state = trial.retry_state
                    endpoint = order[state.attempt_number - 1]
                    left = state.start_time + budget - time.monotonic()
                    if left < MIN_ATTEMPT_SECONDS:
                        raise _BudgetSpent
                    response = self._attempt(method, request, endpoint, idempotent,
                                             min(per_attempt, left), attempts, order)
                    return MdsResult(response, tuple(attempts))
        except (_TryNext, _BudgetSpent):
            pass
        if len(attempts) == len(order):
            reason = f"every healthy MDS failed ({len(order)})"
        else:
            reason = f"the budget of {budget:g}s is spent"
        raise MdsError(method, attempts, not_tried(order, len(attempts)), reason)

    def _attempt(self, method: str, request: Message, endpoint: MdsEndpoint, idempotent: bool,
                 timeout: float, attempts: list[Attempt], order: Sequence[MdsEndpoint]) -> Any:
        started = time.monotonic()
        try:
            response = self._invoke(endpoint.address, method, request, timeout)
        except grpc.RpcError as exc:
            code, details = _status(exc)
        else:
            attempts.append(Attempt(endpoint.address, Outcome.OK, "OK", "",
                                    time.monotonic() - started))
            return response
        outcome = classify(code)
        attempt = Attempt(endpoint.address, outcome, code.name, details,
                          time.monotonic() - started)
        attempts.append(attempt)
        decision = decide(outcome, idempotent)
        if decision is Decision.NEXT:
            log.info("MDS %s (%.3fs): trying the next MDS", attempt, attempt.seconds)
            raise _TryNext
        if outcome is Outcome.REJECTED:
            reason = f"{endpoint.address} rejected the request"
        else:
            reason = (f"{attempt.outcome.value} from {endpoint.address} and {method} is not "
                      "marked idempotent (it may have been applied)")
        log.warning("MDS %s (%.3fs): stopping", attempt, attempt.seconds)
        raise MdsError(method, attempts, not_tried(order, len(attempts)), reason)

    # -- the StorageMds calls, marked as they should be ---------------------------------

    def get_volume_clients(self, volume_id: str
                           ) -> mds_pb2.StorageMdsServiceGetVolumeClientsResponse:
        req = mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id=volume_id)
        return self.call("GetVolumeClients", req, idempotent=True).response

    def get_volume(self, volume_id: str) -> mds_pb2.MdsVolume:
        req = mds_pb2.GetVolumeRequest(volume_id=volume_id)
        return self.call("GetVolume", req, idempotent=True).response.volume

    def create_volume(self, volume_id: str, size_bytes: int) -> mds_pb2.MdsVolume:
        req = mds_pb2.CreateVolumeRequest(volume_id=volume_id, size_bytes=size_bytes)
        return self.call("CreateVolume", req, idempotent=False).response.volume

    def delete_volume(self, volume_id: str) -> mds_pb2.DeleteVolumeResponse:
        req = mds_pb2.DeleteVolumeRequest(volume_id=volume_id)
        return self.call("DeleteVolume", req, idempotent=False).response

    # Client sessions: the client names the session, so each of these is idempotent (a
    # repeated attach is the same session, a repeated keepalive refreshes it again, a
    # repeated detach finds nothing): try-next is safe after a timeout too.

    def attach_volume(self, volume_id: str, client_id: str, session_id: str,
                      address: str = "", budget: float | None = None
                      ) -> mds_pb2.AttachVolumeResponse:
        req = mds_pb2.AttachVolumeRequest(volume_id=volume_id, client_id=client_id,
                                          session_id=session_id, address=address)
        return self.call("AttachVolume", req, idempotent=True, budget=budget).response

    def keepalive_volume(self, volume_id: str, client_id: str, session_id: str,
                         budget: float | None = None, attempt_timeout: float | None = None
                         ) -> mds_pb2.KeepAliveVolumeResponse:
        req = mds_pb2.KeepAliveVolumeRequest(volume_id=volume_id, client_id=client_id,
                                             session_id=session_id)
        return self.call("KeepAliveVolume", req, idempotent=True, budget=budget,
                         attempt_timeout=attempt_timeout).response

    def detach_volume(self, volume_id: str, client_id: str, session_id: str,
                      budget: float | None = None) -> mds_pb2.DetachVolumeResponse:
        req = mds_pb2.DetachVolumeRequest(volume_id=volume_id, client_id=client_id,
                                          session_id=session_id)
        return self.call("DetachVolume", req, idempotent=True, budget=budget).response


def _checked(endpoints: Iterable[MdsEndpoint]) -> tuple[MdsEndpoint, ...]:
    """The endpoints as a tuple; ValueError on an empty address or one listed twice (it
    would be tried twice and its health would be ambiguous)."""
    result = tuple(endpoints)
    seen: set[str] = set()
    for e in result:
        if not e.address:
            raise ValueError("an MDS endpoint has an empty address")
        if e.address in seen:
            raise ValueError(f"MDS endpoint {e.address} listed twice")
        seen.add(e.address)
    return result


def _check_request(method: str, request: Message) -> None:
    """A bug in the caller (unknown method, wrong message) is a TypeError/ValueError here,
    not an error from every MDS."""
    desc = _METHODS.get(method)
    if desc is None:
        raise ValueError(f"StorageMds has no method {method!r} (has: {', '.join(_METHODS)})")
    if request.DESCRIPTOR.full_name != desc.input_type.full_name:
        raise TypeError(f"{method} takes {desc.input_type.full_name}, "
                        f"got {request.DESCRIPTOR.full_name}")


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """Code and details of a failed call (an RpcError that is not a Call says nothing)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    status = code() if callable(code) else None
    text = details() if callable(details) else None
    if not isinstance(status, grpc.StatusCode):
        status = grpc.StatusCode.UNKNOWN
    return status, text or str(exc) or status.name
