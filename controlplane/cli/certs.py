"""`controlplane certs init|issue|show`: the CA of an installation and the certificates it
issues, as files in the Kubernetes TLS Secret layout (`controlplane.security.pki`).

Local commands: nothing is asked of a node. `init` makes the CA once (it refuses to replace
one: that would orphan every certificate issued); `issue` writes one identity's key and
certificate (again: a rotation, picked up by the processes using the files).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from cryptography import x509

from controlplane.cli import argtypes
from controlplane.security import pki
from controlplane.security import x509 as cx509

DESCRIPTION = """\
Certificates for mutual TLS between every process of one installation (nodes, agents, MDS)
and its users. Files follow the Kubernetes TLS Secret layout, one directory per identity:
DIR/ca/ holds the CA (tls.crt, tls.key); DIR/<identity>/ holds ca.crt, tls.crt and tls.key,
which a process takes as --tls-dir DIR/<identity> (and a cert-manager Secret mounts as).

The identity is in the certificate: CN names the subject (node:<id>, agent:<id>,
mds:<name>, or a user name), O carries the kind (node, agent, mds) or the user's role
(reader, operator, admin). Every certificate names 127.0.0.1, ::1 and localhost; add the
names and addresses other processes dial it by with --san (a client checks the server's
certificate against the address it dialed)."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    certs = sub.add_parser("certs", help="a CA and certificates for mutual TLS",
                           description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    cs = certs.add_subparsers(dest="certs_command", required=True, metavar="SUBCOMMAND")

    p = cs.add_parser("init", help="create the CA in DIR/ca",
                      description="Create a CA (an ECDSA P-256 key, self-signed, may sign "
                      "leaves only) in DIR/ca/tls.crt and DIR/ca/tls.key (0600). Refuses "
                      "when DIR already has one.")
    p.add_argument("--dir", required=True, type=Path, metavar="DIR",
                   help="the PKI directory (created if missing)")
    p.add_argument("--days", type=argtypes.positive_int, default=cx509.CA_DAYS,
                   help=f"validity in days (default {cx509.CA_DAYS})")
    p.add_argument("--name", default="controlplane",
                   help="the CA's name, in its subject (default controlplane)")
    p.set_defaults(run=cmd_init)

    p = cs.add_parser("issue", help="issue a key and certificate for one identity",
                      description="Issue a key and certificate signed by DIR's CA, written to "
                      "DIR/<kind>-<name>/ (a user's to DIR/<name>/), or --out. Issuing again "
                      "replaces them (a rotation).")
    p.add_argument("--dir", required=True, type=Path, metavar="DIR",
                   help="the PKI directory holding the CA (certs init)")
    p.add_argument("--kind", required=True, choices=cx509.KINDS,
                   help="node, agent, mds, or user")
    p.add_argument("--name", required=True,
                   help="the node id, agent (host) id, MDS name, or user name")
    p.add_argument("--role", choices=cx509.ROLES,
                   help="a user's role (required for --kind user, refused for the others)")
    p.add_argument("--days", type=argtypes.positive_int, default=cx509.LEAF_DAYS,
                   help=f"validity in days (default {cx509.LEAF_DAYS})")
    p.add_argument("--san", action="append", default=[], metavar="HOST",
                   help="an extra subject alternative name: an IP address or a DNS name "
                        "(repeatable; 127.0.0.1, ::1 and localhost are always in)")
    p.add_argument("--host", action="append", default=[], metavar="ID",
                   help="(agents) a host the agent may speak for besides the one its name "
                        "is, or a prefix ending in '*' (a sim agent: host-*); repeatable")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write the files here instead of DIR/<identity>")
    p.set_defaults(run=cmd_issue)

    p = cs.add_parser("show", help="print who a certificate names",
                      description="Print the subject (CN, O), SANs, validity and issuer of a "
                      "certificate file or of the tls.crt in a directory.")
    p.add_argument("path", type=Path, metavar="FILE|DIR")
    p.set_defaults(run=cmd_show)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_init(args: argparse.Namespace) -> int:
    try:
        out = pki.init_ca(args.dir, name=args.name, days=args.days)
    except (FileExistsError, ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"CA created: {out / pki.CERT_FILE} (key {out / pki.KEY_FILE}, mode 0600)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    try:
        out = pki.issue_identity(args.dir, args.kind, args.name, role=args.role,
                                 days=args.days, sans=args.san, hosts=args.host,
                                 out=args.out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _fail(str(exc))
    cn = cx509.common_name(args.kind, args.name)
    o = cx509.organization(args.kind, args.role)
    print(f"issued CN={cn} O={o}: {out} (ca.crt, tls.crt, tls.key)")
    print(f"use it with: --tls-dir {out.resolve()}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = args.path / pki.CERT_FILE if args.path.is_dir() else args.path
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return _fail(f"{path}: {exc}")
    cn, o = cx509.subject_of(cert)
    try:
        sans = [str(n.value) for n in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        sans = []
    now = dt.datetime.now(dt.UTC)
    valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    print(f"subject  CN={cn} O={o}")
    print(f"issuer   {cert.issuer.rfc4514_string()}")
    print(f"valid    {cert.not_valid_before_utc.isoformat()} .. "
          f"{cert.not_valid_after_utc.isoformat()} ({'valid now' if valid else 'NOT valid now'})")
    print(f"sans     {', '.join(sans) or '-'}")
    return 0
