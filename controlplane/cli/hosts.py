"""`controlplane host list|get|add|remove|reconnect|enable|disable|maintenance`: hypervisor
hosts, each served by a host agent. Any node answers; changes run on the host's owner on
the ring."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import grpc

from controlplane import names
from controlplane.cli import argtypes, common
from controlplane.v1 import host_pb2

HEADER = ("HOST", "STATUS", "SCHEDULING", "CPUS", "MEMORY", "AGENT", "OWNER")
POLICIES = {"migrate": host_pb2.MAINTENANCE_POLICY_MIGRATE,
            "stop": host_pb2.MAINTENANCE_POLICY_STOP}


def host_row(host: host_pb2.Host) -> list[str]:
    """id, status, scheduling state, used/total cpus and memory (what placement may reserve,
    after the allocation ratios), agent address, owner."""
    return [host.host_id, names.short(host_pb2.HostStatus, host.status),
            names.short(host_pb2.HostSchedulingState, host.scheduling or
                        host_pb2.HOST_SCHEDULING_STATE_ENABLED),
            f"cpus={host.allocated_cpus}/{host.cpu_capacity}",
            f"mem={host.allocated_memory_mb}/{host.memory_capacity_mb}MB",
            host.address or "-", f"owner={host.owner or '-'}"]


def progress(host: host_pb2.Host) -> str:
    """One line of a maintenance's progress."""
    m = host.maintenance
    state = names.short(host_pb2.HostSchedulingState, host.scheduling)
    return (f"host {host.host_id} {state}: {m.migrated} migrated, {m.stopped} stopped of "
            f"{m.vms_at_start}; left {len(m.left)}")


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
    p = common.command(hs, "enable", "let placement use a host again (ends a maintenance)",
                       "Mark host ID ENABLED: placement may put VMs on it again. Ends a "
                       "maintenance, finished or not (VMs moved off stay where they are).",
                       cmd_host_enable)
    p.add_argument("host_id", metavar="ID")
    p = common.command(hs, "disable", "no new placements on a host",
                       "Mark host ID DISABLED: no new VM is placed on it; its VMs stay.",
                       cmd_host_disable)
    p.add_argument("host_id", metavar="ID")
    p = common.command(hs, "maintenance", "evacuate a host: migrate or stop every VM on it",
                       "Disable host ID and evacuate every VM on it (the host's owner does it, "
                       "and the next owner carries on after that one's death): --policy "
                       "migrate moves each VM to a host placement picks (stopped when none "
                       "fits), stop stops each. With --wait, print progress until the host is "
                       "empty (MAINTENANCE), or at --timeout say what is left and why (exit 1).",
                       cmd_host_maintenance, timeout=None,
                       timeout_help=f"call deadline in seconds (default "
                                    f"{common.DEFAULT_TIMEOUT:g}); with --wait, how long to "
                                    f"wait for the host to empty (default {common.WAIT_TIMEOUT:g})")
    p.add_argument("host_id", metavar="ID")
    p.add_argument("--policy", choices=sorted(POLICIES), default=None,
                   help="migrate or stop (default: the live setting host.maintenancePolicy)")
    p.add_argument("--wait", action="store_true",
                   help="print progress until the host is empty; exit 1 if it is not by "
                        "--timeout")


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


def cmd_host_enable(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "EnableHost",
                       host_pb2.EnableHostRequest(host_id=args.host_id),
                       _one_host(args), unwrap="host")


def cmd_host_disable(args: argparse.Namespace) -> int:
    return common.call(args, "hosts", "DisableHost",
                       host_pb2.DisableHostRequest(host_id=args.host_id),
                       _one_host(args), unwrap="host")


def cmd_host_maintenance(args: argparse.Namespace) -> int:
    request = host_pb2.StartHostMaintenanceRequest(
        host_id=args.host_id, policy=POLICIES.get(args.policy, 0))
    if not args.wait:
        return common.call(args, "hosts", "StartHostMaintenance", request, _one_host(args),
                           unwrap="host")
    budget = common.call_timeout(args) or common.WAIT_TIMEOUT
    deadline = time.monotonic() + budget
    with common.make_client(args) as client:
        try:
            host = client.hosts.StartHostMaintenance(request, timeout=common.DEFAULT_TIMEOUT).host
        except grpc.RpcError as exc:
            return common.rpc_error(args, exc, client.endpoint)
        last = ""
        while True:
            line = progress(host)
            if line != last and not args.json:
                print(line, flush=True)
                last = line
            if host.scheduling == host_pb2.HOST_SCHEDULING_STATE_MAINTENANCE:
                break
            if host.scheduling != host_pb2.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE:
                now = names.short(host_pb2.HostSchedulingState, host.scheduling)
                return common.report_error(args, client.endpoint, None,
                                           f"host {host.host_id} left maintenance (now {now})")
            if time.monotonic() >= deadline:
                left = "; ".join(f"{v.vm_id}: {v.reason}" for v in host.maintenance.left)
                return common.report_error(
                    args, client.endpoint, None,
                    f"host {host.host_id} not empty after {budget:g} s: "
                    f"{len(host.maintenance.left)} VMs left ({left or 'being evacuated'})")
            time.sleep(0.5)
            try:
                host = client.hosts.GetHost(host_pb2.GetHostRequest(host_id=args.host_id),
                                            timeout=common.DEFAULT_TIMEOUT).host
            except grpc.RpcError as exc:
                print(f"(GetHost failed: {exc.code().name}; retrying)", file=sys.stderr)
    common.show(args, [host], host_row, HEADER, one=True)
    return 0
