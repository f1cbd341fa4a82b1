"""Settings of one management node: every flag also reads an environment variable, so a
Kubernetes pod can be configured from its manifest alone."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from controlplane.store.keys import DEFAULT_PREFIX, valid_node_id

ENV_PREFIX = "CONTROLPLANE_"


@dataclass(frozen=True)
class Settings:
    node_id: str
    listen: str
    advertise: str
    etcd: str
    lease_ttl: int = 10
    metrics_port: int = 0
    reconcile_interval: float = 3.0
    prefix: str = DEFAULT_PREFIX
    vnodes: int = 256
    drain_grace: float = 5.0
    etcd_timeout: float = 3.0
    log_format: str = "text"
    log_level: str = "INFO"
    image_dir: str = "/var/lib/controlplane/images"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _lease_ttl(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be an integer >= 2 (etcd's minimum lease TTL)")
    return value


def _prefix(text: str) -> str:
    if not text.startswith("/") or text.endswith("/") or len(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a key prefix starts with '/' and does not "
                                         "end with it, e.g. /controlplane")
    return text


def _vnodes(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 1 and 4096, got {text}")
    return value


def _port_or_zero(text: str) -> int:
    value = int(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port 1-65535 (or 0: off), got {text}")
    return value


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"must be text or json, got {text!r}")
    return text


def _log_level(text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"must be DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


def _endpoints(text: str) -> str:
    from controlplane.store.client import parse_endpoints

    try:
        parse_endpoints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _node_id(text: str) -> str:
    if not valid_node_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def _abspath(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.abspath(text)


def _hostport(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return text


# (flag, env name, type, default, help)
SERVE_FLAGS: list[tuple[str, str, object, object, str]] = [
    ("--node-id", "NODE_ID", _node_id, None, "this node's id, unique in the cluster (a pod name)"),
    ("--listen", "LISTEN", _hostport, "0.0.0.0:7070", "gRPC listen address HOST:PORT"),
    ("--advertise", "ADVERTISE", _hostport, None,
     "address other nodes reach this one at (default: --listen, with 0.0.0.0 replaced by "
     "this host's name)"),
    ("--etcd", "ETCD", _endpoints, "127.0.0.1:2379", "etcd endpoints, comma-separated HOST:PORT"),
    ("--lease-ttl", "LEASE_TTL", _lease_ttl, 10, "membership lease TTL in seconds"),
    ("--metrics-port", "METRICS_PORT", _port_or_zero, 0, "Prometheus metrics port (0: off)"),
    ("--reconcile-interval", "RECONCILE_INTERVAL", _positive_float, 3.0,
     "seconds between member-list reconciles"),
    ("--prefix", "PREFIX", _prefix, DEFAULT_PREFIX, "etcd key prefix of this deployment"),
    ("--vnodes", "VNODES", _vnodes, 256, "virtual nodes per member on the ring"),
    ("--drain-grace", "DRAIN_GRACE", _positive_float, 5.0,
     "seconds in-flight calls get to finish after SIGTERM"),
    ("--etcd-timeout", "ETCD_TIMEOUT", _positive_float, 3.0, "per-attempt etcd call deadline"),
    ("--log-format", "LOG_FORMAT", _log_format, "text", "text or json"),
    ("--log-level", "LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ("--image-dir", "IMAGE_DIR", _abspath, "/var/lib/controlplane/images",
     "directory of image files (qcow2 chains), mounted at the same path on every node"),
]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, env, kind, default, text in SERVE_FLAGS:
        env_value = _env(env)
        value = env_value if env_value is not None else default
        parser.add_argument(
            flag,
            type=kind,  # type: ignore[arg-type]
            # a string default goes through `type` like a command-line value, so a bad
            # environment value gets the same clean error as a bad flag
            default=value,
            required=value is None and flag == "--node-id",
            help=f"{text} [env {ENV_PREFIX}{env}; default {default}]",
            metavar=env,
        )


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
        reconcile_interval=args.reconcile_interval,
        prefix=args.prefix,
        vnodes=args.vnodes,
        drain_grace=args.drain_grace,
        etcd_timeout=args.etcd_timeout,
        log_format=args.log_format,
        log_level=args.log_level,
        image_dir=args.image_dir,
    )
