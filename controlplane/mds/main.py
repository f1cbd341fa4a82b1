"""The ``controlplane mds`` command: run a (simulated) metadata server until SIGTERM/SIGINT.

``controlplane/cli/main.py`` wires it in with :func:`add_mds_parser` and :func:`run_mds`; until
then (and in tests) ``python -m controlplane.mds.main --listen HOST:PORT`` runs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from controlplane.config import argtypes
from controlplane.config.settings import (
    TLS_HELP,
    EnvArgumentParser,
    add_env_argument,
    add_flags,
    add_tls_flags,
    log_flags,
    metrics_bind_address,
    metrics_flags,
    transport_from_args,
)
from controlplane.rpc import serve_metrics, serve_until_signal
from controlplane.security.tls import check_own

__all__ = ["add_mds_parser", "main", "run_mds"]

log = logging.getLogger(__name__)

BACKENDS = ("sim",)

DESCRIPTION = """\
Run a metadata server (MDS) of a distributed block store: the StorageMds gRPC service
(GetVolumeClients, GetVolume, CreateVolume, DeleteVolume, and the client sessions
AttachVolume, KeepAliveVolume, DetachVolume) that management nodes call, trying
the next MDS of a primary storage when one fails.

The only backend today is `sim`, volumes kept in memory, there to test the management
plane's MDS client against the ways metadata servers fail. The SimMdsControl service on the
same port sets a fault per StorageMds method (or for all): ok, slow (answer after a delay,
applying the call even when the caller gave up), hang (never answer), refuse (UNAVAILABLE)
or fail (an operation error such as INTERNAL). Each sim process has its own volumes, and a
restarted one has none.

gRPC health (services "", liveness, readiness) and server reflection are served on the
same port. SIGTERM or SIGINT stops it (hanging calls are released) and exits 0.

""" + TLS_HELP


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags, each also read from ``CONTROLPLANE_<FLAG>`` (``p``: an EnvArgumentParser)."""
    add_env_argument(p, "--listen", type=argtypes.listen_address, required=True,
                     metavar="HOST:PORT", help="gRPC listen address")
    add_env_argument(p, "--backend", choices=BACKENDS, default="sim",
                     help="metadata backend (only sim exists today)")
    add_env_argument(p, "--shared-state", default="", metavar="FILE",
                     help="SQLite file of the store's client sessions, shared by every MDS "
                          "of one simulated store (default: this process's own, in memory)")
    add_env_argument(p, "--session-timeout", type=float, default=None, metavar="S",
                     help="seconds without a keepalive before a client session expires and "
                          "is blocklisted (default: the stored value, else 10)")
    add_flags(p, [*log_flags(), *metrics_flags()])
    add_tls_flags(p)
    return p


def add_mds_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``mds`` sub-command to the ``controlplane`` parser's subparsers."""
    return _configure(subparsers.add_parser(
        "mds",
        help="run a metadata server of a block store (the sim backend injects faults for tests)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ))


def run_mds(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop cleanly; the exit code of the command."""
    from controlplane import logs
    from controlplane.mds.sim import MdsServer

    tls = transport_from_args(args)  # before anything starts: exit 2 naming the options
    logs.setup(args.log_format, args.log_level, f"mds@{args.listen}")
    if args.backend != "sim":  # argparse choices make this unreachable from the command
        log.error("unknown backend %r", args.backend)
        return 2

    def start():  # type: ignore[no-untyped-def]
        check_own(tls)  # an expired or not-yet-valid certificate: exit 1 naming the file
        serve_metrics(args.metrics_port,
                      metrics_bind_address(args.metrics_address, args.listen))
        return MdsServer(args.listen, tls=tls, shared_state=args.shared_state,
                         session_timeout=args.session_timeout).start()

    return serve_until_signal(start)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controlplane.mds.main``: the same flags as ``controlplane mds``."""
    parser = _configure(EnvArgumentParser(
        prog="python -m controlplane.mds.main", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_mds(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
