"""A VM's disks on primary storage, as the node side needs them: checked at create, handed
to the agent at start (with the store's MDS), and asked about by HA (who holds them).

Why here: the VM code (`vm/`) must not reach into storage records or the MDS client (the
layers are siblings); the composition root (`server.py`) hands it these three functions.
Every call to the store goes through the storage's MDS client (`storage/mds.py`: try-next
over the healthy MDS, the live per-attempt deadline `storage.mdsAttemptTimeout`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from controlplane import errors
from controlplane.storage.mds import MdsError
from controlplane.storage.primary import MdsHealthChecker
from controlplane.store.cache import PrefixCache
from controlplane.store.keys import Keys
from controlplane.v1 import agent_pb2, mds_pb2, storage_pb2, vm_pb2
from controlplane.vm.ha import VolumeAnswer

__all__ = ["VmDisks"]

log = logging.getLogger(__name__)


class VmDisks:
    """Disk checks and lookups over the storage records' cache and their MDS clients."""

    def __init__(self, keys: Keys, storages: PrefixCache[storage_pb2.PrimaryStorage],
                 checker: MdsHealthChecker) -> None:
        self.keys = keys
        self.storages = storages
        self.checker = checker

    def _storage(self, storage_id: str) -> storage_pb2.PrimaryStorage:
        entry = self.storages.get(self.keys.storage(storage_id))
        if entry is None:
            raise errors.NotFound(f"no primary storage {storage_id!r}")
        return entry.value

    def check(self, disks: Sequence[vm_pb2.VmDisk]) -> int:
        """Every disk's storage exists and its store knows the volume; raises NotFound
        naming the missing one, Invalid for a disk listed twice or two root disks,
        Unreachable when the store does not answer (then nothing is written: a VM is never
        created on a guess). Answers the root volume's size in bytes (0: no root disk)."""
        if sum(1 for d in disks if d.root) > 1:
            raise errors.Invalid("more than one disk is marked root")
        seen: set[tuple[str, str]] = set()
        root_size = 0
        for disk in disks:
            key = (disk.primary_storage_id, disk.volume_id)
            if key in seen:
                raise errors.Invalid(f"disk {disk.primary_storage_id}/{disk.volume_id} is "
                                     "listed twice")
            seen.add(key)
            storage = self._storage(disk.primary_storage_id)
            try:
                volume = self.checker.client(storage).get_volume(disk.volume_id)
            except MdsError as exc:
                if set(exc.codes) == {"NOT_FOUND"}:
                    raise errors.NotFound(f"primary storage {disk.primary_storage_id} has no "
                                          f"volume {disk.volume_id!r}") from exc
                raise errors.Unreachable(f"volume {disk.volume_id} of primary storage "
                                         f"{disk.primary_storage_id} not checked: {exc}"
                                         ) from exc
            if disk.root:
                root_size = volume.size_bytes
        return root_size

    def agent_volumes(self, vm: vm_pb2.Vm) -> list[agent_pb2.AgentVolume]:
        """What the agent needs to open the VM's volumes: each with its store's MDS
        (healthy ones first: the agent tries them in turn). NotFound for a storage that
        was removed since the VM was created."""
        out = []
        for disk in vm.disks:
            storage = self._storage(disk.primary_storage_id)
            mds = sorted(storage.mds, key=lambda m: m.health == storage_pb2.MDS_HEALTH_UNHEALTHY)
            out.append(agent_pb2.AgentVolume(storage_id=disk.primary_storage_id,
                                             volume_id=disk.volume_id,
                                             mds_addresses=[m.address for m in mds]))
        return out

    def holders(self, storage_id: str, volume_id: str) -> VolumeAnswer:
        """Who holds the volume, as its store answers (GetVolumeClients, idempotent, tried
        on the store's healthy MDS in turn). Every failure is an answer of its own
        (``answered`` False): unknown is not absent."""
        name = f"{storage_id}/{volume_id}"
        try:
            storage = self._storage(storage_id)
        except errors.NotFound as exc:
            return VolumeAnswer(name, False, detail=str(exc))
        client = self.checker.client(storage)
        try:
            result = client.call(
                "GetVolumeClients",
                mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id=volume_id),
                idempotent=True)
        except MdsError as exc:
            return VolumeAnswer(name, False, detail=str(exc))
        clients = tuple(sorted({c.client_id for c in result.response.clients}))
        tried = "; ".join(str(a) for a in result.attempts[:-1])
        return VolumeAnswer(name, True, clients,
                            detail=f"answered by {result.address}"
                            + (f" after {tried}" if tried else ""))

