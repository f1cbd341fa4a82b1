"""The ``controlplane agent`` command: run a host agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from controlplane.config.settings import _hostport, _log_level

__all__ = ["add_agent_parser", "run_agent"]

log = logging.getLogger(__name__)

BACKENDS = ("sim",)

DESCRIPTION = """\
Run a host agent: the process that answers a management node for one or more hypervisor
hosts (AgentService: list/start/stop/... VMs, device info, fence).

The only backend today is `sim`, a simulated hypervisor kept in memory. It exists so that
the management plane can be tested, at fleet scale and on demand, against what real hosts
do: slow starts that outlive their caller, hosts that keep running VMs while cut off from
the network, power-offs (fences) in the middle of an operation, stale starts from an old
owner (refused by a per-VM generation number), crashed VMs and flaky device queries. One
sim process can serve thousands of hosts (ids PREFIX0..PREFIX{N-1}); the SimControl service
on the same port injects the faults (host conditions, crashes, delays, failure rates) and
seeds large fleets. State lives in memory only: a restarted sim agent has no VMs.

gRPC health (services "", liveness, readiness) and server reflection are served on the
same port. SIGTERM or SIGINT aborts operations in progress and exits 0."""


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _host_prefix(text: str) -> str:
    if "/" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a host id prefix has no '/' or spaces")
    return text


def _listen(text: str) -> str:
    address = _hostport(text)
    if not address.rpartition(":")[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT (the host is missing)")
    return address


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``agent`` sub-command to the ``controlplane`` parser's subparsers."""
    p = subparsers.add_parser(
        "agent",
        help="run a host agent (the sim backend simulates many hypervisor hosts for tests)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", type=_listen, required=True, metavar="HOST:PORT",
                   help="gRPC listen address")
    p.add_argument("--backend", choices=BACKENDS, default="sim",
                   help="hypervisor backend (default sim; only sim exists today)")
    p.add_argument("--block-backend", choices=("qemu", "sim", "none"), default="sim",
                   help="block jobs on VM disks (AgentBlockJobs): qemu runs one "
                        "qemu-system-x86_64 -machine none per opened disk, driven over QMP "
                        "(needs Debian's qemu-system-x86); sim keeps disks in memory; none "
                        "answers UNIMPLEMENTED (default sim)")
    p.add_argument("--hosts", type=_positive_int, default=1, metavar="N",
                   help="number of hosts the agent serves (default 1)")
    p.add_argument("--host-prefix", type=_host_prefix, default="host-", metavar="P",
                   help="host ids are P0, P1, ... (default host-)")
    for name, what in (("start", "a start takes"), ("stop", "a graceful stop takes"),
                       ("reboot", "a reboot takes"), ("pause", "a pause or resume takes")):
        p.add_argument(f"--{name}-delay", type=_non_negative, default=0.0, metavar="S",
                       help=f"seconds {what} (sim; default 0)")
    p.add_argument("--no-report-ops", dest="report_ops", action="store_false",
                   help="ListVms reports no operations in progress (an agent too old to say)")
    p.add_argument("--cpus", type=_positive_int, default=16, metavar="N",
                   help="CPUs each host reports in Ping (default 16)")
    p.add_argument("--memory-mb", type=_positive_int, default=65536, metavar="N",
                   help="memory (MiB) each host reports in Ping (default 65536)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="seed of the sim's failure injection (default: random)")
    p.add_argument("--log-level", type=_log_level, default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    return p


def run_agent(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop cleanly; the exit code of the command."""
    from controlplane import logs
    from controlplane.agent.server import serve_agent

    logs.setup("text", args.log_level, f"agent@{args.listen}")
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server = serve_agent(args)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    while not done.wait(0.5):
        pass
    server.stop()
    return 0
