"""Forward a call to the owner of its resource: the one helper every routed service uses.

Protocol: the first node asked looks the owner up in its ring. If it is not the owner it
forwards the call with metadata entries: who forwarded it, the ring epoch it used, and who
asked (the caller's identity, CALLER: the owner applies the access policy to that caller, and
believes the entry only from a node certificate, see `controlplane.rpc.Access`).
The receiver never forwards again; it checks that it owns the resource at its own epoch and
otherwise refuses with FAILED_PRECONDITION carrying its epoch. The sender then waits until
its own view has caught up with that epoch (or re-lists), and retries a bounded number of
times (`max_retries`).

An owner that does not answer (UNAVAILABLE: dead, draining, not ready; or CANCELLED while our
own caller still waits: the owner's server stopped under the call) is different: a node
killed -9 stays in every ring until its lease expires (up to the TTL; ~1.6 s with TTL 2),
so a fixed number of quick retries gave up long before the ring dropped it (issue 11: a
third of a churn run's operations failed so). The forward instead waits for the view to move
(the ring drops the owner, or names it again at another address or incarnation) and then
goes to whoever owns the resource now, trying the same owner again every `PROBE_INTERVAL` in
case it came back; for as long as the caller's deadline allows, and without a deadline for
`rpc.NO_DEADLINE_CAP`. An UNAVAILABLE marked UNREACHABLE is the owner's answer (a dependency
of the call is out of reach, possibly after effects): passed back, never retried.

The decision is pure (`next_step`, `view_moved`); `Router.route` does the I/O around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import grpc
import tenacity

from controlplane.channels import ChannelPool
from controlplane.cluster.ring import Ring
from controlplane.cluster.table import MemberTable
from controlplane.cluster.view import ClusterView
from controlplane.metadata import CALLER, EPOCH, FORWARDED_BY, UNREACHABLE, epoch_in, has
from controlplane.rpc import NO_DEADLINE_CAP, remaining
from controlplane.security.identity import peer_identity
from controlplane.security.tls import Transport

log = logging.getLogger(__name__)
T = TypeVar("T")

# Between two tries of an owner that did not answer, wait at most this long for the view to
# move (which ends the wait at once): then try the same owner again, in case it came back.
PROBE_INTERVAL = 0.5
# After a FAILED_PRECONDITION: wait at most this long for our view to reach the receiver's
# epoch, then re-list the members ourselves.
CATCH_UP = 1.0
# A call that set no deadline may spend this long being routed (rpc.NO_DEADLINE_CAP).
ROUTE_CAP = NO_DEADLINE_CAP


# remote(channel, metadata, timeout) -> response
RemoteCall = Callable[[grpc.Channel, tuple[tuple[str, str], ...], float], T]


class RouteError(Exception):
    """Routing gave up; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Failure:
    """Why one forward got no answer, as the retry decision sees it.

    kind "stale": the receiver does not own the resource at its epoch `epoch` (our view is
    behind, or its is); "unreachable": the owner `owner` (at `address`, incarnation
    `incarnation`) did not answer, or the ring named no owner we could call (owner "").
    """

    kind: Literal["stale", "unreachable"]
    details: str
    owner: str = ""
    address: str = ""
    incarnation: int = 0
    epoch: int = 0


@dataclass(frozen=True)
class Step:
    """What to do after a failed forward: give up, or wait for the view to move (at most
    `wait` seconds; see `view_moved`) and try again."""

    give_up: bool
    wait: float = 0.0


def next_step(failure: Failure, stale_retries: int, max_stale: int, left: float) -> Step:
    """The retry decision (pure). `stale_retries`: stale retries made so far; `left`: seconds
    of the routing budget left.

    An unreachable owner is retried for as long as the budget lasts, not a number of times:
    the view drops a dead owner only when its lease expires. A stale epoch is retried at
    most `max_stale` times: a view catches up within a watch delivery, so more means two
    nodes that disagree for another reason, which waiting does not mend."""
    if left <= 0:
        return Step(True)
    if failure.kind == "stale":
        return Step(stale_retries >= max_stale, min(CATCH_UP, left))
    return Step(False, min(PROBE_INTERVAL, left))


def view_moved(failure: Failure, table: MemberTable, ring: Ring, resource_id: str) -> bool:
    """Whether the view changed so that the next try is worth making now (pure).

    Stale: our view reached the receiver's epoch. Unreachable: the ring names another owner
    for the resource, or the same owner at another address or incarnation (it restarted)."""
    if failure.kind == "stale":
        return table.epoch >= failure.epoch or table.seen >= failure.epoch
    if not len(ring):
        return False
    owner = ring.owner(resource_id)
    if owner != failure.owner:
        return True
    info = table.members.get(owner)
    return info is not None and (info.address, info.incarnation) != (failure.address,
                                                                     failure.incarnation)


class _Retry(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.details)
        self.failure = failure


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def epoch_of(err: grpc.RpcError) -> int:
    """The receiver's epoch from a FAILED_PRECONDITION's trailing metadata (0 if none)."""
    return epoch_in(err.trailing_metadata())


def _pass_on(context: grpc.ServicerContext, err: grpc.RpcError) -> None:
    """The owner's UNREACHABLE mark goes back to our caller with its answer."""
    context.set_trailing_metadata(((UNREACHABLE, "1"),))


def _failure_of(state: tenacity.RetryCallState) -> Failure:
    exc = state.outcome.exception() if state.outcome else None
    assert isinstance(exc, _Retry)
    return exc.failure


class Router:
    """Routes calls for one node; `is_fenced` stops all owner work while fenced.

    `max_retries` bounds the retries after a stale epoch only; an unreachable owner is
    waited for within the call's deadline (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        view: ClusterView,
        is_fenced: Callable[[], bool],
        max_retries: int = 4,
        *,
        tls: Transport,
    ) -> None:
        self.node_id = node_id
        self.view = view
        self.is_fenced = is_fenced
        self.max_retries = max_retries
        # Forwards present this node's certificate, to the owner's advertised address.
        self._channels = ChannelPool(tls=tls)

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
        started = time.monotonic()
        deadline = started + max(remaining(context, ROUTE_CAP) - 0.05, 0.0)
        # The owner judges the call as our caller, not as us (controlplane.rpc.Access):
        # without it, any reader could act as a node by calling a node that forwards.
        caller = peer_identity(context)
        passed_on = ((CALLER, caller.header()),) if caller is not None else ()
        retries = 0
        stale = 0
        last: list[Failure] = []

        def attempt() -> T:
            ring = self.view.ring
            if not len(ring):
                raise _Retry(Failure("unreachable", "the ring has no members yet"))
            owner = ring.owner(resource_id)
            if owner == self.node_id:
                return local(ring, False)
            info = self.view.table.members.get(owner)
            if info is None:
                raise _Retry(Failure("unreachable", f"owner {owner} has no address", owner))
            left = deadline - time.monotonic()
            if left <= 0:
                if last:
                    raise _Retry(last[-1])  # out of time: given up with what we met
                raise RouteError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline spent routing")
            metadata = ((FORWARDED_BY, self.node_id), (EPOCH, str(ring.epoch)), *passed_on)
            try:
                response = remote(self.channel(info.address), metadata, left)
            except grpc.RpcError as err:
                code = err.code()
                if code is grpc.StatusCode.FAILED_PRECONDITION and any(
                    k == EPOCH for k, _ in err.trailing_metadata() or ()
                ):
                    raise _Retry(Failure("stale", err.details() or "",
                                         epoch=epoch_of(err))) from err
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
                    raise _Retry(Failure(
                        "unreachable", f"owner {owner} at {info.address}: {err.details()}",
                        owner, info.address, info.incarnation)) from err
                raise RouteError(code, err.details() or "") from err
            # The caller sent this to a node that does not own it: a client that routes by
            # its own copy of the ring learns from our epoch that its copy is stale.
            context.set_trailing_metadata(((EPOCH, str(ring.epoch)),))
            return response

        def stop(state: tenacity.RetryCallState) -> bool:
            if not context.is_active():
                return True  # our caller is gone: nobody waits for the answer
            return next_step(_failure_of(state), stale, self.max_retries,
                             deadline - time.monotonic()).give_up

        def wait_for_view(state: tenacity.RetryCallState) -> None:
            nonlocal retries, stale
            failure = _failure_of(state)
            step = next_step(failure, stale, self.max_retries, deadline - time.monotonic())
            retries += 1
            last[:] = [failure]
            if failure.kind == "stale":
                stale += 1
            log.log(logging.INFO if retries == 1 else logging.DEBUG,
                    "routing %s: retry %d after %s", resource_id, retries, failure.details)
            moved = self.view.wait_for(
                lambda table: view_moved(failure, table, self.view.ring, resource_id),
                step.wait)
            if not moved and failure.kind == "stale":
                self.view.reconcile_now(wait=max(min(CATCH_UP, deadline - time.monotonic()),
                                                 0.0))

        backoff = tenacity.wait_exponential(multiplier=0.02, max=0.3)

        def pause(state: tenacity.RetryCallState) -> float:
            # After a stale epoch a short backoff; after an unreachable owner the view wait
            # (wait_for_view) is the pacing.
            return backoff(state) if _failure_of(state).kind == "stale" else 0.0

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry),
            stop=stop,
            wait=pause,
            before_sleep=wait_for_view,
            reraise=True,
        )
        try:
            return retrying(attempt), retries
        except _Retry as exc:
            failure = exc.failure
            spent = time.monotonic() - started
            what = ("kept refusing at newer epochs" if failure.kind == "stale"
                    else "could not be reached")
            raise RouteError(
                grpc.StatusCode.UNAVAILABLE,
                f"the owner of {resource_id!r} {what} ({retries} retries in {spent:.1f}s): "
                f"{failure.details}",
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
