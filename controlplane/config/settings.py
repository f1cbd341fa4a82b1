"""Command-line settings of the long-running commands (`serve`, `agent`, `mds`): every flag
also reads an environment variable, so a Kubernetes pod can be configured from its
manifest alone.

One mechanism for the three: ConfigArgParse's ``env_var``. ``CONTROLPLANE_<FLAG>`` (the
flag's name upper-cased, '-' as '_') is read when the command line is parsed and turned into
that flag on the command line, before the flags actually given (so a flag given wins). A bad
variable thus meets the same ``type=`` check (:mod:`controlplane.config.argtypes`) and gets
the same clean argparse error as a bad flag. ``--help`` names each variable and default as
``[env CONTROLPLANE_X; default Y]``, the list the deployment manifests are checked against.

The parser a flag is added to must be an :class:`EnvArgumentParser` (for sub-commands: the
``parser_class`` of the ``add_subparsers`` call); a plain argparse parser would accept
``env_var`` and never read it, so :func:`add_env_argument` refuses one.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import configargparse

from controlplane.config import argtypes
from controlplane.rpc import DEFAULT_MAX_STREAMS
from controlplane.security.tls import TlsFiles, TlsMissing, Transport, transport_from
from controlplane.store.keys import DEFAULT_PREFIX

__all__ = [
    "ENV_PREFIX", "SERVE_FLAGS", "EnvArgumentParser", "Flag", "Settings", "add_env_argument",
    "add_flags", "add_serve_arguments", "env_name", "log_flags", "metrics_bind_address",
    "metrics_flags", "settings_from_args", "add_tls_flags", "transport_from_args",
]

ENV_PREFIX = "CONTROLPLANE_"


class EnvArgumentParser(configargparse.ArgumentParser):
    """An argparse parser whose flags can read environment variables (ConfigArgParse).

    ConfigArgParse's own help suffix and config-file help are off: :func:`add_env_argument`
    writes the variable into each flag's help itself, in the project's one format."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_env_var_help", False)
        kwargs.setdefault("add_config_file_help", False)
        super().__init__(*args, **kwargs)


@dataclass(frozen=True)
class Settings:
    node_id: str
    listen: str
    advertise: str
    etcd: str
    lease_ttl: int = 10
    metrics_port: int = 0
    metrics_address: str = ""  # "": the host of `listen` (metrics_bind_address)
    reconcile_interval: float = 3.0
    prefix: str = DEFAULT_PREFIX
    vnodes: int = 256
    drain_grace: float = 5.0
    etcd_timeout: float = 3.0
    log_format: str = "text"
    log_level: str = "INFO"
    image_dir: str = "/var/lib/controlplane/images"
    max_streams: int = DEFAULT_MAX_STREAMS
    # mutual TLS files, or PLAINTEXT (--insecure): for the server and every channel it opens
    tls: Transport = field(kw_only=True)
    # the client certificate for etcd (store.client.etcd_transport): --etcd-tls-dir, else
    # this node's own certificate (the harness's and up's etcd trust the same CA), None
    # for plaintext
    etcd_tls: TlsFiles | None = field(default=None, kw_only=True)
    # etcd auth (store/auth.py): "" for none (a TLS store then acts as its certificate's CN)
    etcd_user: str = field(default="", kw_only=True)
    etcd_password: str = field(default="", kw_only=True, repr=False)


def env_name(flag: str) -> str:
    """``--lease-ttl`` -> ``CONTROLPLANE_LEASE_TTL``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


_FLAG_ACTIONS = ("store_true", "store_false")


def add_env_argument(parser: argparse.ArgumentParser, flag: str, *, help: str,
                     default: Any = None, **kwargs: Any) -> argparse.Action:
    """Add ``flag`` to ``parser`` reading ``CONTROLPLANE_<FLAG>`` too; its help ends with
    ``[env CONTROLPLANE_X; default Y]``. A store_true/store_false flag takes true/false (also
    yes/no, on/off, 1/0) from its variable. Other keyword arguments go to ``add_argument``."""
    if not isinstance(parser, configargparse.ArgumentParser):
        raise TypeError(f"{parser.prog}: environment variables need an EnvArgumentParser "
                        "(add_subparsers(parser_class=EnvArgumentParser)), not "
                        f"{type(parser).__name__}")
    env = env_name(flag)
    if kwargs.get("action") in _FLAG_ACTIONS:
        shown = f"env {env}=true|false; default false"
        if default is None:  # store_true's False / store_false's True, not None
            return parser.add_argument(flag, env_var=env, help=f"{help} [{shown}]", **kwargs)
    elif kwargs.get("required"):
        shown = f"env {env}; required"
    else:
        shown = f"env {env}; default {'unset' if default is None else default}"
    return parser.add_argument(flag, env_var=env, default=default,
                               help=f"{help} [{shown.replace('%', '%%')}]", **kwargs)


@dataclass(frozen=True)
class Flag:
    """One valued flag of a table (:data:`SERVE_FLAGS`, :func:`log_flags`, ...)."""

    flag: str
    type: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    required: bool = False

    @property
    def env(self) -> str:
        return env_name(self.flag)


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    for f in flags:
        add_env_argument(parser, f.flag, type=f.type, default=f.default, help=f.help,
                         required=f.required, metavar=f.metavar or f.env[len(ENV_PREFIX):])


def log_flags() -> list[Flag]:
    """--log-format and --log-level, the same on every long-running command."""
    return [
        Flag("--log-format", argtypes.log_format, "text",
             "log lines as text or json (one object a line, with the record's fields)"),
        Flag("--log-level", argtypes.log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ]


def metrics_flags() -> list[Flag]:
    """--metrics-port (0: off) and --metrics-address, the same on every long-running command.

    The address defaults to the host of --listen (:func:`metrics_bind_address`): the metrics
    are exactly as reachable as the gRPC port, so a pod listening on 0.0.0.0 is scraped from
    outside while a process listening on loopback (everything under `controlplane up`, the
    test harness) opens nothing beyond loopback. Give it to choose another interface."""
    return [
        Flag("--metrics-port", argtypes.port_or_zero, 0,
             "Prometheus metrics port (0: off)"),
        Flag("--metrics-address", argtypes.bind_host, None,
             "interface the metrics port listens on (unset: the host of --listen; every "
             "interface, 0.0.0.0, when --listen names none)"),
    ]


def metrics_bind_address(address: str | None, listen: str) -> str:
    """The interface the metrics endpoint binds: `address` when given, else the host of the
    gRPC listen address (``[::1]:7070`` -> ``::1``; ``:7070`` -> ``0.0.0.0``)."""
    if address:
        return address
    host = listen.rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0"


TLS_HELP = """\
Transport: mutual TLS is required. --tls-dir DIR names a directory in the Kubernetes TLS
Secret layout (ca.crt: the CA every peer is checked against; tls.crt and tls.key: this
process's identity; `controlplane certs issue` writes one, a cert-manager Secret mounts as
one), or give the three files with --ca/--cert/--key. The same identity is presented to
every process this one calls. The files are reloaded when they change. Plaintext only with
an explicit --insecure (logged as a warning): anyone who reaches the port can call."""


TLS_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    # flag, dest (not "key": `config get KEY` has a positional of that name), metavar, help
    ("--tls-dir", "tls_dir", "DIR", "directory with ca.crt, tls.crt, tls.key (mutual TLS)"),
    ("--ca", "tls_ca", "FILE", "CA bundle every peer is checked against"),
    ("--cert", "tls_cert", "FILE", "this process's certificate"),
    ("--key", "tls_key", "FILE", "this process's private key"),
)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-dir, --ca, --cert, --key and --insecure, each also read from its
    CONTROLPLANE_* variable (``parser`` must be an EnvArgumentParser); read them with
    :func:`transport_from_args`, which refuses (exit 2) when neither certificates nor
    --insecure were given."""
    for flag, dest, metavar, text in TLS_FLAGS:
        add_env_argument(parser, flag, dest=dest, type=argtypes.abspath, metavar=metavar,
                         help=text)
    add_env_argument(parser, "--insecure", action="store_true",
                     help="PLAINTEXT, without certificates (tests, a throwaway local "
                          "cluster): no authentication at all")
    parser.set_defaults(tls_parser=parser)


def transport_from_args(args: argparse.Namespace) -> Transport:
    """The transport the flags ask for; a usage error (exit 2, naming --tls-dir and
    --insecure) when they ask for none or for a contradiction."""
    try:
        return transport_from(tls_dir=args.tls_dir, ca=args.tls_ca, cert=args.tls_cert,
                              key=args.tls_key, insecure=args.insecure)
    except TlsMissing as exc:
        _usage_error(args, str(exc))


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser = getattr(args, "tls_parser", None)
    if parser is None:
        raise SystemExit(f"error: {message}")
    parser.error(message)


SERVE_FLAGS: list[Flag] = [
    Flag("--node-id", argtypes.node_id, None,
         "this node's id, unique in the cluster (a pod name)", required=True),
    Flag("--listen", argtypes.hostport, "0.0.0.0:7070", "gRPC listen address HOST:PORT"),
    Flag("--advertise", argtypes.hostport, None,
         "address other nodes reach this one at (default: --listen, with 0.0.0.0 replaced by "
         "this host's name)"),
    Flag("--etcd", argtypes.endpoints, "127.0.0.1:2379",
         "etcd endpoints, comma-separated HOST:PORT (TLS when this node has a certificate; "
         "https://HOST:PORT requires it, http:// forces plaintext)"),
    Flag("--etcd-tls-dir", str, None,
         "directory (ca.crt, tls.crt, tls.key) of the client certificate for etcd "
         "(default: this node's own, from --tls-dir/--cert)"),
    Flag("--etcd-user", str, "",
         "etcd user to act as (a role limited to --prefix); its password from "
         "--etcd-password-file or CONTROLPLANE_ETCD_PASSWORD"),
    Flag("--etcd-password-file", str, None, "file holding the --etcd-user password"),
    Flag("--lease-ttl", argtypes.lease_ttl, 10, "membership lease TTL in seconds"),
    *metrics_flags(),
    Flag("--reconcile-interval", argtypes.positive_float, 3.0,
         "seconds between member-list reconciles"),
    Flag("--prefix", argtypes.key_prefix, DEFAULT_PREFIX, "etcd key prefix of this deployment"),
    Flag("--vnodes", argtypes.vnodes, 256, "virtual nodes per member on the ring"),
    Flag("--drain-grace", argtypes.positive_float, 5.0,
         "seconds in-flight calls get to finish after SIGTERM"),
    Flag("--etcd-timeout", argtypes.positive_float, 3.0,
         "longest per-attempt etcd call deadline (attempts in the first 2 s of a call get "
         "0.5 s, so a write lost with a dead etcd leader is retried soon)"),
    *log_flags(),
    Flag("--image-dir", argtypes.abspath, "/var/lib/controlplane/images",
         "directory of image files (qcow2 chains), mounted at the same path on every node"),
    Flag("--max-streams", argtypes.positive_int, DEFAULT_MAX_STREAMS,
         "open streams (WatchVms, ...) this node serves at once; one more is refused with "
         "RESOURCE_EXHAUSTED (each holds a thread of its own, not one of the unary calls')"),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``controlplane serve`` (``parser`` must be an EnvArgumentParser)."""
    add_flags(parser, SERVE_FLAGS)
    add_tls_flags(parser)


def settings_from_args(args: argparse.Namespace) -> Settings:
    advertise = args.advertise
    if advertise is None:
        host, _, port = args.listen.rpartition(":")
        if host in ("0.0.0.0", "", "[::]", "::"):
            host = socket.gethostname()
        advertise = f"{host}:{port}"
    return Settings(
        node_id=args.node_id,
        listen=args.listen,
        advertise=advertise,
        etcd=args.etcd,
        lease_ttl=args.lease_ttl,
        metrics_port=args.metrics_port,
        metrics_address=metrics_bind_address(args.metrics_address, args.listen),
        reconcile_interval=args.reconcile_interval,
        prefix=args.prefix,
        vnodes=args.vnodes,
        drain_grace=args.drain_grace,
        etcd_timeout=args.etcd_timeout,
        log_format=args.log_format,
        log_level=args.log_level,
        image_dir=args.image_dir,
        max_streams=args.max_streams,
        tls=(tls := transport_from_args(args)),
        etcd_tls=(TlsFiles.from_dir(args.etcd_tls_dir) if args.etcd_tls_dir
                  else tls if isinstance(tls, TlsFiles) else None),
        etcd_user=args.etcd_user,
        etcd_password=etcd_password(args),
    )


def etcd_password(args: argparse.Namespace) -> str:
    """The --etcd-user password: the file's first line, else CONTROLPLANE_ETCD_PASSWORD (a
    variable, not a flag: a flag's value shows in `ps`). A usage error for a user without
    one, or a password file that cannot be read."""
    if not args.etcd_user:
        return ""
    if args.etcd_password_file:
        try:
            with open(args.etcd_password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            _usage_error(args, f"--etcd-password-file: {exc}")
    else:
        password = os.environ.get(ENV_PREFIX + "ETCD_PASSWORD", "")
    if not password:
        _usage_error(args, "--etcd-user needs a password: --etcd-password-file FILE or "
                           f"{ENV_PREFIX}ETCD_PASSWORD")
    return password
