"""The X.509 pieces of one installation's PKI, built in memory: a CA, and certificates the
CA issues to nodes, agents, MDS and users. Pure: no files, no clock of its own (the caller
passes `now`), so every rule here is unit-tested without I/O (writing the files is
`controlplane.security.pki`).

Names, the Kubernetes way (x509 client certificates: CN = user, O = groups):

| kind  | CN             | O                        |
|-------|----------------|--------------------------|
| node  | node:<id>      | node                     |
| agent | agent:<id>     | agent                    |
| mds   | mds:<name>     | mds                      |
| etcd  | etcd:<member>  | etcd                     |
| user  | <name>         | reader, operator or admin |

so one function (`controlplane.security.identity.identity_of`) reads any of them back.
A user name may not contain ':' (it would read as a kind).

Keys are ECDSA P-256: a key is made in about a millisecond (an RSA-2048 one in 50-100 ms,
which a test session issuing dozens would feel), and gRPC's TLS stacks all take it.

SANs: every leaf names 127.0.0.1, ::1 and localhost, plus the `sans` given (an IP address
when it parses as one, else a DNS name). Servers are dialed by address and the client
checks the address against these SANs (standard hostname verification, no target-name
override), so a node reached as 10.0.0.5:7070 needs `--san 10.0.0.5` (or its DNS name).
Agents speak only for their hosts (NodeRestriction): an agent certificate names the hosts
it may report and act for, by its CN (`agent:<host-id>`: one certificate per host, the
libvirt backend's way) and by URI SANs `urn:controlplane:host:<id>` or
`urn:controlplane:host:<prefix>*` (the sim agent serving host-0..host-N: `host-*`), see
`speaks_for`. URIs, not DNS names: hostname verification ignores them.

Every leaf may act as server and client (nodes serve and forward; agents and MDS serve);
a user's certificate is a client certificate only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_SANS", "HOST_URI", "KINDS", "ROLES", "Issued", "Kind", "build_ca",
           "common_name", "host_uri", "hosts_of", "issue", "load_ca", "organization",
           "pem_cert", "pem_key", "speaks_for", "subject_of"]

Kind = Literal["node", "agent", "mds", "etcd", "user"]
# etcd: an etcd member's server and peer certificate (issued by the same CA, so nodes check
# etcd as they check each other); no method of ours accepts it.
KINDS: tuple[str, ...] = ("node", "agent", "mds", "etcd", "user")
ROLES: tuple[str, ...] = ("reader", "operator", "admin")
DEFAULT_SANS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
CA_DAYS = 3650
LEAF_DAYS = 365
# Clocks of the machines of one installation differ a little: a certificate issued on one
# and checked on another at once must already be valid there.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A private key and its certificate (the CA's, or a leaf's with the CA that signed it)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def common_name(kind: str, name: str) -> str:
    """The CN of an identity: `node:<id>` ..., a user's bare name. ValueError for a kind
    not in KINDS, an empty name, or a user name with ':'."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not name or len(name) > 128 or not name.isprintable() or " " in name:
        raise ValueError(f"name {name[:64]!r}: 1-128 printable characters, no space")
    if kind == "user":
        if ":" in name:
            raise ValueError(f"user name {name[:64]!r} must not contain ':' (it reads as a "
                             "kind: node:, agent:, mds:)")
        return name
    return f"{kind}:{name}"


def organization(kind: str, role: str | None) -> str:
    """The O of an identity: the kind, or a user's role (required for a user, refused for
    other kinds: their role is their kind)."""
    if kind == "user":
        if role not in ROLES:
            raise ValueError(f"a user needs a role: one of {', '.join(ROLES)} (got {role!r})")
        return role
    if role is not None:
        raise ValueError(f"--role is for users; a {kind}'s role is its kind")
    return kind


def subject_of(cert: x509.Certificate) -> tuple[str, str]:
    """(CN, O) of a certificate ("" for an absent attribute)."""
    def first(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        value = attrs[0].value if attrs else ""
        return value.decode() if isinstance(value, bytes) else value
    return first(NameOID.COMMON_NAME), first(NameOID.ORGANIZATION_NAME)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, o: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, o),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_ca(now: dt.datetime, name: str = "controlplane", days: int = CA_DAYS) -> Issued:
    """A self-signed CA that may sign leaves only (path length 0)."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    key = _key()
    subject = _name(f"{name} CA", name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(key, cert)


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or len(value) > 253 or any(c in value for c in " /:,"):
        raise ValueError(f"SAN {value[:64]!r}: expected an IP address or a DNS name")
    return x509.DNSName(value)


HOST_URI = "urn:controlplane:host:"


def host_uri(pattern: str) -> str:
    """The URI SAN naming a host an agent may speak for: an id, or a prefix ending in '*'
    (the sim agent serving host-0..host-N: `host-*`). ValueError for an empty or spaced
    pattern, or a '*' anywhere but at the end."""
    body = pattern[:-1] if pattern.endswith("*") else pattern
    if not pattern or "*" in body or not pattern.isprintable() or " " in pattern \
            or len(pattern) > 128:
        raise ValueError(f"host {pattern[:64]!r}: an id, or a prefix ending in '*'")
    return HOST_URI + pattern


def hosts_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The host patterns an agent certificate names (its `host_uri` SANs), in order."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(uri[len(HOST_URI):]
                 for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
                 if uri.startswith(HOST_URI))


def speaks_for(cert: x509.Certificate, host_id: str) -> bool:
    """May the agent presenting `cert` report and act for `host_id` (NodeRestriction)? Only
    an agent certificate, and only when its CN is `agent:<host_id>` (one certificate per
    host: the libvirt backend) or a host SAN names the id or a prefix of it (`host-*`)."""
    cn, o = subject_of(cert)
    if o != "agent":
        return False
    if cn == f"agent:{host_id}":
        return True
    return any(host_id.startswith(p[:-1]) if p.endswith("*") else host_id == p
               for p in hosts_of(cert))


def issue(ca: Issued, kind: str, name: str, now: dt.datetime, *, role: str | None = None,
          days: int = LEAF_DAYS, sans: tuple[str, ...] | list[str] = (),
          hosts: tuple[str, ...] | list[str] = (),
          not_before: dt.datetime | None = None) -> Issued:
    """A key and a certificate for one identity, signed by `ca`, valid from `not_before`
    (default: `now` less BACKDATE) for `days` after `now`. `not_before` and a negative
    `days` exist so tests can make not-yet-valid and expired certificates. `hosts` (agents
    only) are the hosts the agent may speak for beyond its own name (`host_uri`)."""
    cn, o = common_name(kind, name), organization(kind, role)
    if hosts and kind != "agent":
        raise ValueError(f"hosts are for agent certificates, not {kind}")
    host_names = [x509.UniformResourceIdentifier(host_uri(h)) for h in dict.fromkeys(hosts)]
    names = list(dict.fromkeys([*DEFAULT_SANS, *sans]))
    key = _key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind != "user":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    start = now - BACKDATE if not_before is None else not_before
    end = now + dt.timedelta(days=days)
    if end <= start:
        end = start + dt.timedelta(seconds=1)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn, o)).issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([*(_san(n) for n in names),
                                                        *host_names]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return Issued(key, cert)


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (gRPC reads no passphrase; the file mode protects it)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_ca(cert_pem: bytes, key_pem: bytes) -> Issued:
    """A CA read back from its PEM files. ValueError when the key is not the certificate's
    or the certificate is not a CA."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError("the CA key does not belong to the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("the certificate is not a CA (basicConstraints CA:FALSE)")
    return Issued(key, cert)
