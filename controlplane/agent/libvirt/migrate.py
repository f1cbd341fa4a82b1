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
still there (an owner that died mid-transfer) and fences its generation on this host.

The fence (vm id -> highest aborted incoming generation) is kept in ``<state-dir>/
incoming-fences.json`` (written to a temporary file and renamed before the abort answers,
so a kill -9 leaves the old or the new one; loaded at start): a restarted target agent still
refuses to prepare an aborted generation, and destroys an incoming domain of a fenced
generation when it lists or rediscovers it. The domain's metadata cannot hold it: the
aborted incoming domain is gone (libvirt makes it persistent only at the switchover).
Without ``--state-dir`` the fence is this process's memory only.

Known limit: libvirt's switchover (Finish on the target daemon) is driven by the source
agent's client, not by this agent, so the fence cannot refuse the switchover itself; it
refuses the prepare and destroys a fenced incoming domain it sees. A MigrateVm that reaches
the source after the abort (a delayed retry) is refused by the source only if the VM's
generation moved on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
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


INCOMING_REASONS = (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)


def is_incoming(dom: Any) -> bool:
    """A domain that is the receiving end of a migration not switched over yet: paused
    (libvirt 9 says STARTING_UP, older ones MIGRATION) under an incoming migration job.
    libvirt answers job statistics only on the source ("available only on the source
    host", OPERATION_UNSUPPORTED, while the domain's job is MIGRATION_IN), so that refusal
    is the incoming job's signature (a paused domain without a job answers, naming no
    operation); a libvirt that does answer names the operation. Read from libvirtd, so an
    agent restarted mid-transfer reports it as truthfully as the one that prepared it."""
    try:
        state, reason = dom.state()
        if state != libvirt.VIR_DOMAIN_PAUSED or reason not in INCOMING_REASONS:
            return False
        stats = dom.jobStats()
    except libvirt.libvirtError as exc:
        return exc.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED
    return stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN


class LibvirtMigration:
    """Mixed into LibvirtBackend."""

    # provided by LibvirtBackend
    uri: str
    host_id: str
    _lock: threading.Lock
    _hwm: dict[str, int]

    state_dir: str

    def _fences(self) -> dict[str, int]:
        """The aborted incoming generations (under self._lock), loaded from the state dir
        the first time."""
        fences: dict[str, int] | None = getattr(self, "_fenced_in", None)
        if fences is None:
            fences = self._fenced_in = _load_fences(self._fence_file())
        return fences

    def _fence_file(self) -> str:
        return os.path.join(self.state_dir, FENCE_FILE) if self.state_dir else ""

    def _fence(self, vm_id: str, generation: int) -> None:
        """Record (and persist, before the abort acts or answers) that ``generation`` and
        older incoming copies of ``vm_id`` are refused here."""
        with self._lock:
            fences = self._fences()
            if fences.get(vm_id, -1) >= generation:
                return
            fences[vm_id] = generation
            path = self._fence_file()
            if path:
                _save_fences(path, fences)

    def fenced_incoming(self, dom: Any, vm_id: str, generation: int) -> bool:
        """An incoming domain of an aborted generation (a migration that reached the daemon
        after the abort, or one a restarted agent finds): destroyed, True."""
        with self._lock:
            fenced = self._fences().get(vm_id, -1) >= generation
        if not fenced or not is_incoming(dom):
            return False
        try:
            _destroy_incoming(dom)
        except libvirt.libvirtError as exc:
            log.warning("host %s vm %s gen %d: fenced incoming domain not destroyed: %s",
                        self.host_id, vm_id, generation, exc)
            return False
        log.warning("host %s vm %s gen %d: incoming domain of an aborted generation "
                    "destroyed", self.host_id, vm_id, generation)
        return True

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
        self._fence(vm_id, generation)
        dom = self._lookup(conn, vm_id)  # type: ignore[attr-defined]
        if dom is None:
            return False
        try:
            meta = parse_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                               "https://controlplane.dev/xml/vm/1", 0))
        except (libvirt.libvirtError, ValueError):
            return False  # not ours
        if is_incoming(dom) and meta.generation <= generation:
            _destroy_incoming(dom)
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


FENCE_FILE = "incoming-fences.json"


def _load_fences(path: str) -> dict[str, int]:
    if not path:
        return {}
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    return {str(k): int(v) for k, v in doc.items()}


def _save_fences(path: str, fences: dict[str, int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(fences, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _destroy_incoming(dom: Any) -> None:
    """Destroy an incoming (transient) domain: libvirt may answer NO_DOMAIN although the
    destroy is done (the migration job's clean-up removed the domain first): gone is the
    point."""
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def _abort_job(dom: Any) -> None:
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        pass
