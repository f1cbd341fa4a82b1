"""Forward a call to the owner of its resource: the one helper every routed service uses.

Protocol: the first node asked looks the owner up in its ring. If it is not the owner it
forwards the call with two metadata entries: who forwarded it and the ring epoch it used.
The receiver never forwards again; it checks that it owns the resource at its own epoch and
otherwise refuses with FAILED_PRECONDITION carrying its epoch. The sender then waits until
its own view has caught up with that epoch (or re-lists), and retries a bounded number of
times. UNAVAILABLE from the owner (dead, draining), or CANCELLED while our own caller still
waits (the owner's server stopped under the call), is retried the same way, because the ring
will drop a dead owner within the lease TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import tenacity

from controlplane.channels import ChannelPool
from controlplane.cluster.ring import Ring
from controlplane.cluster.view import ClusterView
from controlplane.metadata import EPOCH, FORWARDED_BY, UNREACHABLE, epoch_in, has

log = logging.getLogger(__name__)
T = TypeVar("T")


# remote(channel, metadata, timeout) -> response
RemoteCall = Callable[[grpc.Channel, tuple[tuple[str, str], ...], float], T]


class RouteError(Exception):
    """Routing gave up; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Retry(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, epoch: int) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.epoch = epoch


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def epoch_of(err: grpc.RpcError) -> int:
    """The receiver's epoch from a FAILED_PRECONDITION's trailing metadata (0 if none)."""
    return epoch_in(err.trailing_metadata())


def _pass_on(context: grpc.ServicerContext, err: grpc.RpcError) -> None:
    """The owner's UNREACHABLE mark goes back to our caller with its answer."""
    context.set_trailing_metadata(((UNREACHABLE, "1"),))


class Router:
    """Routes calls for one node; `is_fenced` stops all owner work while fenced."""

    def __init__(
        self,
        node_id: str,
        view: ClusterView,
        is_fenced: Callable[[], bool],
        max_retries: int = 4,
    ) -> None:
        self.node_id = node_id
        self.view = view
        self.is_fenced = is_fenced
        self.max_retries = max_retries
        self._channels = ChannelPool()

    def channel(self, address: str) -> grpc.Channel:
        return self._channels.get(address)

    def close(self) -> None:
        self._channels.close()

    def route(
        self,
        resource_id: str,
        context: grpc.ServicerContext,
        local: Callable[[Ring, bool], T],
        remote: RemoteCall,
    ) -> tuple[T, int]:
        """Serve locally when we own resource_id, else forward. Returns (response, retries).

        local(ring, forwarded) runs on the owner. Raises RouteError with the status to answer.
        """
        if self.is_fenced():
            raise RouteError(grpc.StatusCode.UNAVAILABLE,
                             f"{self.node_id} is fenced (no fresh etcd lease); try another node")
        incoming = _metadata(context)
        if FORWARDED_BY in incoming:
            ring = self.view.ring
            owner = ring.owner(resource_id) if len(ring) else ""
            if owner != self.node_id:
                context.set_trailing_metadata(((EPOCH, str(ring.epoch)),))
                raise RouteError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{self.node_id} does not own {resource_id!r} at epoch {ring.epoch} "
                    f"(owner: {owner or 'none'}; forwarded by {incoming[FORWARDED_BY]} at "
                    f"epoch {incoming.get(EPOCH, '?')})",
                )
            return local(ring, True), 0

        ring = self.view.ring
        if len(ring) and ring.owner(resource_id) == self.node_id:
            # The common case once clients route to owners: no retry machinery to build.
            return local(ring, False), 0
        remaining = context.time_remaining()
        budget = 10.0 if remaining is None else max(remaining - 0.05, 0.0)
        deadline = time.monotonic() + budget
        retries = 0

        def attempt() -> T:
            ring = self.view.ring
            if not len(ring):
                raise _Retry(grpc.StatusCode.UNAVAILABLE, "the ring has no members yet", 0)
            owner = ring.owner(resource_id)
            if owner == self.node_id:
                return local(ring, False)
            info = self.view.table.members.get(owner)
            if info is None:
                raise _Retry(grpc.StatusCode.UNAVAILABLE, f"owner {owner} has no address", 0)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RouteError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline spent routing")
            metadata = ((FORWARDED_BY, self.node_id), (EPOCH, str(ring.epoch)))
            try:
                response = remote(self.channel(info.address), metadata, left)
            except grpc.RpcError as err:
                code = err.code()
                if code is grpc.StatusCode.FAILED_PRECONDITION and any(
                    k == EPOCH for k, _ in err.trailing_metadata() or ()
                ):
                    raise _Retry(code, err.details() or "", epoch_of(err)) from err
                if code is grpc.StatusCode.UNAVAILABLE and has(err.trailing_metadata(),
                                                                UNREACHABLE):
                    # The owner answered: what it needs (its agent, etcd) is unreachable.
                    # The owner is up; another try would meet the same, after effects.
                    _pass_on(context, err)
                    raise RouteError(code, err.details() or "") from err
                if code is grpc.StatusCode.UNAVAILABLE or (
                    code is grpc.StatusCode.CANCELLED and context.is_active()
                ):
                    # CANCELLED while our own caller is still waiting was not our doing: the
                    # owner's server stopped under the call (a drain that ran out, or a
                    # connection that failed while the call was queued). Same as unreachable.
                    raise _Retry(code, f"owner {owner} at {info.address}: {err.details()}",
                                 ring.epoch + 1) from err
                raise RouteError(code, err.details() or "") from err
            # The caller sent this to a node that does not own it: a client that routes by
            # its own copy of the ring learns from our epoch that its copy is stale.
            context.set_trailing_metadata(((EPOCH, str(ring.epoch)),))
            return response

        def refresh(state: tenacity.RetryCallState) -> None:
            nonlocal retries
            retries += 1
            exc = state.outcome.exception() if state.outcome else None
            epoch = exc.epoch if isinstance(exc, _Retry) else 0
            wait = max(min(1.0, deadline - time.monotonic()), 0.0)
            log.info("routing %s: retry %d after %s", resource_id, retries, exc)
            if epoch and not self.view.wait_for(lambda t: t.epoch >= epoch or t.seen >= epoch,
                                                wait):
                self.view.reconcile_now(wait=wait)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry),
            stop=tenacity.stop_after_attempt(self.max_retries + 1)
            | tenacity.stop_before_delay(budget),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.3),
            before_sleep=refresh,
            reraise=True,
        )
        try:
            return retrying(attempt), retries
        except _Retry as exc:
            raise RouteError(
                grpc.StatusCode.UNAVAILABLE,
                f"could not reach the owner of {resource_id!r} after {retries} retries: "
                f"{exc.details}",
            ) from exc


def route_unary(
    router: Router,
    stub_class: Callable[[grpc.Channel], object],
    method: str,
    resource_id: str,
    request: object,
    context: grpc.ServicerContext,
    local: Callable[[], T],
) -> T:
    """Serve `request` on the owner of resource_id: run `local()` here when we own it, else
    call the same method on the owner. A RouteError becomes the call's status."""

    def remote(channel: grpc.Channel, metadata: tuple, timeout: float) -> T:
        return getattr(stub_class(channel), method)(request, metadata=metadata, timeout=timeout)

    try:
        response, _ = router.route(resource_id, context, lambda _ring, _fwd: local(), remote)
    except RouteError as exc:
        context.abort(exc.code, exc.details)
    return response
