"""`controlplane storage add|get|list|remove|check|clients`: primary storages, block stores
reached through their metadata servers (MDS). The owner of a storage id checks its MDS every
storage.mdsCheckInterval; text output is one line per MDS."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from controlplane import names
from controlplane.cli import argtypes, common
from controlplane.v1 import storage_pb2

# Storage calls that reach the MDS (add and check probe every MDS, clients tries them in
# turn) last up to the live storage.mdsAttemptTimeout (default 30 s) per attempt: a hung MDS
# must show up as UNHEALTHY in the answer, not as a client-side DEADLINE_EXCEEDED.
STORAGE_TIMEOUT = 60.0
_TIMEOUT_HELP = (f"call deadline in seconds (default {STORAGE_TIMEOUT:g}: the node waits up "
                 "to storage.mdsAttemptTimeout for each MDS)")
HEADER = ("STORAGE", "MDS", "HEALTH", "FAILURES", "OWNER", "LAST ERROR")
CLIENTS_HEADER = ("STORAGE", "VOLUME", "CLIENT", "ADDRESS")


def mds_rows(storage: storage_pb2.PrimaryStorage) -> list[list[str]]:
    """One row per MDS of a primary storage: storage id, address, health, failed checks in
    a row, owner node, and what the last failed check saw (last: it holds blanks)."""
    return [[storage.storage_id, m.address,
             names.short(storage_pb2.MdsHealth, m.health),
             f"failures={m.failures}", f"owner={storage.owner or '-'}",
             f"error={m.last_error or '-'}"] for m in storage.mds]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    storage = sub.add_parser(
        "storage", help="primary storages and their MDS: add, get, list, remove, check, clients",
        description="Primary storages: block stores reached through their metadata servers "
        "(MDS). The owner of a storage id checks its MDS every storage.mdsCheckInterval; text "
        "output is one line per MDS: storage, address, HEALTHY/UNHEALTHY, failed checks in a "
        "row, owner node, the last check's error.")
    ss = storage.add_subparsers(dest="storage_command", required=True, metavar="SUBCOMMAND")
    p = common.command(
        ss, "add", "register a primary storage and check its MDS",
        "Register primary storage ID reached through the MDS at each --mds, and check every "
        "MDS at once (the answer shows the result). ALREADY_EXISTS for a known id; "
        "INVALID_ARGUMENT for a bad id or an MDS listed twice.", cmd_storage_add,
        timeout=STORAGE_TIMEOUT, timeout_help=_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p.add_argument("--mds", action="append", required=True, type=argtypes.host_port,
                   metavar="HOST:PORT", help="an MDS of the store (repeat for each)")
    p = common.command(ss, "get", "one primary storage with the health of its MDS",
                       "Primary storage ID as last stored: each MDS with its health from the "
                       "last check. NOT_FOUND for an unknown id.", cmd_storage_get)
    p.add_argument("storage_id", metavar="ID")
    common.command(ss, "list", "every primary storage, one line per MDS",
                   "Every primary storage, one line per MDS, from the asked node's cache.",
                   cmd_storage_list)
    p = common.command(ss, "remove", "forget a primary storage",
                       "Forget primary storage ID (the store and its volumes are not "
                       "touched). NOT_FOUND for an unknown id; ABORTED when the record "
                       "changed meanwhile (a check stored a result): retry.",
                       cmd_storage_remove)
    p.add_argument("storage_id", metavar="ID")
    p = common.command(
        ss, "check", "check every MDS of a primary storage now",
        "Probe every MDS of primary storage ID now (OK or NOT_FOUND from the MDS is healthy; "
        "a refusal, an error or a timeout is not), store and print the result. NOT_FOUND for "
        "an unknown id; UNAVAILABLE when the result could not be stored.", cmd_storage_check,
        timeout=STORAGE_TIMEOUT, timeout_help=_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p = common.command(
        ss, "clients", "who has a volume of the store open",
        "The clients (hosts) that have VOLUME of primary storage ID open, one line each, "
        "asked of the store's healthy MDS in turn. NOT_FOUND for an unknown storage or a "
        "volume the store does not have; UNAVAILABLE when every MDS failed (the message names "
        "each MDS and its error).", cmd_storage_clients, timeout=STORAGE_TIMEOUT,
        timeout_help=_TIMEOUT_HELP)
    p.add_argument("storage_id", metavar="ID")
    p.add_argument("volume_id", metavar="VOLUME")


def _one(args: argparse.Namespace) -> Callable[[storage_pb2.PrimaryStorage], None]:
    return lambda storage: common.show_rows(args, [storage], mds_rows, HEADER, one=True)


def _by_id(args: argparse.Namespace, method: str) -> int:
    """Get, Remove or Check: a request of the storage id alone, the storage as the answer."""
    request = getattr(storage_pb2, f"{method}Request")(storage_id=args.storage_id)
    return common.call(args, "storage", method, request, _one(args), unwrap="storage")


def cmd_storage_add(args: argparse.Namespace) -> int:
    request = storage_pb2.AddPrimaryStorageRequest(storage_id=args.storage_id,
                                                   mds_addresses=args.mds)
    return common.call(args, "storage", "AddPrimaryStorage", request, _one(args),
                       unwrap="storage")


def cmd_storage_get(args: argparse.Namespace) -> int:
    return _by_id(args, "GetPrimaryStorage")


def cmd_storage_list(args: argparse.Namespace) -> int:
    return common.call(args, "storage", "ListPrimaryStorages",
                       storage_pb2.ListPrimaryStoragesRequest(),
                       lambda reply: common.show_rows(args, reply.storages, mds_rows, HEADER),
                       pages="storages")


def cmd_storage_remove(args: argparse.Namespace) -> int:
    return _by_id(args, "RemovePrimaryStorage")


def cmd_storage_check(args: argparse.Namespace) -> int:
    return _by_id(args, "CheckPrimaryStorage")


def cmd_storage_clients(args: argparse.Namespace) -> int:
    """Who has a volume open. The answer is one message (the volume and its clients), so
    --json prints it whole; text is one line per client, none when nobody has it open."""
    def show(reply: storage_pb2.GetVolumeClientsResponse) -> None:
        if args.json:
            common.print_json(common.to_dict(reply))
            return
        common.print_table([[args.storage_id, reply.volume_id or args.volume_id,
                             client.client_id, f"address={client.address or '-'}"]
                            for client in reply.clients], CLIENTS_HEADER)

    request = storage_pb2.GetVolumeClientsRequest(storage_id=args.storage_id,
                                           volume_id=args.volume_id)
    return common.call(args, "storage", "GetVolumeClients", request, show)
