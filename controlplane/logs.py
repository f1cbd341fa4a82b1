"""Logging set-up: every line names the node id and its incarnation, as text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time


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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node_id": getattr(record, "node_id", "-"),
            "incarnation": getattr(record, "incarnation", 0),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(node_id)s/%(incarnation)s %(name)s: %(message)s"


def setup(fmt: str = "text", level: str = "INFO", node_id: str = "-") -> NodeContext:
    """Configure the root logger once; returns the context filter to update later."""
    context = NodeContext(node_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(context)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return context
