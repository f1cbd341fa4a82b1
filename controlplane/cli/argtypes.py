"""The argparse types of the client commands, defined once.

A value the server would refuse (a size of -1G, an MDS address without a port) is refused
here instead, as a usage error naming the flag (exit 2), before any call: a typo should not
cost a round trip nor read like the server's answer.

The HOST:PORT check is the servers' own (`controlplane.rpc.valid_address`), so the CLI and
the node agree on what an address is. Counts and deadlines reuse the validators of
`serve`/`agent`/`mds` (`controlplane.config.argtypes`: positive_int, positive_float); its
HOST:PORT checks are not reused, they are for listening (an empty host or port 0 allowed),
which no address a client connects to may be.
"""

from __future__ import annotations

import argparse
import os
import re

from controlplane import errors
from controlplane.client import parse_endpoints
from controlplane.config.argtypes import positive_float, positive_int
from controlplane.rpc import check_name, valid_address

__all__ = [
    "UNITS",
    "count",
    "endpoints",
    "host_port",
    "non_negative_int",
    "output_file",
    "positive_float",
    "positive_size",
    "size_bytes",
]

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# 1073741824, 1G, 1GB, 1GiB, 512M, 10b; case-insensitive (matched on the upper-cased text).
_SIZE = re.compile(r"([0-9]+)(?:([KMGT])(?:I?B)?|B)?")
_INT64_MAX = (1 << 63) - 1


def size_bytes(text: str) -> int:
    """A byte count with an optional K/M/G/T suffix (powers of 1024): typing 1073741824 for
    an image size is error-prone. Refuses negatives, fractions and junk (argparse error)."""
    match = _SIZE.fullmatch(text.strip().upper())
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must be >= 0 bytes, got {text!r}")
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; expected bytes >= 0, optionally with a K, M, G or T "
            "suffix (powers of 1024), e.g. 1073741824 or 1G")
    value = int(match.group(1)) * UNITS[match.group(2) or ""]
    if value > _INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {_INT64_MAX} bytes)")
    return value


def positive_size(text: str) -> int:
    """A size_bytes that is at least one byte (an image of 0 bytes holds nothing): refused
    here with the argument named rather than by the server after a round trip."""
    value = size_bytes(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value


def host_port(text: str) -> str:
    """HOST:PORT with a port in 1..65535, the check the server applies to an MDS or agent
    address, so a typo is a usage error naming the flag instead of an INVALID_ARGUMENT."""
    if not valid_address(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (port 1..65535)")
    return text


def endpoints(text: str) -> str:
    """A comma-separated list of HOST:PORT (--endpoint, CONTROLPLANE_ENDPOINT), checked by
    the client library's own parser (`controlplane.client.parse_endpoints`: one parser of an
    endpoint list), so a bad entry is a usage error naming --endpoint here instead of a
    failure once the entries before it are down."""
    try:
        return ",".join(parse_endpoints(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 leaves the choice to the server, e.g. its default CPU count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def count(text: str) -> int:
    """An integer >= 1 (`vm watch --count`)."""
    return positive_int(text)


def output_file(text: str) -> str:
    """A live snapshot's output: a file name (the servers' `check_name` rule), which the node
    puts in the image's own directory, or an absolute path on the node (which must be directly
    in that directory: the node checks it). A relative path with a directory resolves against
    nothing the node knows: refused here (argparse error)."""
    if os.path.isabs(text):
        return text
    try:
        return check_name(text, "output")
    except errors.Invalid as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or give an absolute path") from None
