"""The ``controlplane mds`` command: run a (simulated) metadata server until SIGTERM/SIGINT.

``controlplane/cli/main.py`` wires it in with :func:`add_mds_parser` and :func:`run_mds`; until
then (and in tests) ``python -m controlplane.mds.main --listen HOST:PORT`` runs it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from controlplane.config.settings import _hostport, _log_level

__all__ = ["add_mds_parser", "main", "run_mds"]

log = logging.getLogger(__name__)

BACKENDS = ("sim",)

DESCRIPTION = """\
Run a metadata server (MDS) of a distributed block store: the StorageMds gRPC service
(GetVolumeClients, GetVolume, CreateVolume, DeleteVolume) that management nodes call, trying
the next MDS of a primary storage when one fails.

The only backend today is `sim`, volumes kept in memory, there to test the management
plane's MDS client against the ways metadata servers fail. The SimMdsControl service on the
same port sets a fault per StorageMds method (or for all): ok, slow (answer after a delay,
applying the call even when the caller gave up), hang (never answer), refuse (UNAVAILABLE)
or fail (an operation error such as INTERNAL). Each sim process has its own volumes, and a
restarted one has none.

gRPC health (services "", liveness, readiness) and server reflection are served on the
same port. SIGTERM or SIGINT stops it (hanging calls are released) and exits 0."""


def _listen(text: str) -> str:
    address = _hostport(text)
    if not address.rpartition(":")[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT (the host is missing)")
    return address


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT",
                   help="gRPC listen address")
    p.add_argument("--backend", choices=BACKENDS, default="sim",
                   help="metadata backend (default sim; only sim exists today)")
    p.add_argument("--log-level", type=_log_level, default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
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

    logs.setup("text", args.log_level, f"mds@{args.listen}")
    if args.backend != "sim":  # argparse choices make this unreachable from the command
        log.error("unknown backend %r", args.backend)
        return 2
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = MdsServer(args.listen).start()
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    while not done.wait(0.5):
        pass
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controlplane.mds.main``: the same flags as ``controlplane mds``."""
    parser = _configure(argparse.ArgumentParser(
        prog="python -m controlplane.mds.main", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_mds(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
