"""Logging set-up: every line names the node id and its incarnation, as text or JSON, and
keeps the fields a call passes with ``extra=`` (``vm_id``, ``host_id``, ``op_id``, ...).

JSON lines come from python-json-logger: it is a plain :class:`logging.Formatter`, so the
project's ``logging.getLogger(__name__)`` calls stay as they are, and every ``extra=`` field
(any record attribute that is not one of LogRecord's own) becomes a key of the object. A
line reads ``{"ts", "level", "node_id", "incarnation", "logger", "msg", <extra fields>,
"exc"}``. Text lines carry the same extra fields as ``key=value`` after the message, so an
operator can grep ``vm_id=vm-7`` in either format.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _PythonJsonFormatter

__all__ = ["JsonFormatter", "NodeContext", "TextFormatter", "extra_fields", "setup"]

# Stamped on every record by NodeContext; a formatter puts them first, not with the extras.
_CONTEXT_FIELDS = ("node_id", "incarnation")
_NOT_EXTRA = frozenset(RESERVED_ATTRS) | {"taskName", *_CONTEXT_FIELDS}


class NodeContext(logging.Filter):
    """Stamps node_id and incarnation on every record; the incarnation changes on rejoin."""

    def __init__(self, node_id: str = "-") -> None:
        super().__init__()
        self.node_id = node_id
        self.incarnation = 0

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        record.incarnation = self.incarnation
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a log call added with ``extra=``, in the order it gave them."""
    return {k: v for k, v in record.__dict__.items()
            if k not in _NOT_EXTRA and not k.startswith("_")}


class JsonFormatter(_PythonJsonFormatter):
    """One JSON object a line: ts, level, node_id, incarnation, logger, msg, then the
    ``extra=`` fields (python-json-logger adds every non-LogRecord attribute)."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(node_id)s %(incarnation)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg",
                           "exc_info": "exc", "stack_info": "stack"},
            reserved_attrs=sorted(_NOT_EXTRA),
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["ts"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                          + f".{int(record.msecs):03d}Z")
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()
        # a record that met no NodeContext (a handler added elsewhere) still has both keys
        for key, fallback in (("node_id", "-"), ("incarnation", 0)):
            if log_data.get(key) is None:
                log_data[key] = fallback


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(node_id)s/%(incarnation)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The text line, then the ``extra=`` fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, defaults={"node_id": "-", "incarnation": 0})

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        extras = extra_fields(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


def setup(fmt: str = "text", level: str = "INFO", node_id: str = "-") -> NodeContext:
    """Configure the root logger once; returns the context filter to update later."""
    context = NodeContext(node_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(context)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return context
