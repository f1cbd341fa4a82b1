"""The harness's PKI: one CA per test session (or bench run), and the identities it issues
to the processes the harness starts and to the tests that call them.

Every node, agent and MDS the harness starts gets its own certificate (`node:<id>`,
`agent:<name>`, `mds:<name>`) and a test calls them as the user `admin` (role admin), or
agents and MDS, whose services take only node certificates, as `node:harness`, so
the suite runs over mutual TLS exactly as a deployment does. Issued once per identity and
kept (an ECDSA key takes about a millisecond; a restarted node presents the same files).

Who sets it up: the pytest plugin's session fixture (`use_pki` with a directory under the
session's tmp dir, and CONTROLPLANE_TLS_DIR pointing at the admin identity, which the CLI
run by tests and `Client()` pick up); anyone else (a bench, a script) gets one made on first
use in a temporary directory removed at exit (`harness_pki`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import grpc

from controlplane.security import pki, x509
from controlplane.security.tls import (
    ENV_TLS_DIR,
    PLAINTEXT,
    Plaintext,
    TlsFiles,
    Transport,
    server_credentials,
)

__all__ = ["ADMIN", "HARNESS_NODE", "HarnessPki", "SecretDir", "harness_pki", "server_args",
           "use_pki"]

ADMIN = "admin"


class HarnessPki:
    """A CA in `base` and the identities issued from it (thread-safe)."""

    def __init__(self, base: str | Path) -> None:
        self.base = Path(base)
        if not (self.base / pki.CA_DIR / pki.CERT_FILE).exists():
            pki.init_ca(self.base, name="controlplane-test")
        self._issued: dict[tuple[str, str, str | None, tuple[str, ...]], TlsFiles] = {}
        self._lock = threading.Lock()

    def files(self, kind: str, name: str, role: str | None = None,
              hosts: tuple[str, ...] = ()) -> TlsFiles:
        """The identity's files, issued on first use (`hosts`: an agent's host SANs; the
        same name with other hosts is another identity, in a directory of its own)."""
        key = (kind, name, role, hosts)
        with self._lock:
            files = self._issued.get(key)
            if files is None:
                out = None
                if hosts:
                    tag = hashlib.sha256("\n".join(hosts).encode()).hexdigest()[:8]
                    out = self.base / f"{pki.identity_dir(kind, name)}-hosts-{tag}"
                out = pki.issue_identity(self.base, kind, name, role=role, hosts=hosts,
                                         out=out)
                files = self._issued[key] = TlsFiles.from_dir(out)
        return files

    def node(self, node_id: str) -> TlsFiles:
        return self.files("node", node_id)

    def agent(self, name: str, hosts: tuple[str, ...] = ()) -> TlsFiles:
        """An agent's identity; `hosts` the hosts it may speak for beyond its name."""
        return self.files("agent", name, hosts=hosts)

    def mds(self, name: str) -> TlsFiles:
        return self.files("mds", name)

    def user(self, name: str, role: str) -> TlsFiles:
        return self.files("user", name, role)

    def admin(self) -> TlsFiles:
        """The client identity tests call with."""
        return self.user(ADMIN, "admin")

    @property
    def admin_dir(self) -> Path:
        return Path(self.admin().cert).parent

    def server_credentials(self, name: str = "fake") -> grpc.ServerCredentials:
        """Credentials for an in-process gRPC server of a test (a fake node): the node
        certificate `name`, client certificates required, as a real server does."""
        return server_credentials(self.node(name))[0]


_current: HarnessPki | None = None
_current_lock = threading.Lock()


def use_pki(value: HarnessPki | None) -> None:
    """Make `value` the PKI every harness process and helper uses from now on."""
    global _current
    with _current_lock:
        _current = value


def harness_pki() -> HarnessPki:
    """The current PKI; one made in a temporary directory (removed at exit) if none is."""
    global _current
    with _current_lock:
        if _current is None:
            base = tempfile.mkdtemp(prefix="controlplane-pki-")
            atexit.register(shutil.rmtree, base, True)
            _current = HarnessPki(base)
            # what the pytest plugin does for a session: the client library and a Store
            # (the harness's etcd wants a client certificate) find the admin identity of
            # this CA, the one every process the harness starts trusts (an inherited
            # CONTROLPLANE_TLS_DIR, e.g. of the pytest session that runs a bench, names
            # another CA's)
            os.environ[ENV_TLS_DIR] = str(_current.admin_dir)
        return _current


def server_args(tls: Transport) -> list[str]:
    """The command-line flags that give a served process `tls`."""
    if isinstance(tls, Plaintext):
        return ["--insecure"]
    return ["--ca", tls.ca, "--cert", tls.cert, "--key", tls.key]


HARNESS_NODE = "harness"


def client_transport(server: Transport, as_node: bool = False) -> Transport:
    """What a test talks to a process serving `server` with: plaintext to plaintext, else
    the admin identity, or (`as_node`, for agents and MDS, whose services only node
    certificates may call) the node identity `node:harness`, as a node would."""
    if isinstance(server, Plaintext):
        return PLAINTEXT
    return harness_pki().node(HARNESS_NODE) if as_node else harness_pki().admin()


class SecretDir:
    """A directory laid out the way the kubelet mounts a Secret, and updated the way it
    updates one (its "atomic writer"): the files live in a timestamped directory
    `..<stamp>`, `..data` is a symlink to it, and `ca.crt`, `tls.crt`, `tls.key` are
    symlinks to `..data/<name>`. An update writes a new timestamped directory, points a
    temporary symlink at it and renames that over `..data` (one atomic switch of all three
    files), then removes the old directory. What a rotation by cert-manager looks like to a
    process that mounts the Secret."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._generation = 0

    @property
    def files(self) -> TlsFiles:
        return TlsFiles.from_dir(self.path)

    def write(self, ca_bundle: bytes, issued: x509.Issued) -> None:
        """Publish `issued` (key and certificate) with `ca_bundle` as ca.crt, atomically."""
        self._generation += 1
        stamp = f"..{self._generation:04d}_{os.getpid()}"
        target = self.path / stamp
        target.mkdir(mode=0o700)
        (target / pki.CA_FILE).write_bytes(ca_bundle)
        (target / pki.CERT_FILE).write_bytes(x509.pem_cert(issued.cert))
        key = target / pki.KEY_FILE
        key.write_bytes(x509.pem_key(issued.key))
        key.chmod(0o600)
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.path / "..data_tmp"
        os.symlink(stamp, tmp)
        os.replace(tmp, data)
        for name in (pki.CA_FILE, pki.CERT_FILE, pki.KEY_FILE):
            link = self.path / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None:
            shutil.rmtree(self.path / old)
