"""Short names of API enum values for people: the prefix buf's lint rules put on every value
(HOST_STATUS_CONNECTED) is for the wire and generated code, not for a table or a log line.

JSON output keeps the full names: they are what a client sends back.
"""

from __future__ import annotations

from typing import Any


def short(enum: Any, value: int) -> str:
    """CONNECTED for HostStatus 1; the number itself for a value the enum does not define."""
    descriptor = getattr(enum, "DESCRIPTOR", enum)
    found = descriptor.values_by_number.get(value)
    if found is None:
        return str(value)
    prefix = _prefix(descriptor)
    return found.name.removeprefix(prefix) if found.name != prefix.rstrip("_") else found.name


def _prefix(descriptor: Any) -> str:
    """HOST_STATUS_ for HostStatus: the type name in upper snake case (buf's ENUM_VALUE_PREFIX)."""
    out = []
    for i, ch in enumerate(descriptor.name):
        if ch.isupper() and i and not descriptor.name[i - 1].isupper():
            out.append("_")
        out.append(ch.upper())
    return "".join(out) + "_"
