"""What cert-manager's CA Issuer would put in a Secret for a `Certificate` (cert-manager.io/v1)
spec, made here from a CA of ours, for tests: no cluster runs cert-manager here, so the
checks that the deploy/ Certificates name identities our code accepts (CN/O read by
`security.identity`, host URI SANs by `security.x509.speaks_for`, DNS names by gRPC's
hostname check, usages by the TLS stacks) run against certificates built from exactly the
fields the manifests set.

The mapping follows cert-manager's (pkg/util/pki: GenerateTemplate): subject CN from
`commonName`, O from `subject.organizations`, SANs from `dnsNames`, `ipAddresses` and `uris`
as given (nothing added, unlike `controlplane certs issue`, which adds loopback names), key
usages and extended key usages from `usages`, a key per `privateKey` (ECDSA P-256 here).
The Secret layout is cert-manager's: ca.crt (the issuing CA), tls.crt, tls.key. A field this
module does not know is an error, so a manifest cannot use one that was never checked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.security import pki
from controlplane.security import x509 as cx509
from controlplane.security.tls import TlsFiles

__all__ = ["KNOWN_SPEC_FIELDS", "KEY_USAGES", "EXTENDED_USAGES", "issue_as_cert_manager"]

# the spec fields a deploy/ Certificate may use (tests/deploy checks them against this)
KNOWN_SPEC_FIELDS = frozenset({
    "secretName", "issuerRef", "commonName", "subject", "dnsNames", "ipAddresses", "uris",
    "usages", "duration", "renewBefore", "privateKey", "isCA", "secretTemplate"})
KEY_USAGES = {"digital signature": "digital_signature", "key encipherment": "key_encipherment",
              "cert sign": "key_cert_sign", "crl sign": "crl_sign"}
EXTENDED_USAGES = {"server auth": ExtendedKeyUsageOID.SERVER_AUTH,
                   "client auth": ExtendedKeyUsageOID.CLIENT_AUTH}


def issue_as_cert_manager(ca_base: str | Path, spec: dict[str, Any], out: str | Path,
                          now: dt.datetime | None = None) -> TlsFiles:
    """The Secret cert-manager would write for `spec` (a Certificate's spec) when its CA
    Issuer holds the CA in `ca_base` (`controlplane certs init` layout), as files in `out`.
    ValueError for a field or usage this mapping does not know."""
    unknown = set(spec) - KNOWN_SPEC_FIELDS
    if unknown:
        raise ValueError(f"Certificate fields not modelled here: {sorted(unknown)}")
    if spec.get("isCA"):
        raise ValueError("a CA Certificate is not issued by the CA Issuer")
    key_spec = spec.get("privateKey", {})
    if (key_spec.get("algorithm"), key_spec.get("size")) != ("ECDSA", 256):
        raise ValueError(f"privateKey {key_spec}: the project's keys are ECDSA P-256")
    ca = pki.read_ca(ca_base)
    now = now or dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)
             for o in spec.get("subject", {}).get("organizations", [])]
    if spec.get("commonName"):
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, spec["commonName"]))
    usages = spec.get("usages", ["digital signature", "key encipherment"])
    bad = [u for u in usages if u not in KEY_USAGES and u not in EXTENDED_USAGES]
    if bad:
        raise ValueError(f"usages not modelled here: {bad}")
    flags = {name: False for name in ("digital_signature", "content_commitment",
                                      "key_encipherment", "data_encipherment", "key_agreement",
                                      "key_cert_sign", "crl_sign", "encipher_only",
                                      "decipher_only")}
    flags.update({KEY_USAGES[u]: True for u in usages if u in KEY_USAGES})
    sans: list[x509.GeneralName] = [
        *(x509.DNSName(d) for d in spec.get("dnsNames", [])),
        *(x509.IPAddress(ipaddress.ip_address(i)) for i in spec.get("ipAddresses", [])),
        *(x509.UniformResourceIdentifier(u) for u in spec.get("uris", []))]
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name(attrs)).issuer_name(ca.cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=1))
               .not_valid_after(now + dt.timedelta(days=90))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(**flags), critical=True))
    extended = [EXTENDED_USAGES[u] for u in usages if u in EXTENDED_USAGES]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    directory = pki.write_identity(Path(out), cx509.pem_cert(ca.cert), cx509.Issued(key, cert))
    return TlsFiles.from_dir(directory)
