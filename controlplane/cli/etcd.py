"""`controlplane etcd enable-auth`: the one-time setup of etcd auth for an installation whose
etcd the project does not start itself (Kubernetes: deploy/etcd/job-auth.yaml runs it).

`up` and the test harness turn auth on from inside (they own their etcd); a cluster's etcd
is set up once, by whoever holds a certificate with CN `root` (with --client-cert-auth,
etcd takes a certificate's CN as the user: store/auth.py). The command makes the project's
user with a role limited to --prefix and turns auth on. It is idempotent, so a Job may run
it at every apply: an existing user keeps its password and its role, auth already on stays
on.

Without --password-file the user gets a random password that is thrown away: it can then
only act through a certificate whose CN is its name (how the Kubernetes nodes log in, with
no password Secret to create or rotate). etcd may still be forming its quorum when this
runs, so it retries every endpoint until --wait runs out.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time

import grpc

from controlplane.config import argtypes
from controlplane.config.settings import add_env_argument, add_tls_flags, transport_from_args
from controlplane.security.tls import Plaintext, channel_credentials
from controlplane.store.auth import EtcdLogin, enable_auth_at
from controlplane.store.client import parse_endpoints
from controlplane.store.keys import DEFAULT_PREFIX

__all__ = ["add_parsers", "cmd_enable_auth"]

log = logging.getLogger(__name__)

DEFAULT_USER = "controlplane"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    etcd = sub.add_parser("etcd", help="set up the etcd an installation uses")
    es = etcd.add_subparsers(dest="etcd_command", required=True, metavar="SUBCOMMAND",
                             parser_class=type(etcd))
    p = es.add_parser(
        "enable-auth", help="make the project's etcd user (a role limited to the prefix) and "
        "turn etcd auth on, as root", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_env_argument(p, "--etcd", type=argtypes.endpoints, default="127.0.0.1:2379",
                     help="etcd endpoints, comma-separated [https://]HOST:PORT")
    add_env_argument(p, "--prefix", type=argtypes.key_prefix, default=DEFAULT_PREFIX,
                     help="the key prefix the user's role may read and write")
    p.add_argument("--user", default=DEFAULT_USER,
                   help=f"the etcd user the nodes act as (default {DEFAULT_USER}; the CN of "
                        "their etcd client certificate when they log in without a password)")
    p.add_argument("--password-file", metavar="FILE",
                   help="the user's password (first line); without one a random password "
                        "that nobody keeps (certificate login only)")
    p.add_argument("--wait", type=argtypes.positive_float, default=120.0,
                   help="seconds to keep trying while etcd is unreachable (default 120)")
    add_tls_flags(p)  # the root certificate (CN root), e.g. --tls-dir of a mounted Secret
    p.set_defaults(run=cmd_enable_auth)


def cmd_enable_auth(args: argparse.Namespace) -> int:
    tls = transport_from_args(args)
    if isinstance(tls, Plaintext):
        print("error: etcd auth needs TLS: a root client certificate (--tls-dir)",
              file=sys.stderr)
        return 2
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
        if not password:
            print(f"error: {args.password_file} holds no password", file=sys.stderr)
            return 2
    else:
        password = secrets.token_urlsafe(24)
    login = EtcdLogin(args.user, password)
    credentials = channel_credentials(tls)
    targets = [f"{h}:{p}" for h, p in parse_endpoints(args.etcd)]
    deadline = time.monotonic() + args.wait
    while True:
        errors = []
        for target in targets:
            try:
                enable_auth_at(target, credentials, args.prefix, login)
            except grpc.RpcError as exc:
                errors.append(f"{target}: {exc.code().name} {exc.details()}")
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    # refused (not root, a bad certificate): the same on every member
                    print(f"error: {errors[-1]}", file=sys.stderr)
                    return 1
                continue
            print(f"etcd auth on at {target}: user {args.user!r} limited to {args.prefix}")
            return 0
        if time.monotonic() >= deadline:
            print("error: no etcd member answered: " + "; ".join(errors), file=sys.stderr)
            return 1
        time.sleep(2.0)
