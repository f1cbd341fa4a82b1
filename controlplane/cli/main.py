"""The `controlplane` command: the root parser and the one dispatch.

Every sub-command's parser sets `run=` (a function of the parsed arguments returning the
exit code); `main` calls it. The client commands live one module per noun (cluster, hosts,
vms, config, storage, images; what they share in cli/common.py); the long-running commands
(serve, agent, mds, up) and the benches are wired here from their own modules.

Exit codes: 0 success; 1 the server refused or failed (an RPC error), or an operation waited
for did not complete; 2 a usage error (argparse's message on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from controlplane import __version__
from controlplane.agent.main import add_agent_parser, run_agent
from controlplane.cli import (
    audit,
    certs,
    cluster,
    common,
    config,
    etcd,
    hosts,
    images,
    storage,
    vms,
)
from controlplane.cli.up import add_up_parser, run_up
from controlplane.config import argtypes
from controlplane.config.settings import (
    TLS_HELP,
    EnvArgumentParser,
    add_serve_arguments,
    settings_from_args,
)
from controlplane.devtools.bench.churn import add_churn_parser
from controlplane.devtools.bench.fleet import add_fleet_parser
from controlplane.devtools.bench.guest import add_guest_parser
from controlplane.devtools.bench.libvirt import add_libvirt_parser
from controlplane.devtools.bench.migrate import add_migrate_parser
from controlplane.devtools.bench.placement import add_placement_parser
from controlplane.devtools.bench.storage import add_storage_parser, run_storage_bench
from controlplane.mds.main import add_mds_parser, run_mds

COMPLETION_SHELLS = ("bash", "zsh")


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """`run=` for a command whose module is heavy to import (the server, a bench): imported
    only when that command runs, not for every `controlplane ...`."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run


def _run_serve(args: argparse.Namespace) -> int:
    from controlplane import logs
    from controlplane.server import serve

    settings = settings_from_args(args)
    context = logs.setup(settings.log_format, settings.log_level, settings.node_id)
    return serve(settings, context)


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="run one management node (what a Kubernetes pod runs)",
        description="Run one management node until SIGTERM. Every flag can also be set by the "
        "environment variable named in its help. On SIGTERM: readiness goes NOT_SERVING, the "
        "lease is revoked, in-flight calls drain for --drain-grace seconds.\n\n" + TLS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=_run_serve)


def _add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUITE")
    cluster_bench = bench_sub.add_parser(
        "cluster", help="ring lookups/s, ring balance, failover and graceful leave times",
        description="Measures on this machine: ring lookups per second on one core and the "
        "busiest member's share; then, on a real embedded etcd with real node processes, the "
        "time from kill -9 of a node until the last survivor's ring drops it (median of "
        "--runs, next to the lease TTL) and the graceful leave time (SIGTERM).",
    )
    cluster_bench.add_argument("--runs", type=argtypes.positive_int, default=5,
                               help="kill -9 / SIGTERM runs (default 5)")
    cluster_bench.add_argument("--lease-ttl", type=argtypes.lease_ttl, default=2,
                               help="lease TTL of the measured nodes, seconds (default 2)")
    cluster_bench.add_argument("--lookups", type=argtypes.positive_int, default=300_000,
                               help="ring lookups timed (default 300000)")
    cluster_bench.add_argument("--json", action="store_true")
    cluster_bench.set_defaults(run=_lazy("controlplane.devtools.bench.cluster",
                                         "run_cluster_bench"))
    failover = bench_sub.add_parser(
        "etcd-failover", help="etcd leader kill -9: time to the first VM op and store write",
        description="On a 3-member test etcd with NODES node processes, a sim agent and VMS "
        "VMs kept busy by StopVm/StartVm client threads (and one thread writing through a "
        "Store): kill the etcd leader with -9 and print the time from the kill to the first "
        "successful VM operation and store write started after it, over RUNS kills "
        "(min/median/max). Target <= 2 s.")
    failover.add_argument("--runs", type=argtypes.positive_int, default=3,
                          help="leader kills (default 3)")
    failover.add_argument("--nodes", type=argtypes.positive_int, default=2,
                          help="node processes (default 2)")
    failover.add_argument("--vms", type=argtypes.positive_int, default=4,
                          help="VMs, one client thread each (default 4)")
    failover.add_argument("--etcd-heartbeat-ms", type=argtypes.positive_int, default=None,
                          help="etcd --heartbeat-interval (etcd's default 100)")
    failover.add_argument("--etcd-election-ms", type=argtypes.positive_int, default=None,
                          help="etcd --election-timeout (etcd's default 1000)")
    failover.add_argument("--json", action="store_true")
    failover.set_defaults(run=_lazy("controlplane.devtools.bench.etcd_failover",
                                    "run_etcd_failover_bench"))
    add_fleet_parser(bench_sub).set_defaults(run=_lazy("controlplane.devtools.bench.fleet",
                                                       "run_fleet_bench"))
    add_storage_parser(bench_sub)
    bench_sub.choices["storage"].set_defaults(run=run_storage_bench)
    add_churn_parser(bench_sub).set_defaults(run=_lazy("controlplane.devtools.bench.churn",
                                                       "run_churn_bench"))
    add_guest_parser(bench_sub).set_defaults(run=_lazy("controlplane.devtools.bench.guest",
                                                       "run_guest_bench"))
    add_libvirt_parser(bench_sub).set_defaults(run=_lazy("controlplane.devtools.bench.libvirt",
                                                         "run_libvirt_bench"))
    add_placement_parser(bench_sub).set_defaults(
        run=_lazy("controlplane.devtools.bench.placement", "run_placement_bench"))
    add_migrate_parser(bench_sub).set_defaults(run=_lazy("controlplane.devtools.bench.migrate",
                                                         "run_migrate_bench"))


def _add_completion_parser(sub: argparse._SubParsersAction,
                           root: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "completion", help="print a shell completion script (bash, zsh)",
        description="Print the completion script of `controlplane` for SHELL, generated from "
        "this parser (every command, sub-command and flag). Load it for the current shell: "
        "`source <(controlplane completion bash)`, or save it where the shell looks, e.g. "
        "`controlplane completion bash > /etc/bash_completion.d/controlplane` or "
        "`controlplane completion zsh > \"${fpath[1]}/_controlplane\"`.")
    p.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL",
                   help=" or ".join(COMPLETION_SHELLS))

    def run(args: argparse.Namespace) -> int:
        import shtab

        sys.stdout.write(shtab.complete(root, shell=args.shell))
        return 0

    p.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane",
        description="A distributed control plane for VM clouds: management nodes that "
        "coordinate through etcd leases and a consistent hash ring, and answer gRPC. "
        "Exit codes: 0 success, 1 the server refused or failed, 2 a usage error.",
    )
    parser.add_argument("--version", action="version", version=f"controlplane {__version__}")
    # EnvArgumentParser: the flags of serve/agent/mds also read CONTROLPLANE_* variables
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=EnvArgumentParser)

    add_up_parser(sub).set_defaults(run=run_up)
    _add_serve_parser(sub)
    add_agent_parser(sub).set_defaults(run=run_agent)
    add_mds_parser(sub).set_defaults(run=run_mds)
    cluster.add_parsers(sub)
    hosts.add_parsers(sub)
    vms.add_parsers(sub)
    config.add_parsers(sub)
    storage.add_parsers(sub)
    images.add_parsers(sub)
    certs.add_parsers(sub)
    audit.add_parsers(sub)
    etcd.add_parsers(sub)
    _add_bench_parsers(sub)
    _add_completion_parser(sub, parser)
    return parser


def _quiet_stdout() -> None:
    """After a broken pipe (`vm list | head -3`): send the rest to /dev/null, so the
    interpreter's final flush does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except common.UsageError as exc:
        # the sub-command's own parser: its usage line is the one that helps
        getattr(args, "usage_parser", parser).error(str(exc))  # exits 2
    except BrokenPipeError:
        # The reader went away (`| head`): what it wanted it got.
        _quiet_stdout()
        return 0
    raise AssertionError("unreachable")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
