"""`controlplane config list|get|set`: live settings stored in etcd; a change takes effect
on every node without a restart."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from controlplane.cli import common
from controlplane.v1 import config_pb2

HEADER = ("KEY", "VALUE", "DEFAULT")


def config_row(entry: config_pb2.ConfigEntry) -> list[str]:
    """key, value, and the default when the value differs from it."""
    default = "(default)" if entry.is_default else f"(default {entry.default_value})"
    return [entry.key, entry.value, default]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="live global settings: list, get, set",
                            description="Live settings stored in etcd: a change takes effect "
                            "on every node without a restart.")
    cs = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    common.command(cs, "list", "every setting with its value",
                   "Every setting: key, value, and its default when the value differs "
                   "(--json adds the help of each).", cmd_config_list)
    p = common.command(cs, "get", "one setting", "One setting: key, value, default.",
                       cmd_config_get)
    p.add_argument("key", metavar="KEY")
    p = common.command(cs, "set", "change a setting cluster-wide",
                       "Set KEY to VALUE on every node. An unknown key or a value that does "
                       "not parse or is out of range is refused (INVALID_ARGUMENT), nothing "
                       "written.", cmd_config_set)
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")


def _one(args: argparse.Namespace) -> Callable[[config_pb2.ConfigEntry], None]:
    return lambda entry: common.show(args, [entry], config_row, HEADER, one=True)


def cmd_config_list(args: argparse.Namespace) -> int:
    return common.call(args, "config", "ListConfig", config_pb2.ListConfigRequest(),
                       lambda reply: common.show(args, reply.entries, config_row, HEADER))


def cmd_config_get(args: argparse.Namespace) -> int:
    return common.call(args, "config", "GetConfig", config_pb2.GetConfigRequest(key=args.key),
                       _one(args), unwrap="entry")


def cmd_config_set(args: argparse.Namespace) -> int:
    return common.call(args, "config", "UpdateConfig",
                       config_pb2.UpdateConfigRequest(key=args.key, value=args.value), _one(args),
                       unwrap="entry")
