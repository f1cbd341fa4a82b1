"""The audit trail of mutating calls: who did what to which resource, and how it ended.

Three parts, one idea:
- pure: `is_mutating(method)` (decided from the method name: not Get*/List*/Watch*, not
  health or reflection, not the few reads named otherwise in `READS`; a test walks every
  method of every node service) and `build_record(...)`;
- `AuditInterceptor`: a server interceptor that builds one record per mutating unary call
  when it ends (the status code after the domain-error mapping), logs it as one structured
  line (logger `controlplane.audit`, fields who/role/method/resource_id/code) and hands it
  to a sink. A call another node forwarded (FORWARDED_BY metadata) is not recorded again:
  the node the caller reached records it, with the caller's identity and the final code.
- `AuditWriter`: the sink of a node: a bounded queue drained by one thread that puts each
  record into etcd (`Keys.call_audit`, keys in time order) and then trims the collection to
  the live `audit.maxRecords`, oldest first. Writing off the call's thread keeps etcd's
  latency out of every mutating call; a full queue (etcd down for long) drops records with
  a warning and a count, never blocks a call.

The interceptor is registered by the composition root (server.py), not by rpc.py's builder.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import grpc
from google.protobuf.message import Message

from controlplane import errors, paging, wiretime
from controlplane.metadata import FORWARDED_BY
from controlplane.security.identity import Identity, peer_identity
from controlplane.v1 import audit_pb2

__all__ = ["READS", "AuditInterceptor", "AuditWriter", "build_record", "is_mutating",
           "list_records", "resource_of"]

log = logging.getLogger("controlplane.audit")

# Not named Get/List/Watch, and still reads: answered without changing anything.
READS = frozenset({"WhoOwns", "Locate", "CheckPrimaryStorage"})
_READ_PREFIXES = ("Get", "List", "Watch")
_READ_SERVICES = ("grpc.health.v1.", "grpc.reflection.")
# Request fields that name the resource a call acts on, in order of preference.
_RESOURCE_FIELDS = ("vm_id", "host_id", "image_id", "storage_id", "job_id", "volume_id",
                    "resource_id", "key", "id", "name")


def is_mutating(method: str) -> bool:
    """True for a full gRPC method name (/pkg.Service/Method) that may change state."""
    service, _, name = method.lstrip("/").rpartition("/")
    if service.startswith(_READ_SERVICES):
        return False
    return not (name.startswith(_READ_PREFIXES) or name in READS)


def resource_of(request: object) -> str:
    """The id a request names ("" when none): the first non-empty of _RESOURCE_FIELDS."""
    if not isinstance(request, Message):
        return ""
    fields = request.DESCRIPTOR.fields_by_name
    for name in _RESOURCE_FIELDS:
        field = fields.get(name)
        if field is not None and field.type == field.TYPE_STRING:
            value = getattr(request, name)
            if value:
                return value
    return ""


# Every text field of a record is clipped: a refused request may name a resource id of a
# megabyte (the record of a hostile call must stay a small etcd value and log line).
MAX_FIELD = 256


def _clip(text: str) -> str:
    return text if len(text) <= MAX_FIELD else text[:MAX_FIELD - 3] + "..."


def build_record(identity: Identity | None, method: str, resource_id: str,
                 code: grpc.StatusCode, at: float, node_id: str) -> audit_pb2.AuditRecord:
    """The record of one call (pure); text fields clipped to MAX_FIELD characters."""
    return audit_pb2.AuditRecord(
        who=_clip(str(identity)) if identity else "", role=identity.role if identity else "",
        method=_clip(method), resource_id=_clip(resource_id), code=code.name,
        time=wiretime.stamp(at), node_id=_clip(node_id))


class AuditInterceptor(grpc.ServerInterceptor):
    """Records every mutating unary call (see the module docstring)."""

    def __init__(self, sink: Callable[[audit_pb2.AuditRecord], None], node_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.sink = sink
        self.node_id = node_id
        self.clock = clock

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not is_mutating(method):
            return handler
        if any(k == FORWARDED_BY for k, _ in handler_call_details.invocation_metadata or ()):
            return handler
        inner = handler.unary_unary

        def wrapped(request, context):  # type: ignore[no-untyped-def]
            code = None
            try:
                response = inner(request, context)
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record(request, context, method,
                             code or context.code() or grpc.StatusCode.OK)
            return response

        return handler._replace(unary_unary=wrapped)

    def _record(self, request: object, context: grpc.ServicerContext, method: str,
                code: grpc.StatusCode) -> None:
        try:
            record = build_record(peer_identity(context), method, resource_of(request), code,
                                  self.clock(), self.node_id)
            log.info("audit %s %s %s -> %s", record.who or "-", method,
                     record.resource_id or "-", record.code,
                     extra={"who": record.who, "role": record.role, "method": method,
                            "resource_id": record.resource_id, "code": record.code})
            self.sink(record)
        except Exception:  # noqa: BLE001 - auditing must never fail the call it records
            log.exception("could not record an audit entry for %s", method)


class AuditWriter:
    """Puts records into etcd from one thread and keeps the collection bounded."""

    def __init__(self, store, keys, node_id: str, max_records: Callable[[], int],  # type: ignore[no-untyped-def]
                 queue_size: int = 10000) -> None:
        self.store = store
        self.prefix = keys.call_audit
        self.node_id = node_id
        self.max_records = max_records
        self._queue: queue.Queue[audit_pb2.AuditRecord | None] = queue.Queue(queue_size)
        self._seq = itertools.count()
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def __call__(self, record: audit_pb2.AuditRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit queue full (etcd slow or down): %d records dropped",
                            self.dropped)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then stop."""
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    def key_of(self, record: audit_pb2.AuditRecord) -> str:
        ns = record.time.seconds * 1_000_000_000 + record.time.nanos
        return f"{self.prefix}{ns:020d}-{self.node_id}-{next(self._seq):08d}"

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            for record in batch:
                if record is not None:
                    self._write(record)
            self._trim()
            if stop:
                return

    def _write(self, record: audit_pb2.AuditRecord) -> None:
        try:
            self.store.put(self.key_of(record), record.SerializeToString())
            self.written += 1
        except Exception as exc:  # noqa: BLE001 - a lost record is logged, the writer lives
            self.dropped += 1
            log.warning("audit record not written (%s): %s %s", exc, record.who,
                        record.method)

    def _trim(self) -> None:
        try:
            limit = int(self.max_records())
            _, total = self.store.first_keys(self.prefix, 0)
            excess = total - limit
            if excess <= 0:
                return
            oldest, _ = self.store.first_keys(self.prefix, excess)
            if oldest:
                self.store.delete_range(self.prefix, oldest[-1] + "\0")
        except Exception as exc:  # noqa: BLE001 - retried after the next write
            log.warning("audit trail not trimmed: %s", exc)


def list_records(records: Sequence[tuple[str, audit_pb2.AuditRecord]], resource_id: str,
                 who: str, page_size: int, page_token: str
                 ) -> tuple[list[audit_pb2.AuditRecord], str]:
    """One page of (key, record) pairs, newest first, filtered (pure). Keys are inverted
    for paging so that "newest first" is ascending order for paging.page."""
    if page_size < 0:
        raise errors.Invalid(f"page_size must be >= 0, got {page_size}")
    chosen = [(_newest_first(k), r) for k, r in records
              if (not resource_id or r.resource_id == resource_id) and (not who or r.who == who)]
    chosen.sort(key=lambda kr: kr[0])
    items, token = paging.page(chosen, lambda kr: kr[0], page_size, page_token)
    return [r for _, r in items], token


def _newest_first(key: str) -> str:
    """A key that sorts in the reverse order of `key` (its last segment is digits, '-' and
    an id: every character mapped to its complement)."""
    segment = key.rsplit("/", 1)[-1]
    return "".join(chr(0x10FFFF - ord(c)) if ord(c) < 0x10000 else c for c in segment)
