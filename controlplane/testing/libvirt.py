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

A daemon is started once and reused (``ensure`` is idempotent). A daemon this process
started is *owned*: its leftover domains are removed at the start (a run killed with -9
leaves QEMUs that survive their daemon) and all of its domains at the end. A daemon that
already answered on the host's socket (``controlplane up``, another test run) is used and
left running, and only the domains defined through this object (``define``/``boot``) are
removed. Two runs at once should still use different users: the prefix is
``$CONTROLPLANE_LIBVIRT_PREFIX`` (default ``cp-host-``).

``libvirt`` (the binding) is imported only when a connection is opened, so importing this
module, and so the pytest plugin, works on a machine without libvirt-python.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.agent import domainxml, guest, libvirtd
from controlplane.testing.agents import AgentProcess
from controlplane.testing.pki import harness_pki, server_args
from controlplane.testing.waiting import WaitTimeout

if TYPE_CHECKING:
    import libvirt

__all__ = [
    "DEFAULT_PREFIX",
    "SHARED_GROUP",
    "LibvirtAgent",
    "LibvirtHost",
    "LibvirtHosts",
    "destroy_domain",
    "share",
    "shared_dir",
    "wait_console",
]

SHARED_GROUP = libvirtd.SHARED_GROUP
DEFAULT_PREFIX = os.environ.get("CONTROLPLANE_LIBVIRT_PREFIX", "cp-host-")
shared_dir = libvirtd.shared_dir
share = libvirtd.share
_ensure_group = libvirtd.ensure_group


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
        self._defined: set[str] = set()
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
                if self._daemon.owned:
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

    def qemu_pid(self, vm_id: str) -> int:
        """The pid of the QEMU running domain ``vm_id`` (what a crash test kills -9)."""
        run = Path(self.user.runtime_dir) / "libvirt" / "qemu" / "run"
        return int((run / f"{vm_id}.pid").read_text().strip())

    def domains(self) -> dict[str, libvirt.virDomain]:
        return {d.name(): d for d in self.connect().listAllDomains()}

    def cleanup(self, only_ours: bool = False) -> int:
        """Destroy and undefine every domain of this host (``only_ours``: those defined
        through this object); returns how many there were."""
        doms = [d for d in self.connect().listAllDomains()
                if not only_ours or d.name() in self._defined]
        for dom in doms:
            destroy_domain(dom)
        self._defined.difference_update(d.name() for d in doms)
        return len(doms)

    def define(self, spec: domainxml.DomainSpec) -> libvirt.virDomain:
        """Define ``spec`` (not started), remembered for the clean-up."""
        dom = self.connect().defineXML(domainxml.domain_xml(spec))
        self._defined.add(spec.vm_id)
        return dom

    def boot(self, spec: domainxml.DomainSpec, timeout: float = 60.0) -> libvirt.virDomain:
        """Define ``spec``, start it and wait for the guest's ready marker on its console
        (an old console file is removed first, so the marker is this boot's)."""
        try:
            os.unlink(spec.console_log)
        except FileNotFoundError:
            pass
        dom = self.define(spec)
        dom.create()
        wait_console(spec.console_log, guest.READY_MARKER, timeout)
        return dom

    def stop(self) -> None:
        """Remove the domains (all on an owned daemon, ours on another), close the
        connection, stop the daemon if we started it."""
        if self._daemon is None:
            return
        try:
            if self._daemon.answers():
                self.cleanup(only_ours=not self._daemon.owned)
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


class LibvirtAgent(AgentProcess):
    """``controlplane agent --backend libvirt`` for one simulated host: host id ``host_id``,
    its daemon ``host``, per-VM disks (``disk_mb``) and console files in ``state_dir``
    (a :func:`shared_dir`). ``boot_timeout``: a start waits for the guest's ready marker
    (so Running means the guest has booted); ``cmdline``: the guests' kernel command line
    (``guest.kernel_cmdline(slow_boot=S)`` makes every start on this host slow).
    A restarted libvirt agent finds its VMs again (they live in libvirt)."""

    def __init__(self, name: str, port: int, base_dir: str, host_id: str, host: LibvirtHost,
                 state_dir: str | os.PathLike[str], *, disk_mb: int = 16,
                 stop_timeout: float = 10.0, boot_timeout: float = 0.0, cmdline: str = "",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.host_id, self.host, self.state_dir = host_id, host, str(state_dir)
        self.disk_mb, self.stop_timeout, self.boot_timeout = disk_mb, stop_timeout, \
            boot_timeout
        self.cmdline = cmdline
        # one certificate per host, CN agent:<host-id>: what NodeRestriction checks
        super().__init__(name, port, base_dir, extra_args=extra_args,
                         tls=harness_pki().agent(host_id))

    @property
    def host_ids(self) -> list[str]:
        return [self.host_id]

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "controlplane", "agent", "--listen", self.address,
                "--backend", "libvirt", "--host-id", self.host_id, "--libvirt-uri",
                self.host.uri, "--accel", "tcg", "--state-dir", self.state_dir,
                "--disk-mb", str(self.disk_mb), "--stop-timeout", repr(self.stop_timeout),
                "--boot-timeout", repr(self.boot_timeout), "--log-level", self.log_level]
        if self.cmdline:
            argv += ["--guest-cmdline", self.cmdline]
        return argv + server_args(self.tls) + list(self.extra_args)

    def console(self, vm_id: str) -> str:
        """The guest's console text so far ("" before the first boot)."""
        try:
            return (Path(self.state_dir) / f"{vm_id}.serial.log").read_text(errors="replace")
        except OSError:
            return ""
