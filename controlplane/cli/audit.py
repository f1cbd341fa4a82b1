"""`controlplane audit list [--resource ID] [--who NAME]`: the audit trail of mutating calls
(who, method, resource, result, time), newest first, read from etcd by the node asked."""

from __future__ import annotations

import argparse

from controlplane import wiretime
from controlplane.cli import common
from controlplane.v1 import audit_pb2

HEADER = ["TIME", "WHO", "ROLE", "METHOD", "RESOURCE", "CODE", "NODE"]


def row(record: audit_pb2.AuditRecord) -> list[str]:
    import datetime as dt

    at = dt.datetime.fromtimestamp(wiretime.seconds(record.time), dt.UTC)
    return [at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            record.who or "-", record.role or "-", record.method.rsplit("/", 1)[-1],
            record.resource_id or "-", record.code, record.node_id]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit trail of mutating calls",
                           description="Who called which mutating method on which resource, "
                                       "and how it ended (bounded by audit.maxRecords).")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    p = common.command(asub, "list", "audit records, newest first",
                       "Audit records, newest first; --resource and --who filter them.",
                       cmd_list)
    p.add_argument("--resource", default="", metavar="ID", help="only this resource's records")
    p.add_argument("--who", default="", metavar="NAME",
                   help="only this caller's records (a user name, or node:ID)")


def cmd_list(args: argparse.Namespace) -> int:
    request = audit_pb2.ListAuditRecordsRequest(resource_id=args.resource, who=args.who)
    return common.call(args, "audit", "ListAuditRecords", request,
                       lambda reply: common.show(args, reply.records, row, HEADER),
                       pages="records")
