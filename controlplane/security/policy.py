"""Who may call what: the one per-method table every server's access interceptor reads
(`controlplane.rpc.Access`). Pure: no gRPC, no I/O, so the rules are unit-tested and a test
walks every method of every service from the descriptors and fails on one the table misses.

Levels, the Kubernetes RBAC way but as a fixed ladder:

- `reader`: Get/List/Watch, status, the ring, WhoOwns, Locate, health and reflection;
- `operator`: VM operations, host reconnect, image snapshot/merge/reconcile, live jobs;
- `admin`: config, host add/remove, storage add/remove, and the simulators' fault injection
  (SimControl, SimMdsControl: only a test rig serves them);
- `node`: only a node certificate, whatever role a user has: the agents' services (a node
  drives a host; a user with the admin role cannot power off a host through its agent) and
  the MDS's StorageMds;
- `storage-client`: a node or an agent certificate: StorageMds's client sessions
  (AttachVolume, KeepAliveVolume, DetachVolume), which a host's agent holds for the VMs it
  runs; the MDS itself checks that an agent holds them only for a host it names
  (NodeRestriction, `mds/sim.py`).

Roles are ordered reader < operator < admin; a user passes a level at or below its role. A
node certificate passes every level: nodes forward calls (`controlplane.metadata.CALLER`
says for whom, and the owner applies the table to that caller, not to the forwarding node),
so a node is trusted with whatever it relays anyway. Agent and MDS certificates pass no
level: they serve, they do not call.

`decide` answers None (allowed) or the reason for a refusal, which the interceptor sends as
PERMISSION_DENIED and logs once per (identity, reason).
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.security.identity import Identity

__all__ = ["LEVELS", "POLICY", "ROLE_ORDER", "decide", "level_of"]

ROLE_ORDER: dict[str, int] = {"reader": 0, "operator": 1, "admin": 2}
LEVELS: tuple[str, ...] = ("reader", "operator", "admin", "node", "storage-client")

_V1 = "controlplane.v1."

# service -> {method: level}; "*" gives every method of the service one level.
_TABLE: dict[str, dict[str, str]] = {
    "grpc.health.v1.Health": {"*": "reader"},
    "grpc.reflection.v1alpha.ServerReflection": {"*": "reader"},
    "grpc.reflection.v1.ServerReflection": {"*": "reader"},
    _V1 + "ClusterService": {"*": "reader"},
    # who did what is for the operators who may change things (Kubernetes: audit is admin)
    _V1 + "AuditService": {"ListAuditRecords": "admin"},
    _V1 + "ConfigService": {"GetConfig": "reader", "ListConfig": "reader",
                            "UpdateConfig": "admin"},
    _V1 + "HostService": {"GetHost": "reader", "ListHosts": "reader",
                          "ReconnectHost": "operator",
                          # day-to-day operation, not inventory: they change where VMs may
                          # go and stop or move them, which an operator may do VM by VM
                          "EnableHost": "operator", "DisableHost": "operator",
                          "StartHostMaintenance": "operator",
                          "AddHost": "admin", "RemoveHost": "admin"},
    _V1 + "StorageService": {"GetPrimaryStorage": "reader", "ListPrimaryStorages": "reader",
                             "GetVolumeClients": "reader",
                             "CheckPrimaryStorage": "operator",
                             "AddPrimaryStorage": "admin", "RemovePrimaryStorage": "admin"},
    _V1 + "VmService": {"GetVm": "reader", "ListVms": "reader", "WatchVms": "reader",
                        "ListHaAudit": "reader",
                        "CreateVm": "operator", "StartVm": "operator", "StopVm": "operator",
                        "RebootVm": "operator", "PauseVm": "operator",
                        "ResumeVm": "operator", "DestroyVm": "operator",
                        "MigrateVm": "operator"},
    _V1 + "VolumeService": {"GetVolumeChain": "reader", "ListImages": "reader",
                            "GetBlockJob": "reader",
                            "CreateImage": "operator", "CreateSnapshot": "operator",
                            "MergeSnapshots": "operator",
                            "ReconcileVolumeChain": "operator", "LiveSnapshot": "operator",
                            "LiveMerge": "operator", "ResumeBlockJob": "operator"},
    _V1 + "AgentService": {"*": "node"},
    _V1 + "AgentBlockJobsService": {"*": "node"},
    _V1 + "StorageMdsService": {"*": "node", "AttachVolume": "storage-client",
                                "KeepAliveVolume": "storage-client",
                                "DetachVolume": "storage-client"},
    _V1 + "SimControlService": {"*": "admin"},
    _V1 + "SimMdsControlService": {"*": "admin"},
}

# "/pkg.Service/Method" or "/pkg.Service/*" -> level
POLICY: Mapping[str, str] = {
    f"/{service}/{method}": level
    for service, methods in _TABLE.items() for method, level in methods.items()}


def level_of(full_method: str) -> str | None:
    """The level `/pkg.Service/Method` needs, None when the table names it not (refused)."""
    level = POLICY.get(full_method)
    if level is None:
        service = full_method.rpartition("/")[0]
        level = POLICY.get(service + "/*")
    return level


def decide(identity: Identity, full_method: str) -> str | None:
    """None when `identity` may call `full_method`, else why not (one line, no secrets)."""
    level = level_of(full_method)
    if level is None:
        return f"{full_method} has no access policy"
    if identity.kind == "node":
        return None
    if level == "storage-client":
        return None if identity.kind == "agent" else (
            f"{full_method} is for node and agent certificates only; {identity} is a "
            f"{identity.kind}")
    if level == "node":
        return f"{full_method} is for node certificates only; {identity} is a {identity.kind}"
    if identity.kind != "user":
        return f"{identity} ({identity.kind} certificate) may not call {full_method}"
    if ROLE_ORDER.get(identity.role, -1) < ROLE_ORDER[level]:
        return f"{full_method} needs role {level}; {identity} has role {identity.role}"
    return None
