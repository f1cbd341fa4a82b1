"""Value checks of the command-line flags (and of their CONTROLPLANE_* variables), defined
once for `serve`, `agent` and `mds`.

Each is an argparse ``type=``: it takes the text as given and returns the value, or raises
:class:`argparse.ArgumentTypeError` with a sentence an operator can act on. ConfigArgParse
turns a variable into the same command-line argument, so a bad variable gets the same clean
``error: argument --flag: ...`` (exit 2, no traceback) as a bad flag.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re

from controlplane.store.keys import valid_node_id

__all__ = [
    "LOG_FORMATS", "LOG_LEVELS", "abspath", "bind_host", "endpoints", "host_prefix",
    "hostport", "integer", "lease_ttl", "listen_address", "log_format", "log_level", "key_prefix",
    "node_id", "non_negative_seconds", "port_or_zero", "positive_float", "positive_int",
    "vnodes",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # NaN and inf compare oddly with every bound below
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def integer(text: str) -> int:
    """Any integer (a seed)."""
    return _int(text)


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: hosts, CPUs, MiB)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (intervals and deadlines in seconds: 0 would spin or never wait)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_seconds(text: str) -> float:
    """Seconds >= 0 (the sim's delays, where 0 means at once)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def lease_ttl(text: str) -> int:
    """etcd refuses a lease TTL below 2 seconds (its minimum)."""
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be an integer >= 2 (etcd's minimum lease TTL)")
    return value


def vnodes(text: str) -> int:
    """Virtual nodes per ring member: above 4096 the ring only costs memory."""
    value = _int(text)
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 1 and 4096, got {text}")
    return value


def port_or_zero(text: str) -> int:
    """A TCP port, or 0 for "off" (the metrics port)."""
    value = _int(text)
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port 1-65535 (or 0: off), got {text}")
    return value


def hostport(text: str) -> str:
    """HOST:PORT to listen on; the host may be empty (":7070", every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return text


def listen_address(text: str) -> str:
    """HOST:PORT with the host given (the agent and MDS name their interface)."""
    address = hostport(text)
    if not address.rpartition(":")[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT (the host is missing)")
    return address


def bind_host(text: str) -> str:
    """An interface to bind (an IP address such as 0.0.0.0, 127.0.0.1, ::, or a host name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.match(text):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected an IP address (0.0.0.0, 127.0.0.1, ::) or a host name"
            ) from None
    return text


def endpoints(text: str) -> str:
    """etcd endpoints, comma-separated HOST:PORT (checked by the store's own parser)."""
    from controlplane.store.client import parse_endpoints

    try:
        parse_endpoints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def node_id(text: str) -> str:
    """A node id becomes a key segment and a pod name."""
    if not valid_node_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return text


def key_prefix(text: str) -> str:
    """An etcd key prefix: /name, so that deployments sharing an etcd do not overlap."""
    if not text.startswith("/") or text.endswith("/") or len(text) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: a key prefix starts with '/' and does not "
                                         "end with it, e.g. /controlplane")
    return text


def log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise argparse.ArgumentTypeError(f"must be text or json, got {text!r}")
    return text


def log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"must be DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


def abspath(text: str) -> str:
    """A directory, made absolute so that it means the same after a chdir."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.abspath(text)


def host_prefix(text: str) -> str:
    """Host ids PREFIX0, PREFIX1, ... become key segments: no '/' and no spaces."""
    if "/" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: a host id prefix has no '/' or spaces")
    return text


_HOST_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def host_id(text: str) -> str:
    """One host id (a key segment; the API's pattern for host_id)."""
    if not _HOST_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    return text
