"""The audit trail's pure parts: which methods are mutating (every method of every node
service, from the descriptors), the resource a request names, record pages."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool

from controlplane import errors
from controlplane.security.audit import build_record, is_mutating, list_records, resource_of
from controlplane.security.identity import Identity
from controlplane.server import SERVICES
from controlplane.v1 import audit_pb2, config_pb2, host_pb2, vm_pb2

# Every mutating method a node serves. A new method fails this test until it is decided.
MUTATING = {
    "ConfigService": {"UpdateConfig"},
    "HostService": {"AddHost", "RemoveHost", "ReconnectHost", "EnableHost", "DisableHost",
                    "StartHostMaintenance"},
    "VmService": {"CreateVm", "StartVm", "StopVm", "RebootVm", "PauseVm", "ResumeVm",
                  "DestroyVm", "MigrateVm"},
    "StorageService": {"AddPrimaryStorage", "RemovePrimaryStorage"},
    "VolumeService": {"CreateImage", "CreateSnapshot", "MergeSnapshots",
                      "ReconcileVolumeChain", "LiveSnapshot", "LiveMerge", "ResumeBlockJob"},
    "ClusterService": set(),
    "AuditService": set(),
}


def test_every_node_method_is_decided_from_its_name() -> None:
    pool = descriptor_pool.Default()
    seen = {}
    for full_name in SERVICES:
        service = pool.FindServiceByName(full_name)
        seen[service.name] = {m.name for m in service.methods
                              if is_mutating(f"/{full_name}/{m.name}")}
    assert seen == MUTATING


def test_health_and_reflection_are_reads() -> None:
    assert not is_mutating("/grpc.health.v1.Health/Check")
    assert not is_mutating("/grpc.health.v1.Health/Watch")
    assert not is_mutating(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert is_mutating("/controlplane.v1.VmService/DestroyVm")


def test_the_resource_a_request_names() -> None:
    assert resource_of(vm_pb2.DestroyVmRequest(vm_id="vm-1")) == "vm-1"
    assert resource_of(host_pb2.AddHostRequest(host_id="h-1", address="a:1")) == "h-1"
    assert resource_of(config_pb2.UpdateConfigRequest(key="ha.enabled")) == "ha.enabled"
    assert resource_of(vm_pb2.ListVmsRequest()) == ""
    assert resource_of(object()) == ""


def test_a_record() -> None:
    r = build_record(Identity("user", "alice", "operator"), "/x.S/M", "vm-1",
                     grpc.StatusCode.NOT_FOUND, 1700000000.25, "node-0")
    assert (r.who, r.role, r.method, r.resource_id, r.code, r.node_id) == (
        "alice", "operator", "/x.S/M", "vm-1", "NOT_FOUND", "node-0")
    assert r.time.seconds == 1700000000 and abs(r.time.nanos - 250_000_000) < 1000
    anonymous = build_record(None, "/x.S/M", "", grpc.StatusCode.OK, 0.0, "n")
    assert (anonymous.who, anonymous.role) == ("", "")
    assert build_record(Identity("node", "node-1", "node"), "/x.S/M", "", grpc.StatusCode.OK,
                        0.0, "n").who == "node:node-1"
    hostile = build_record(None, "/x.S/M", "v" * 1_000_000, grpc.StatusCode.INVALID_ARGUMENT,
                           0.0, "n")
    assert len(hostile.resource_id) == 256 and hostile.ByteSize() < 1024


def _records(n: int) -> list[tuple[str, audit_pb2.AuditRecord]]:
    return [(f"/p/calls/{i:020d}-n-{i:08d}",
             audit_pb2.AuditRecord(who="alice" if i % 2 else "bob", resource_id=f"vm-{i % 3}",
                                   method=f"m{i}"))
            for i in range(n)]


def test_pages_are_newest_first_and_filtered() -> None:
    records = _records(10)
    page, token = list_records(records, "", "", 4, "")
    assert [r.method for r in page] == ["m9", "m8", "m7", "m6"] and token
    seen = [r.method for r in page]
    while token:
        page, token = list_records(records, "", "", 4, token)
        seen += [r.method for r in page]
    assert seen == [f"m{i}" for i in range(9, -1, -1)]
    only, _ = list_records(records, "vm-0", "alice", 0, "")
    assert [r.method for r in only] == ["m9", "m3"]
    with pytest.raises(errors.Invalid):
        list_records(records, "", "", -1, "")
    with pytest.raises(errors.Invalid):
        list_records(records, "", "", 1, "forged")
