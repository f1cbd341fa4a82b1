"""The certificate files a process presents, turned into gRPC credentials: the one
definition of a process's transport, for servers (`server_credentials`) and channels
(`channel_credentials`), and how a changed file is picked up.

A transport is `TlsFiles` (mutual TLS: the CA that signs every peer, this process's
certificate and key) or `PLAINTEXT`, which only an explicit `--insecure` (or
`CONTROLPLANE_INSECURE=true`, or `tls=PLAINTEXT` in code) chooses. Nothing defaults to
plaintext: a process given neither refuses to start (`TlsMissing`), naming both options.

Files are in the Kubernetes TLS Secret layout (`ca.crt`, `tls.crt`, `tls.key`), so
`TlsFiles.from_dir` reads a mounted cert-manager Secret as is.

Reloading, so a rotated certificate is used without a restart:
- servers: gRPC's dynamic server credentials ask `ReloadingServerConfig.fetch` before every
  handshake; it stats the three files (no read while they are unchanged) and hands gRPC the
  new pair when they changed and load (a certificate whose key is not the one next to it, a
  half-rotated pair, is kept out until the pair matches again). The same fetch counts the
  handshakes (`HANDSHAKES`, metric `controlplane_tls_handshakes_total`): channels are reused,
  so in steady state the count stands still;
- clients: `RotatingCredentials` (used by `channels.ChannelPool` and the etcd store)
  compares `TlsFiles.signature()` at most once a second and, once the files changed and
  load, hands out new credentials, with which the owner opens new channels; calls in
  flight finish on the old channels, which are dropped, not closed;
- both refuse a set whose certificate is expired or not yet valid (`CertificateNotValid`:
  an error line naming the file, subject, serial and dates) and keep the set in use, and a
  server refuses to start with one (`check_own`): every peer would refuse it, so taking it
  would turn a bad rotation into an outage. A client's first set, with nothing to keep,
  is dialed anyway after the error line (the server is the judge).

Server names: the client checks the server's certificate against the address it dialed
(standard hostname verification; no target-name override anywhere): nodes, agents and MDS
are dialed by the address they advertise, so their certificates name that address in a SAN
(127.0.0.1, ::1 and localhost always; others with `certs issue --san`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter

__all__ = ["ENV_CA", "ENV_CERT", "ENV_INSECURE", "ENV_KEY", "ENV_TLS_DIR", "HANDSHAKES",
           "PLAINTEXT", "RELOADS", "RELOAD_REFUSALS", "CertificateNotValid", "LoadedPair",
           "Plaintext", "ReloadingServerConfig", "RotatingCredentials", "TlsFiles",
           "TlsMissing", "Transport", "channel_credentials", "check_own", "describe",
           "load_checked", "load_pair", "pair_credentials", "server_credentials",
           "transport_from", "transport_from_env"]

log = logging.getLogger(__name__)

ENV_TLS_DIR = "CONTROLPLANE_TLS_DIR"
ENV_CA, ENV_CERT, ENV_KEY = "CONTROLPLANE_CA", "CONTROLPLANE_CERT", "CONTROLPLANE_KEY"
ENV_INSECURE = "CONTROLPLANE_INSECURE"

HANDSHAKES = Counter("controlplane_tls_handshakes_total",
                     "TLS handshakes this process's server began (reused channels: none)")
RELOADS = Counter("controlplane_tls_reloads_total",
                  "times this process's server took rotated certificate files")
RELOAD_REFUSALS = Counter("controlplane_tls_reload_refusals_total",
                          "rotated certificate files refused (outside their validity period)")

NO_TRANSPORT = ("no TLS identity: give --tls-dir DIR (a directory with ca.crt, tls.crt and "
                "tls.key; or --ca/--cert/--key, or CONTROLPLANE_TLS_DIR) for mutual TLS, or "
                "--insecure for plaintext with no authentication")


class TlsMissing(ValueError):
    """Neither certificate files nor an explicit plaintext choice: the message names both."""

    def __init__(self, message: str = NO_TRANSPORT) -> None:
        super().__init__(message)


class Plaintext:
    """No TLS at all, chosen explicitly (`--insecure`). One instance: `PLAINTEXT`."""

    def __repr__(self) -> str:
        return "PLAINTEXT"


PLAINTEXT = Plaintext()


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA bundle (peers are checked against it), the certificate and its key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> TlsFiles:
        d = Path(directory)
        return cls(str(d / "ca.crt"), str(d / "tls.crt"), str(d / "tls.key"))

    def signature(self) -> tuple[tuple[int, int, int], ...] | None:
        """What changes when any file is replaced (inode, size, mtime; a Kubernetes Secret
        update swaps a symlink, which stat follows), None while one is missing."""
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns)
                         for s in (os.stat(p) for p in (self.ca, self.cert, self.key)))
        except OSError:
            return None

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes; RuntimeError naming the file that cannot be read."""
        out = []
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise RuntimeError(f"cannot read the TLS {what} {path}: "
                                   f"{exc.strerror or exc}") from None
        return out[0], out[1], out[2]


Transport = TlsFiles | Plaintext


def describe(transport: Transport) -> str:
    return "plaintext (--insecure)" if isinstance(transport, Plaintext) \
        else f"mutual TLS ({Path(transport.cert).parent})"


class CertificateNotValid(RuntimeError):
    """This process's own certificate is outside its validity period (expired, or not yet
    valid): every peer would refuse it, so it is not loaded. The fields say which file,
    whose certificate and when it is valid (they go into the log line as `extra=` fields:
    `tls_file`, `subject`, `serial`, `not_before`, `not_after`)."""

    def __init__(self, path: str, cert: x509.Certificate, now: dt.datetime) -> None:
        self.path = path
        self.subject = cert.subject.rfc4514_string()
        self.serial = format(cert.serial_number, "x")
        self.not_before = cert.not_valid_before_utc
        self.not_after = cert.not_valid_after_utc
        self.expired = now > self.not_after
        state = (f"expired at {self.not_after.isoformat()}" if self.expired
                 else f"is not valid before {self.not_before.isoformat()}")
        super().__init__(f"the certificate {path} ({self.subject}, serial {self.serial}) "
                         f"{state} (now {now.isoformat(timespec='seconds')}): peers refuse "
                         "it; issue a new one (controlplane certs issue)")

    def fields(self) -> dict[str, str]:
        """The structured fields of the log line that reports it."""
        return {"tls_file": self.path, "subject": self.subject, "serial": self.serial,
                "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat()}


@dataclass(frozen=True)
class LoadedPair:
    """The PEM bytes of one consistent set of files, and the certificate parsed."""

    ca: bytes
    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")


def _load(files: TlsFiles, now: dt.datetime | None
          ) -> tuple[LoadedPair, CertificateNotValid | None]:
    ca, cert_pem, key_pem = files.read()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        x509.load_pem_x509_certificates(ca)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as exc:
        raise RuntimeError(f"TLS files {files.cert} / {files.key} / {files.ca} do not parse "
                           f"as PEM: {exc}") from None
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise RuntimeError(f"the key {files.key} does not belong to the certificate "
                           f"{files.cert}")
    now = now or dt.datetime.now(dt.UTC)
    invalid = None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        invalid = CertificateNotValid(files.cert, cert, now)
    return LoadedPair(ca, cert_pem, key_pem, cert), invalid


def load_checked(files: TlsFiles, *, now: dt.datetime | None = None) -> LoadedPair:
    """The files read and checked: PEM that parses, the key belongs to the certificate, and
    the certificate is valid `now` (CertificateNotValid otherwise). RuntimeError saying
    which is wrong: a caller that already holds a good set keeps it (a half-rotated pair,
    the new key beside the old certificate, is one of these for a moment)."""
    pair, invalid = _load(files, now)
    if invalid is not None:
        raise invalid
    return pair


def check_own(transport: Transport) -> None:
    """A server's start-up check: CertificateNotValid (or RuntimeError for files that do not
    load) before anything starts, so `serve`, `agent` and `mds` refuse to start with an
    expired or not-yet-valid certificate instead of serving handshakes every peer fails."""
    if isinstance(transport, TlsFiles):
        load_checked(transport)


def load_pair(files: TlsFiles) -> tuple[bytes, bytes, bytes]:
    """(ca, cert, key) of `files`, checked as `load_checked` does, except that a certificate
    outside its validity period is loaded (a client's first dial: the server is the judge,
    and its refusal is the caller's answer) with an error line naming the file, subject and
    dates (structured fields). RuntimeError for files that do not load."""
    pair, invalid = _load(files, None)
    if invalid is not None:
        log.error("%s", invalid, extra=invalid.fields())
    return pair.ca, pair.cert_pem, pair.key_pem


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Credentials of a client channel: the server checked against the CA and the address
    dialed, this process's certificate presented."""
    ca, cert, key = load_pair(files)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def pair_credentials(pair: LoadedPair) -> grpc.ChannelCredentials:
    """channel_credentials of an already loaded (and checked) set of files."""
    return grpc.ssl_channel_credentials(root_certificates=pair.ca, private_key=pair.key_pem,
                                        certificate_chain=pair.cert_pem)


class RotatingCredentials:
    """A client's credentials that follow its files: `current()` answers the credentials of
    the last good set, and `check()` (at most every `interval` seconds) looks at the files'
    signature and loads a changed set. A set that does not load (half rotated) or whose
    certificate is outside its validity period is refused, logged once per change, and the
    good set stays in use: a bad rotation leaves the working channels alone. `check()` says
    whether the credentials changed (the caller re-opens its channels).

    Before any good set (files missing, or a first certificate that is already expired),
    `current()` loads them as channel_credentials does: a missing file is a RuntimeError,
    an expired certificate an error line, and the dial goes ahead (the server refuses it)."""

    def __init__(self, files: TlsFiles, interval: float = 1.0) -> None:
        self.files = files
        self.interval = interval
        self.rotations = 0
        self.refusals = 0
        self.serial: str | None = None
        self._creds: grpc.ChannelCredentials | None = None
        self._signature = files.signature()
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        self._next_check = time.monotonic() + interval
        self._lock = threading.Lock()

    def current(self) -> grpc.ChannelCredentials:
        with self._lock:
            if self._creds is None:
                signature = self.files.signature()
                try:
                    pair = load_checked(self.files)
                except CertificateNotValid:
                    return channel_credentials(self.files)  # logs it; not kept
                self._creds, self._signature = pair_credentials(pair), signature
                self.serial = pair.serial
            return self._creds

    def check(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.interval
        signature = self.files.signature()
        if signature is None or signature == self._signature or signature == self._refused:
            return False
        with self._lock:
            if signature == self._signature or signature == self._refused:
                return False
            if self._creds is None:  # nothing good to keep: the next current() loads
                self._signature = signature
                self.rotations += 1
                return True
            try:
                pair = load_checked(self.files)
            except CertificateNotValid as exc:
                self._refused = signature
                self.refusals += 1
                log.error("certificate files changed, but %s: new channels keep the "
                          "certificate in use (serial %s)", exc, self.serial,
                          extra=exc.fields())
                return False
            except RuntimeError as exc:  # half rotated: look again at the next check
                log.info("certificate files changed but do not load yet (keeping the ones "
                         "in use): %s", exc)
                return False
            self._creds, self._signature = pair_credentials(pair), signature
            old, self.serial = self.serial, pair.serial
            self.rotations += 1
        log.info("client certificate files %s reloaded: serial %s, was %s", self.files.cert,
                 pair.serial, old, extra={"tls_file": self.files.cert, "serial": pair.serial})
        return True


class ReloadingServerConfig:
    """gRPC's certificate-config fetcher: called before every handshake, it counts it and
    answers None (unchanged) or the new configuration once the files changed and load.

    Files that do not load are kept out and the pair in use stays: a half-rotated pair (a
    warning; the next handshake looks again) or a certificate outside its validity period
    (an error line with the file, subject, serial and dates, once per change: peers would
    refuse it, so serving it would turn a bad rotation into an outage). At start there is no
    pair to keep: CertificateNotValid (a RuntimeError) from the constructor."""

    def __init__(self, files: TlsFiles, on_handshake: Callable[[], None] = HANDSHAKES.inc
                 ) -> None:
        self.files = files
        self.on_handshake = on_handshake
        self.reloads = 0
        self.refusals = 0
        self._lock = threading.Lock()
        self._signature = files.signature()
        self._refused: tuple[tuple[int, int, int], ...] | None = None
        pair = load_checked(files)
        self.serial = pair.serial
        self.initial = self._config(pair)

    @staticmethod
    def _config(pair: LoadedPair) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)],
                                                         root_certificates=pair.ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        self.on_handshake()
        signature = self.files.signature()
        if signature is None or signature == self._signature or signature == self._refused:
            return None
        with self._lock:
            if signature == self._signature or signature == self._refused:
                return None
            try:
                pair = load_checked(self.files)
            except CertificateNotValid as exc:
                self._refused = signature
                self.refusals += 1
                RELOAD_REFUSALS.inc()
                log.error("certificate files changed, but %s: keeping the certificate in "
                          "use (serial %s)", exc, self.serial, extra=exc.fields())
                return None
            except RuntimeError as exc:  # half rotated, or broken: keep serving the old pair
                log.warning("certificate files changed but do not load (keeping the old "
                            "ones): %s", exc)
                return None
            self._signature = signature
            self.reloads += 1
            old, self.serial = self.serial, pair.serial
        RELOADS.inc()
        log.info("certificate files %s reloaded: serial %s, was %s", self.files.cert,
                 pair.serial, old, extra={"tls_file": self.files.cert, "serial": pair.serial,
                                          "not_after": pair.cert.not_valid_after_utc
                                          .isoformat()})
        return self._config(pair)


def server_credentials(files: TlsFiles) -> tuple[grpc.ServerCredentials, ReloadingServerConfig]:
    """Server credentials that require and verify a client certificate signed by the CA,
    reloaded when the files change (the fetcher is returned too: tests read its counts)."""
    fetcher = ReloadingServerConfig(files)
    creds = grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetcher.fetch, require_client_authentication=True)
    return creds, fetcher


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def transport_from(*, tls_dir: str | None = None, ca: str | None = None,
                   cert: str | None = None, key: str | None = None,
                   insecure: bool = False) -> Transport:
    """The transport a command line (or an environment) asks for: a directory, or the three
    files, or plaintext; TlsMissing (a ValueError) for none, for both, or a partial set."""
    files = (ca, cert, key)
    if insecure and (tls_dir or any(files)):
        raise TlsMissing("choose one: --insecure (plaintext) or certificate files "
                         "(--tls-dir / --ca --cert --key), not both")
    if insecure:
        return PLAINTEXT
    if tls_dir and any(files):
        raise TlsMissing("give either --tls-dir or --ca/--cert/--key, not both")
    if tls_dir:
        return TlsFiles.from_dir(tls_dir)
    if any(files):
        if not all(files):
            raise TlsMissing("--ca, --cert and --key go together: give all three (or "
                             "--tls-dir)")
        return TlsFiles(ca, cert, key)  # type: ignore[arg-type]
    raise TlsMissing()


def transport_from_env(env: Mapping[str, str] | None = None) -> Transport:
    """The transport the CONTROLPLANE_TLS_DIR / _CA / _CERT / _KEY / _INSECURE variables
    ask for (what the client library uses when not told); TlsMissing when none is set."""
    env = os.environ if env is None else env
    return transport_from(tls_dir=env.get(ENV_TLS_DIR) or None, ca=env.get(ENV_CA) or None,
                          cert=env.get(ENV_CERT) or None, key=env.get(ENV_KEY) or None,
                          insecure=_truthy(env.get(ENV_INSECURE, "")))
