"""Live migration in the libvirt backend: one host's daemon to another's, through libvirt.

The source agent drives it (libvirt's client-driven migration, as `virsh migrate` does): it
opens a connection to the target's daemon (PrepareIncomingVm answered its URI) and calls
``virDomainMigrate3`` with the destination XML (`domainxml.migration_xml`: the target
generation in the metadata, the serial console on a pty) and
LIVE | UNSAFE | PERSIST_DEST | UNDEFINE_SOURCE. UNSAFE because the disks here are plain
files on a local path, which libvirt does not recognise as shared storage (the hosts of one
machine reach the same files). libvirt creates the incoming domain on the target (paused,
its job a MIGRATION_IN: reported ``incoming``) and resumes it at the switchover; the
source's copy is then gone. A migration that fails before the switchover leaves the source
running and the incoming domain destroyed by libvirt; AbortIncomingVm destroys one that is
still there (an owner that died mid-transfer) and fences its generation in this agent.

Known limit: the fence of aborted incoming generations lives in this agent's memory (a
restarted target agent forgets it; the incoming domain itself does not survive the source
agent's connection, which drives the migration).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import libvirt

from controlplane.agent.backend import (
    BadState,
    HostUnreachable,
    Migrated,
    VmInfo,
    VmNotFound,
    VmState,
    check_vm_id,
)
from controlplane.agent.domainxml import migration_xml, parse_metadata

log = logging.getLogger(__name__)

FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE
         | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def is_incoming(dom: Any) -> bool:
    """A domain that is the receiving end of a migration not switched over yet."""
    try:
        state, reason = dom.state()
        if state != libvirt.VIR_DOMAIN_PAUSED or reason != libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            return False
        stats = dom.jobStats()
    except libvirt.libvirtError:
        return False
    return stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN


class LibvirtMigration:
    """Mixed into LibvirtBackend."""

    # provided by LibvirtBackend
    uri: str
    host_id: str
    _lock: threading.Lock
    _hwm: dict[str, int]

    def _fences(self) -> dict[str, int]:
        fences = getattr(self, "_fenced_in", None)
        if fences is None:
            fences = self._fenced_in = {}
        return fences

    def prepare_incoming(self, host_id: str, vm_id: str, *, generation: int, op_id: str = "",
                         cpus: int = 0, memory_mb: int = 0, disk: str = "",
                         source_host_id: str = "") -> tuple[VmInfo, str]:
        """Check the target may take ``generation`` and answer this daemon's URI: libvirt
        creates the incoming domain itself when the source migrates to it."""
        check_vm_id(vm_id)
        conn = self._check(host_id)  # type: ignore[attr-defined]
        self._refuse_stale(vm_id, generation)  # type: ignore[attr-defined]
        with self._lock:
            if self._fences().get(vm_id, -1) >= generation:
                raise BadState(f"incoming vm {vm_id} generation {generation} on host "
                               f"{host_id} was aborted: refused")
            self._hwm[vm_id] = max(generation, self._hwm.get(vm_id, -1))
        dom = self._lookup(conn, vm_id)  # type: ignore[attr-defined]
        if dom is not None:
            if dom.isActive():
                raise BadState(f"vm {vm_id} is already active on host {host_id}")
            dom.undefine()  # a stopped copy from an earlier stay here: the migration brings
            # the VM's current definition
        log.info("host %s vm %s gen %d: ready for the incoming migration from %s", host_id,
                 vm_id, generation, source_host_id or "?")
        return VmInfo(vm_id, VmState.PAUSED, generation, True), self.uri

    def abort_incoming(self, host_id: str, vm_id: str, *, generation: int,
                       op_id: str = "") -> bool:
        check_vm_id(vm_id)
        conn = self._check(host_id)  # type: ignore[attr-defined]
        with self._lock:
            fences = self._fences()
            fences[vm_id] = max(generation, fences.get(vm_id, -1))
        dom = self._lookup(conn, vm_id)  # type: ignore[attr-defined]
        if dom is None:
            return False
        try:
            meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                               "https://controlplane.dev/xml/vm/1", 0))
        except (libvirt.libvirtError, ValueError):
            return False  # not ours
        if is_incoming(dom) and meta.generation <= generation:
            dom.destroy()
            log.info("host %s vm %s gen %d: incoming domain destroyed (aborted)", host_id,
                     vm_id, meta.generation)
            return True
        if dom.isActive() and meta.generation == generation:
            raise BadState(f"vm {vm_id} generation {generation} already switched over to "
                           f"host {host_id}: it runs here")
        return False

    def migrate_out(self, host_id: str, vm_id: str, *, generation: int,
                    target_generation: int, target_host_id: str, target_uri: str,
                    op_id: str = "", timeout: float = 0.0) -> Migrated:
        check_vm_id(vm_id)
        conn = self._check(host_id)  # type: ignore[attr-defined]

        def body(op: Any) -> VmInfo:
            with self._vm_lock(vm_id):  # type: ignore[attr-defined]
                dom = self._lookup(conn, vm_id)  # type: ignore[attr-defined]
                meta = self._read_meta(dom) if dom is not None else None  # type: ignore[attr-defined]
                if dom is None or meta is None:
                    raise VmNotFound(f"vm {vm_id} is not on host {host_id}")
                state = self._state_of(dom, meta)  # type: ignore[attr-defined]
                if meta.generation != generation or state != VmState.RUNNING:
                    raise BadState(f"vm {vm_id} on host {host_id} is "
                                   f"{state.name if state else '?'} generation "
                                   f"{meta.generation}: cannot migrate generation {generation}")
                dest = migration_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE),
                                     dataclasses.replace(meta.cleared(stopped=False),
                                                         generation=target_generation))
            try:
                dconn = libvirt.open(target_uri)
            except libvirt.libvirtError as exc:
                raise BadState(f"cannot reach the target daemon {target_uri}: {exc}") from exc
            timer = threading.Timer(timeout, _abort_job, (dom,)) if timeout else None
            began = time.monotonic()
            try:
                if timer is not None:
                    timer.start()
                new = dom.migrate3(dconn, {libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest,
                                           libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: dest}, FLAGS)
                total = time.monotonic() - began
                try:
                    stats = new.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                except libvirt.libvirtError:
                    stats = {}
                result["downtime"] = stats.get("downtime", 0) / 1000.0
                result["total"] = total
            except libvirt.libvirtError as exc:
                try:
                    still = dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                except libvirt.libvirtError:
                    still = False
                if still:
                    raise BadState(f"migration of vm {vm_id} to {target_host_id} failed: "
                                   f"{exc}; it keeps running here") from exc
                raise HostUnreachable(f"migration of vm {vm_id} to {target_host_id} "
                                      f"failed with the copy here not running: {exc}") from exc
            finally:
                if timer is not None:
                    timer.cancel()
                try:
                    dconn.close()
                except libvirt.libvirtError:
                    pass
            log.info("host %s vm %s gen %d: migrated to %s gen %d in %.3fs (downtime "
                     "%.3fs)", host_id, vm_id, generation, target_host_id, target_generation,
                     result["total"], result["downtime"])
            return VmInfo(vm_id, VmState.RUNNING, target_generation)

        result: dict[str, float] = {}
        vm = self._run(conn, vm_id, "migrate-out", op_id, generation, body)  # type: ignore[attr-defined]
        return Migrated(vm, result.get("total", 0.0), result.get("downtime", 0.0))


def _abort_job(dom: Any) -> None:
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        pass
