"""Prometheus metrics of one management node (served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MEMBERS = Gauge("controlplane_members", "Members in this node's ring")
RING_EPOCH = Gauge("controlplane_ring_epoch", "etcd revision this node's ring reflects")
EVICTIONS = Counter(
    "controlplane_evictions_total",
    "Members dropped from the ring, by how (leave: key deleted; evict: reconcile)",
    ["how"],
)
RECONCILE_FAILURES = Counter(
    "controlplane_reconcile_failures_total", "Member lists that failed (view kept as is)"
)
FENCED = Gauge("controlplane_fenced", "1 while this node has no fresh lease and does no owner work")
KEEPALIVE_LATENCY = Histogram(
    "controlplane_keepalive_latency_seconds",
    "Round trip of lease keepalives",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
RPCS = Counter("controlplane_rpcs_total", "gRPC calls served", ["method", "code"])
RPCS_IN_FLIGHT = Gauge(
    "controlplane_rpcs_in_flight", "gRPC calls being served (drained on SIGTERM)"
)
