"""One way to serve: the gRPC server builder every process uses (node, agent, MDS), the
request checks, and the one table from domain errors to status codes.

Why one builder: the node, the agent and the sim MDS each built their own server (pool,
health, reflection, port check) and drifted apart; transport security and access control
need exactly one place to attach credentials and interceptors.

`RpcServer` gives every server:
- admission with separate budgets (see "Limits" below), so long-lived streams never take
  the threads unary calls and health need;
- grpc.health.v1 with the services `liveness` and `readiness` (and "" and every added
  service, which follow readiness), so Kubernetes probes and `grpc_health_probe` work;
- server reflection of every added service (grpcurl needs nothing else);
- the request check: every request is held against the limits its .proto declares
  (buf.validate annotations, enforced by protovalidate) before its handler runs, so a
  client reads the constraints in the schema and nothing is written past them;
- the domain-error interceptor: a handler that raises a `controlplane.errors` kind (or a
  StoreError) answers with the status code `STATUS` gives it, never UNKNOWN;
- access control (`Access`, over TLS only): the caller's identity from its certificate
  (`controlplane.security.identity`) against the per-method table
  (`controlplane.security.policy`): UNAUTHENTICATED without a usable identity,
  PERMISSION_DENIED for one the table refuses, each logged once per (identity, reason). A
  forwarded call is judged as its original caller (metadata CALLER), believed only from a
  node certificate. With `--insecure` there is no identity and no policy (the start warning
  says so);
- a clean RuntimeError naming the address when the port cannot be bound;
- its transport (`controlplane.security.tls`), bound here and nowhere else: mutual TLS that
  requires and verifies a client certificate signed by the CA (the files reloaded when they
  change on disk), or plaintext only when the process was started with `--insecure`
  (`PLAINTEXT`), logged as a warning. There is no default: `tls=` must be given.

Limits. In sync gRPC a handler holds a thread for as long as it runs, and a server stream
(WatchVms, reflection's ServerReflectionInfo) runs until its client goes: with one pool,
32 open WatchVms streams took all 32 workers and the liveness probe, GetRing and every unary
call queued behind them (issue 11, item 6). So `Admission` puts every call into one of four
budgets, each on threads of its own:
- streams (any request- or response-streaming method, of every service, health's Watch
  included): at most `max_streams` open (default `DEFAULT_MAX_STREAMS`, `serve
  --max-streams`), a permit taken when the handler starts and given back when it ends. They
  run on a pool of their own with `STREAM_SPARE_THREADS` threads more than the cap, so a
  stream beyond the cap is answered RESOURCE_EXHAUSTED at once, never left waiting;
- unary calls: `max_workers` threads; at most `max_unary` (default 4 x workers) running or
  waiting for a thread; beyond that RESOURCE_EXHAUSTED at once instead of an unbounded queue;
- grpc.health.v1 Check: `HEALTH_THREADS` threads of its own, never refused and never queued
  behind other calls, so the probes answer whatever else is going on;
- refusals: answered on a small pool of their own.
gRPC's `maximum_concurrent_rpcs` (counted over all of them, health included) stays as a
backstop at twice the stream and unary budgets together: only a flood of refusals and health
checks beyond that is refused by gRPC itself.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, NoReturn, Protocol, overload

import grpc
import protovalidate
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane import errors
from controlplane.metadata import CALLER, FORWARDED_BY, UNREACHABLE, value_of
from controlplane.security import policy
from controlplane.security.identity import Identity, peer_identity
from controlplane.security.tls import (
    CertificateNotValid,
    Plaintext,
    ReloadingServerConfig,
    Transport,
    server_credentials,
)
from controlplane.store.errors import StoreError

__all__ = ["DEFAULT_MAX_STREAMS", "MAX_ID", "MAX_NAME", "NAME_CHARS", "NO_DEADLINE_CAP",
           "STATUS", "Admission", "CountingPool", "MetricsInterceptor", "RpcServer",
           "StreamBudget", "abort", "check_address", "check_id", "check_name", "check_range",
           "check_request", "remaining", "serve_metrics", "serve_until_signal", "status_of",
           "valid_address"]

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# The one table: domain error kind -> the status code it answers with.
STATUS: dict[type[BaseException], grpc.StatusCode] = {
    errors.Invalid: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Exists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Refused: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Busy: grpc.StatusCode.ABORTED,
    errors.Unreachable: grpc.StatusCode.UNAVAILABLE,
    errors.Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
    errors.TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Failed: grpc.StatusCode.INTERNAL,
    StoreError: grpc.StatusCode.UNAVAILABLE,  # etcd unreachable: the caller may retry
}
MAX_DETAILS = 1024  # status details are trailing metadata: never echo unbounded text


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a domain error (by its nearest kind), None for anything else."""
    for kind in type(exc).__mro__:
        code = STATUS.get(kind)
        if code is not None:
            return code
    return None


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Answer the call with the domain error's status and its (bounded) message. A
    dependency out of reach (etcd, an agent, an MDS) is marked UNREACHABLE in the trailing
    metadata: the call may have had effects, so callers must not retry it blindly, unlike
    an UNAVAILABLE from a node that cannot serve (NotServing, or no answer at all)."""
    code = status_of(exc) or grpc.StatusCode.INTERNAL
    details = str(exc) if not isinstance(exc, StoreError) else f"cannot reach etcd: {exc}"
    if isinstance(exc, (errors.Unreachable, StoreError)) \
            and not isinstance(exc, errors.NotServing):
        context.set_trailing_metadata(((UNREACHABLE, "1"),))
    context.abort(code, details[:MAX_DETAILS])


# -- deadlines -----------------------------------------------------------------------------

# A call that set no deadline (grpcurl's default, Go's, grpc-gateway's) does not show the
# server None but about 9.2e18 s left (gRPC's "infinite future"): passed on as a timeout it
# breaks things (a forward fails at once with DEADLINE_EXCEEDED, `Future.result` raises
# "timestamp out of range"). Anything beyond this many seconds is taken for "no deadline".
_NO_DEADLINE_ABOVE = 1e9  # about 31 years
# What the server allows itself for a call that set no deadline, wherever it would otherwise
# wait on the caller's behalf: routing to an owner that is down (until the ring drops it),
# and an operation with wait=true (then answered as still in flight, like a caller's
# deadline that nears). 30 s: many lease TTLs (a dead owner is dropped within one), and short
# enough that a worker thread is not held forever by a client that never gives up.
NO_DEADLINE_CAP = 30.0


@overload
def remaining(context: grpc.ServicerContext) -> float: ...
@overload
def remaining(context: grpc.ServicerContext, default: float) -> float: ...
@overload
def remaining(context: grpc.ServicerContext, default: None) -> float | None: ...


def remaining(context: grpc.ServicerContext,
              default: float | None = NO_DEADLINE_CAP) -> float | None:
    """Seconds until the caller's deadline (>= 0), or `default` when it set none.

    The one reading of `context.time_remaining()`: use it instead of the raw value, which is
    None or ~9.2e18 without a deadline (see `_NO_DEADLINE_ABOVE`). `default=None` means the
    caller wants "no limit" passed on as None (e.g. a `timeout=None`)."""
    left = context.time_remaining()
    if left is None or left != left or left > _NO_DEADLINE_ABOVE:  # None, NaN, "infinite"
        return default
    return max(left, 0.0)


# -- request checks ------------------------------------------------------------------------

MAX_ID = 256
MAX_NAME = 128
# A name: what an id that names a file (or directory) may be. ASCII letters, digits, '.',
# '_' and '-', the first not '.' or '-': so '.', '..', hidden files (our own temporary files
# start with '.') and names that read as options ('-rf') are out; no separator, NUL, space,
# ',' or ':' (qemu's option and protocol syntax) can occur.
NAME_CHARS = "A-Z a-z 0-9 . _ -"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def check_id(value: str, field: str = "resource_id") -> str:
    """Resource ids are etcd key segments: non-empty, bounded, printable, no '/' or space."""
    if not value:
        raise errors.Invalid(f"{field} is empty")
    size = len(value.encode())
    if size > MAX_ID:
        raise errors.Invalid(f"{field} is {size} bytes; the limit is {MAX_ID}")
    if not value.isprintable() or "/" in value or " " in value:
        raise errors.Invalid(f"{field} {errors.shown(value)} must be printable, with no '/' "
                             "or space")
    return value


def check_name(value: str, field: str) -> str:
    """The one rule for ids that become file or directory names (images, volumes, block
    jobs, primary storage and its volumes, MDS volumes): 1..MAX_NAME characters of
    NAME_CHARS, the first not '.' or '-'. Stricter than `check_id` because a name
    is joined to a directory: '..' or 'a/b' would leave it, and a name is also an etcd key
    segment, so every name is an id. Paths built from names are still confined after
    realpath (`controlplane.paths.confined`): a symlink can lead out where a name cannot."""
    if not value:
        raise errors.Invalid(f"{field} is empty")
    if len(value) > MAX_NAME:
        raise errors.Invalid(f"{field} is {len(value)} characters; the limit is {MAX_NAME}")
    if not _NAME.fullmatch(value):
        raise errors.Invalid(f"{field} {errors.shown(value)} is not a name: use {NAME_CHARS},"
                             " not starting with '.' or '-'")
    return value


def check_range(value: int, field: str, low: int, high: int) -> int:
    """An integer field within [low, high], else Invalid naming the field and the bounds."""
    if not low <= value <= high:
        raise errors.Invalid(f"{field} must be in {low}..{high}, got {value}")
    return value


def valid_address(address: str) -> bool:
    """HOST:PORT with a host and a port in 1..65535 (shared with the command-line checks)."""
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def check_address(address: str, field: str) -> str:
    """A HOST:PORT another process serves at (an agent, an MDS)."""
    if not valid_address(address):
        raise errors.Invalid(f"{field} {errors.shown(address)}: expected HOST:PORT")
    return address


MAX_VIOLATIONS_SHOWN = 5


def check_request(request: Any) -> None:
    """The request against the limits its .proto declares (buf.validate rules: id patterns,
    string lengths, repeated sizes, ranges, defined enum values), before any handler runs:
    Invalid naming every broken field, its rule and the limit, never the value itself (a
    1 MiB string is not echoed into trailing metadata). Messages without rules pass."""
    violations = protovalidate.collect_violations(request)
    if not violations:
        return
    shown = [f"{_field_path(v.proto.field)}: {v.proto.message} ({v.proto.rule_id})"
             for v in violations[:MAX_VIOLATIONS_SHOWN]]
    more = len(violations) - len(shown)
    raise errors.Invalid("; ".join(shown) + (f"; and {more} more" if more > 0 else ""))


def _field_path(path: Any) -> str:
    """image.image_id, mds_addresses[3]: the field a violation is about."""
    out = []
    for element in path.elements:
        name = element.field_name
        subscript = getattr(element, "subscript", None)  # a oneof: index or a map key
        if subscript is not None and getattr(subscript, "field", "") == "index":
            name += f"[{subscript.value}]"
        out.append(name)
    return ".".join(out) or "(message)"


# -- the server ----------------------------------------------------------------------------

def _wrap(behaviour: Callable[..., Any], streaming: bool, request_streaming: bool
          ) -> Callable[..., Any]:
    if streaming:
        def stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            try:
                if not request_streaming:
                    check_request(request_or_iterator)
                yield from behaviour(request_or_iterator, context)
            except (errors.DomainError, StoreError) as exc:
                abort(context, exc)
        return stream

    def unary(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
            if not request_streaming:
                check_request(request_or_iterator)
            return behaviour(request_or_iterator, context)
        except (errors.DomainError, StoreError) as exc:
            abort(context, exc)
    return unary


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every unary call by method and final status code, and the calls in flight.

    The counters are passed in (a Counter labelled method, code and a Gauge), so a process
    that uses the builder without this interceptor registers none of the node's metrics."""

    def __init__(self, calls: Any, in_flight: Any) -> None:
        self.calls = calls
        self.in_flight = in_flight

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        calls, in_flight = self.calls, self.in_flight

        def wrapped(request, context):  # type: ignore[no-untyped-def]
            in_flight.inc()
            try:
                response = inner(request, context)
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                calls.labels(method, code.name).inc()
                raise
            finally:
                in_flight.dec()
            code = context.code() or grpc.StatusCode.OK
            calls.labels(method, code.name).inc()
            return response

        return handler._replace(unary_unary=wrapped)


class DomainErrors(grpc.ServerInterceptor):
    """Checks every request against its declared limits (`check_request`) and turns a
    domain error raised by any handler into its status (the `STATUS` table)."""

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        behaviour = (handler.unary_unary or handler.unary_stream or handler.stream_unary
                     or handler.stream_stream)
        if getattr(behaviour, "experimental_non_blocking", False):
            # Health.Watch answers from gRPC's own thread pool, not a worker: wrapping it
            # would turn it into a blocking stream that holds a worker per watcher.
            return handler
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap(handler.unary_unary, False, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap(handler.unary_stream, True, False))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap(handler.stream_unary, False, True))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap(handler.stream_stream, True, True))
        return handler


# -- access control ----------------------------------------------------------------------

MAX_LOGGED_REFUSALS = 10_000  # distinct (identity, reason) pairs remembered for logging


class Access(grpc.ServerInterceptor):
    """The access policy on every call of a TLS server (module docstring; the table is
    `controlplane.security.policy`). The identity is read in the handler (the auth context
    is the call's), before the behaviour runs: a refused call writes nothing."""

    def __init__(self) -> None:
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kind = next(k for k in _KINDS if getattr(handler, k) is not None)
        behaviour = getattr(handler, kind)
        check = self.check
        if getattr(behaviour, "experimental_non_blocking", False):  # Health.Watch
            def non_blocking(request: Any, context: grpc.ServicerContext,
                             send_response_callback: Callable[[Any], None]) -> Any:
                check(method, context)
                return behaviour(request, context, send_response_callback)
            non_blocking.experimental_non_blocking = True  # type: ignore[attr-defined]
            return handler._replace(**{kind: non_blocking})

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            check(method, context)
            return behaviour(request, context)
        return handler._replace(**{kind: checked})

    def check(self, method: str, context: grpc.ServicerContext) -> Identity:
        """The identity the call is judged as; aborts the call when the policy refuses."""
        peer = peer_identity(context)
        if peer is None:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "(no identity)",
                         "no usable client certificate: it names no node, agent, mds or "
                         "user identity")
        metadata = context.invocation_metadata()
        caller = peer
        header = value_of(metadata, CALLER)
        if header is not None or value_of(metadata, FORWARDED_BY) is not None:
            if peer.kind != "node":
                self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(peer),
                             f"forwarded-call metadata ({CALLER}, {FORWARDED_BY}) is "
                             f"accepted only from node certificates; {peer} is a {peer.kind}")
            if header is not None:
                original = Identity.from_header(header)
                if original is None:
                    self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, str(peer),
                                 f"forwarded call from {peer} names no identity in {CALLER}")
                caller = original
        reason = policy.decide(caller, method)
        if reason is not None:
            via = f" (forwarded by {peer})" if caller is not peer else ""
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(caller),
                         reason + via)
        return caller

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, who: str,
                reason: str) -> NoReturn:
        key = (who, reason)
        with self._lock:
            first = key not in self._logged and len(self._logged) < MAX_LOGGED_REFUSALS
            if first:
                self._logged.add(key)
        if first:
            log.warning("refused %s (%s): %s (logged once per identity and reason)",
                        who, code.name, reason)
        context.abort(code, reason[:MAX_DETAILS])
        raise AssertionError("context.abort returned")  # it raises; for the type checker


# -- admission (the "Limits" of the module docstring) -------------------------------------

DEFAULT_MAX_STREAMS = 64
STREAM_SPARE_THREADS = 4  # threads beyond the stream cap: refusals never wait for a stream
HEALTH_THREADS = 2
REFUSAL_THREADS = 2
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class Health(health.HealthServicer):
    """grpc.health.v1 with List too: grpcio-health-checking answers Check and Watch but
    leaves List (added to health.proto in 2024) UNIMPLEMENTED, which a client that asks
    every service's status at once (grpcurl, a dashboard) meets first."""

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext
             ) -> health_pb2.HealthListResponse:
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status)
            for name, status in statuses.items()})

    def serving(self, service: str) -> bool:
        """Is `service` SERVING (what Check would answer)? For the HTTP probes
        (`serve_metrics`), which must say exactly what grpc.health.v1 says."""
        with self._lock:
            return self._server_status.get(service) == SERVING


class StreamBudget:
    """A count of open streams with a cap. `try_acquire` never waits: a stream beyond the
    cap is refused at once rather than queued behind streams that may never end."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"a stream budget needs a cap of at least 1, got {cap}")
        self.cap = cap
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def try_acquire(self) -> bool:
        """Take a permit if one is free; False when `cap` are held."""
        with self._lock:
            if self._held >= self.cap:
                return False
            self._held += 1
            return True

    def release(self) -> None:
        """Give a permit back; releasing one never taken is a bug (it would raise the cap)."""
        with self._lock:
            if self._held == 0:
                raise RuntimeError("stream budget released more often than acquired")
            self._held -= 1


class CountingPool(futures.ThreadPoolExecutor):
    """A thread pool that counts its tasks, queued or running. The count is exact and
    cannot leak (a task counts until it has run, whether or not gRPC then calls the
    handler), which a permit taken before queueing and given back by the handler could
    not promise: a call cancelled while queued never reaches its handler."""

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._tasks = 0
        self._count_lock = threading.Lock()

    @property
    def tasks(self) -> int:
        return self._tasks

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count_lock:
                    self._tasks -= 1

        with self._count_lock:
            self._tasks += 1
        try:
            return super().submit(counted)
        except BaseException:
            with self._count_lock:
                self._tasks -= 1
            raise


def _on_pool(behaviour: Callable[..., Any], pool: futures.ThreadPoolExecutor,
             non_blocking: bool = False) -> Callable[..., Any]:
    """gRPC runs a behaviour on the pool named by its `experimental_thread_pool`."""
    behaviour.experimental_thread_pool = pool  # type: ignore[attr-defined]
    if non_blocking:
        behaviour.experimental_non_blocking = True  # type: ignore[attr-defined]
    return behaviour


_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class Admission(grpc.ServerInterceptor):
    """Puts every call into its budget (the module docstring's "Limits").

    `intercept_service` runs on gRPC's one serving thread just before the call is queued on
    the pool its behaviour names, so reading `CountingPool.tasks` there and queueing are not
    raced by another admission. Streams take their permit in the handler itself (on the
    stream pool, which always has a thread free for a refusal), so a permit is only ever
    held by a handler that runs and gives it back."""

    def __init__(self, *, budget: StreamBudget, stream_pool: futures.ThreadPoolExecutor,
                 unary_pool: CountingPool, max_unary: int,
                 health_pool: futures.ThreadPoolExecutor,
                 refusal_pool: futures.ThreadPoolExecutor) -> None:
        self.budget = budget
        self.stream_pool = stream_pool
        self.unary_pool = unary_pool
        self.max_unary = max_unary
        self.health_pool = health_pool
        self.refusal_pool = refusal_pool

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        kind = next(k for k in _KINDS if getattr(handler, k) is not None)
        behaviour = getattr(handler, kind)
        if handler.request_streaming or handler.response_streaming:
            return handler._replace(**{kind: self._stream(behaviour,
                                                          handler.response_streaming)})
        if handler_call_details.method == HEALTH_CHECK:
            return handler._replace(**{kind: _on_pool(_call(behaviour), self.health_pool)})
        if self.unary_pool.tasks >= self.max_unary:
            return handler._replace(**{kind: self._refusal(
                f"server busy: {self.max_unary} calls in progress; retry later")})
        return handler

    def _refusal(self, details: str) -> Callable[..., Any]:
        def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        return _on_pool(refuse, self.refusal_pool)

    def _refuse_stream(self, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"too many open streams: this server allows {self.budget.cap} "
                      "(--max-streams); retry later or close one")

    def _stream(self, behaviour: Callable[..., Any], responses: bool) -> Callable[..., Any]:
        budget = self.budget
        if getattr(behaviour, "experimental_non_blocking", False):
            # Health.Watch: the handler returns at once and answers later from other
            # threads; the permit is held until the call ends, however it ends.
            def non_blocking(request: Any, context: grpc.ServicerContext,
                             send_response_callback: Callable[[Any], None]) -> Any:
                if not budget.try_acquire():
                    self._refuse_stream(context)
                if not context.add_callback(budget.release):
                    budget.release()  # the call has already ended
                return behaviour(request, context, send_response_callback)
            return _on_pool(non_blocking, self.stream_pool, non_blocking=True)

        def blocking(request: Any, context: grpc.ServicerContext) -> Any:
            if not budget.try_acquire():
                self._refuse_stream(context)
            try:
                yield from behaviour(request, context)
            finally:  # the stream ended, failed, or its client went (the generator closed)
                budget.release()

        def one_response(requests: Any, context: grpc.ServicerContext) -> Any:
            if not budget.try_acquire():
                self._refuse_stream(context)
            try:
                return behaviour(requests, context)
            finally:
                budget.release()
        return _on_pool(blocking if responses else one_response, self.stream_pool)


def _call(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """A plain function calling `behaviour` (a bound method takes no attributes)."""
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        return behaviour(request, context)
    return call


class RpcServer:
    """One gRPC server with health, reflection, admission and the domain-error interceptor.

    Add services with `add(add_fn, servicer, full_name)`, then `start()`. Health starts
    live and (unless `ready=False`) ready; `set_health` changes it later.

    Budgets (module docstring, "Limits"): `max_workers` threads for unary calls, at most
    `max_unary` (default 4 x `max_workers`) running or queued; at most `max_streams` open
    streams on threads of their own; health Check on `HEALTH_THREADS` threads of its own;
    `max_concurrent_rpcs` (default twice the two budgets) is gRPC's own backstop.
    """

    def __init__(self, listen: str, *, tls: Transport, max_workers: int = 32,
                 max_unary: int | None = None,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 max_concurrent_rpcs: int | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.listen = listen
        self.tls = tls
        self.tls_config: ReloadingServerConfig | None = None  # set by start() with TLS
        self.health = Health(experimental_non_blocking=True)
        self.services: list[str] = []
        max_unary = 4 * max_workers if max_unary is None else max_unary
        if max_unary < max_workers:
            raise ValueError(f"max_unary {max_unary} < max_workers {max_workers}")
        self.streams = StreamBudget(max_streams)
        self.unary_pool = CountingPool(max_workers, "rpc")
        admission = Admission(
            budget=self.streams, unary_pool=self.unary_pool, max_unary=max_unary,
            stream_pool=futures.ThreadPoolExecutor(max_streams + STREAM_SPARE_THREADS,
                                                   thread_name_prefix="rpc-stream"),
            health_pool=futures.ThreadPoolExecutor(HEALTH_THREADS,
                                                   thread_name_prefix="rpc-health"),
            refusal_pool=futures.ThreadPoolExecutor(REFUSAL_THREADS,
                                                    thread_name_prefix="rpc-refuse"))
        if max_concurrent_rpcs is None:
            max_concurrent_rpcs = 2 * (max_streams + max_unary)
        self.server = grpc.server(
            self.unary_pool,
            # Admission first: it sees the final behaviour and names the pool it runs on.
            # The caller's interceptors (metrics, audit) see the access check's refusals too:
            # a PERMISSION_DENIED is counted and audited like any other answer.
            interceptors=[admission, *interceptors,
                          *([] if isinstance(tls, Plaintext) else [Access()]), DomainErrors()],
            options=[("grpc.so_reuseport", 0), *options],
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        self.port = 0
        self._stopped = False

    def add(self, add_fn: Callable[[Any, grpc.Server], None], servicer: object,
            full_name: str) -> RpcServer:
        """Register a servicer (`add_XServicer_to_server`) under its full service name."""
        add_fn(servicer, self.server)
        self.services.append(full_name)
        return self

    def start(self, ready: bool = True) -> int:
        """Bind, enable reflection and health, serve; returns the bound port."""
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        creds = None
        if not isinstance(self.tls, Plaintext):  # RuntimeError naming a bad or missing file
            creds, self.tls_config = server_credentials(self.tls)
        try:
            if creds is None:
                self.port = self.server.add_insecure_port(self.listen)
            else:
                self.port = self.server.add_secure_port(self.listen, creds)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {self.listen}: {exc}") from exc
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.listen}")
        if isinstance(self.tls, Plaintext):
            log.warning("serving PLAINTEXT on %s (--insecure): no certificates, no "
                        "authentication, no access policy; anyone who reaches this port "
                        "can call every method", self.listen)
        else:
            log.info("serving mutual TLS on %s (client certificates required, CA %s)",
                     self.listen, self.tls.ca)
        self.set_health(live=True, ready=ready)
        self.server.start()
        return self.port

    def set_health(self, live: bool, ready: bool) -> None:
        ready_status = SERVING if ready else NOT_SERVING
        self.health.set("liveness", SERVING if live else NOT_SERVING)
        self.health.set("readiness", ready_status)
        for name in ("", *self.services):
            self.health.set(name, ready_status)

    def stop(self, grace: float = 1.0) -> None:
        """Health NOT_SERVING for everything, then stop, letting calls finish for `grace`."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def serve_until_signal(start: Callable[[], Stoppable],
                       signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Run a server until SIGTERM/SIGINT: the body of `serve`, `agent` and `mds`.

    The handlers are installed before `start()` runs, so a signal during a slow start still
    stops cleanly. A start that raises RuntimeError (a port taken, say) is logged and exits
    1. After the first signal `stop()` runs once: a repeated SIGTERM does not cut it short
    (a drain in progress finishes); a second Ctrl-C means the operator wants out now (exit
    130 at once)."""
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if done.is_set():
            if signum == signal.SIGINT:
                os._exit(130)
            return
        log.info("signal %s: stopping", signal.Signals(signum).name)
        done.set()

    for signum in signals:
        signal.signal(signum, on_signal)
    try:
        server = start()
    except CertificateNotValid as exc:  # the file, subject and dates as fields too
        log.error("refusing to start: %s", exc, extra=exc.fields())
        return 1
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


# HTTP paths of the probes on the metrics port -> the grpc.health.v1 service they report
HTTP_PROBES = {"/livez": "liveness", "/readyz": "readiness"}


def serve_metrics(port: int, address: str, health: Health | None = None) -> None:
    """Serve the Prometheus endpoint when `port` is set (0: off); with `health`, also
    `HTTP_PROBES`: 200 "ok" while that grpc.health.v1 service is SERVING, else 503.

    Why health over plain HTTP here: Kubernetes' own probes (grpc, httpGet) speak no mutual
    TLS, and the gRPC port requires a client certificate. The metrics port is plaintext
    already (Prometheus scrapes it), so it answers the probes too: no extra port, no exec of
    a Python interpreter per probe, and it tells nothing beyond two booleans (deploy/README).
    RuntimeError when the port cannot be bound (a start inside serve_until_signal then exits
    1 with that line)."""
    if not port:
        return
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        service = HTTP_PROBES.get(environ.get("PATH_INFO", ""))
        if health is None or service is None:
            return metrics_app(environ, start_response)
        ok = health.serving(service)
        body = b"ok\n" if ok else b"not serving\n"
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's
            pass  # a probe every 2 s is not a log line

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    try:
        httpd = make_server(address, port, app, Server, handler_class=Quiet)
    except OSError as exc:
        raise RuntimeError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
