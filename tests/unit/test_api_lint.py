"""The API follows the conventions gRPC clients are generated against: buf's STANDARD lint
rules over proto/ (one request and response type per RPC, names, enum value prefixes), and
every request field that can carry unbounded input has a declared limit."""

from __future__ import annotations

import importlib
import pathlib
import shutil
import subprocess

import pytest
from google.protobuf.descriptor import FieldDescriptor

from controlplane.devtools import protogen

MODULES = ["agent", "blockjob", "cluster", "config", "host", "mds", "storage", "vm", "volume"]
VALIDATE_FIELD = 1159  # (buf.validate.field) in google.protobuf.FieldOptions


def test_buf_lint_standard_is_clean() -> None:
    buf = shutil.which("buf")
    if buf is None:
        pytest.fail("the buf CLI is missing: pip install -e '.[test]' (buf-bin)")
    out = subprocess.run([buf, "lint"], cwd=protogen.ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"buf lint:\n{out.stdout}{out.stderr}"


def _request_messages():  # type: ignore[no-untyped-def]
    for name in MODULES:
        module = importlib.import_module(f"controlplane.v1.{name}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield method.input_type


def _nested(message, seen):  # type: ignore[no-untyped-def]
    if message.full_name in seen or not message.full_name.startswith("controlplane."):
        return
    seen.add(message.full_name)
    yield message
    for field in message.fields:
        if field.message_type is not None:
            yield from _nested(field.message_type, seen)


def _has_rule(field: FieldDescriptor) -> bool:
    """Whether the field carries a (buf.validate.field) option: field 1159, length-delimited,
    so its tag is the varint of (1159 << 3) | 2 = b"\\xba\\x48" in the serialized options."""
    return b"\xba\x48" in field.GetOptions().SerializeToString()


def test_every_request_string_and_repeated_field_has_a_limit() -> None:
    """A string, bytes, enum or repeated field of any request (or of a message inside one)
    without a buf.validate rule could carry 1 MiB, or an undefined value, into etcd: the
    schema must say its limit."""
    seen: set[str] = set()
    missing = []
    for request in _request_messages():
        for message in _nested(request, seen):
            for field in message.fields:
                unbounded = field.is_repeated or field.type in (
                    FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES,
                    FieldDescriptor.TYPE_ENUM)
                if unbounded and not _has_rule(field):
                    missing.append(f"{message.full_name}.{field.name}")
    assert not missing, f"request fields without a declared limit: {missing}"


def test_the_vendored_validate_proto_is_the_one_protovalidate_enforces() -> None:
    """third_party/buf/validate/validate.proto and the installed protovalidate agree on the
    rules (a rule the vendored copy declares that the validator does not know would be
    silently ignored)."""
    import protovalidate

    from controlplane.v1 import vm_pb2

    with pytest.raises(protovalidate.ValidationError):
        protovalidate.validate(vm_pb2.CreateVmRequest(ha=99))
    assert pathlib.Path(protogen.THIRD_PARTY, "buf/validate/validate.proto").is_file()
