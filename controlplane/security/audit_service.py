"""AuditService: the audit trail (security/audit.py writes it) read back, from any node.

Read straight from etcd (a linearizable range over the bounded collection, at most
`audit.maxRecords` records): the trail is read rarely and must show what was written, so no
cache is kept for it.
"""

from __future__ import annotations

import grpc

from controlplane.security.audit import list_records
from controlplane.v1 import audit_pb2 as pb
from controlplane.v1 import audit_pb2_grpc as pb_grpc

__all__ = ["AuditServicer"]


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, store, keys) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.prefix = keys.call_audit

    def ListAuditRecords(self, request: pb.ListAuditRecordsRequest,
                         context: grpc.ServicerContext) -> pb.ListAuditRecordsResponse:
        left = context.time_remaining()
        budget = None if left is None else max(left - 0.05, 0.01)
        kvs, _ = self.store.list_prefix(self.prefix, budget=budget)
        records = [(kv.key, pb.AuditRecord.FromString(kv.value)) for kv in kvs]
        page, token = list_records(records, request.resource_id, request.who,
                                   request.page_size, request.page_token)
        return pb.ListAuditRecordsResponse(records=page, next_page_token=token)
