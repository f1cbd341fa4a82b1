"""An installation's PKI on disk: the CA and the identities it issued, each a directory in
the Kubernetes TLS Secret layout, so a cert-manager Secret mounts in its place as is:

    DIR/ca/        tls.crt tls.key ca.crt     the CA (ca.crt = tls.crt)
    DIR/<ident>/   tls.crt tls.key ca.crt     one identity (`identity_dir`)

Keys are written 0600 and directories 0700; every file is written to a temporary name and
renamed into place, so a process reloading its files (controlplane.security.tls) never reads
half a file. The X.509 content comes from the pure `controlplane.security.x509`.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from controlplane.security import x509 as cx509

__all__ = ["CA_DIR", "CA_FILE", "CERT_FILE", "KEY_FILE", "identity_dir", "init_ca",
           "issue_identity", "read_ca", "write_identity"]

CA_DIR = "ca"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"


def _write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_identity(out: Path, ca_cert_pem: bytes, issued: cx509.Issued) -> Path:
    """ca.crt, tls.crt, tls.key into `out` (made 0700 if missing); the key first and the
    certificate last, so a reader that sees the new certificate sees its key."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(out / CA_FILE, ca_cert_pem, 0o644)
    _write(out / KEY_FILE, cx509.pem_key(issued.key), 0o600)
    _write(out / CERT_FILE, cx509.pem_cert(issued.cert), 0o644)
    return out


def init_ca(base: str | Path, *, name: str = "controlplane", days: int = cx509.CA_DAYS,
            now: dt.datetime | None = None) -> Path:
    """A new CA in `base`/ca. FileExistsError when one is already there: replacing a CA
    orphans every certificate it issued, which must not happen by a repeated command."""
    out = Path(base) / CA_DIR
    if (out / CERT_FILE).exists():
        raise FileExistsError(f"{out / CERT_FILE} exists: a CA is already there")
    ca = cx509.build_ca(now or dt.datetime.now(dt.UTC), name=name, days=days)
    pem = cx509.pem_cert(ca.cert)
    return write_identity(out, pem, ca)


def read_ca(base: str | Path) -> cx509.Issued:
    """The CA of `base` (FileNotFoundError naming `certs init` when there is none)."""
    out = Path(base) / CA_DIR
    try:
        cert, key = (out / CERT_FILE).read_bytes(), (out / KEY_FILE).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no CA in {base} (expected {out / CERT_FILE}); create one "
                                f"with: controlplane certs init --dir {base}") from None
    return cx509.load_ca(cert, key)


def identity_dir(kind: str, name: str) -> str:
    """The directory name of an identity: a user's bare name (`admin`), else
    `<kind>-<name>` (`node-node-0`, `agent-agent-0`)."""
    cx509.common_name(kind, name)  # the same checks as the certificate's name
    return name if kind == "user" else f"{kind}-{name}"


def issue_identity(base: str | Path, kind: str, name: str, *, role: str | None = None,
                   days: int = cx509.LEAF_DAYS, sans: tuple[str, ...] | list[str] = (),
                   hosts: tuple[str, ...] | list[str] = (),
                   out: str | Path | None = None, now: dt.datetime | None = None,
                   not_before: dt.datetime | None = None) -> Path:
    """A key and certificate for one identity, signed by the CA of `base`, written to `out`
    (default `base`/identity_dir(kind, name)); returns that directory. Issuing again
    replaces the files in place (a rotation: processes using them reload)."""
    ca = read_ca(base)
    target = Path(out) if out is not None else Path(base) / identity_dir(kind, name)
    issued = cx509.issue(ca, kind, name, now or dt.datetime.now(dt.UTC), role=role,
                         days=days, sans=sans, hosts=hosts, not_before=not_before)
    return write_identity(target, cx509.pem_cert(ca.cert), issued)
