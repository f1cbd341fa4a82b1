"""What every client command shares: its flags, the Client made from them, the call, the
output and the one error printer.

Flags: ``--endpoint`` (a comma-separated list of nodes, tried in turn; default
``$CONTROLPLANE_ENDPOINT``, else 127.0.0.1:7070), ``--timeout`` (the call's deadline),
``--json``, and the client's identity: ``--tls-dir DIR`` (``$CONTROLPLANE_TLS_DIR``; what
``controlplane up`` prints to export), or ``--ca/--cert/--key``, or ``--insecure`` for a
cluster run in plaintext. With none of them the command refuses (exit 2) naming them.

Calls go through :class:`controlplane.client.Client` with owner-aware routing off: the
endpoints an operator gives are the addresses known to work from where the command runs (a
port-forward, a load balancer), while the ring holds the nodes' own addresses, which may
not be reachable from there. Any node answers and forwards to the owner itself; an
UNAVAILABLE endpoint is still retried on the next one within the deadline.

Output:

- text, for a terminal: a rich table with a header, coloured states, fitted to its width;
- text, when stdout is not a terminal (a pipe, a file, a test): the same cells, one aligned
  line per item, no header (so ``| wc -l`` counts items) and no colour. Self-describing
  ``name=value`` cells where a bare value would be ambiguous (``gen=3``, ``ha=never-stop``)
  keep a line read alone (grep, logs) meaningful. These lines are written directly rather
  than by rich: same layout, but rich takes 5.5 s to lay out 20,000 rows (a ``vm list`` of a
  fleet) where this takes 0.02 s;
- ``--json``: the protobuf messages as ``json_format.MessageToDict(
  preserving_proto_field_name=True)`` (lists as one JSON array), i.e. the canonical proto3
  JSON mapping: int64 fields are strings and fields at their default are omitted.

Exit codes: 0 done; 1 the server refused or failed (an RPC error, printed as
``error from ENDPOINT: CODE: details`` on stderr, or with ``--json`` as one JSON object
``{"error": {"code", "details", "endpoint"}}`` on stderr), also 1 for an operation waited
for that did not complete (reported by the same printer) and a block job that FAILED; 2 a
usage error (argparse's message, with the usage of the sub-command at fault).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.channels import LARGE_MESSAGE_OPTIONS
from controlplane.cli import argtypes
from controlplane.client import (
    DEFAULT_ENDPOINT,
    ENV_ENDPOINT,
    Client,
    endpoints_from_env,
    list_all,
)
from controlplane.config.settings import add_tls_flags, transport_from_args

__all__ = [
    "DEFAULT_TIMEOUT",
    "WAIT_TIMEOUT",
    "UsageError",
    "add_client_args",
    "call",
    "call_at",
    "call_timeout",
    "command",
    "make_client",
    "print_json",
    "print_table",
    "report_error",
    "rpc_error",
    "show",
    "show_rows",
    "to_dict",
]

DEFAULT_TIMEOUT = 5.0
# --wait keeps the call open until the operation finished: a real VM start can take a while,
# and the server answers "still in flight" (exit 1) a little before the deadline anyway.
WAIT_TIMEOUT = 120.0

# A `vm list` of a large fleet is bigger than gRPC's default 4 MiB receive limit (about 200
# bytes per VM: 20,000 VMs).
CHANNEL_OPTIONS = LARGE_MESSAGE_OPTIONS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Arguments that parse one by one but not together (`vm create --wait` without
    `--start`): main reports it like an argparse error of the sub-command's own parser
    (its usage line, exit 2), before any call."""


# -- flags --------------------------------------------------------------------------------

def add_client_args(parser: argparse.ArgumentParser, timeout: float | None,
                    timeout_help: str) -> None:
    """--endpoint, --json, --timeout: every command that asks a node takes them.

    The --endpoint default is read when the parser is built, so a bad CONTROLPLANE_ENDPOINT
    is a usage error naming --endpoint, like a bad flag."""
    parser.add_argument(
        "--endpoint", type=argtypes.endpoints, default=endpoints_from_env(DEFAULT_ENDPOINT),
        metavar="HOST:PORT[,...]",
        help=f"management nodes to ask, comma-separated, tried in turn while unavailable "
        f"(default: ${ENV_ENDPOINT} if set, else {DEFAULT_ENDPOINT})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=argtypes.positive_float, default=timeout,
                        metavar="S", help=timeout_help)
    add_tls_flags(parser)


def command(subparsers: argparse._SubParsersAction, name: str, summary: str,
            description: str, run: Callable[[argparse.Namespace], int],
            timeout: float | None = DEFAULT_TIMEOUT,
            timeout_help: str | None = None, **defaults: object
            ) -> argparse.ArgumentParser:
    """A client sub-command: help, description, the client flags and what runs it."""
    parser = subparsers.add_parser(name, help=summary, description=description)
    if timeout_help is None:
        timeout_help = f"call deadline in seconds (default {timeout:g})"
    add_client_args(parser, timeout, timeout_help)
    # usage_parser: main reports a UsageError with this command's usage, not the root's
    parser.set_defaults(run=run, usage_parser=parser, **defaults)
    return parser


# -- calls --------------------------------------------------------------------------------

def make_client(args: argparse.Namespace) -> Client:
    """The Client for --endpoint, its default deadline --timeout (None: no deadline)."""
    return Client(args.endpoint, timeout=call_timeout(args), route=False,
                  options=CHANNEL_OPTIONS, tls=transport_from_args(args))


def call_timeout(args: argparse.Namespace) -> float | None:
    """--timeout, else the command's default (longer with --wait)."""
    if args.timeout is not None:
        return args.timeout
    return WAIT_TIMEOUT if getattr(args, "wait", False) else DEFAULT_TIMEOUT


def call(args: argparse.Namespace, service: str, method: str, request: Message,
         show: Callable[[Any], int | None], *, unwrap: str = "", pages: str = "") -> int:
    """One unary call through the Client (`service` names its attribute: "vms", "hosts",
    ...); `show` prints the answer and may return an exit code.

    `unwrap` names the answer's field `show` gets (StopVmResponse.vm: the VM); `pages`
    names the item field of a paginated List, which is then called page by page and shown
    as one answer."""
    return call_at(args, service, method, request, lambda answer, _endpoint: show(answer),
                   unwrap=unwrap, pages=pages)


def call_at(args: argparse.Namespace, service: str, method: str, request: Message,
            show: Callable[[Any, str], int | None], *, unwrap: str = "",
            pages: str = "") -> int:
    """`call`, whose `show` also gets the endpoint that answered (for a report of its own
    through `report_error`, e.g. an operation waited for that did not complete)."""
    with make_client(args) as client:
        rpc = getattr(getattr(client, service), method)
        try:
            if pages:
                answer = list_all(rpc, request, pages, timeout=call_timeout(args))
            else:
                answer = rpc(request, timeout=call_timeout(args))
        except grpc.RpcError as exc:
            return rpc_error(args, exc, client.endpoint)
        endpoint = client.endpoint
    return show(getattr(answer, unwrap) if unwrap else answer, endpoint) or EXIT_OK


# -- errors -------------------------------------------------------------------------------

def report_error(args: argparse.Namespace, endpoint: str, code: str | None,
                 details: str) -> int:
    """The one error printer: `error from ENDPOINT: CODE: details` on stderr, or with
    --json one JSON object (a script parses it instead of matching text). Exit code 1."""
    if getattr(args, "json", False):
        doc = {"error": {"code": code or "UNKNOWN", "details": details, "endpoint": endpoint}}
        print(json.dumps(doc, sort_keys=True), file=sys.stderr)
    else:
        what = f"{code}: {details}" if code else details
        print(f"error from {endpoint}: {what}", file=sys.stderr)
    return EXIT_FAILED


def rpc_error(args: argparse.Namespace, exc: grpc.RpcError, endpoint: str) -> int:
    """A failed call, as the one error printer reports it."""
    code = exc.code()
    return report_error(args, endpoint, code.name if code is not None else None,
                        exc.details() or "")


# -- output -------------------------------------------------------------------------------

def to_dict(message: Message) -> dict[str, Any]:
    """The documented --json shape of one message."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


# Cells that name a state get a colour on a terminal (nowhere else: rich prints no colour
# to a pipe). Anything not listed stays plain.
_GOOD = {"CONNECTED", "HEALTHY", "Running", "LEGAL", "COMPLETED", "leaf", "(default)"}
_BAD = {"DISCONNECTED", "FENCED", "UNHEALTHY", "ILLEGAL", "FAILED", "Error", "Crashed",
        "outside-chain", "Unknown"}
_BUSY = {"Starting", "Stopping", "Rebooting", "Pausing", "Resuming", "Migrating",
         "Destroying", "STARTING", "RUNNING", "READY", "FINISHING"}


def _style(cell: str) -> str:
    if cell in _GOOD:
        return "green"
    if cell in _BAD:
        return "bold red"
    if cell in _BUSY:
        return "yellow"
    return ""


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells -> lines with every column padded to its widest cell and two blanks
    between columns, the layout of a borderless rich table (the last column is not padded,
    so lines carry no trailing blanks)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max(len(row) for row in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + list(row[-1:])
        lines.append("  ".join(cells).rstrip())
    return lines


def _console() -> Any:
    from rich.console import Console

    # markup and emoji off: cells are data ("[Errno 111]" is not a style tag).
    return Console(highlight=False, markup=False, emoji=False)


def rich_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None) -> Any:
    """A borderless rich table of the cells (header shown when given), states coloured."""
    from rich.table import Table
    from rich.text import Text

    columns = max((len(row) for row in rows), default=len(header or ()))
    table = Table(box=None, show_header=header is not None, show_edge=False, pad_edge=False,
                  padding=(0, 2, 0, 0), header_style="bold")
    names = list(header or ()) + [""] * columns
    for i in range(columns):
        table.add_column(names[i], overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell, style=_style(cell)) for cell in row))
    return table


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> None:
    """Rows of cells: a rich table on a terminal, aligned plain lines anywhere else."""
    if not rows:
        return
    console = _console()
    if not console.is_terminal:
        sys.stdout.write("".join(line + "\n" for line in aligned(rows)))
        return
    console.print(rich_table(rows, header))


def show(args: argparse.Namespace, items: Iterable[Message],
         row: Callable[[Any], list[str]], header: Sequence[str] | None = None,
         one: bool = False) -> None:
    """Items one line each (a table), or their JSON: one object when `one`, else a list."""
    show_rows(args, items, lambda item: [row(item)], header, one)


def show_rows(args: argparse.Namespace, items: Iterable[Message],
              rows: Callable[[Any], list[list[str]]], header: Sequence[str] | None = None,
              one: bool = False) -> None:
    """Like show, for items printed as several lines (a storage: one per MDS)."""
    items = list(items)
    if args.json:
        docs = [to_dict(item) for item in items]
        print_json(docs[0] if one else docs)
        return
    print_table([r for item in items for r in rows(item)], header)
