"""`controlplane host list|get|add|remove|reconnect`: hypervisor hosts, each served by a
host agent. Any node answers; changes run on the host's owner on the ring."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from controlplane import names
from controlplane.cli import argtypes, common
from controlplane.v1 import host_pb2

HEADER = ("HOST", "STATUS", "AGENT", "OWNER")


def host_row(host: host_pb2.Host) -> list[str]:
    """id, status, agent address, owner."""
    return [host.host_id, names.short(host_pb2.HostStatus, host.status), host.address or "-",
            f"owner={host.owner or '-'}"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    host = sub.add_parser("host", help="hypervisor hosts: list, get, add, remove, reconnect",
                          description="Hypervisor hosts, each served by a host agent. Any "
                          "node answers; changes run on the host's owner on the ring.")
    hs = host.add_subparsers(dest="host_command", required=True, metavar="SUBCOMMAND")
    common.command(hs, "list", "every host: id, status, agent address, owner node",
                   "Every host, one line each: id, status (CONNECTED, DISCONNECTED, FENCED), "
                   "the address of its agent and the node that owns it now.", cmd_host_list)
    p = common.command(hs, "get", "one host",
                       "One host: id, status, agent address, owner node.", cmd_host_get)
    p.add_argument("host_id", metavar="ID")
    p = common.command(hs, "add", "register a host served by an agent",
                       "Register host ID served by the agent at --address. The owner pings the "
                       "agent first: FAILED_PRECONDITION when the agent does not serve ID, "
                       "UNAVAILABLE when it cannot be reached, ALREADY_EXISTS for a known id.",
                       cmd_host_add)
    p.add_argument("host_id", metavar="ID")
    p.add_argument("--address", required=True, type=argtypes.host_port, metavar="HOST:PORT",
                   help="the agent serving the host")
    p = common.command(hs, "remove", "forget a host",
                       "Forget host ID. Refused (FAILED_PRECONDITION) while VMs are placed on "
                       "it, unless --force.", cmd_host_remove)
    p.add_argument("host_id", metavar="ID")
    p.add_argument("--force", action="store_true", help="remove it even with VMs placed on it")
    p = common.command(hs, "reconnect", "ping a host now and, if it answers, mark it connected",
                       "Ping host ID now; on success mark it CONNECTED and sync its VMs (also "
                       "brings back a FENCED host an operator repaired). UNAVAILABLE if still "
                       "unreachable.", cmd_host_reconnect)
    p.add_argument("host_id", metavar="ID")


def cmd_host_list(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "ListHosts", host_pb2.ListHostsRequest(),
                       lambda reply: common.show(args, reply.hosts, host_row, HEADER),
                       pages="hosts")


def _one_host(args: argparse.Namespace) -> Callable[[host_pb2.Host], None]:
    return lambda host: common.show(args, [host], host_row, HEADER, one=True)


def cmd_host_get(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "GetHost", host_pb2.GetHostRequest(host_id=args.host_id),
                       _one_host(args), unwrap="host")


def cmd_host_add(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "AddHost",
                       host_pb2.AddHostRequest(host_id=args.host_id, address=args.address),
                       _one_host(args), unwrap="host")


def cmd_host_remove(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "RemoveHost",
                       host_pb2.RemoveHostRequest(host_id=args.host_id, force=args.force),
                       _one_host(args), unwrap="host")


def cmd_host_reconnect(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "ReconnectHost",
                       host_pb2.ReconnectHostRequest(host_id=args.host_id),
                       _one_host(args), unwrap="host")
