"""The client library: one object that talks to a management-node cluster.

Why a library and not raw stubs: every caller (the CLI, the benches, users' scripts) needs
the same four things, and each got them slightly wrong on its own: the project's channel
options (fast reconnect, no HTTP proxy), a default deadline, retrying UNAVAILABLE on the
next endpoint within that deadline, and sending a resource's call straight to its owner.

Owner-aware routing: any node answers any call and forwards it to the resource's owner, which
costs a second gRPC hop on the nodes (two thirds of calls with three nodes). The client keeps
its own copy of the ring (ClusterService.GetRing: members, addresses, epoch, vnodes) and
builds it with the same `Ring.build` the nodes use, so both agree on the owner and the call
lands where it is served. A stale ring is never wrong, only slower: a node that is not the
owner still forwards. The ring is refreshed when it is older than `ring_max_age`, when a node
answers with a newer epoch in the trailing metadata (`x-controlplane-epoch`), and when an
owner is unreachable (that call then goes to the next endpoint, which forwards). A refresh is
made by the next routed call, by one thread, within one deadline: never inside a call that
already has its answer.

Which request field names the resource comes from the protobuf descriptors: per service one
resource field (`vm_id`, `host_id`, `image_id`, `storage_id`, `resource_id`); a unary method
whose request has that field is sent to the owner of its value. Reads (GetVm, GetHost, ...)
are served by any node, so sending them to the owner costs nothing and spares nobody.

Retries use tenacity rather than gRPC's retry service config: a gRPC retry policy retries on
the same channel, i.e. the same node, while a node that is down or draining needs the next
endpoint (and a routed call a fresh look at the ring). Only an UNAVAILABLE that means "this
node cannot serve now" is retried (no answer at all, or a node fenced, not ready, stopping);
an UNAVAILABLE marked `controlplane.metadata.UNREACHABLE` means a dependency of the call (an
agent, etcd, an MDS) is out of reach and the call may have had effects: it is raised at once,
as the nodes' router does. ABORTED (the node lost a race and did nothing: "retry") is
retried with the same backoff. A FAILED_PRECONDITION carrying a newer ring epoch is retried too
(real nodes send it only to a forwarded call, never to a client: a guard, see call_unary).
Server streams are not retried: a stream cannot be resumed midway. A retried call may have
had effects the first time (its owner died after beginning the op): every request type with
a `request_id` gets one per call (`with_request_id`, the same for each retry), and the node
answers a retry with the op its first attempt began (AIP-155), not with "busy".

Transport: `tls=` is the client's identity, `TlsFiles` (mutual TLS: the nodes' CA, the
client's certificate and key, e.g. `TlsFiles.from_dir("<up data dir>/tls/admin")`) or
`PLAINTEXT` for a cluster run with `--insecure`. Not given, it comes from the environment
(CONTROLPLANE_TLS_DIR, or CONTROLPLANE_CA/_CERT/_KEY, or CONTROLPLANE_INSECURE=true) and a
client with neither is refused (`TlsMissing`, a ValueError naming the options): nothing
falls back to plaintext. The channels re-open when the files change (a rotation).

With several endpoints, an endpoint not yet seen to connect is first checked to connect (at
most `connect_timeout`, or half the time left), and skipped when it does not: a black-holed
address (a dead load balancer, a filtered port) would otherwise hold the call until its
deadline, since a connect that hangs is not an UNAVAILABLE.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
import tenacity
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import CHANNEL_OPTIONS, ChannelPool
from controlplane.cluster.ring import DEFAULT_VNODES, Ring
from controlplane.metadata import UNREACHABLE, epoch_in, has
from controlplane.rpc import valid_address
from controlplane.security.tls import Transport, transport_from_env
from controlplane.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    config_pb2,
    config_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    storage_pb2,
    storage_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
    volume_pb2,
    volume_pb2_grpc,
)

__all__ = ["DEFAULT_ENDPOINT", "Client", "ClientRing", "endpoints_from_env", "list_all",
           "parse_endpoints",
           "resource_field"]

log = logging.getLogger(__name__)
M = TypeVar("M")

DEFAULT_ENDPOINT = "127.0.0.1:7070"
ENV_ENDPOINT = "CONTROLPLANE_ENDPOINT"
DEFAULT_TIMEOUT = 10.0
# refresh_ring: the whole refresh, and each node asked, at most (without a caller's deadline)
RING_REFRESH_TIMEOUT = 5.0
RING_CALL_TIMEOUT = 2.0
_DEFAULT = object()  # "the client's default deadline" (None means no deadline)

# The one hand-written fact per service: the request field that names its resource on the
# ring. Everything else (which methods carry it, unary or stream) is read from descriptors.
RESOURCE_FIELDS: MappingProxyType[str, str] = MappingProxyType({
    "controlplane.v1.VmService": "vm_id",
    "controlplane.v1.HostService": "host_id",
    "controlplane.v1.VolumeService": "image_id",
    "controlplane.v1.StorageService": "storage_id",
    "controlplane.v1.ClusterService": "resource_id",
})


def endpoints_from_env(default: str = DEFAULT_ENDPOINT) -> str:
    """CONTROLPLANE_ENDPOINT when set (and not blank), else `default`."""
    value = os.environ.get(ENV_ENDPOINT, "").strip()
    return value or default


def parse_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2'] (blanks dropped, order kept, no dups).

    Every entry must be HOST:PORT with a port in 1..65535 (the servers' own check,
    `controlplane.rpc.valid_address`): the endpoints are tried in turn, so a bad entry would
    only show once the others are down. ValueError names the first bad entry. The one parser
    of an endpoint list: the CLI's --endpoint type wraps it."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    seen: dict[str, None] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        if not valid_address(item):
            shown = item if len(item) <= 64 else item[:64] + "..."
            raise ValueError(f"endpoint {shown!r} is not HOST:PORT (port 1..65535)")
        seen.setdefault(item, None)
    if not seen:
        raise ValueError("no endpoint given (expected HOST:PORT[,HOST:PORT...])")
    return list(seen)


def list_all(call: Callable[..., M], request: Any, field: str, **kwargs: Any) -> M:
    """Every page of a paginated List call (AIP-158: page_token, next_page_token) as one
    answer: the last page's message with the `field` items of all pages, in order.

    `call` is a client method (`client.vms.ListVms`); `kwargs` go to each page's call (a
    `timeout` is per page). Pages come from one node's cache each, so a listing that runs
    while things change can show an item as it was on an earlier page.
    """
    page_request = type(request)()
    page_request.CopyFrom(request)
    items: list[Any] = []
    while True:
        answer = call(page_request, **kwargs)
        items.extend(getattr(answer, field))
        if not answer.next_page_token:
            break
        page_request.page_token = answer.next_page_token
    merged = type(answer)()
    merged.CopyFrom(answer)
    merged.ClearField(field)
    getattr(merged, field).extend(items)
    return merged


def with_request_id(request: M) -> M:
    """The request with an idempotency key (AIP-155), when its type has a `request_id` and
    the caller gave none: a copy, so every retry of this call sends the same key.

    Why: an attempt can die after the node began the op (its owner killed mid-call, a
    connection cut); the retry must join that op, not be refused as busy with it nor begin
    a second one. A CreateVm without a vm_id gets one here too (the node's own form), so
    the retry names the same VM, and the call is routed straight to its owner."""
    fields = request.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    if "request_id" not in fields or request.request_id:  # type: ignore[attr-defined]
        return request
    keyed = type(request)()
    keyed.CopyFrom(request)  # type: ignore[attr-defined]
    keyed.request_id = uuid.uuid4().hex  # type: ignore[attr-defined]
    if isinstance(keyed, vm_pb2.CreateVmRequest) and not keyed.vm_id:
        keyed.vm_id = f"vm-{uuid.uuid4().hex[:12]}"
    return keyed


def resource_field(service: ServiceDescriptor, method: MethodDescriptor) -> str | None:
    """The request field a unary method routes on, or None when it is served anywhere.

    Streams are never routed (a watch is served by any node from its caches)."""
    if method.client_streaming or method.server_streaming:
        return None
    name = RESOURCE_FIELDS.get(service.full_name)
    if name is None or name not in method.input_type.fields_by_name:
        return None
    return name


@dataclass(frozen=True)
class ClientRing:
    """The client's copy of the ring and each member's address, at one epoch."""

    ring: Ring
    addresses: MappingProxyType[str, str]
    fetched_at: float = field(default_factory=time.monotonic)

    @property
    def epoch(self) -> int:
        return self.ring.epoch

    @classmethod
    def from_reply(cls, reply: cluster_pb2.GetRingResponse) -> ClientRing:
        """Built exactly as the nodes build theirs: Ring.build(node ids, epoch, vnodes)."""
        members = {m.node_id: m.address for m in reply.members}
        ring = Ring.build(members, reply.epoch, reply.vnodes or DEFAULT_VNODES)
        return cls(ring, MappingProxyType(members))

    def owner_address(self, resource_id: str) -> tuple[str, str] | None:
        """(owner node id, its address), or None while the ring is empty."""
        if not len(self.ring):
            return None
        owner = self.ring.owner(resource_id)
        address = self.addresses.get(owner)
        return (owner, address) if address else None


_EMPTY_RING = ClientRing(Ring.build(()), MappingProxyType({}), fetched_at=float("-inf"))


class _Retry(Exception):
    """One attempt failed in a way worth another attempt (wraps the grpc.RpcError)."""

    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self.error = error


class Client:
    """A cluster client: deadlines, retries on the next endpoint, owner-aware routing.

    Thread-safe: one Client can serve many threads (channels are shared per address).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        route: bool = True,
        ring_max_age: float = 5.0,
        connect_timeout: float = 1.0,
        max_attempts: int | None = None,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        options: list[tuple[str, Any]] | None = None,
        tls: Transport | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints if endpoints is not None
                                         else endpoints_from_env())
        self.tls = tls if tls is not None else transport_from_env()
        self.timeout = timeout
        self.route = route
        self.ring_max_age = ring_max_age
        self.connect_timeout = connect_timeout
        self.max_attempts = max_attempts or max(3, 2 * len(self.endpoints))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._pool = ChannelPool(options if options is not None else CHANNEL_OPTIONS,
                                 tls=self.tls)
        self._preferred = 0  # index of the endpoint unrouted calls try first
        self._ring = _EMPTY_RING
        self._want_epoch = 0  # the newest epoch a node told us of (the next refresh's goal)
        self._ring_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._down: dict[str, float] = {}  # owner address -> monotonic time it failed
        self._connected: set[str] = set()  # addresses seen to connect (owners, endpoints)
        self._local = threading.local()  # the endpoint of this thread's last call
        self.routed_calls = 0
        self.unrouted_calls = 0
        self.retries = 0
        self.cluster = _Service(self, cluster_pb2, "ClusterService",
                                cluster_pb2_grpc.ClusterServiceStub)
        self.hosts = _Service(self, host_pb2, "HostService", host_pb2_grpc.HostServiceStub)
        self.vms = _Service(self, vm_pb2, "VmService", vm_pb2_grpc.VmServiceStub)
        self.config = _Service(self, config_pb2, "ConfigService",
                               config_pb2_grpc.ConfigServiceStub)
        self.storage = _Service(self, storage_pb2, "StorageService",
                                storage_pb2_grpc.StorageServiceStub)
        self.volumes = _Service(self, volume_pb2, "VolumeService",
                                volume_pb2_grpc.VolumeServiceStub)
        self.health = _Service(self, health_pb2, "Health", health_pb2_grpc.HealthStub)
        self.audit = _Service(self, audit_pb2, "AuditService", audit_pb2_grpc.AuditServiceStub)

    @property
    def endpoint(self) -> str:
        """The endpoint this thread's last call went to (for error messages); the first
        endpoint before any call."""
        return getattr(self._local, "endpoint", self.endpoints[self._preferred])

    @endpoint.setter
    def endpoint(self, value: str) -> None:
        self._local.endpoint = value

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- channels -------------------------------------------------------------------

    def channel(self, address: str) -> grpc.Channel:
        """The shared channel to one address (opened on first use)."""
        return self._pool.get(address)

    def stub(self, stub_class: Callable[[grpc.Channel], Any], address: str) -> Any:
        """The shared stub of `stub_class` to one address (the pool caches it)."""
        return self._pool.stub(stub_class, address)

    # -- the ring -------------------------------------------------------------------

    @property
    def ring(self) -> ClientRing:
        """The client's current ring snapshot (empty until the first routed call)."""
        return self._ring

    def refresh_ring(self, timeout: float | None = None, min_epoch: int = 0) -> ClientRing:
        """Ask the endpoints (then the known members) for their ring, keep the newest.

        Stops at the first answer at `min_epoch` (and at least the epoch held). The whole
        refresh has one deadline, `timeout` (default RING_REFRESH_TIMEOUT), and each node
        asked at most RING_CALL_TIMEOUT of what is left: a node that does not answer cannot
        make a refresh cost more than its caller allowed (the first node is always asked).
        An address not seen to connect is checked first (`_connects`) and skipped when it
        does not, except the last one, whose answer or error is the refresh's.
        A node that lags may answer an older epoch than the one we hold: never go back.
        Raises the last grpc.RpcError when nobody answered."""
        deadline = time.monotonic() + (RING_REFRESH_TIMEOUT if timeout is None else timeout)
        current = self._ring
        candidates = list(dict.fromkeys(
            [*self._rotated(), *current.addresses.values()]))
        best: ClientRing | None = None
        last: grpc.RpcError | None = None
        for index, address in enumerate(candidates):
            left = deadline - time.monotonic()
            if left <= 0 and (best is not None or last is not None):
                break
            if index < len(candidates) - 1 and address not in self._connected \
                    and not self._connects(address, max(left, 0.001)):
                continue  # black-holed or down: not worth RING_CALL_TIMEOUT (the last is)
            left = deadline - time.monotonic()
            try:
                reply = self.stub(cluster_pb2_grpc.ClusterServiceStub, address).GetRing(
                    cluster_pb2.GetRingRequest(),
                    timeout=max(min(RING_CALL_TIMEOUT, left), 0.001))
            except grpc.RpcError as exc:
                last = exc
                continue
            fresh = ClientRing.from_reply(reply)
            if best is None or fresh.epoch > best.epoch:
                best = fresh
            if best.epoch >= max(min_epoch, current.epoch):
                break
        if best is None:
            assert last is not None
            raise last
        with self._ring_lock:
            if best.epoch >= self._ring.epoch:
                if best.epoch > self._ring.epoch:
                    self._down = {}  # a new membership: give every owner another chance
                self._ring = best
            else:  # someone else swapped in a newer one meanwhile; just mark ours fresh
                self._ring = ClientRing(self._ring.ring, self._ring.addresses)
            return self._ring

    def _ring_for_routing(self, timeout: float | None) -> ClientRing | None:
        """The ring to route with, refreshed when too old; None if none can be had.

        One thread refreshes; the others route with the old snapshot meanwhile (a stale
        ring only costs a forward hop). Only the very first fetch makes callers wait. The
        refresh takes at most half the call's time left, and aims at the newest epoch a
        node told us of (`_note_epoch`)."""
        ring = self._ring
        if time.monotonic() - ring.fetched_at < self.ring_max_age:
            return ring
        have_one = bool(len(ring.ring))
        if not self._refresh_lock.acquire(blocking=not have_one):
            return ring
        try:
            ring = self._ring
            if time.monotonic() - ring.fetched_at < self.ring_max_age:
                return ring
            return self.refresh_ring(None if timeout is None else timeout / 2,
                                     min_epoch=self._want_epoch)
        except grpc.RpcError as exc:
            log.debug("ring refresh failed: %s", exc)
            # Do not ask again on every call while the cluster is unreachable.
            with self._ring_lock:
                self._ring = ClientRing(self._ring.ring, self._ring.addresses)
            return self._ring if len(self._ring.ring) else None
        finally:
            self._refresh_lock.release()

    def owner_of(self, resource_id: str, timeout: float | None = None
                 ) -> tuple[str, str] | None:
        """(node id, address) of the owner in the client's ring, refreshing it if stale."""
        ring = self._ring_for_routing(timeout)
        return ring.owner_address(resource_id) if ring else None

    # -- calls ----------------------------------------------------------------------

    def _rotated(self) -> list[str]:
        start = self._preferred
        return self.endpoints[start:] + self.endpoints[:start]

    def _owner_target(self, resource_id: str, timeout: float | None) -> str | None:
        """The owner's address, unless routing is off, the ring is unknown, or the owner
        failed lately (then the call goes to an endpoint, which forwards)."""
        if not (self.route and resource_id):
            return None
        found = self.owner_of(resource_id, timeout)
        if found is None:
            return None
        address = found[1]
        failed_at = self._down.get(address)
        if failed_at is not None and time.monotonic() - failed_at < self.ring_max_age:
            return None
        if address not in self._connected and not self._connects(address, timeout):
            with self._ring_lock:
                self._down[address] = time.monotonic()
            return None
        return address

    def _connects(self, address: str, timeout: float | None) -> bool:
        """Whether a channel to `address` connects, within `connect_timeout` (or half the
        call's time left).

        Why: the ring gives the address each node registered, which a client behind a
        port-forward or a load balancer may not reach, and an endpoint may be black-holed;
        a call there would hang in connect until its deadline. Asked once per address
        (again after it failed); an address that refuses fails at once, one that drops
        packets after the wait."""
        wait = self.connect_timeout if timeout is None else min(self.connect_timeout,
                                                                timeout / 2)
        channel = self.channel(address)
        settled = threading.Event()
        state: list[grpc.ChannelConnectivity] = []

        def seen(connectivity: grpc.ChannelConnectivity) -> None:
            if connectivity in (grpc.ChannelConnectivity.READY,
                                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                                grpc.ChannelConnectivity.SHUTDOWN):
                state.append(connectivity)
                settled.set()

        channel.subscribe(seen, try_to_connect=True)
        try:
            settled.wait(wait)
        finally:
            channel.unsubscribe(seen)
        if state and state[0] is grpc.ChannelConnectivity.READY:
            self._connected.add(address)
            return True
        log.debug("%s does not connect (%s); calls go elsewhere", address,
                  state[0].name if state else "no answer")
        return False

    def _note_epoch(self, epoch: int) -> None:
        """A node answered with a newer epoch than our ring's: mark the ring stale, so that
        the next routed call refreshes it (through `_ring_for_routing`: one refresher,
        within that call's deadline, aiming at this epoch).

        Not refreshed here: this runs inside a call that already has its answer, which must
        not wait on GetRing round trips, and every thread that saw the epoch would refresh
        at once."""
        with self._ring_lock:
            self._want_epoch = max(self._want_epoch, epoch)
            if epoch > self._ring.epoch:
                self._ring = ClientRing(self._ring.ring, self._ring.addresses,
                                        fetched_at=float("-inf"))

    def _pick_endpoint(self, deadline: float | None) -> str:
        """The endpoint for an unrouted call: the preferred one, unless it was not seen to
        connect yet and does not connect within a short check (`_connects`); then the next
        one that does (`_advance` moves past each that did not, for later calls too).

        With one endpoint there is nothing to choose; when none connects, the preferred one
        is used and its call says why (UNAVAILABLE, or the deadline)."""
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        for _ in range(len(self.endpoints)):
            target = self.endpoints[self._preferred]
            if target in self._connected:
                return target
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            if self._connects(target, left):
                return target
            self._advance(target)
        return self.endpoints[self._preferred]

    def call_unary(self, stub_class: Callable[[grpc.Channel], Any], method: str,
                   request: Any, resource: str | None, timeout: float | None | object,
                   metadata: Sequence[tuple[str, str]] | None = None) -> Any:
        """One unary call with the client's deadline, retries and routing.

        Retried within the deadline: an ABORTED (a lost race, nothing done); an
        UNAVAILABLE without the UNREACHABLE mark (on the
        next endpoint; a routed call's owner is skipped for a while), and a
        FAILED_PRECONDITION with a newer epoch than our ring's. The latter is a guard: real
        nodes send it only to a forwarded call (the node asked directly forwards instead of
        refusing), so a client meets it only from a node that is not ours, e.g. a fake.
        An UNAVAILABLE marked UNREACHABLE is raised at once: the node answered, a dependency
        of the call is out of reach, and the call may have had effects.

        Raises the last grpc.RpcError when every attempt failed."""
        budget = self.timeout if timeout is _DEFAULT else timeout
        deadline = None if budget is None else time.monotonic() + float(budget)  # type: ignore[arg-type]
        request = with_request_id(request)
        resource_id = getattr(request, resource) if resource else ""

        def attempt() -> Any:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            target = self._owner_target(resource_id, left)
            routed = target is not None
            if target is None:
                target = self._pick_endpoint(deadline)
            self.endpoint = target
            with self._count_lock:
                if routed:
                    self.routed_calls += 1
                else:
                    self.unrouted_calls += 1
            if deadline is not None:
                left = max(deadline - time.monotonic(), 0.001)
            stub = self.stub(stub_class, target)
            try:
                response, call = getattr(stub, method).with_call(
                    request, timeout=left, metadata=metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.UNAVAILABLE:
                    if has(exc.trailing_metadata(), UNREACHABLE):
                        raise  # a dependency is out of reach; the call may have had effects
                    self._connected.discard(target)
                    if routed:
                        self._owner_failed(target)
                    else:
                        self._advance(target)
                    raise _Retry(exc) from exc
                if code is grpc.StatusCode.ABORTED:
                    raise _Retry(exc) from exc  # lost a race, nothing done: again, same owner
                if code is grpc.StatusCode.FAILED_PRECONDITION and self.route:
                    epoch = epoch_in(exc.trailing_metadata())
                    if epoch > self._ring.epoch:  # a guard: see the docstring
                        self._note_epoch(epoch)
                        raise _Retry(exc) from exc
                raise
            if target not in self._connected:
                self._connected.add(target)
            if self.route:
                epoch = epoch_in(call.trailing_metadata())
                if epoch > self._ring.epoch:
                    self._note_epoch(epoch)
            return response

        def count_retry(state: tenacity.RetryCallState) -> None:
            with self._count_lock:
                self.retries += 1

        stop = tenacity.stop_after_attempt(self.max_attempts)
        if budget is not None:
            # No attempt starts after the deadline (the backoff sleep included).
            stop = stop | tenacity.stop_before_delay(float(budget))  # type: ignore[arg-type]
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retry),
            stop=stop,
            wait=tenacity.wait_exponential_jitter(multiplier=self.backoff, max=self.max_backoff,
                                                  jitter=self.backoff),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retry as exc:
            raise exc.error from None

    def call_stream(self, stub_class: Callable[[grpc.Channel], Any], method: str,
                    request: Any, timeout: float | None | object,
                    metadata: Sequence[tuple[str, str]] | None = None) -> Iterator[Any]:
        """A server stream on the first endpoint that connects (`_pick_endpoint`); no
        retries (a stream cannot be resumed midway: the caller reopens it). With one
        endpoint, or when none connects, the preferred one's stream reports why."""
        budget = self.timeout if timeout is _DEFAULT else timeout
        deadline = None if budget is None else time.monotonic() + float(budget)  # type: ignore[arg-type]
        target = self._pick_endpoint(deadline)
        self.endpoint = target
        return getattr(self.stub(stub_class, target), method)(
            request, timeout=budget, metadata=metadata)

    def _owner_failed(self, address: str) -> None:
        """Skip this owner for a while, and re-read the ring before the next routed call."""
        self._connected.discard(address)
        with self._ring_lock:
            self._down[address] = time.monotonic()
            self._ring = ClientRing(self._ring.ring, self._ring.addresses,
                                    fetched_at=float("-inf"))

    def _advance(self, failed: str) -> None:
        """Unrouted calls move on to the endpoint after the one that failed."""
        try:
            index = self.endpoints.index(failed)
        except ValueError:
            return
        if self._preferred == index:
            self._preferred = (index + 1) % len(self.endpoints)


class _Method:
    """One RPC of a service, called like a stub's method."""

    __slots__ = ("_client", "_method", "_resource", "_stream", "_stub_class", "__name__")

    def __init__(self, client: Client, stub_class: Callable[[grpc.Channel], Any],
                 service: ServiceDescriptor, method: MethodDescriptor) -> None:
        self._client = client
        self._stub_class = stub_class
        self._method = method.name
        self._stream = method.server_streaming
        self._resource = resource_field(service, method)
        self.__name__ = method.name

    def __call__(self, request: Any, timeout: float | None | object = _DEFAULT,
                 metadata: Sequence[tuple[str, str]] | None = None) -> Any:
        if self._stream:
            return self._client.call_stream(self._stub_class, self._method, request, timeout,
                                            metadata)
        return self._client.call_unary(self._stub_class, self._method, request,
                                       self._resource, timeout, metadata)


class _Service:
    """A stub-like object: `client.vms.StartVm(request, timeout=...)`."""

    def __init__(self, client: Client, module: Any, name: str,
                 stub_class: Callable[[grpc.Channel], Any]) -> None:
        self.descriptor: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
        for method in self.descriptor.methods:
            setattr(self, method.name, _Method(client, stub_class, self.descriptor, method))

    def __repr__(self) -> str:
        return f"<client service {self.descriptor.full_name}>"

