"""libvirt daemons for the libvirt backend: the system daemon, and one session daemon per
simulated host.

Why this module: a real host has one libvirtd (``qemu:///system``), run by the distribution's
service manager. These machines have no service manager and no cgroup controllers, and one
machine plays several hosts, each of which must have its own domain namespace (powering a
host off = destroying every domain of *its* daemon). What was found here (issue 13):

- System daemon: libvirtd 9.0 starts with ``-d`` once the directories /var/log/libvirt,
  /var/run/libvirt, /var/lib/libvirt/qemu, /var/cache/libvirt exist, the user and group
  ``libvirt-qemu`` exist, ``/etc/libvirt/qemu.conf`` says ``user = "root"``,
  ``group = "root"``, ``cgroup_controllers = [ ]``, ``namespaces = [ ]``, and ``virtlogd -d``
  runs first. Its dmidecode errors at start are harmless. :func:`ensure_system_daemon` does
  exactly that, and nothing at all when the daemon already answers (a real host's service).
- Session daemons: one Unix user per simulated host (:func:`ensure_host_user`), its
  ``libvirtd`` run as that user with ``XDG_RUNTIME_DIR=/run/user/UID``, reached by root at
  :func:`session_uri` (``qemu+unix:///session?socket=/run/user/UID/libvirt/libvirt-sock``).
  :class:`SessionDaemon` runs it in the foreground as a child process (its pid and log are
  ours; it gets SIGTERM when its parent dies); it reuses a daemon that already answers on
  the socket instead of starting a second one. Its QEMUs run as that user, so every file a
  guest opens (disk chain, serial log, kernel, initrd) must be readable/writable by it.

``qemu:///embed`` hung in createXML here: not used.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from controlplane.procs import ChildProcess

__all__ = [
    "SYSTEM_SOCKET",
    "SYSTEM_URI",
    "SHARED_GROUP",
    "HostUser",
    "SessionDaemon",
    "destroy_all",
    "ensure_group",
    "ensure_host_user",
    "ensure_system_daemon",
    "session_socket",
    "session_uri",
    "share",
    "shared_dir",
    "socket_answers",
]

SYSTEM_URI = "qemu:///system"
# Every host user is a member: the files guests of several simulated hosts open (disks,
# overlays, console files) live in directories of this group (see shared_dir).
SHARED_GROUP = "cphosts"
SYSTEM_SOCKET = "/var/run/libvirt/libvirt-sock"
_SYSTEM_DIRS = ("/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt/qemu",
                "/var/cache/libvirt")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
_CONF_BEGIN = "# --- controlplane: libvirtd in a container without cgroups (begin) ---"
_CONF_END = "# --- controlplane (end) ---"
_SYSTEM_CONF = f"""{_CONF_BEGIN}
user = "root"
group = "root"
cgroup_controllers = [ ]
namespaces = [ ]
{_CONF_END}
"""
# A session daemon writes QEMU's stdout/stderr to a file: no session virtlogd to spawn.
_SESSION_CONF = """# written by controlplane.agent.libvirtd
stdio_handler = "file"
"""


def session_socket(uid: int) -> str:
    return f"/run/user/{uid}/libvirt/libvirt-sock"


def session_uri(uid: int) -> str:
    """The URI root uses to reach the session daemon of the user ``uid``."""
    return f"qemu+unix:///session?socket={session_socket(uid)}"


def socket_answers(path: str) -> bool:
    """Whether something accepts connections on the Unix socket ``path`` (a stale socket
    file of a dead daemon refuses)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
    except OSError:
        return False
    finally:
        s.close()
    return True


def _run(what: str, argv: list[str], timeout: float = 60.0) -> None:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what}: no answer after {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise RuntimeError(f"{what}: {argv[0]} not found (python3 -m "
                           "controlplane.devtools.sysdeps installs libvirt)") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}: "
                           f"{(proc.stdout + proc.stderr).strip()[-2000:]}")


def _wait_socket(path: str, timeout: float, what: str, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not socket_answers(path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: nothing answers on {path} after {timeout:.0f}s"
                               + (f"; see {log}" if log else ""))
        time.sleep(0.05)


def _write_conf_block(path: Path, block: str) -> None:
    """Put our settings at the end of qemu.conf, once (the last assignment wins), leaving
    whatever else is in the file alone."""
    text = path.read_text() if path.exists() else ""
    if _CONF_BEGIN in text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + block)


def ensure_system_daemon(timeout: float = 30.0) -> str:
    """The system daemon answering at SYSTEM_URI, started the way these machines need it
    when it is not running (see the module docstring). Root only. Returns the URI."""
    if socket_answers(SYSTEM_SOCKET):
        return SYSTEM_URI
    if os.geteuid() != 0:
        raise RuntimeError(f"no libvirt system daemon at {SYSTEM_SOCKET}, and starting one "
                           "needs root")
    for path in _SYSTEM_DIRS:
        os.makedirs(path, exist_ok=True)
    try:
        grp.getgrnam("libvirt-qemu")
    except KeyError:
        _run("groupadd libvirt-qemu", ["groupadd", "--system", "libvirt-qemu"])
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        _run("useradd libvirt-qemu", ["useradd", "--system", "--no-create-home",
                                      "--gid", "libvirt-qemu", "--shell",
                                      "/usr/sbin/nologin", "libvirt-qemu"])
    _write_conf_block(QEMU_CONF, _SYSTEM_CONF)
    if not socket_answers("/var/run/libvirt/virtlogd-sock"):
        _run("virtlogd -d", ["virtlogd", "-d"])
        _wait_socket("/var/run/libvirt/virtlogd-sock", timeout, "virtlogd")
    _run("libvirtd -d", ["libvirtd", "-d"])
    _wait_socket(SYSTEM_SOCKET, timeout, "libvirtd (system)", "/var/log/libvirt/")
    return SYSTEM_URI


def ensure_group(name: str) -> int:
    """The gid of group ``name``, created (a system group) when missing."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        _run(f"groupadd {name}", ["groupadd", "--system", name])
        return grp.getgrnam(name).gr_gid


def shared_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` (created with its parents) as a directory every host user can read and
    write: group SHARED_GROUP, mode 2775 (new files inherit the group). Its parents get
    o+x so the users can reach it (temporary directories are often 0700)."""
    gid = ensure_group(SHARED_GROUP)
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
    os.chown(p, -1, ensure_group(SHARED_GROUP))
    os.chmod(p, (p.stat().st_mode & 0o7777) | 0o660)
    return p


def destroy_all(uri: str, undefine: bool = False) -> list[str]:
    """Destroy every running domain of the daemon at ``uri`` (a simulated host's power-off:
    its QEMUs die, the definitions stay, as on a real host losing power); ``undefine``
    also removes every definition (a clean-up). The names of the domains that ran."""
    import libvirt  # noqa: PLC0415 - only where libvirt is used

    conn = libvirt.open(uri)
    killed = []
    try:
        for dom in conn.listAllDomains(0):
            try:
                if dom.isActive():
                    dom.destroy()
                    killed.append(dom.name())
                if undefine:
                    dom.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                                libvirt.VIR_ERR_OPERATION_INVALID):
                    raise
    finally:
        conn.close()
    return sorted(killed)


@dataclass(frozen=True)
class HostUser:
    """The Unix user whose session daemon plays one simulated host."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def runtime_dir(self) -> str:
        return f"/run/user/{self.uid}"


def ensure_host_user(name: str, group: str | None = None) -> HostUser:
    """The user ``name`` (created with a home directory when missing; added to ``kvm`` when
    that group exists, so a KVM guest can open /dev/kvm), with its runtime directory
    /run/user/UID (0700, its own) and its session qemu.conf. ``group``: a supplementary
    group to add it to (the harness's shared image group). Idempotent."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise RuntimeError(f"creating the host user {name} needs root") from None
        _run(f"useradd {name}", ["useradd", "--create-home", "--user-group", "--shell",
                                 "/usr/sbin/nologin", name])
        entry = pwd.getpwnam(name)
    for extra in ("kvm", group):
        if not extra:
            continue
        try:
            members = grp.getgrnam(extra).gr_mem
        except KeyError:
            continue
        if name not in members:
            _run(f"usermod -aG {extra} {name}", ["usermod", "-aG", extra, name])
    user = HostUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
    os.makedirs(user.runtime_dir, mode=0o700, exist_ok=True)
    os.chown(user.runtime_dir, user.uid, user.gid)
    os.chmod(user.runtime_dir, 0o700)
    conf = Path(user.home) / ".config" / "libvirt" / "qemu.conf"
    if not conf.exists() or conf.read_text() != _SESSION_CONF:
        for d in (Path(user.home) / ".config", conf.parent):
            d.mkdir(exist_ok=True)
            os.chown(d, user.uid, user.gid)
        conf.write_text(_SESSION_CONF)
        os.chown(conf, user.uid, user.gid)
    return user


class SessionDaemon(ChildProcess):
    """One host's libvirt session daemon: ``libvirtd`` in the foreground as ``user``.

    ``ensure()`` is idempotent: it reuses a daemon that already answers on the user's
    socket (``owned`` is then False and ``stop()`` leaves it running), else starts one and
    waits for its socket. Root only (it changes user with setpriv)."""

    kind = "libvirtd"

    def __init__(self, user: HostUser, log_path: str) -> None:
        super().__init__(user.name, log_path, with_parent=False)
        self.user = user
        self.owned = False

    @property
    def uri(self) -> str:
        return session_uri(self.user.uid)

    @property
    def socket_path(self) -> str:
        return session_socket(self.user.uid)

    def argv(self) -> list[str]:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise RuntimeError("setpriv (util-linux) not found: needed to run libvirtd as "
                               f"{self.user.name}")
        # One setpriv: it sets the death signal after changing user (a second setpriv in
        # front would lose it: the kernel clears it when the uid changes).
        return [setpriv, f"--reuid={self.user.uid}", f"--regid={self.user.gid}",
                "--init-groups", "--pdeathsig", "TERM", "--", "libvirtd"]

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": self.user.home,
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            "XDG_RUNTIME_DIR": self.user.runtime_dir,
            "LANG": "C.UTF-8",
        }

    def answers(self) -> bool:
        return socket_answers(self.socket_path)

    def ensure(self, timeout: float = 30.0) -> SessionDaemon:
        if self.is_running() or self.answers():
            if not self.is_running():
                self.owned = False
            return self
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self.start()
        self.owned = True

        def probe(_timeout: float) -> str:
            return "ok" if self.answers() else f"no answer on {self.socket_path}"

        self.wait_up(probe, timeout, "answering")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the daemon if this object started it. Its QEMUs outlive it (libvirt
        daemonizes them): destroy the domains first."""
        if not self.owned:
            return None
        return super().stop(timeout)
