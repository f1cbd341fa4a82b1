"""Allocations: the cpus and memory each host has reserved for the VMs placed on it, in
etcd (`allocations/<host_id>`, one host_pb2.HostAllocation per host).

Why one record per host: the record is the compare-and-swap that settles a placement. A
start writes the VM's placement, its op AND the host's allocation record with the VM added
in one txn that compares the allocation record's mod_revision; two owners racing for the
last slot both read the same revision and only one txn applies. The loser re-reads, sees
the host full and places elsewhere or answers RESOURCE_EXHAUSTED.

Why it cannot leak forever: the reservation is in the very txn that places the VM, so
there is never a reservation without a placement (an owner that dies after that txn leaves
an op the next owner settles, and the VM is placed there, so the reservation is right).
Releases are the other way round: after the op that stopped, destroyed or moved a VM, a
separate CAS drops its entry, and an owner that dies in between leaves an entry too many,
never one too few (placement only under-commits). The host's owner reconciles the record
from the VM records every sync round (`reconcile`), which drops such leftovers and adds
VMs that hold a host without an entry (records from before allocations, a VM found running
there): each drop or add compares the VM record's revision, so a placement that committed
after the reconciler read its caches makes the reconcile txn fail, not undo it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controlplane import names
from controlplane.owner import Conflict, Fenced, OwnerContext
from controlplane.store import txn as t
from controlplane.store.cache import PrefixCache
from controlplane.store.errors import StoreError
from controlplane.v1 import host_pb2, vm_pb2
from controlplane.vm import placement

log = logging.getLogger(__name__)

# A VM in one of these states uses nothing on its host: no reservation.
FREE_STATES = frozenset({"Created", "Stopped", "Destroyed", "Expunging", "Error",
                         "VolumeMigrating"})

MIGRATING = "Migrating"
MAX_FIXES = 60  # drops and adds per reconcile txn, each (etcd: 128 operations a txn)

SCHEDULING = {
    host_pb2.HOST_SCHEDULING_STATE_UNSPECIFIED: "enabled",
    host_pb2.HOST_SCHEDULING_STATE_ENABLED: "enabled",
    host_pb2.HOST_SCHEDULING_STATE_DISABLED: "disabled",
    host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE: "preparing-maintenance",
    host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE: "maintenance",
}


def holds(vm: vm_pb2.Vm) -> bool:
    """Whether the VM holds a reservation on its host (placed, and not stopped)."""
    return bool(vm.host_id) and vm.state not in FREE_STATES


def request_of(vm: vm_pb2.Vm) -> placement.Request:
    return placement.Request(vm.cpus, vm.memory_mb)


def used(allocation: host_pb2.HostAllocation | None) -> tuple[int, int]:
    if allocation is None:
        return 0, 0
    return (sum(a.cpus for a in allocation.vms), sum(a.memory_mb for a in allocation.vms))


def with_vm(allocation: host_pb2.HostAllocation | None, host_id: str,
            vm: vm_pb2.Vm) -> host_pb2.HostAllocation:
    """The record with `vm`'s entry added (an older entry of the same VM replaced)."""
    out = host_pb2.HostAllocation(host_id=host_id)
    if allocation is not None:
        out.vms.extend(a for a in allocation.vms if a.vm_id != vm.vm_id)
    out.vms.append(host_pb2.VmAllocation(vm_id=vm.vm_id, cpus=vm.cpus, memory_mb=vm.memory_mb,
                                         generation=vm.generation))
    out.vms.sort(key=lambda a: a.vm_id)
    return out


def without(allocation: host_pb2.HostAllocation, vm_ids: Iterable[str]) -> host_pb2.HostAllocation:
    drop = set(vm_ids)
    out = host_pb2.HostAllocation(host_id=allocation.host_id)
    out.vms.extend(a for a in allocation.vms if a.vm_id not in drop)
    return out


@dataclass(frozen=True)
class Drift:
    """What `reconcile` changes: entries of VMs that no longer hold this host, VMs that hold
    it without an entry (pure: computed from the records)."""

    drop: tuple[str, ...]
    add: tuple[str, ...]


def drift(host_id: str, allocation: host_pb2.HostAllocation | None,
          vms: Mapping[str, vm_pb2.Vm]) -> Drift:
    """`vms`: every VM record by id (the reconciler passes its cache's)."""
    entries = {a.vm_id: a for a in allocation.vms} if allocation is not None else {}
    # A migrating VM holds its source (the record's host) and its target (reserved by the
    # migration's begin txn; only the op names it): its entries wait for the migration's end.
    drop = sorted(vm_id for vm_id, entry in entries.items()
                  if (vm := vms.get(vm_id)) is None
                  or (vm.state != MIGRATING and (vm.host_id != host_id or not holds(vm))))
    add = sorted(vm.vm_id for vm in vms.values()
                 if vm.host_id == host_id and holds(vm) and vm.vm_id not in entries)
    return Drift(tuple(drop), tuple(add))


class Allocations:
    """Placement over this node's caches, and the txn parts that settle it in etcd."""

    def __init__(self, ctx: OwnerContext, cache: PrefixCache[host_pb2.HostAllocation]) -> None:
        self.ctx = ctx
        self.cache = cache

    def ratios(self) -> placement.Ratios:
        config = self.ctx.config
        return placement.Ratios(float(config.get("host.cpuAllocationRatio")),
                                float(config.get("host.memoryAllocationRatio")),
                                int(config.get("host.reservedMemoryMb")))

    def weigher(self) -> str:
        return str(self.ctx.config.get("placement.weigher"))

    def record(self, host_id: str) -> tuple[host_pb2.HostAllocation | None, int]:
        entry = self.cache.get(self.ctx.keys.allocation(host_id))
        return (entry.value, entry.mod_revision) if entry else (None, 0)

    def read(self, host_id: str) -> tuple[host_pb2.HostAllocation | None, int]:
        """The record from etcd (after a lost compare: the cache may lag)."""
        kv = self.ctx.store.get(self.ctx.keys.allocation(host_id))
        if kv is None:
            return None, 0
        return host_pb2.HostAllocation.FromString(kv.value), kv.mod_revision

    def view(self, host: host_pb2.Host,
             allocation: host_pb2.HostAllocation | None) -> placement.HostView:
        cpus, memory = used(allocation)
        connected = (host.status == host_pb2.HOST_STATUS_CONNECTED
                     and not host.HasField("unreachable_since"))
        return placement.HostView(host.host_id, host.cpus, host.memory_mb, cpus, memory,
                                  connected, SCHEDULING.get(host.scheduling, "enabled"))

    def views(self, fresh: Mapping[str, tuple[host_pb2.HostAllocation | None, int]] = {}
              ) -> list[placement.HostView]:
        """Every host, with the allocation records of `fresh` (read from etcd) over the
        cached ones."""
        out = []
        for entry in self.ctx.hosts.entries():
            host = entry.value
            allocation = (fresh[host.host_id][0] if host.host_id in fresh
                          else self.record(host.host_id)[0])
            out.append(self.view(host, allocation))
        return out

    def decide(self, vm: vm_pb2.Vm, *, exclude: Sequence[str] = (), prefer: str = "",
               fallback_to_excluded: bool = False,
               fresh: Mapping[str, tuple[host_pb2.HostAllocation | None, int]] = {},
               salt: str = "") -> placement.Decision:
        """Where `vm` would go now. A VM's own entry on a host (a leftover, or the
        placement being redone) does not count against it there."""
        views = []
        for view in self.views(fresh):
            allocation = (fresh[view.host_id][0] if view.host_id in fresh
                          else self.record(view.host_id)[0])
            mine = [a for a in allocation.vms if a.vm_id == vm.vm_id] if allocation else []
            if mine:
                view = placement.HostView(view.host_id, view.cpus, view.memory_mb,
                                          view.used_cpus - mine[0].cpus,
                                          view.used_memory_mb - mine[0].memory_mb,
                                          view.connected, view.scheduling)
            views.append(view)
        return placement.place(views, request_of(vm), self.ratios(), weigher=self.weigher(),
                               exclude=exclude, prefer=prefer,
                               fallback_to_excluded=fallback_to_excluded,
                               subset=int(self.ctx.config.get("placement.hostSubsetSize")),
                               salt=salt or vm.vm_id)

    def explain(self, vm: vm_pb2.Vm, decision: placement.Decision) -> str:
        return f"VM {vm.vm_id}: {decision.explain(request_of(vm), self.ratios())}"

    def check_host(self, vm: vm_pb2.Vm, host: host_pb2.Host,
                   allocation: host_pb2.HostAllocation | None) -> str | None:
        """Why `vm` cannot go to the named `host` (a start with a host id), or None."""
        view = self.view(host, with_vm(allocation, host.host_id, vm))
        scheduling = SCHEDULING.get(host.scheduling, "enabled")
        if scheduling != "enabled":
            return f"host {host.host_id} is {scheduling}: no new placements"
        if view.free(self.ratios())[0] < 0 or view.free(self.ratios())[1] < 0:
            base = self.view(host, allocation)
            return (f"VM {vm.vm_id} ({request_of(vm)}) does not fit: "
                    f"{base.describe_free(self.ratios())}")
        return None

    def reserve(self, vm: vm_pb2.Vm, allocation: host_pb2.HostAllocation | None,
                revision: int) -> tuple[list, list]:
        """The txn compares and puts that reserve `vm`'s share on `vm.host_id` (the record
        as read at `revision`; 0: none yet).

        Raises Conflict when the VM does not fit in that very record: the placement was
        decided on an older copy of it (the cache moved on between the decision and this
        read), and a CAS on the newer revision would commit a share that no longer fits.
        Found by `bench placement`: 1 run in 4 left a host at 65 of 64 cpus."""
        host = self.ctx.host_record(vm.host_id)
        if host is not None:
            why = self.check_host(vm, host, allocation)
            if why is not None:
                raise Conflict(f"placement decided on an older allocation record: {why}")
        key = self.ctx.keys.allocation(vm.host_id)
        record = with_vm(allocation, vm.host_id, vm)
        return [t.mod_revision_is(key, revision)], [t.put(key, record.SerializeToString())]

    def release(self, host_id: str, vm_id: str, generation: int | None = None) -> bool:
        """Drop the VM's entry from the host's record (only an entry of `generation` or
        older, when given: a newer placement on the same host keeps its own). Best effort:
        what is left here the host owner's reconcile drops."""
        if not host_id:
            return False
        key = self.ctx.keys.allocation(host_id)
        for attempt in range(8):
            try:
                allocation, revision = self.record(host_id) if attempt == 0 else self.read(host_id)
            except StoreError:
                return False
            if allocation is None:
                return True
            entry = next((a for a in allocation.vms if a.vm_id == vm_id), None)
            if entry is None or (generation is not None and entry.generation > generation):
                return True
            try:
                self.ctx.owner_txn([t.mod_revision_is(key, revision)],
                                   [t.put(key, without(allocation, [vm_id]).SerializeToString())])
            except Conflict:
                continue
            except (Fenced, StoreError):
                return False
            log.info("host %s: released the allocation of VM %s", host_id, vm_id,
                     extra={"host_id": host_id, "vm_id": vm_id})
            return True
        return False

    def reconcile(self, host_id: str) -> Drift:
        """Make the host's record match the VM records (see the module docstring); one
        txn, comparing the record and every VM it changes for. Returns what it changed
        (nothing when a compare lost: the next round tries again)."""
        key = self.ctx.keys.allocation(host_id)
        allocation, revision = self.record(host_id)
        vms = {e.value.vm_id: e for e in self.ctx.vms.by_index(host_id)}
        for entry in allocation.vms if allocation is not None else ():
            if entry.vm_id not in vms and (cached := self.ctx.vms.get(
                    self.ctx.keys.vm(entry.vm_id))) is not None:
                vms[entry.vm_id] = cached
        found = drift(host_id, allocation, {k: e.value for k, e in vms.items()})
        # etcd takes at most 128 operations per txn: the rest waits for the next round
        found = Drift(found.drop[:MAX_FIXES], found.add[:MAX_FIXES])
        if not found.drop and not found.add:
            return found
        record = (without(allocation, found.drop) if allocation is not None
                  else host_pb2.HostAllocation(host_id=host_id))
        for vm_id in found.add:
            record = with_vm(record, host_id, vms[vm_id].value)
        compares = [t.mod_revision_is(key, revision)]
        compares += [t.mod_revision_is(self.ctx.keys.vm(v), vms[v].mod_revision if v in vms else 0)
                     for v in (*found.drop, *found.add)]
        try:
            self.ctx.owner_txn(compares, [t.put(key, record.SerializeToString())])
        except (Conflict, Fenced, StoreError) as exc:
            log.info("host %s: allocation reconcile not applied (%s)", host_id, exc,
                     extra={"host_id": host_id})
            return Drift((), ())
        log.info("host %s: allocation reconciled (dropped %s; added %s)", host_id,
                 ", ".join(found.drop) or "none", ", ".join(found.add) or "none",
                 extra={"host_id": host_id})
        return found

    def describe(self, host: host_pb2.Host) -> host_pb2.Host:
        """`host` with the answers-only capacity fields filled in."""
        out = host_pb2.Host()
        out.CopyFrom(host)
        view = self.view(host, self.record(host.host_id)[0])
        ratios = self.ratios()
        out.allocated_cpus, out.allocated_memory_mb = view.used_cpus, view.used_memory_mb
        out.cpu_capacity = view.cpu_capacity(ratios)
        out.memory_capacity_mb = view.memory_capacity(ratios)
        return out


def scheduling_name(host: host_pb2.Host) -> str:
    return names.short(host_pb2.HostSchedulingState, host.scheduling or
                       host_pb2.HOST_SCHEDULING_STATE_ENABLED)
