"""Simulated libvirt hosts for tests and benches: one session daemon per host, real guests.

Why session daemons: every simulated host needs its own domain namespace (powering a host
off destroys every domain of *its* daemon, and the same VM may be defined on two hosts
during HA), and one machine has one system daemon. So each :class:`LibvirtHost` is a Unix
user (``<prefix><index>``) running its own ``libvirtd`` (see
:mod:`controlplane.agent.libvirtd`), reached by root at its session URI.

Files a guest opens are opened by that user (its QEMU, or its libvirtd for the serial
file): disks and console files go in a directory of :func:`shared_dir`, group-owned by
:data:`SHARED_GROUP` (every host user is a member) with the setgid bit, and each file made
there by root is passed through :func:`share` (group read/write). The guest's kernel and
initrd are world-readable in the guest cache.

A daemon is started once and reused (``ensure`` is idempotent; a daemon already answering on
the host's socket, e.g. from ``controlplane up``, is used and left running); ``cleanup``
destroys and undefines the domains, which is also done at the start, so a run killed with
-9 (its QEMUs survive their daemon) leaves nothing for the next one to trip over.

``libvirt`` (the binding) is imported only when a connection is opened, so importing this
module, and so the pytest plugin, works on a machine without libvirt-python.
"""

from __future__ import annotations

import grp
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.agent import domainxml, guest, libvirtd
from controlplane.testing.waiting import WaitTimeout

if TYPE_CHECKING:
    import libvirt

__all__ = [
    "DEFAULT_PREFIX",
    "SHARED_GROUP",
    "LibvirtHost",
    "LibvirtHosts",
    "destroy_domain",
    "share",
    "shared_dir",
    "wait_console",
]

SHARED_GROUP = "cphosts"
DEFAULT_PREFIX = "cp-host-"


def _ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, timeout=60,
                       stdin=subprocess.DEVNULL, capture_output=True)
        return grp.getgrnam(name).gr_gid


def shared_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` (created with its parents) as a directory every host user can read and
    write: group SHARED_GROUP, mode 2775 (new files inherit the group). Its parents get
    o+x so the users can reach it (pytest's tmp dirs are 0700)."""
    gid = _ensure_group(SHARED_GROUP)
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    os.chown(p, -1, gid)
    os.chmod(p, 0o2775)
    for parent in p.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o001)
    return p


def share(path: str | os.PathLike[str]) -> Path:
    """A file made by root, made readable and writable by every host user (group
    SHARED_GROUP, g+rw). Disks, overlays and console files of guests all need it."""
    p = Path(path)
    os.chown(p, -1, _ensure_group(SHARED_GROUP))
    os.chmod(p, (p.stat().st_mode & 0o7777) | 0o660)
    return p


def wait_console(path: str | os.PathLike[str], marker: str, timeout: float) -> str:
    """The console file's text once it contains ``marker``; WaitTimeout with the tail of
    the console (usually says why: a kernel panic, a module that did not load)."""
    p = Path(path)
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        try:
            text = p.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        if marker in text:
            return text
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{marker!r} not on the console {p} after {timeout:.0f}s; "
                              f"console tail:\n{text[-3000:]}")
        time.sleep(0.02)


def destroy_domain(dom: libvirt.virDomain) -> None:
    """Destroy (if running) and undefine (if still defined) one domain; a domain that is
    already gone is fine."""
    import libvirt

    for step in (dom.destroy, dom.undefine):
        try:
            if step is dom.destroy and not dom.isActive():
                continue
            step()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                            libvirt.VIR_ERR_OPERATION_INVALID):
                raise


def _quiet_libvirt() -> None:
    """libvirt's default error handler prints every error to stderr, also those a caller
    expects and handles (destroying a domain that just stopped): errors arrive as
    exceptions anyway."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtHost:
    """One simulated host: its user, its session daemon, its URI and a connection."""

    def __init__(self, name: str, log_dir: str | os.PathLike[str]) -> None:
        self.name = name
        self.log_dir = Path(log_dir)
        self._daemon: libvirtd.SessionDaemon | None = None
        self._conn: Any = None
        self._lock = threading.Lock()

    @property
    def daemon(self) -> libvirtd.SessionDaemon:
        if self._daemon is None:
            raise RuntimeError(f"libvirt host {self.name} was never started")
        return self._daemon

    @property
    def uri(self) -> str:
        return self.daemon.uri

    @property
    def user(self) -> libvirtd.HostUser:
        return self.daemon.user

    def ensure(self, timeout: float = 30.0) -> LibvirtHost:
        """The host's user and daemon, created/started when missing; leftover domains of an
        earlier run are removed the first time. Idempotent."""
        with self._lock:
            if self._daemon is None:
                _ensure_group(SHARED_GROUP)
                user = libvirtd.ensure_host_user(self.name, group=SHARED_GROUP)
                self._daemon = libvirtd.SessionDaemon(
                    user, str(self.log_dir / f"libvirtd-{self.name}.log"))
                self._daemon.ensure(timeout)
                self.cleanup()
            else:
                self._daemon.ensure(timeout)
        return self

    def connect(self) -> libvirt.virConnect:
        """A connection to this host's daemon (one, reused; reopened when it died)."""
        import libvirt

        conn = self._conn
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
        _quiet_libvirt()
        self._conn = libvirt.open(self.uri)
        return self._conn

    def domains(self) -> dict[str, libvirt.virDomain]:
        return {d.name(): d for d in self.connect().listAllDomains()}

    def cleanup(self) -> int:
        """Destroy and undefine every domain of this host; returns how many there were."""
        doms = list(self.connect().listAllDomains())
        for dom in doms:
            destroy_domain(dom)
        return len(doms)

    def boot(self, spec: domainxml.DomainSpec, timeout: float = 60.0) -> libvirt.virDomain:
        """Define ``spec``, start it and wait for the guest's ready marker on its console
        (an old console file is removed first, so the marker is this boot's)."""
        try:
            os.unlink(spec.console_log)
        except FileNotFoundError:
            pass
        dom = self.connect().defineXML(domainxml.domain_xml(spec))
        dom.create()
        wait_console(spec.console_log, guest.READY_MARKER, timeout)
        return dom

    def stop(self) -> None:
        """Remove the domains, close the connection, stop the daemon if we started it."""
        if self._daemon is None:
            return
        try:
            if self._daemon.answers():
                self.cleanup()
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - a dead connection is closed enough
                    pass
                self._conn = None
            self._daemon.stop()


class LibvirtHosts:
    """Hosts ``<prefix>0``, ``<prefix>1``... made on first use and shared (a pytest
    session keeps one pool), plus a shared directory for the guests' files."""

    def __init__(self, base_dir: str | os.PathLike[str], prefix: str = DEFAULT_PREFIX) -> None:
        self.base_dir = Path(base_dir)
        self.prefix = prefix
        self._hosts: dict[int, LibvirtHost] = {}
        self._lock = threading.Lock()

    def host(self, index: int) -> LibvirtHost:
        with self._lock:
            if index not in self._hosts:
                self._hosts[index] = LibvirtHost(f"{self.prefix}{index}",
                                                 self.base_dir / "logs")
            found = self._hosts[index]
        return found.ensure()

    def hosts(self, count: int) -> list[LibvirtHost]:
        return [self.host(i) for i in range(count)]

    def shared_dir(self, name: str) -> Path:
        """A directory under the pool's base that every host user can read and write."""
        return shared_dir(self.base_dir / "shared" / name)

    def stop(self) -> None:
        for host in list(self._hosts.values()):
            host.stop()
