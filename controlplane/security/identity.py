"""Who is calling: the one reading of a peer's certificate, for every server (the access
policy interceptor, audit records and agent host checks all ask here, and nowhere else).

The names follow `controlplane.security.x509`: CN `node:<id>`, `agent:<id>`, `mds:<name>`
or a user's name; O the kind, or the user's role. The certificate is the one gRPC verified
in the handshake (against this server's CA): `x509_pem_cert` of the call's auth context.
Parsing it costs about 50 us, so identities are cached per certificate (a channel presents
the same one on every call).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from cryptography import x509 as cx509

from controlplane.security.x509 import KINDS, ROLES, subject_of

__all__ = ["Identity", "identity_of", "peer_identity"]


@dataclass(frozen=True)
class Identity:
    """kind: node, agent, mds or user; name: the id (without the kind prefix) or the user
    name; role: the certificate's O, i.e. the kind itself for node/agent/mds, the user's
    role (reader, operator, admin) for a user."""

    kind: str
    name: str
    role: str

    def __str__(self) -> str:
        return self.name if self.kind == "user" else f"{self.kind}:{self.name}"

    def header(self) -> str:
        """This identity as the CALLER metadata value of a forwarded call: "kind role name"
        (names hold no space)."""
        return f"{self.kind} {self.role} {self.name}"

    @staticmethod
    def from_header(value: str) -> Identity | None:
        """The identity a CALLER value names (the inverse of `header`), None when it names
        none this project issues."""
        kind, _, rest = value.partition(" ")
        role, _, name = rest.partition(" ")
        if kind not in KINDS or not name or " " in name:
            return None
        if kind == "user":
            return identity_of(name, role)
        return Identity(kind, name, kind) if role == kind else None


def identity_of(common_name: str, organization: str) -> Identity | None:
    """The identity a (CN, O) pair names, None when it names none this project issues (a
    CN without its kind's prefix, an unknown O, a user name with ':')."""
    if organization in KINDS and organization != "user":
        prefix = organization + ":"
        name = common_name[len(prefix):] if common_name.startswith(prefix) else ""
        return Identity(organization, name, organization) if name else None
    if organization in ROLES and common_name and ":" not in common_name:
        return Identity("user", common_name, organization)
    return None


@functools.lru_cache(maxsize=4096)
def _from_pem(pem: bytes) -> Identity | None:
    try:
        cert = cx509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    return identity_of(*subject_of(cert))


def peer_identity(context: grpc.ServicerContext) -> Identity | None:
    """The verified identity of the caller of this call, None for a plaintext (--insecure)
    caller or a certificate that names no identity of ours."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert")
    if not pems:
        return None
    return _from_pem(pems[0])
