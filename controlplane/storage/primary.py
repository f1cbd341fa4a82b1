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

import grpc

from controlplane import names, wiretime
from controlplane.channels import CHANNEL_OPTIONS, ChannelPool
from controlplane.cluster.owned_loop import OwnedLoop
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.storage.mds import MdsClient, MdsEndpoint
from controlplane.store import StoreError
from controlplane.store import txn as t
from controlplane.store.cache import PrefixCache
from controlplane.v1 import mds_pb2, mds_pb2_grpc, storage_pb2

__all__ = ["MAX_MDS", "PROBE_VOLUME", "MdsHealthChecker", "endpoints_of", "probe_mds"]

log = logging.getLogger(__name__)

# The volume id a health check asks for; NOT_FOUND is the expected (healthy) answer.
PROBE_VOLUME = "__controlplane-health-probe__"
HEALTHY_CODES = frozenset({grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND})
MAX_MDS = 16


def endpoints_of(storage: storage_pb2.PrimaryStorage) -> list[MdsEndpoint]:
    """The record's MDS as the client takes them (never-checked ones count as healthy)."""
    return [MdsEndpoint(m.address,
                        m.health != storage_pb2.MDS_HEALTH_UNHEALTHY) for m in storage.mds]


def probe_mds(stub: mds_pb2_grpc.StorageMdsServiceStub, timeout: float) -> str:
    """Ask one MDS for the probe volume; return "" when healthy, else what went wrong."""
    try:
        stub.GetVolume(mds_pb2.GetVolumeRequest(volume_id=PROBE_VOLUME), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
        if code in HEALTHY_CODES:
            return ""
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        return f"{code.name}: {details}"
    return ""


class MdsHealthChecker:
    """Checks the MDS of every primary storage this node owns, one interval after the
    previous check of it ended (a check of a store with a hung MDS lasts one deadline).
    The MDS clients are kept per storage whether this node owns it or not: any node serves
    GetVolumeClients, so a storage that is no longer ours keeps its client (closing it could
    cancel a call in flight); RemoveStorage forgets it.

    Runs on an OwnedLoop (`cluster/owned_loop.py`; ``clock`` is injectable for tests):
    checks run on a small pool, at most one at a time per storage (a check of a store with a
    hung MDS lasts one deadline; the next waits for it instead of piling up).
    """

    def __init__(self, ctx: OwnerContext, storages: PrefixCache[storage_pb2.PrimaryStorage],
                 *, enabled: Callable[[], bool] = lambda: True, workers: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.storages = storages
        self._channels = ChannelPool(CHANNEL_OPTIONS, tls=ctx.tls)
        self._lock = threading.Lock()
        self._clients: dict[str, MdsClient] = {}
        self.loop: OwnedLoop[None] = OwnedLoop(
            "mds-check", resources=lambda: [e.value.storage_id for e in storages.entries()],
            owns=ctx.owns, work=self._check_quietly,
            interval=lambda: float(ctx.config.get("storage.mdsCheckInterval")),
            enabled=enabled, resource_key="storage_id",
            workers=workers, tick=0.1, clock=clock)

    def start(self) -> MdsHealthChecker:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()
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
                client = self._clients[storage.storage_id] = MdsClient(endpoints_of(storage),
                                                                       tls=self.ctx.tls)
        client.update_endpoints(endpoints_of(storage))
        client.attempt_timeout = float(self.ctx.config.get("storage.mdsAttemptTimeout"))
        return client

    def forget(self, storage_id: str) -> None:
        with self._lock:
            client = self._clients.pop(storage_id, None)
        if client is not None:
            client.close()

    # -- health checks ------------------------------------------------------------------

    def _check_quietly(self, storage_id: str) -> None:
        try:
            self.check(storage_id)
        except (Fenced, StoreError) as exc:
            log.info("health check of storage %s not stored: %s", storage_id, exc)
        except Exception:  # noqa: BLE001
            log.exception("health check of storage %s failed", storage_id)

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
                health = (storage_pb2.MDS_HEALTH_UNHEALTHY if error
                          else storage_pb2.MDS_HEALTH_HEALTHY)
                failures = entry.failures + 1 if error else 0
                if not entry.HasField("checked_at") or (health, error, failures) != (
                        entry.health, entry.last_error, entry.failures):
                    if health != entry.health:
                        log.warning("storage %s: MDS %s is now %s%s", storage_id,
                                    entry.address, names.short(storage_pb2.MdsHealth, health),
                                    f" ({error})" if error else "")
                    entry.health, entry.last_error, entry.failures = health, error, failures
                    entry.checked_at.CopyFrom(wiretime.stamp(now))
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
            stub = self._channels.stub(mds_pb2_grpc.StorageMdsServiceStub, address)
            results[i] = probe_mds(stub, timeout)

        threads = [threading.Thread(target=probe, args=(i, a), daemon=True,
                                    name=f"mds-probe-{a}") for i, a in enumerate(addresses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 5)
        return results
