"""One way to serve: the gRPC server builder every process uses (node, agent, MDS), the
request checks, and the one table from domain errors to status codes.

Why one builder: the node, the agent and the sim MDS each built their own server (pool,
health, reflection, port check) and drifted apart; transport security and access control
need exactly one place to attach credentials and interceptors.

`RpcServer` gives every server:
- a bounded thread pool and `maximum_concurrent_rpcs`;
- grpc.health.v1 with the services `liveness` and `readiness` (and "" and every added
  service, which follow readiness), so Kubernetes probes and `grpc_health_probe` work;
- server reflection of every added service (grpcurl needs nothing else);
- the domain-error interceptor: a handler that raises a `controlplane.errors` kind (or a
  StoreError) answers with the status code `STATUS` gives it, never UNKNOWN;
- a clean RuntimeError naming the address when the port cannot be bound.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any, Protocol, overload

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane import errors
from controlplane.metadata import UNREACHABLE
from controlplane.store.errors import StoreError

__all__ = ["MAX_ID", "NO_DEADLINE_CAP", "STATUS", "MetricsInterceptor", "RpcServer", "abort",
           "check_address", "check_id", "check_range", "remaining", "serve_metrics",
           "serve_until_signal", "status_of", "valid_address"]

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


def check_id(value: str, field: str = "resource_id") -> str:
    """Resource ids are etcd key segments: non-empty, bounded, printable, no '/' or space."""
    if not value:
        raise errors.Invalid(f"{field} is empty")
    size = len(value.encode())
    if size > MAX_ID:
        raise errors.Invalid(f"{field} is {size} bytes; the limit is {MAX_ID}")
    if not value.isprintable() or "/" in value or " " in value:
        raise errors.Invalid(f"{field} {value!r} must be printable, with no '/' or space")
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
        shown = address if len(address) <= 64 else address[:64] + "..."
        raise errors.Invalid(f"{field} {shown!r}: expected HOST:PORT")
    return address


# -- the server ----------------------------------------------------------------------------

def _wrap(behaviour: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    if streaming:
        def stream(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
            try:
                yield from behaviour(request_or_iterator, context)
            except (errors.DomainError, StoreError) as exc:
                abort(context, exc)
        return stream

    def unary(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        try:
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
    """Turns a domain error raised by any handler into its status (the `STATUS` table)."""

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
            return handler._replace(unary_unary=_wrap(handler.unary_unary, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap(handler.unary_stream, True))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap(handler.stream_unary, False))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap(handler.stream_stream, True))
        return handler


class RpcServer:
    """One gRPC server with health, reflection and the domain-error interceptor.

    Add services with `add(add_fn, servicer, full_name)`, then `start()`. Health starts
    live and (unless `ready=False`) ready; `set_health` changes it later.
    """

    def __init__(self, listen: str, *, max_workers: int = 32,
                 max_concurrent_rpcs: int | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.listen = listen
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self.services: list[str] = []
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
            interceptors=[*interceptors, DomainErrors()],
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
        try:
            self.port = self.server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot listen on {self.listen}: {exc}") from exc
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.listen}")
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
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


def serve_metrics(port: int, address: str) -> None:
    """Serve the Prometheus endpoint when `port` is set (0: off). RuntimeError when it
    cannot be bound (a start inside serve_until_signal then exits 1 with that line)."""
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=address)
    except OSError as exc:
        raise RuntimeError(f"cannot serve metrics on {address}:{port}: {exc}") from exc
