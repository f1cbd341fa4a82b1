"""Primary storage records, their MDS health, and calls to the store with try-next.

Why it looks like this (seed: ZStack's ZBS primary storage; DESIGN.md section 7):
- A primary storage record (``storages/<id>``) lists its MDS and each one's health. Calls go
  only to the healthy ones (:class:`~controlplane.storage.mds.MdsClient` shuffles them and
  tries the next); so a dead MDS costs one attempt only until the next health check, not one
  attempt per call forever.
- The owner of the storage id on the ring checks it every ``storage.mdsCheckInterval``: one
  checker per record across the cluster, and the record's health is what every node reads.
  A check probes each MDS at once (in parallel, so a hung MDS costs one deadline, not one per
  MDS) with ``GetVolume`` of a probe id: OK or NOT_FOUND is an MDS that answers for the
  store; anything else (refused, timed out, INTERNAL) makes it unhealthy. The record is
  written only when an entry changes (fenced CAS), not on every check: a healthy store costs
  no etcd writes.
- The per-attempt deadline of every call is the live setting ``storage.mdsAttemptTimeout``,
  read at each call, so an operator can shorten it without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc

from controlplane.channels import ChannelPool, reconnect_options
from controlplane.cluster.routing import Router, route_unary
from controlplane.cluster.service import check_address
from controlplane.cluster.service import check_resource_id as _check
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.storage.mds import MdsClient, MdsEndpoint, MdsError
from controlplane.store import StoreError
from controlplane.store import txn as t
from controlplane.store.cache import PrefixCache
from controlplane.v1 import mds_pb2, mds_pb2_grpc, storage_pb2
from controlplane.v1 import storage_pb2_grpc as pb_grpc

__all__ = ["PROBE_VOLUME", "MdsHealthChecker", "StorageServicer", "endpoints_of", "probe_mds"]

log = logging.getLogger(__name__)

# The volume id a health check asks for; NOT_FOUND is the expected (healthy) answer.
PROBE_VOLUME = "__controlplane-health-probe__"
HEALTHY_CODES = frozenset({grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND})
MAX_MDS = 16


def endpoints_of(storage: storage_pb2.PrimaryStorage) -> list[MdsEndpoint]:
    """The record's MDS as the client takes them (never-checked ones count as healthy)."""
    return [MdsEndpoint(m.address, m.health != storage_pb2.MDS_UNHEALTHY) for m in storage.mds]


def probe_mds(stub: mds_pb2_grpc.StorageMdsStub, timeout: float) -> str:
    """Ask one MDS for the probe volume; return "" when healthy, else what went wrong."""
    try:
        stub.GetVolume(mds_pb2.MdsGetVolumeRequest(volume_id=PROBE_VOLUME), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        if code in HEALTHY_CODES:
            return ""
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        return f"{code.name}: {details}"
    return ""


class MdsHealthChecker:
    """Checks the MDS of every primary storage this node owns, every interval.

    ``clock`` is injectable for tests. One background thread schedules; checks run on a small
    pool, at most one at a time per storage (a check of a store with a hung MDS lasts one
    deadline; the next waits for it instead of piling up).
    """

    def __init__(self, ctx: OwnerContext, storages: PrefixCache[storage_pb2.PrimaryStorage],
                 *, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.storages = storages
        self.clock = clock
        self.enabled: Callable[[], bool] = lambda: True
        self._channels = ChannelPool(reconnect_options(1000))
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="mds-check")
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._clients: dict[str, MdsClient] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mds-health", daemon=True)

    def start(self) -> MdsHealthChecker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()
        self._channels.close()

    # -- calls to the store -------------------------------------------------------------

    def client(self, storage: storage_pb2.PrimaryStorage) -> MdsClient:
        """The MDS client of a storage, with the record's endpoints and health and the
        current ``storage.mdsAttemptTimeout``."""
        with self._lock:
            client = self._clients.get(storage.storage_id)
            if client is None:
                client = self._clients[storage.storage_id] = MdsClient(endpoints_of(storage))
        client.update_endpoints(endpoints_of(storage))
        client.attempt_timeout = float(self.ctx.config.get("storage.mdsAttemptTimeout"))
        return client

    def forget(self, storage_id: str) -> None:
        with self._lock:
            client = self._clients.pop(storage_id, None)
            self._due.pop(storage_id, None)
        if client is not None:
            client.close()

    # -- health checks ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                if self.enabled():
                    self.schedule(self.clock())
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("MDS health scheduling failed")

    def schedule(self, now: float) -> None:
        interval = float(self.ctx.config.get("storage.mdsCheckInterval"))
        owned = {e.value.storage_id for e in self.storages.entries()
                 if self.ctx.owns(e.value.storage_id)}
        with self._lock:
            for gone in set(self._due) - owned:
                del self._due[gone]
            for storage_id in owned:
                due = self._due.setdefault(storage_id, now)
                if due <= now and storage_id not in self._running:
                    self._running.add(storage_id)
                    self._due[storage_id] = now + interval
                    self._pool.submit(self._check_quietly, storage_id)

    def _check_quietly(self, storage_id: str) -> None:
        try:
            self.check(storage_id)
        except (Fenced, StoreError) as exc:
            log.info("health check of storage %s not stored: %s", storage_id, exc)
        except Exception:  # noqa: BLE001
            log.exception("health check of storage %s failed", storage_id)
        finally:
            with self._lock:
                self._running.discard(storage_id)

    def check(self, storage_id: str) -> storage_pb2.PrimaryStorage | None:
        """Probe every MDS of one storage now and store what changed (None: no record)."""
        for _ in range(5):
            kv = self.ctx.store.get(self.ctx.keys.storage(storage_id))
            if kv is None:
                return None
            storage = storage_pb2.PrimaryStorage.FromString(kv.value)
            timeout = float(self.ctx.config.get("storage.mdsAttemptTimeout"))
            errors = list(self._pool_probe([m.address for m in storage.mds], timeout))
            now = time.time()
            updated = storage_pb2.PrimaryStorage()
            updated.CopyFrom(storage)
            changed = False
            for entry, error in zip(updated.mds, errors, strict=True):
                health = storage_pb2.MDS_UNHEALTHY if error else storage_pb2.MDS_HEALTHY
                failures = entry.failures + 1 if error else 0
                if not entry.checked_at or (health, error, failures) != (
                        entry.health, entry.last_error, entry.failures):
                    if health != entry.health:
                        log.warning("storage %s: MDS %s is now %s%s", storage_id,
                                    entry.address, storage_pb2.MdsHealth.Name(health),
                                    f" ({error})" if error else "")
                    entry.health, entry.last_error, entry.failures = health, error, failures
                    entry.checked_at = now
                    changed = True
            if not changed:
                return storage
            key = self.ctx.keys.storage(storage_id)
            try:
                result = self.ctx.owner_txn([t.mod_revision_is(key, kv.mod_revision)],
                                            [t.put(key, updated.SerializeToString())])
            except Conflict:
                continue  # changed meanwhile (removed, or MDS list edited): check again
            self.storages.wait_for_revision(result.revision, 2.0)
            return updated
        return None

    def _pool_probe(self, addresses: list[str], timeout: float) -> list[str]:
        # Own short-lived threads, not self._pool: a check runs on the pool already, and
        # probes queued behind other checks would wait out their deadlines in the queue.
        results = [""] * len(addresses)

        def probe(i: int, address: str) -> None:
            stub = mds_pb2_grpc.StorageMdsStub(self._channels.get(address))
            results[i] = probe_mds(stub, timeout)

        threads = [threading.Thread(target=probe, args=(i, a), daemon=True,
                                    name=f"mds-probe-{a}") for i, a in enumerate(addresses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 5)
        return results


class StorageServicer(pb_grpc.StorageServiceServicer):
    """StorageService: add/remove records on the owner, read anywhere, call the store."""

    def __init__(self, ctx: OwnerContext, router: Router,
                 storages: PrefixCache[storage_pb2.PrimaryStorage],
                 checker: MdsHealthChecker) -> None:
        self.ctx = ctx
        self.router = router
        self.storages = storages
        self.checker = checker

    def _answer(self, storage: storage_pb2.PrimaryStorage) -> storage_pb2.PrimaryStorage:
        out = storage_pb2.PrimaryStorage()
        out.CopyFrom(storage)
        out.owner = self.ctx.owner_of(storage.storage_id)
        return out

    def _read(self, storage_id: str, context: grpc.ServicerContext
              ) -> tuple[storage_pb2.PrimaryStorage, int]:
        try:
            kv = self.ctx.store.get(self.ctx.keys.storage(storage_id))
        except StoreError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read etcd: {exc}")
        if kv is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no primary storage {storage_id!r}")
        return storage_pb2.PrimaryStorage.FromString(kv.value), kv.mod_revision

    def AddPrimaryStorage(self, request: storage_pb2.AddPrimaryStorageRequest,
                          context: grpc.ServicerContext) -> storage_pb2.PrimaryStorage:
        _check(context, request.storage_id, "storage_id")
        if not request.mds_addresses:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mds_addresses is empty")
        if len(request.mds_addresses) > MAX_MDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{len(request.mds_addresses)} MDS; the limit is {MAX_MDS}")
        if len(set(request.mds_addresses)) != len(request.mds_addresses):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an MDS address is listed twice")
        for address in request.mds_addresses:
            check_address(context, address, "MDS address")

        def local() -> storage_pb2.PrimaryStorage:
            storage = storage_pb2.PrimaryStorage(
                storage_id=request.storage_id, added_at=time.time(),
                mds=[storage_pb2.MdsEndpointStatus(address=a, health=storage_pb2.MDS_HEALTHY)
                     for a in request.mds_addresses])
            key = self.ctx.keys.storage(request.storage_id)
            result = self.ctx.write_or_abort(
                context, [t.absent(key)], [t.put(key, storage.SerializeToString())],
                (grpc.StatusCode.ALREADY_EXISTS,
                 f"primary storage {request.storage_id!r} already exists"))
            self.storages.wait_for_revision(result.revision, 2.0)
            checked = self.checker.check(request.storage_id)
            return self._answer(checked if checked is not None else storage)

        return route_unary(self.router, pb_grpc.StorageServiceStub, "AddPrimaryStorage",
                           request.storage_id, request, context, local)

    def GetPrimaryStorage(self, request: storage_pb2.PrimaryStorageRef,
                          context: grpc.ServicerContext) -> storage_pb2.PrimaryStorage:
        _check(context, request.storage_id, "storage_id")
        return self._answer(self._read(request.storage_id, context)[0])

    def ListPrimaryStorages(self, request: storage_pb2.ListPrimaryStoragesRequest,
                            context: grpc.ServicerContext
                            ) -> storage_pb2.ListPrimaryStoragesResponse:
        storages = sorted((e.value for e in self.storages.entries()),
                          key=lambda s: s.storage_id)
        return storage_pb2.ListPrimaryStoragesResponse(
            storages=[self._answer(s) for s in storages])

    def RemovePrimaryStorage(self, request: storage_pb2.PrimaryStorageRef,
                             context: grpc.ServicerContext) -> storage_pb2.PrimaryStorage:
        _check(context, request.storage_id, "storage_id")

        def local() -> storage_pb2.PrimaryStorage:
            storage, revision = self._read(request.storage_id, context)
            key = self.ctx.keys.storage(request.storage_id)
            result = self.ctx.write_or_abort(
                context, [t.mod_revision_is(key, revision)], [t.delete(key)],
                (grpc.StatusCode.ABORTED, "primary storage changed meanwhile; retry"))
            self.storages.wait_for_revision(result.revision, 2.0)
            self.checker.forget(request.storage_id)
            return self._answer(storage)

        return route_unary(self.router, pb_grpc.StorageServiceStub, "RemovePrimaryStorage",
                           request.storage_id, request, context, local)

    def CheckPrimaryStorage(self, request: storage_pb2.PrimaryStorageRef,
                            context: grpc.ServicerContext) -> storage_pb2.PrimaryStorage:
        _check(context, request.storage_id, "storage_id")

        def local() -> storage_pb2.PrimaryStorage:
            try:
                checked = self.checker.check(request.storage_id)
            except (Fenced, StoreError) as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"check not stored: {exc}")
            if checked is None:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"no primary storage {request.storage_id!r}")
            return self._answer(checked)

        return route_unary(self.router, pb_grpc.StorageServiceStub, "CheckPrimaryStorage",
                           request.storage_id, request, context, local)

    def GetVolumeClients(self, request: storage_pb2.StorageVolumeRef,
                         context: grpc.ServicerContext) -> mds_pb2.MdsGetVolumeClientsResponse:
        # Served by any node: a read-only call to the store needs no owner.
        _check(context, request.storage_id, "storage_id")
        _check(context, request.volume_id, "volume_id")
        entry = self.storages.get(self.ctx.keys.storage(request.storage_id))
        storage = entry.value if entry is not None else self._read(request.storage_id,
                                                                    context)[0]
        try:
            return self.checker.client(storage).get_volume_clients(request.volume_id)
        except MdsError as exc:
            codes = set(exc.codes)
            if codes == {"NOT_FOUND"}:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            if codes and codes <= {"INVALID_ARGUMENT"}:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
