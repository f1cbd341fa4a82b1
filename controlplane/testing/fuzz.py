"""Hostile requests for every RPC, built from the protobuf descriptors alone.

Why descriptors and not hand-written cases: the API changes (message names, enum prefixes,
Timestamp fields, pagination) and a hand list of methods or request types goes stale
silently, leaving new methods unfuzzed. Here every strategy is derived from a method's
input descriptor, every call is a generic gRPC call by method path, and the services come
from the ``controlplane.v1`` modules and each process's reflection, so a new method is
fuzzed the day it is added.

What a request can hold: empty messages, ``""``, ``.``, ``..``, ``../../x``, ``a/b``, NUL
and odd unicode, 1 MiB strings, ids just past the id limit, -1, 0 and the extremes of each
integer type, NaN and infinities, enum numbers no enum defines, 10k-item repeated fields,
nested messages, and the ids of real objects (an :class:`IdPool` the test fills with the
hosts, VMs, images... it created) so calls reach deep code instead of stopping at NOT_FOUND.

Also here: :func:`call` (one generic call with a deadline; a server stream is read for a
few messages and cancelled), :func:`shape` (a short description of a request for a
report), :class:`Findings` (distinct failures, one example each) and :func:`invoke` (a
call by service, method and field dict, for fixtures that must not name request types).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from hypothesis import strategies as st

__all__ = ["HOSTILE_STRINGS", "HUGE", "Corpus", "Finding", "Findings", "IdPool", "Outcome", "call",
           "controlplane_services", "find_service", "invoke", "message_class", "messages",
           "method_path", "records", "requests", "served_services", "shape", "string_values",
           "sweep"]

MiB = 1 << 20
HUGE = "x" * MiB  # a 1 MiB string (one object: built once, shared by every example)
LONG_REPEATED = (1000, 10_000)  # lengths of the long repeated fields

# Strings that broke (or would break) real services: path tricks, separators, NUL, odd
# unicode (right-to-left override, BOM, a noncharacter, the last code point), format
# strings, whitespace, numbers as text, and a name just over 256 bytes (the id limit).
HOSTILE_STRINGS: tuple[str, ...] = (
    "", ".", "..", "../../x", "../../../../../../tmp/fuzz-escape", "a/b", "/", "//", "./x",
    "\x00", "a\x00b", " ", "\t", "\n", "a b", "é", "\u202egnp.exe", "\ufeff", "\uffff",
    "\U0010ffff", "\ufffd\xc0\xaf", "💥", "%s%n%x", "${jndi:x}", "*", "?", "-1", "0", "1e999",
    "nan", "127.0.0.1:0", "127.0.0.1:1", "127.0.0.1:65536", ":80", "[::1]:1", "host:",
    "x" * 257, "é" * 129,
)

INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}
# Plausible values (sizes, counts, generations), so some requests get past the checks.
PLAUSIBLE_INTS = (1, 2, 3, 64, 1024, 4096, MiB, 64 * MiB, 1 << 30)
ODD_FLOATS = (0.0, -0.0, -1.0, 0.5, 1.0, 1e-9, 5e-324, 1e308, -1e308, math.inf, -math.inf,
              math.nan, 86400.0 * 365 * 1000)
MAX_DEPTH = 3  # nested messages below this depth are left empty (Struct/Value recurse)


# -- the ids of real objects ----------------------------------------------------------------

class IdPool:
    """Ids of objects that exist, by kind, read at draw time (a fixture that rebuilds an
    object under a new id updates the pool and later examples use it).

    A kind is matched against field names by substring: the kind ``host_id`` serves the
    fields ``host_id`` and ``to_host_id``, ``address`` serves ``mds_addresses``. Every
    string field also draws from the union of all kinds (a host id in a vm id field)."""

    def __init__(self, kinds: Mapping[str, Iterable[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._kinds: dict[str, list[str]] = {}
        for kind, ids in (kinds or {}).items():
            self.add(kind, *ids)

    def add(self, kind: str, *ids: str) -> None:
        with self._lock:
            known = self._kinds.setdefault(kind, [])
            known.extend(i for i in ids if i not in known)

    def kinds(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self._kinds.items()}

    def for_field(self, name: str | None) -> list[str]:
        """The ids for a field name (every id when None or when no kind matches)."""
        kinds = self.kinds()
        every = sorted({i for ids in kinds.values() for i in ids})
        if name is None:
            return every
        matched = [i for kind, ids in kinds.items() if kind in name for i in ids]
        return matched or every

    def strategy(self, name: str | None) -> st.SearchStrategy[str]:
        """One id for the field, chosen when drawn (empty pool: a hostile string). The
        draw is the same whatever the pool holds (hypothesis replays choice sequences and
        refuses a strategy whose choices depend on outside state)."""
        def pick(index: int) -> str:
            ids = self.for_field(name) or list(HOSTILE_STRINGS)
            return ids[index % len(ids)]
        return st.builds(pick, st.integers(0, 1 << 16))


# -- strategies from descriptors --------------------------------------------------------------

def message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


PATH_TRICKS = (".", "..", "../../x", "../../../fuzz-escape", "a/b", "./x", "x/..", "/")


def _strings(name: str, pool: IdPool, small: bool = False) -> st.SearchStrategy[str]:
    real = pool.strategy(name)
    branches = [
        real, real, real, pool.strategy(None),
        st.builds(lambda i, n: f"{i}-fz{n}", real, st.integers(0, 999)),  # fresh, well-formed
        st.from_regex(r"fz-[a-z0-9]{1,8}", fullmatch=True),
        st.sampled_from(HOSTILE_STRINGS), st.sampled_from(HOSTILE_STRINGS),
        st.sampled_from(PATH_TRICKS),
        st.text(max_size=12),
        st.builds(lambda i, s: f"{i}{s}", real, st.sampled_from(
            ["/..", "/x", "\x00", " ", "/../../x"])),  # a real id made hostile
    ]
    if not small:
        branches += [st.just(HUGE), st.builds(lambda i: HUGE + i, real)]
    return st.one_of(branches)


def _bytes(small: bool = False) -> st.SearchStrategy[bytes]:
    branches = [st.just(b""), st.just(b"\x00"), st.just(b"\xff\xfe\xc0\xaf"),
                st.binary(max_size=16)]
    if not small:
        branches.append(st.just(HUGE.encode()))
    return st.one_of(branches)


def _ints(ftype: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[ftype]
    edges = sorted({v for v in (low, high, -1, 0, 1, low + 1, high - 1, (1 << 31) - 1,
                                (1 << 31), (1 << 53) + 1) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.sampled_from(PLAUSIBLE_INTS),
                     st.integers(low, high))


def _enums(fd: FieldDescriptor) -> st.SearchStrategy[int]:
    defined = sorted(v.number for v in fd.enum_type.values)
    undefined = sorted({max(defined) + 1, 99, -1, (1 << 31) - 1, -(1 << 31)} - set(defined))
    return st.one_of(st.sampled_from(defined), st.sampled_from(defined),
                     st.sampled_from(undefined))


def _scalar(fd: FieldDescriptor, pool: IdPool, depth: int, small: bool) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return _strings(fd.name, pool, small)
    if t == FieldDescriptor.TYPE_BYTES:
        return _bytes(small)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return _enums(fd)
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats())
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats(width=32))
    if t in INT_RANGES:
        return _ints(t)
    if t in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return messages(fd.message_type, pool, depth + 1, small)
    raise TypeError(f"field {fd.full_name}: type {t} has no strategy")


def _is_map(fd: FieldDescriptor) -> bool:
    return (fd.type == FieldDescriptor.TYPE_MESSAGE
            and fd.message_type.GetOptions().map_entry)


def _long(element: st.SearchStrategy[Any], string: bool) -> st.SearchStrategy[list[Any]]:
    """1k or 10k items from one drawn element (distinct strings: a set-like field would
    otherwise collapse them)."""
    def spread(x: Any, n: int) -> list[Any]:
        return [f"{x}{i}" for i in range(n)] if string else [x] * n
    return st.builds(spread, element, st.sampled_from(LONG_REPEATED))


def _field(fd: FieldDescriptor, pool: IdPool, depth: int, small: bool) -> st.SearchStrategy[Any]:
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        return st.dictionaries(_scalar(key_fd, pool, depth, True),
                               _scalar(value_fd, pool, depth, True), max_size=3)
    if fd.is_repeated:
        element = _scalar(fd, pool, depth, small=True)
        short = st.lists(element, max_size=3)
        return st.one_of(short, short, short, short,
                         _long(element, fd.type == FieldDescriptor.TYPE_STRING))
    return _scalar(fd, pool, depth, small)


def _build(cls: type[Message], values: Mapping[str, Any]) -> Message:
    msg = cls()
    desc = msg.DESCRIPTOR
    for name, value in values.items():
        fd = desc.fields_by_name[name]
        try:
            if _is_map(fd):
                target = getattr(msg, name)
                for k, v in value.items():
                    if isinstance(v, Message):
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif fd.is_repeated:
                getattr(msg, name).extend(value)
            elif isinstance(value, Message):
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        except (ValueError, TypeError):
            # A value this runtime refuses to even hold (a closed enum's unknown number):
            # no server can receive it either, so the field stays unset.
            msg.ClearField(name)
    return msg


def messages(desc: Descriptor, pool: IdPool, depth: int = 0,
             small: bool = False) -> st.SearchStrategy[Message]:
    """Requests of type ``desc``: the empty message, or any subset of its fields set to
    hostile, extreme, plausible or real values. ``small`` leaves out the 1 MiB values
    (elements of long lists)."""
    cls = message_class(desc)
    if depth >= MAX_DEPTH:
        return st.just(cls())
    # Built lazily: a recursive type (Struct -> Value -> Struct) must not recurse here.
    optional = {fd.name: st.deferred(lambda fd=fd: _field(fd, pool, depth, small))
                for fd in desc.fields}
    some = st.fixed_dictionaries({}, optional=optional)
    return st.one_of(st.just(cls()), st.builds(lambda v: _build(cls, v), some))


class Corpus:
    """Requests that were answered OK, per method (the fixture's own calls and the fuzzer's
    successes): the seeds that :func:`requests` mutates a field or two of, so a hostile
    value reaches the code behind the checks a random request fails first."""

    def __init__(self, per_method: int = 32) -> None:
        self.per_method = per_method
        self._lock = threading.Lock()
        self._seeds: dict[str, list[bytes]] = {}

    def add(self, method: MethodDescriptor, request: Message) -> None:
        data = request.SerializeToString()
        if len(data) > 64 << 10:  # a seed is a base to mutate, not a payload
            return
        with self._lock:
            seeds = self._seeds.setdefault(method.full_name, [])
            if data not in seeds and len(seeds) < self.per_method:
                seeds.append(data)

    def seeds(self, method: MethodDescriptor) -> list[bytes]:
        with self._lock:
            return list(self._seeds.get(method.full_name, ()))


def requests(method: MethodDescriptor, pool: IdPool,
             corpus: Corpus | None = None) -> st.SearchStrategy[Message]:
    """Requests for ``method``: random ones (:func:`messages`) and a seed of the corpus
    (the empty request while it has none) with one to three fields cleared or replaced."""
    desc = method.input_type
    cls = message_class(desc)
    fresh = messages(desc, pool)
    if corpus is None or not desc.fields:
        return fresh
    names = [fd.name for fd in desc.fields]

    @st.composite
    def mutated(draw: st.DrawFn) -> Message:
        # The same choices whatever the corpus holds (see IdPool.strategy).
        seeds = corpus.seeds(method) or [b""]
        msg = cls.FromString(seeds[draw(st.integers(0, 1 << 16)) % len(seeds)])
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3,
                                  unique=True)):
            fd = desc.fields_by_name[name]
            value = draw(st.one_of(st.none(), _field(fd, pool, 0, False)))
            msg.ClearField(name)
            if value is not None:
                msg.MergeFrom(_build(cls, {name: value}))
        return msg

    return st.one_of(fresh, mutated(), mutated())


# -- a deterministic sweep: one field at a time -------------------------------------------

# Edge values per field type for :func:`sweep`; the ``thorough`` lists for the slow tier.
SWEEP_STRINGS = ("", "..", "a/b", "a\x00b", "x" * 257, HUGE)
SWEEP_STRINGS_THOROUGH = (*SWEEP_STRINGS, ".", "../../x", "../../../fuzz-escape", "/",
                          " ", "\u202e\ufeff", "\U0010ffff", "127.0.0.1:1")


def _edges(fd: FieldDescriptor, seed_value: Any, thorough: bool) -> list[Any]:
    """The values :func:`sweep` puts in one field (None: the field cleared)."""
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        # also a 1 MiB string ending like the seed's value: a 1 MiB id that is well formed
        # otherwise, a 1 MiB host in front of the seed address's ":port"
        shaped = [HUGE + seed_value] if seed_value else []
        return [*(SWEEP_STRINGS_THOROUGH if thorough else SWEEP_STRINGS), *shaped]
    if t == FieldDescriptor.TYPE_BYTES:
        return [b"", HUGE.encode()]
    if t == FieldDescriptor.TYPE_BOOL:
        return [not seed_value]
    if t == FieldDescriptor.TYPE_ENUM:
        top = max(v.number for v in fd.enum_type.values)
        return [top + 1, -1, (1 << 31) - 1] if thorough else [top + 1]
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [-1.0, math.nan, math.inf, 1e308] if thorough else [-1.0, math.nan]
    if t in INT_RANGES:
        low, high = INT_RANGES[t]
        return sorted({-1, 0, high, low} if thorough else {-1, high}, key=abs) \
            if low < 0 else [0, high]
    if t == FieldDescriptor.TYPE_MESSAGE:
        return [None, message_class(fd.message_type)()]
    return []


def _repeated_edges(fd: FieldDescriptor, seed_values: list[Any], thorough: bool
                    ) -> list[list[Any]]:
    first = seed_values[0] if seed_values else None
    if fd.type == FieldDescriptor.TYPE_STRING:
        base = first or "fz"
        edges = [[f"{base}{i}" for i in range(LONG_REPEATED[-1])], [".."], [HUGE + base]]
        return [*edges, [""], ["a/b"], [base] * 2] if thorough else edges
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        item = first if first is not None else message_class(fd.message_type)()
        return [[item] * LONG_REPEATED[-1], [message_class(fd.message_type)()]]
    values = [v for v in _edges(fd, first, thorough) if v is not None]
    return [[values[-1]] * LONG_REPEATED[-1], values[:1]] if values else []


def _first_string(desc: Descriptor) -> FieldDescriptor | None:
    """The lowest-numbered singular string field: by this API's convention the id of the
    resource the request is about (vm_id, image_id, host_id...)."""
    strings = [fd for fd in desc.fields
               if fd.type == FieldDescriptor.TYPE_STRING and not fd.is_repeated]
    return min(strings, key=lambda fd: fd.number) if strings else None


def sweep(desc: Descriptor, seed: Message, *, thorough: bool = False,
          fresh: Callable[[], str] | None = None) -> Iterator[Message]:
    """The seed with one field at a time set to each edge value of its type (cleared, "",
    "..", a 1 MiB string, -1, the type's max, an undefined enum number, 10k items...), and
    the same again with the resource id (:func:`_first_string`) replaced by ``fresh()``
    so a create-like call makes a new object instead of answering ALREADY_EXISTS.
    Deterministic: the default tier's regression net; hypothesis explores around it."""
    cls = message_class(desc)
    id_fd = _first_string(desc)
    variants = [seed]
    if fresh is not None and id_fd is not None:
        renamed = cls()
        renamed.CopyFrom(seed)
        setattr(renamed, id_fd.name, fresh())
        variants.append(renamed)
    for base in variants:
        for fd in desc.fields:
            if _is_map(fd):
                continue
            current = getattr(base, fd.name)
            edges = (_repeated_edges(fd, list(current), thorough) if fd.is_repeated
                     else _edges(fd, current, thorough))
            for value in edges:
                msg = cls()
                msg.CopyFrom(base)
                if id_fd is not None and base is not seed and fresh is not None:
                    setattr(msg, id_fd.name, fresh())  # a new object per call
                msg.ClearField(fd.name)
                if value is not None:
                    msg.MergeFrom(_build(cls, {fd.name: value}))
                yield msg


# -- services --------------------------------------------------------------------------------

def controlplane_services(package: str = "controlplane.v1") -> dict[str, ServiceDescriptor]:
    """Every service declared in the generated ``*_pb2`` modules of ``package``, by full name."""
    pkg = importlib.import_module(package)
    found: dict[str, ServiceDescriptor] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"{package}.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return found


def served_services(channel: grpc.Channel) -> list[str]:
    """The services a process serves, asked through its server reflection."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
    return list(ProtoReflectionDescriptorDatabase(channel).get_services())


def find_service(full_name: str) -> ServiceDescriptor | None:
    """A service descriptor from the default pool (None when this process lacks its module)."""
    try:
        return descriptor_pool.Default().FindServiceByName(full_name)
    except KeyError:
        return None


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


# -- calling ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """How one call ended: the status code (OK for success), its details, the seconds it
    took, and for a stream the messages read before it was cancelled."""

    code: grpc.StatusCode
    details: str
    elapsed: float
    messages: int = 0
    response: Message | None = None
    trailing: tuple[tuple[str, str], ...] = ()


def call(channel: grpc.Channel, method: MethodDescriptor, request: Message, timeout: float,
         *, stream_window: float = 0.3, stream_messages: int = 3) -> Outcome:
    """One generic call of ``method`` with a deadline. A server stream is read for at most
    ``stream_messages`` messages or ``stream_window`` seconds, then cancelled by us (which
    counts as OK: an open stream is the answer). Client streams are not supported."""
    if method.client_streaming:
        raise ValueError(f"{method.full_name}: client streams are not fuzzed")
    reply_cls = message_class(method.output_type)
    start = time.monotonic()
    if not method.server_streaming:
        stub = channel.unary_unary(method_path(method),
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=reply_cls.FromString)
        try:
            reply, rpc_call = stub.with_call(request, timeout=timeout)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", time.monotonic() - start,
                           trailing=tuple(exc.trailing_metadata() or ()))
        return Outcome(grpc.StatusCode.OK, "", time.monotonic() - start, response=reply)
    stream = channel.unary_stream(method_path(method),
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=reply_cls.FromString)
    it = stream(request, timeout=timeout)
    ours = threading.Event()

    def cancel() -> None:
        ours.set()
        it.cancel()

    timer = threading.Timer(stream_window, cancel)
    timer.start()
    count = 0
    try:
        for _ in it:
            count += 1
            if count >= stream_messages:
                cancel()
                break
    except grpc.RpcError as exc:
        if not (ours.is_set() and exc.code() == grpc.StatusCode.CANCELLED):
            return Outcome(exc.code(), exc.details() or "", time.monotonic() - start, count)
    finally:
        timer.cancel()
    return Outcome(grpc.StatusCode.OK, "", time.monotonic() - start, count)


def _service(short_or_full: str) -> ServiceDescriptor:
    services = controlplane_services()
    if short_or_full in services:
        return services[short_or_full]
    for service in services.values():
        if service.name == short_or_full:
            return service
    raise KeyError(f"no service {short_or_full!r} in controlplane.v1")


def invoke(channel: grpc.Channel, service: str, method: str, fields: Mapping[str, Any],
           timeout: float = 10.0, corpus: Corpus | None = None) -> Message:
    """Call ``service.method`` with a request given as a dict of its fields (proto JSON
    names or field names; enums as numbers): fixtures build their objects with this, so
    they name no request type and survive message renames. Raises grpc.RpcError. A
    request answered OK goes into ``corpus``."""
    desc = _service(service).methods_by_name[method]
    request = json_format.ParseDict(dict(fields), message_class(desc.input_type)())
    reply_cls = message_class(desc.output_type)
    stub = channel.unary_unary(method_path(desc),
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=reply_cls.FromString)
    reply = stub(request, timeout=timeout)
    if corpus is not None:
        corpus.add(desc, request)
    return reply


def records(reply: Message, id_field: str) -> Iterator[Message]:
    """Every message inside ``reply`` (itself included) that has a field ``id_field``, so
    a fixture reads ``Vm`` records from a reply however it wraps them (a list, a page, a
    ``{vm: ...}`` response)."""
    if id_field in reply.DESCRIPTOR.fields_by_name:
        yield reply
        return
    for fd, value in reply.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE or _is_map(fd):
            continue
        for item in (value if fd.is_repeated else [value]):
            yield from records(item, id_field)


# -- describing requests and failures -------------------------------------------------------

def _shape_scalar(fd: FieldDescriptor, value: Any) -> str:
    if isinstance(value, Message):
        return shape(value)
    if isinstance(value, (str, bytes)):
        if len(value) > 160:
            unit = "chars" if isinstance(value, str) else "bytes"
            return f"<{len(value)} {unit} {value[:12]!r}...{value[-12:]!r}>"
        return repr(value)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        known = fd.enum_type.values_by_number.get(value)
        return known.name if known is not None else f"{value} (no such {fd.enum_type.name})"
    return repr(value)


def shape(msg: Message) -> str:
    """A short, readable description of a request: every set field, long strings and long
    lists summarised (``name=<1048576 chars 'xxxxxxxx'...>``, ``ids=[10000 x 'a0']``)."""
    parts = []
    for fd, value in msg.ListFields():
        if _is_map(fd):
            items = list(value.items())
            value_fd = fd.message_type.fields_by_name["value"]
            shown = ", ".join(f"{k!r}: {_shape_scalar(value_fd, v)}" for k, v in items[:3])
            text = "{" + shown + (", ..." if len(items) > 3 else "") + "}"
        elif fd.is_repeated:
            if len(value) > 3:
                text = f"[{len(value)} x {_shape_scalar(fd, value[0])}]"
            else:
                text = "[" + ", ".join(_shape_scalar(fd, v) for v in value) + "]"
        else:
            text = _shape_scalar(fd, value)
        parts.append(f"{fd.name}={text}")
    return "{" + ", ".join(parts) + "}"


@dataclass
class Finding:
    """One distinct failure: the method, the answer, and the first request that got it."""

    method: str
    problem: str
    details: str
    request: str
    count: int = 1

    def line(self) -> str:
        return (f"{self.method}: {self.problem} x{self.count}: {self.details[:160]!r} "
                f"for {self.request[:300]}")


def _normalize(details: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", details[:200])
    text = re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "N", text)
    return text[:90]


@dataclass
class Findings:
    """Distinct failures, keyed by method, problem and the gist of the details (numbers
    and quoted values blanked), each with the first request that showed it."""

    found: dict[tuple[str, str, str], Finding] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, problem: str, details: str, request: str) -> None:
        key = (method, problem, _normalize(details))
        with self._lock:
            known = self.found.get(key)
            if known is None:
                self.found[key] = Finding(method, problem, details, request)
            else:
                known.count += 1

    def __bool__(self) -> bool:
        return bool(self.found)

    def __len__(self) -> int:
        return len(self.found)

    def report(self) -> str:
        return "\n".join(f.line() for f in sorted(self.found.values(),
                                                   key=lambda f: (f.method, f.problem)))


def string_values(msg: Message) -> Iterator[str]:
    """Every string inside a request (map keys and values, nested messages included): what
    the test scans for the ids of deliberately unreachable agents and MDS."""
    for fd, value in msg.ListFields():
        if _is_map(fd):
            for k, v in value.items():
                if isinstance(k, str):
                    yield k
                if isinstance(v, str):
                    yield v
                elif isinstance(v, Message):
                    yield from string_values(v)
            continue
        items = value if fd.is_repeated else [value]
        for item in items:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Message):
                yield from string_values(item)

