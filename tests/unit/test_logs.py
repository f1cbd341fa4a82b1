"""Log lines through logs.setup: node id and incarnation on every line, and the extra= fields
(vm_id, host_id, op_id) kept as JSON keys, or as key=value in the text format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from controlplane import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """What the handler logs.setup installs writes (moved from stderr to a buffer by
    :func:`setup`); the root logger is put back afterwards, pytest's own handlers included."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def setup(out: io.StringIO, fmt: str, node_id: str) -> logs.NodeContext:
    context = logs.setup(fmt, "INFO", node_id)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    return context


def test_json_lines_keep_the_extra_fields(stream: io.StringIO) -> None:
    context = setup(stream, "json", "mn-0")
    context.incarnation = 41
    log = logging.getLogger("controlplane.vm.operations")
    log.info("vm %s: %s begun as op %s", "vm-7", "start", "op-1",
             extra={"vm_id": "vm-7", "host_id": "host-0", "op_id": "op-1"})
    log.debug("not at INFO")
    try:
        raise RuntimeError("agent gone")
    except RuntimeError:
        log.exception("sync of host %s failed", "host-0", extra={"host_id": "host-0"})
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {"ts": first["ts"], "level": "info", "node_id": "mn-0", "incarnation": 41,
                     "logger": "controlplane.vm.operations",
                     "msg": "vm vm-7: start begun as op op-1",
                     "vm_id": "vm-7", "host_id": "host-0", "op_id": "op-1"}
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["level"] == "error" and second["host_id"] == "host-0"
    assert "RuntimeError: agent gone" in second["exc"]
    assert list(first)[:6] == ["ts", "level", "node_id", "incarnation", "logger", "msg"]


def test_a_value_json_cannot_encode_is_written_as_text(stream: io.StringIO) -> None:
    setup(stream, "json", "mn-0")
    logging.getLogger("x").warning("odd", extra={"thing": object()})
    doc = json.loads(stream.getvalue())
    assert doc["thing"].startswith("<object object")


def test_text_lines_name_node_incarnation_and_the_extra_fields(stream: io.StringIO) -> None:
    context = setup(stream, "text", "mn-1")
    context.incarnation = 3
    log = logging.getLogger("controlplane.vm.tracker")
    log.warning("host %s unreachable", "host-2", extra={"host_id": "host-2"})
    log.info("plain line")
    first, second = stream.getvalue().splitlines()
    assert " mn-1/3 controlplane.vm.tracker: host host-2 unreachable host_id=host-2" in first
    assert second.endswith(" mn-1/3 controlplane.vm.tracker: plain line")


def test_records_that_met_no_context_still_format() -> None:
    """A handler without NodeContext (a library's own) gets the placeholders."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hi", None, None)
    assert json.loads(logs.JsonFormatter().format(record))["node_id"] == "-"
    assert " -/0 x: hi" in logs.TextFormatter().format(record)
