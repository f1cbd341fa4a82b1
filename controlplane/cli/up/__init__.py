"""`controlplane up`: a whole local cluster in one command.

An embedded single-member etcd (unless --etcd is given) and N management node processes, a
live status screen (or plain log lines when stdout is not a terminal), and a clean stop:
SIGTERM to every node first so each revokes its lease while etcd is still there, then etcd.
Children die with `up` (PR_SET_PDEATHSIG through procs.spawn), so even `kill -9` of `up`
leaves no orphans behind.

With --hosts H, one sim agent process serving host-0..host-{H-1} runs beside the nodes (with
--backend libvirt: H libvirt session daemons and H agents, real guests; libvirt_hosts.py), and a
background thread registers those hosts and creates --vms V VMs through the public gRPC API of
whichever nodes are ready (so a demo exercises the same paths an operator's calls take).

The package: layout.py (ports and argument checks), children.py (what runs: etcd, nodes,
agent, on the shared process model of controlplane.serving), supervisor.py (start, watch,
stop), fleet.py (seeding hosts and VMs, the fleet summary), screen.py (plain lines and the
rich live screen), retry.py (the tenacity waits).

This module stays light (argparse only): the CLI builds every parser at start, and only
`up` itself needs gRPC and rich.
"""

from __future__ import annotations

import argparse

from controlplane.config import argtypes

__all__ = ["add_up_parser", "run_up"]


def add_up_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `up` command to the `controlplane` parser's subparsers; returns its parser."""
    up = subparsers.add_parser(
        "up",
        help="run a local cluster: an embedded etcd and N management nodes",
        description="Start an embedded single-member etcd (unless --etcd is given) and N "
        "management node processes (node-0.. listening on 127.0.0.1:BASE_PORT+i), show a live "
        "status, and stop everything cleanly on Ctrl-C or SIGTERM. With --hosts H, also one sim "
        "agent serving host-0..host-{H-1}; once a node is ready the hosts are registered and "
        "--vms V VMs (vm-0000..) created and started, round-robin over the hosts, HA "
        "never-stop for every other one. Mutual TLS unless --insecure: `up` prints the "
        "`export CONTROLPLANE_TLS_DIR=...` line the client commands need.",
    )
    up.add_argument("--nodes", type=argtypes.positive_int, default=3,
                    help="management nodes to start (default 3)")
    up.add_argument("--base-port", type=int, default=7070,
                    help="node i listens on 127.0.0.1:BASE_PORT+i (default 7070)")
    up.add_argument("--data-dir", default=None,
                    help="etcd data and node logs (default: a temporary directory, removed at "
                    "exit)")
    up.add_argument("--etcd", type=argtypes.endpoints, default=None,
                    help="use this etcd (comma-separated HOST:PORT) instead of an embedded one")
    up.add_argument("--etcd-port", type=int, default=None,
                    help="embedded etcd client port (default BASE_PORT+1000; peer port +1)")
    up.add_argument("--lease-ttl", type=argtypes.lease_ttl, default=10,
                    help="membership lease TTL, seconds (default 10; etcd's minimum is 2)")
    up.add_argument("--metrics-base-port", type=int, default=None,
                    help="node i serves metrics on METRICS_BASE_PORT+i (default BASE_PORT+100)")
    up.add_argument("--duration", type=argtypes.positive_float, default=None,
                    help="stop by itself after this many seconds (for scripts and demos)")
    up.add_argument("--hosts", type=int, default=0, metavar="H",
                    help="also start one sim agent serving H hosts and register them "
                    "(default 0; at most 10000)")
    up.add_argument("--vms", type=int, default=0, metavar="V",
                    help="create and start V VMs on those hosts (needs --hosts; at most 100000)")
    up.add_argument("--agent-port", type=int, default=None,
                    help="the sim agent listens on 127.0.0.1:AGENT_PORT (default BASE_PORT+200), "
                    "its fault injection (SimControl) on AGENT_PORT+1; with --backend "
                    "libvirt, host i's agent on AGENT_PORT+i")
    up.add_argument("--backend", choices=("sim", "libvirt"), default="sim",
                    help="sim (default): one sim agent serves every host; libvirt: real guests, "
                    "each host its own libvirt session daemon (as Unix user "
                    "LIBVIRT_USER_PREFIX<i>) and its own agent; SIGUSR1 to `up` powers off "
                    "the first host that is on, SIGUSR2 powers on the first that is off "
                    "(needs root; at most 8 hosts and 32 VMs)")
    up.add_argument("--libvirt-user-prefix", default="cp-up-",
                    help="with --backend libvirt, host i's daemon runs as this user + i "
                    "(created if missing; default cp-up-)")
    up.add_argument("--insecure", action="store_true",
                    help="run everything in PLAINTEXT, without certificates (default: mutual "
                    "TLS, a CA and certificates in DATA_DIR/tls, the admin identity in "
                    "DATA_DIR/tls/admin)")
    return up


def run_up(args: argparse.Namespace) -> int:
    """Run `up` with parsed arguments: 0 on a clean stop, 2 on bad arguments or a busy port,
    1 when something died that should not have."""
    from controlplane.cli.up.supervisor import run_up as run

    return run(args)
