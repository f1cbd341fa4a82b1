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

VM_OPS = Counter("controlplane_vm_ops_total", "VM operations finished by this node",
                 ["kind", "outcome"])
DEVICE_INFO = Counter("controlplane_device_info_total", "Device info syncs after a VM ran",
                      ["result"])
HA_DECISIONS = Counter("controlplane_ha_decisions_total",
                       "HA decisions (restart, stop-stray, no-host, frozen, backoff)", ["action"])
HA_FROZEN = Gauge("controlplane_ha_frozen", "1 while the partition breaker freezes HA")
SYNC_ROUNDS = Histogram(
    "controlplane_host_sync_seconds", "One host's VM sync: pull, compare, write",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
)
SYNC_SKIPS = Counter("controlplane_sync_skips_total", "VMs a sync left alone, by reason",
                     ["reason"])
SYNC_WRITES = Counter("controlplane_sync_writes_total", "Sync txns, by result", ["result"])
HOSTS_OWNED = Gauge("controlplane_hosts_owned", "Hosts this node owns and syncs")
PING_FAILURES = Counter("controlplane_ping_failures_total", "Failed host pulls")
HOST_EVENTS = Counter("controlplane_host_events_total",
                      "Agent host events received (event: one host poked; resync: every "
                      "owned host of an agent poked; error: a watch stream broke)", ["kind"])
HOST_WATCHES = Gauge("controlplane_host_watches", "Open WatchHostEvents streams to agents")

# The agent's (served on the agent's --metrics-port): its block-store client sessions.
AGENT_VOLUME_SESSIONS = Gauge("controlplane_agent_volume_sessions",
                              "Volume sessions this agent holds for its VMs")
AGENT_VOLUME_SESSIONS_FENCED = Counter(
    "controlplane_agent_volume_sessions_fenced_total",
    "Volume sessions the store refused as blocklisted: that VM's copy has lost its storage "
    "(when: keepalive, or restart: found fenced when a restarted agent re-opened it)",
    ["when"])
