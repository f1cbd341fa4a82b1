"""The `controlplane` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import grpc

from controlplane import __version__
from controlplane.agent.main import add_agent_parser, run_agent
from controlplane.config import add_serve_arguments, settings_from_args
from controlplane.v1 import cluster_pb2

DEFAULT_ENDPOINT = "127.0.0.1:7070"


def _client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                        help=f"any management node, HOST:PORT (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=5.0, help="call deadline in seconds")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="controlplane",
        description="A distributed control plane for VM clouds: management nodes that "
        "coordinate through etcd leases and a consistent hash ring, and answer gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"controlplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run a local cluster: an embedded etcd and N management nodes",
        description="Start an embedded single-member etcd (unless --etcd is given) and N "
        "management node processes (node-0.. listening on 127.0.0.1:BASE_PORT+i), show a live "
        "status, and stop everything cleanly on Ctrl-C or SIGTERM.",
    )
    up.add_argument("--nodes", type=int, default=3, help="management nodes to start (default 3)")
    up.add_argument("--base-port", type=int, default=7070,
                    help="node i listens on 127.0.0.1:BASE_PORT+i (default 7070)")
    up.add_argument("--data-dir", default=None,
                    help="etcd data and node logs (default: a temporary directory, removed at "
                    "exit)")
    up.add_argument("--etcd", default=None,
                    help="use this etcd (comma-separated HOST:PORT) instead of an embedded one")
    up.add_argument("--etcd-port", type=int, default=None,
                    help="embedded etcd client port (default BASE_PORT+1000; peer port +1)")
    up.add_argument("--lease-ttl", type=int, default=10, help="membership lease TTL, seconds")
    up.add_argument("--metrics-base-port", type=int, default=None,
                    help="node i serves metrics on METRICS_BASE_PORT+i (default BASE_PORT+100)")
    up.add_argument("--duration", type=float, default=None,
                    help="stop by itself after this many seconds (for scripts and demos)")

    serve = sub.add_parser(
        "serve",
        help="run one management node (what a Kubernetes pod runs)",
        description="Run one management node until SIGTERM. Every flag can also be set by the "
        "environment variable named in its help. On SIGTERM: readiness goes NOT_SERVING, the "
        "lease is revoked, in-flight calls drain for --drain-grace seconds.",
    )
    add_serve_arguments(serve)

    add_agent_parser(sub)

    status = sub.add_parser("status", help="the cluster as one node sees it",
                            description="Members, ring epoch, lease TTL and ring shares as seen "
                            "by the node asked.")
    _client_args(status)

    ring = sub.add_parser("ring", help="ring questions")
    ring_sub = ring.add_subparsers(dest="ring_command", required=True, metavar="SUBCOMMAND")
    owner = ring_sub.add_parser("owner", help="which node owns a resource id")
    owner.add_argument("resource_id")
    owner.add_argument("--locate", action="store_true",
                       help="route the question to the owner (exercises forwarding)")
    _client_args(owner)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="SUITE")
    cluster = bench_sub.add_parser(
        "cluster", help="ring lookups/s, ring balance, failover and graceful leave times",
        description="Measures on this machine: ring lookups per second on one core and the "
        "busiest member's share; then, on a real embedded etcd with real node processes, the "
        "time from kill -9 of a node until the last survivor's ring drops it (median of "
        "--runs, next to the lease TTL) and the graceful leave time (SIGTERM).",
    )
    cluster.add_argument("--runs", type=int, default=5)
    cluster.add_argument("--lease-ttl", type=int, default=2)
    cluster.add_argument("--lookups", type=int, default=300_000)
    cluster.add_argument("--json", action="store_true")
    return parser


def _fail(exc: grpc.RpcError, endpoint: str) -> int:
    print(f"error from {endpoint}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 2


def cmd_status(args: argparse.Namespace) -> int:
    from controlplane.v1 import cluster_pb2 as pb
    from controlplane.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.endpoint) as channel:
        try:
            ring = pb_grpc.ClusterServiceStub(channel).GetRing(pb.GetRingRequest(),
                                                               timeout=args.timeout)
        except grpc.RpcError as exc:
            return _fail(exc, args.endpoint)
    doc = ring_to_dict(ring)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"asked {doc['node_id']} (incarnation {doc['incarnation']}"
          f"{', FENCED' if doc['fenced'] else ''}): ring epoch {doc['ring_epoch']}, "
          f"lease ttl {doc['lease_ttl']}s, {len(doc['members'])} members")
    for m in doc["members"]:
        share = doc["shares"].get(m["node_id"], 0.0)
        print(f"  {m['node_id']:<16} {m['address']:<22} incarnation {m['incarnation']:<8} "
              f"share {share:6.1%}")
    if doc["suspects"]:
        print(f"  suspected (missing from the last list): {', '.join(doc['suspects'])}")
    return 0


def ring_to_dict(ring: cluster_pb2.GetRingResponse) -> dict:
    """GetRingResponse -> the documented `status --json` shape."""
    return {
        "node_id": ring.node_id,
        "incarnation": ring.incarnation,
        "ring_epoch": ring.epoch,
        "lease_ttl": ring.lease_ttl,
        "fenced": ring.fenced,
        "vnodes": ring.vnodes,
        "members": [
            {"node_id": m.node_id, "address": m.address, "incarnation": m.incarnation,
             "version": m.version}
            for m in ring.members
        ],
        "shares": dict(sorted(ring.shares.items())),
        "suspects": list(ring.suspects),
    }


def cmd_ring_owner(args: argparse.Namespace) -> int:
    from controlplane.v1 import cluster_pb2 as pb
    from controlplane.v1 import cluster_pb2_grpc as pb_grpc

    with grpc.insecure_channel(args.endpoint) as channel:
        stub = pb_grpc.ClusterServiceStub(channel)
        try:
            if args.locate:
                loc = stub.Locate(pb.LocateRequest(resource_id=args.resource_id),
                                  timeout=args.timeout)
                doc = {"resource_id": loc.resource_id, "owner": loc.served_by,
                       "epoch": loc.epoch, "forwarded": loc.forwarded, "retries": loc.retries}
            else:
                who = stub.WhoOwns(pb.WhoOwnsRequest(resource_id=args.resource_id),
                                   timeout=args.timeout)
                doc = {"resource_id": who.resource_id, "owner": who.owner,
                       "owner_address": who.owner_address, "epoch": who.epoch,
                       "answered_by": who.node_id}
        except grpc.RpcError as exc:
            return _fail(exc, args.endpoint)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"{doc['resource_id']} -> {doc['owner']} (epoch {doc['epoch']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from controlplane import logs
        from controlplane.server import serve

        settings = settings_from_args(args)
        context = logs.setup(settings.log_format, settings.log_level, settings.node_id)
        return serve(settings, context)
    if args.command == "agent":
        return run_agent(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "ring":
        return cmd_ring_owner(args)
    if args.command == "up":
        from controlplane.up import run_up

        return run_up(args)
    if args.command == "bench":
        from controlplane.bench import run_cluster_bench

        return run_cluster_bench(args)
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
