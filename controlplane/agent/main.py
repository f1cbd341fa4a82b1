"""The ``controlplane agent`` command: run a host agent until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from controlplane.config import argtypes
from controlplane.config.settings import (
    TLS_HELP,
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

__all__ = ["add_agent_parser", "run_agent"]

log = logging.getLogger(__name__)

BACKENDS = ("sim", "libvirt")

DESCRIPTION = """\
Run a host agent: the process that answers a management node for one or more hypervisor
hosts (AgentService: list/start/stop/... VMs, device info, fence).

Backend `libvirt` drives one real host (--host-id) through libvirtd (--libvirt-uri): VMs are
libvirt domains, their generation and operation in progress kept in the domain metadata (an
agent restarted finds them again), libvirt's lifecycle events streamed to the owner
(WatchHostEvents) so that a crashed guest is seen at once. Guests boot the project's guest
(a Debian kernel + busybox initramfs that honours the ACPI power button) or the kernel and
initramfs given, with a per-VM qcow2 disk (--disk-mb) in --state-dir.

Backend `sim` is a simulated hypervisor kept in memory. It exists so that
the management plane can be tested, at fleet scale and on demand, against what real hosts
do: slow starts that outlive their caller, hosts that keep running VMs while cut off from
the network, power-offs (fences) in the middle of an operation, stale starts from an old
owner (refused by a per-VM generation number), crashed VMs and flaky device queries. One
sim process can serve thousands of hosts (ids PREFIX0..PREFIX{N-1}); the SimControl service
on the same port injects the faults (host conditions, crashes, delays, failure rates) and
seeds large fleets. State lives in memory only: a restarted sim agent has no VMs.

gRPC health (services "", liveness, readiness) and server reflection are served on the
same port. SIGTERM or SIGINT aborts operations in progress and exits 0.

""" + TLS_HELP


def add_agent_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``agent`` sub-command to the ``controlplane`` parser's subparsers (made with
    ``parser_class=EnvArgumentParser``: every flag also reads ``CONTROLPLANE_<FLAG>``)."""
    p = subparsers.add_parser(
        "agent",
        help="run a host agent (the sim backend simulates many hypervisor hosts for tests)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_env_argument(p, "--listen", type=argtypes.listen_address, required=True,
                     metavar="HOST:PORT", help="gRPC listen address")
    add_env_argument(p, "--backend", choices=BACKENDS, default="sim",
                     help="hypervisor backend: sim (in memory, many hosts) or libvirt (one "
                          "real host)")
    add_env_argument(p, "--host-id", type=argtypes.host_id, default=None, metavar="ID",
                     help="the host this agent serves (libvirt; required there)")
    add_env_argument(p, "--libvirt-uri", default="qemu:///system", metavar="URI",
                     help="libvirt connection of the host (libvirt), e.g. "
                          "qemu+unix:///session?socket=/run/user/UID/libvirt/libvirt-sock")
    add_env_argument(p, "--accel", choices=("auto", "kvm", "tcg"), default="auto",
                     help="guest acceleration (libvirt): auto probes whether a KVM guest "
                          "really runs here (nested KVM may hang), else TCG")
    add_env_argument(p, "--stop-timeout", type=argtypes.non_negative_seconds, default=30.0,
                     metavar="S", help="a graceful stop (ACPI) destroys the guest after S "
                                       "seconds (libvirt)")
    add_env_argument(p, "--boot-timeout", type=argtypes.non_negative_seconds, default=0.0,
                     metavar="S", help="a start waits up to S seconds for the guest's ready "
                                       "marker on its serial console, so Running means booted "
                                       "(libvirt, the project's guest; 0: until the domain "
                                       "runs)")
    add_env_argument(p, "--state-dir", type=argtypes.abspath, default=None, metavar="DIR",
                     help="per-VM disks and serial logs (libvirt); readable by the daemon")
    add_env_argument(p, "--image-dir", type=argtypes.abspath, default=None, metavar="DIR",
                     help="the management nodes' image directory as this host mounts it "
                          "(libvirt): a VM whose image leaf the node names in StartVm runs "
                          "on it as vda (live snapshot and merge then work on it); paths "
                          "outside DIR are refused")
    add_env_argument(p, "--disk-mb", type=argtypes.integer, default=0, metavar="N",
                     help="each VM gets a blank N MiB qcow2 disk as vda (libvirt; 0: none)")
    add_env_argument(p, "--guest-kernel", default="", metavar="PATH",
                     help="kernel every guest boots (libvirt; default: the project's guest "
                          "image, built into its cache if missing; none: firmware only)")
    add_env_argument(p, "--guest-initrd", default="", metavar="PATH",
                     help="initramfs of the guest kernel (libvirt)")
    add_env_argument(p, "--guest-cmdline", default="", metavar="ARGS",
                     help="kernel command line of the guests (libvirt; default: the project "
                          "guest's, console on ttyS0)")
    add_env_argument(p, "--block-backend", choices=("qemu", "sim", "none"), default="sim",
                     help="block jobs on VM disks (AgentBlockJobs) for the sim backend "
                          "(libvirt always drives its domains' vda through libvirt): qemu "
                          "runs one "
                          "qemu-system-x86_64 -machine none per opened disk, driven over QMP "
                          "(needs Debian's qemu-system-x86); sim keeps disks in memory; none "
                          "answers UNIMPLEMENTED")
    add_env_argument(p, "--hosts", type=argtypes.positive_int, default=1, metavar="N",
                     help="number of hosts the agent serves")
    add_env_argument(p, "--host-prefix", type=argtypes.host_prefix, default="host-",
                     metavar="P", help="host ids are P0, P1, ...")
    for name, what in (("start", "a start takes"), ("stop", "a graceful stop takes"),
                       ("reboot", "a reboot takes"), ("pause", "a pause or resume takes")):
        add_env_argument(p, f"--{name}-delay", type=argtypes.non_negative_seconds,
                         default=0.0, metavar="S", help=f"seconds {what} (sim)")
    add_env_argument(p, "--no-report-ops", dest="report_ops", action="store_false",
                     help="ListVms reports no operations in progress (an agent too old to say)")
    add_env_argument(p, "--cpus", type=argtypes.positive_int, default=16, metavar="N",
                     help="CPUs each host reports in Ping")
    add_env_argument(p, "--memory-mb", type=argtypes.positive_int, default=65536, metavar="N",
                     help="memory (MiB) each host reports in Ping")
    add_env_argument(p, "--seed", type=argtypes.integer, default=None, metavar="N",
                     help="seed of the sim's failure injection (unset: random)")
    add_env_argument(p, "--sim-state-file", type=argtypes.abspath, default=None,
                     metavar="PATH",
                     help="the sim saves its hosts' VMs here after every change and loads "
                          "them at start, so a restart is an agent restart, not a power "
                          "cycle of its hosts (unset: memory only)")
    add_env_argument(p, "--volume-state-file", type=argtypes.abspath, default=None,
                     metavar="PATH",
                     help="the VMs' block-store volume sessions are kept here, so a restarted "
                          "agent re-opens those of the VMs still running instead of letting "
                          "the store blocklist them (default: volume-sessions.json in "
                          "--state-dir for libvirt, PATH.volumes.json next to "
                          "--sim-state-file for the sim; unset there: memory only)")
    add_env_argument(p, "--sim-control-listen", type=argtypes.listen_address, default=None,
                     metavar="HOST:PORT",
                     help="serve the sim's fault injection (SimControl) on this address of "
                          "its own, never on --listen (unset: not served at all)")
    add_flags(p, [*log_flags(), *metrics_flags()])
    add_tls_flags(p)
    return p


def run_agent(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT, then stop cleanly; the exit code of the command."""
    from controlplane import logs
    from controlplane.agent.server import serve_agent

    tls = transport_from_args(args)  # before anything starts: exit 2 naming the options
    logs.setup(args.log_format, args.log_level, f"agent@{args.listen}")

    def start():  # type: ignore[no-untyped-def]
        check_own(tls)  # an expired or not-yet-valid certificate: exit 1 naming the file
        serve_metrics(args.metrics_port,
                      metrics_bind_address(args.metrics_address, args.listen))
        return serve_agent(args, tls)

    return serve_until_signal(start)
