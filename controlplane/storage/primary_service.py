"""StorageService: the gRPC shell over primary storage records (`storage/primary.py`):
add/remove on the record's owner, reads anywhere, calls to the store through its healthy MDS.
Request fields are checked here before anything is routed or written; the storage id and the
volume ids are names (`rpc.check_name`): a store names its volumes' files after them."""

from __future__ import annotations

import grpc

from controlplane import errors, paging, wiretime
from controlplane.cluster.routing import Router, route_unary
from controlplane.owner import Fenced, OwnerContext
from controlplane.rpc import check_address, check_name
from controlplane.storage.mds import MdsError
from controlplane.storage.primary import MAX_MDS, MdsHealthChecker
from controlplane.store import StoreError
from controlplane.store import txn as t
from controlplane.store.cache import PrefixCache
from controlplane.v1 import storage_pb2
from controlplane.v1 import storage_pb2_grpc as pb_grpc

__all__ = ["StorageServicer"]


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
        kv = self.ctx.store.get(self.ctx.keys.storage(storage_id))
        if kv is None:
            raise errors.NotFound(f"no primary storage {storage_id!r}")
        return storage_pb2.PrimaryStorage.FromString(kv.value), kv.mod_revision

    def AddPrimaryStorage(self, request: storage_pb2.AddPrimaryStorageRequest,
                          context: grpc.ServicerContext) -> storage_pb2.AddPrimaryStorageResponse:
        check_name(request.storage_id, "storage_id")
        if not request.mds_addresses:
            raise errors.Invalid("mds_addresses is empty")
        if len(request.mds_addresses) > MAX_MDS:
            raise errors.Invalid(f"{len(request.mds_addresses)} MDS; the limit is {MAX_MDS}")
        if len(set(request.mds_addresses)) != len(request.mds_addresses):
            raise errors.Invalid("an MDS address is listed twice")
        for address in request.mds_addresses:
            check_address(address, "MDS address")

        def local() -> storage_pb2.AddPrimaryStorageResponse:
            storage = storage_pb2.PrimaryStorage(
                storage_id=request.storage_id, added_at=wiretime.now(),
                mds=[storage_pb2.MdsEndpointStatus(address=a, health=storage_pb2.MDS_HEALTH_HEALTHY)
                     for a in request.mds_addresses])
            key = self.ctx.keys.storage(request.storage_id)
            result = self.ctx.write(
                [t.absent(key)], [t.put(key, storage.SerializeToString())],
                errors.Exists(f"primary storage {request.storage_id!r} already exists"))
            self.storages.wait_for_revision(result.revision, 2.0)
            checked = self.checker.check(request.storage_id)
            return storage_pb2.AddPrimaryStorageResponse(
                storage=self._answer(checked if checked is not None else storage))

        return route_unary(self.router, pb_grpc.StorageServiceStub, "AddPrimaryStorage",
                           request.storage_id, request, context, local)

    def GetPrimaryStorage(self, request: storage_pb2.GetPrimaryStorageRequest,
                          context: grpc.ServicerContext) -> storage_pb2.GetPrimaryStorageResponse:
        check_name(request.storage_id, "storage_id")
        storage, _ = self._read(request.storage_id, context)
        return storage_pb2.GetPrimaryStorageResponse(storage=self._answer(storage))

    def ListPrimaryStorages(self, request: storage_pb2.ListPrimaryStoragesRequest,
                            context: grpc.ServicerContext
                            ) -> storage_pb2.ListPrimaryStoragesResponse:
        storages = sorted((e.value for e in self.storages.entries()),
                          key=lambda s: s.storage_id)
        chunk, token = paging.page(storages, lambda s: s.storage_id, request.page_size,
                                   request.page_token)
        return storage_pb2.ListPrimaryStoragesResponse(
            storages=[self._answer(s) for s in chunk], next_page_token=token)

    def RemovePrimaryStorage(self, request: storage_pb2.RemovePrimaryStorageRequest,
                             context: grpc.ServicerContext
                             ) -> storage_pb2.RemovePrimaryStorageResponse:
        check_name(request.storage_id, "storage_id")

        def local() -> storage_pb2.RemovePrimaryStorageResponse:
            storage, revision = self._read(request.storage_id, context)
            key = self.ctx.keys.storage(request.storage_id)
            result = self.ctx.write(
                [t.mod_revision_is(key, revision)], [t.delete(key)],
                errors.Busy("primary storage changed meanwhile; retry"))
            self.storages.wait_for_revision(result.revision, 2.0)
            self.checker.forget(request.storage_id)
            return storage_pb2.RemovePrimaryStorageResponse(storage=self._answer(storage))

        return route_unary(self.router, pb_grpc.StorageServiceStub, "RemovePrimaryStorage",
                           request.storage_id, request, context, local)

    def CheckPrimaryStorage(self, request: storage_pb2.CheckPrimaryStorageRequest,
                            context: grpc.ServicerContext
                            ) -> storage_pb2.CheckPrimaryStorageResponse:
        check_name(request.storage_id, "storage_id")

        def local() -> storage_pb2.CheckPrimaryStorageResponse:
            try:
                checked = self.checker.check(request.storage_id)
            except (Fenced, StoreError) as exc:
                raise errors.Unreachable(f"check not stored: {exc}") from exc
            if checked is None:
                raise errors.NotFound(f"no primary storage {request.storage_id!r}")
            return storage_pb2.CheckPrimaryStorageResponse(storage=self._answer(checked))

        return route_unary(self.router, pb_grpc.StorageServiceStub, "CheckPrimaryStorage",
                           request.storage_id, request, context, local)

    def GetVolumeClients(self, request: storage_pb2.GetVolumeClientsRequest,
                         context: grpc.ServicerContext) -> storage_pb2.GetVolumeClientsResponse:
        # Served by any node: a read-only call to the store needs no owner.
        check_name(request.storage_id, "storage_id")
        check_name(request.volume_id, "volume_id")
        entry = self.storages.get(self.ctx.keys.storage(request.storage_id))
        storage = entry.value if entry is not None else self._read(request.storage_id,
                                                                    context)[0]
        try:
            answer = self.checker.client(storage).get_volume_clients(request.volume_id)
            return storage_pb2.GetVolumeClientsResponse(volume_id=answer.volume_id,
                                                        clients=answer.clients)
        except MdsError as exc:
            codes = set(exc.codes)
            if codes == {"NOT_FOUND"}:
                raise errors.NotFound(str(exc)) from exc
            if codes and codes <= {"INVALID_ARGUMENT"}:
                raise errors.Invalid(str(exc)) from exc
            raise errors.Unreachable(str(exc)) from exc
