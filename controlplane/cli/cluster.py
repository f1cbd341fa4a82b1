"""`controlplane status` and `controlplane ring owner`: the cluster as the asked node sees
it. Both ask the first endpoint that answers, never a node chosen from the ring: the point
is that node's view (its members, its epoch)."""

from __future__ import annotations

import argparse
from typing import Any

from controlplane.cli import common
from controlplane.v1 import cluster_pb2


def ring_to_dict(ring: cluster_pb2.GetRingResponse) -> dict[str, Any]:
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    common.command(sub, "status", "the cluster as one node sees it",
                   "Members, ring epoch, lease TTL and ring shares as seen by the node asked.",
                   cmd_status)
    ring = sub.add_parser("ring", help="ring questions",
                          description="Questions about the consistent hash ring.")
    rs = ring.add_subparsers(dest="ring_command", required=True, metavar="SUBCOMMAND")
    p = common.command(rs, "owner", "which node owns a resource id",
                       "The owner of RESOURCE_ID at the asked node's ring epoch; --locate "
                       "routes the question to the owner itself.", cmd_ring_owner)
    p.add_argument("resource_id")
    p.add_argument("--locate", action="store_true",
                   help="route the question to the owner (exercises forwarding)")


def _print_status(args: argparse.Namespace, ring: cluster_pb2.GetRingResponse) -> None:
    doc = ring_to_dict(ring)
    if args.json:
        common.print_json(doc)
        return
    print(f"asked {doc['node_id']} (incarnation {doc['incarnation']}"
          f"{', FENCED' if doc['fenced'] else ''}): ring epoch {doc['ring_epoch']}, "
          f"lease ttl {doc['lease_ttl']}s, {len(doc['members'])} members")
    for m in doc["members"]:
        share = doc["shares"].get(m["node_id"], 0.0)
        print(f"  {m['node_id']:<16} {m['address']:<22} incarnation {m['incarnation']:<8} "
              f"share {share:6.1%}")
    if doc["suspects"]:
        print(f"  suspected (missing from the last list): {', '.join(doc['suspects'])}")


def cmd_status(args: argparse.Namespace) -> int:
    return common.call(args, "cluster", "GetRing", cluster_pb2.GetRingRequest(),
                       lambda ring: _print_status(args, ring))


def cmd_ring_owner(args: argparse.Namespace) -> int:
    def show(answer: Any) -> None:
        if args.locate:
            doc = {"resource_id": answer.resource_id, "owner": answer.served_by,
                   "epoch": answer.epoch, "forwarded": answer.forwarded,
                   "retries": answer.retries}
        else:
            doc = {"resource_id": answer.resource_id, "owner": answer.owner,
                   "owner_address": answer.owner_address, "epoch": answer.epoch,
                   "answered_by": answer.node_id}
        if args.json:
            common.print_json(doc)
        else:
            print(f"{doc['resource_id']} -> {doc['owner']} (epoch {doc['epoch']})")

    if args.locate:
        return common.call(args, "cluster", "Locate",
                           cluster_pb2.LocateRequest(resource_id=args.resource_id), show)
    return common.call(args, "cluster", "WhoOwns",
                       cluster_pb2.WhoOwnsRequest(resource_id=args.resource_id), show)
