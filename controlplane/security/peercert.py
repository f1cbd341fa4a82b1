"""The certificate a server presents, read by a client: how a node checks that the agent at
a host's address may speak for that host (NodeRestriction, `x509.speaks_for`).

Why a handshake of our own: gRPC Python shows a client nothing of the server's certificate
(no auth context on the client side). So the node makes one TLS handshake with Python's ssl
module to the agent's address, with its own certificate (the agent requires one) and the
CA, hostname verification as gRPC does it, and reads the verified leaf. The answer is cached
per address for at most `CHECK_TTL` seconds, and the caller forgets it whenever its gRPC
channel to the address reconnects (`controlplane.agentclient`): the cost is about one
handshake per agent connection, not per call (a sim agent serving thousands of hosts is one
address). What it cannot promise: that the gRPC connection and this handshake, made
moments apart, reach the same process.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from cryptography import x509 as cx509

from controlplane.security.tls import TlsFiles

__all__ = ["CHECK_TTL", "PeerCertificates", "refused_certificate", "server_certificate"]

CHECK_TTL = 30.0


def server_certificate(address: str, tls: TlsFiles, timeout: float) -> cx509.Certificate:
    """The verified certificate the TLS server at HOST:PORT presents. OSError (an
    ssl.SSLError among them) when it cannot be reached or does not verify against the CA."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls.ca)
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=timeout) as sock, \
            context.wrap_socket(sock, server_hostname=host) as conn:
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{address} presented no certificate")
    return cx509.load_der_x509_certificate(der)


def refused_certificate(address: str, tls: TlsFiles, timeout: float
                        ) -> dict[str, str] | None:
    """What the server at HOST:PORT presents, read without verifying it, for the log line
    that says why a verified handshake failed (an expired or not-yet-valid certificate, one
    from another CA): {"peer", "subject", "issuer", "serial", "not_before", "not_after"},
    None when even that cannot be read. Never a basis for trust: only for the message."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(tls.cert, tls.key)
        context.set_alpn_protocols(["h2"])
        with socket.create_connection((host, int(port)), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=host) as conn:
            der = conn.getpeercert(binary_form=True)
        cert = cx509.load_der_x509_certificate(der) if der else None
    except (OSError, ValueError):
        return None
    if cert is None:
        return None
    return {"peer": address, "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(), "serial": format(cert.serial_number, "x"),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat()}


class PeerCertificates:
    """server_certificate per address, cached for `ttl` seconds (thread-safe)."""

    def __init__(self, tls: TlsFiles, ttl: float = CHECK_TTL) -> None:
        self.tls = tls
        self.ttl = ttl
        self._cache: dict[str, tuple[float, cx509.Certificate]] = {}
        self._lock = threading.Lock()

    def get(self, address: str, timeout: float) -> cx509.Certificate:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(address)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        cert = server_certificate(address, self.tls, timeout)
        with self._lock:
            self._cache[address] = (time.monotonic(), cert)
        return cert

    def forget(self, address: str) -> None:
        with self._lock:
            self._cache.pop(address, None)
