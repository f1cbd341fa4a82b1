"""The audit trail with real nodes over mutual TLS: a mutating call is recorded once (by
the node the caller reached, also when it was forwarded to the owner) with the caller's
certificate identity, the resource and the final code; reads are not recorded; the trail is
bounded by audit.maxRecords; `controlplane audit list` filters it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from controlplane.channels import open_channel
from controlplane.store import DEFAULT_PREFIX, Keys, Store
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import wait_until
from controlplane.v1 import audit_pb2, config_pb2, vm_pb2, vm_pb2_grpc

DESTROY = "/controlplane.v1.VmService/DestroyVm"
UPDATE = "/controlplane.v1.ConfigService/UpdateConfig"


def records(node: object, **filters: str) -> list[audit_pb2.AuditRecord]:
    reply = c.audit(node).ListAuditRecords(
        audit_pb2.ListAuditRecordsRequest(page_size=1000, **filters), timeout=5)
    return list(reply.records)


def test_mutating_calls_are_recorded_once_with_who_and_code(
        etcd: EtcdCluster, nodes: NodeFactory) -> None:
    a = nodes.start("audit-a", etcd.endpoints)
    b = nodes.start("audit-b", etcd.endpoints)
    wait_until(lambda: c.converged([a, b], {"audit-a", "audit-b"}), timeout=15)
    # vm ids owned by each node: one call served locally, one forwarded
    ids = [f"ghost-{i}" for i in range(20)]
    owners = {i: c.stub(a).WhoOwns(c.pb.WhoOwnsRequest(resource_id=i), timeout=5).owner
              for i in ids}
    local = next(i for i in ids if owners[i] == "audit-a")
    remote = next(i for i in ids if owners[i] == "audit-b")
    for vm_id in (local, remote):
        with pytest.raises(grpc.RpcError) as err:
            c.vms(a).DestroyVm(vm_pb2.DestroyVmRequest(vm_id=vm_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    c.vms(a).ListVms(vm_pb2.ListVmsRequest(), timeout=5)  # a read: not recorded
    c.config(a).UpdateConfig(config_pb2.UpdateConfigRequest(key="ha.enabled", value="true"),
                             timeout=5)
    bob = open_channel(a.address, tls=harness_pki().user("bob", "operator"))
    try:
        with pytest.raises(grpc.RpcError):
            vm_pb2_grpc.VmServiceStub(bob).StopVm(vm_pb2.StopVmRequest(vm_id=local),
                                                  timeout=10)
    finally:
        bob.close()

    wait_until(lambda: len(records(b)) == 4, timeout=10, message="4 audit records")
    got = records(b)  # any node reads the trail
    assert [(r.method, r.resource_id, r.who) for r in got] == [
        ("/controlplane.v1.VmService/StopVm", local, "bob"),
        (UPDATE, "ha.enabled", "admin"),
        (DESTROY, remote, "admin"),
        (DESTROY, local, "admin"),
    ]
    assert [r.code for r in got][1:] == ["OK", "NOT_FOUND", "NOT_FOUND"]
    assert {r.node_id for r in got} == {"audit-a"}  # the forwarded one not again by b
    assert got[0].role == "operator" and got[1].role == "admin"
    assert [r.who for r in records(a, who="bob")] == ["bob"]
    assert [r.method for r in records(a, resource_id=remote)] == [DESTROY]
    assert f"audit admin {UPDATE} ha.enabled -> OK" in a.log_text()

    env = {**os.environ, "CONTROLPLANE_ENDPOINT": b.address}
    done = subprocess.run([sys.executable, "-m", "controlplane", "audit", "list",
                           "--resource", local, "--who", "admin", "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [(d["method"], d["code"]) for d in doc] == [(DESTROY, "NOT_FOUND")]
    table = subprocess.run([sys.executable, "-m", "controlplane", "audit", "list"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 0 and "UpdateConfig" in table.stdout and "bob" in table.stdout


def test_the_trail_is_bounded_by_max_records(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    node = nodes.start("audit-0", etcd.endpoints)
    update = c.config(node).UpdateConfig
    update(config_pb2.UpdateConfigRequest(key="audit.maxRecords", value="10"), timeout=5)
    for i in range(25):
        update(config_pb2.UpdateConfigRequest(key="host.pingFailures", value=str(1 + i % 9)),
               timeout=5)
    store = Store(etcd.endpoints)
    try:
        prefix = Keys(DEFAULT_PREFIX).call_audit
        wait_until(lambda: store.first_keys(prefix, 0)[1] == 10, timeout=10,
                   message="the trail trimmed to audit.maxRecords")
    finally:
        store.close()
    newest = records(node)
    assert len(newest) == 10
    # the last call is kept, the oldest ones (the maxRecords update itself) dropped
    assert newest[0].resource_id == "host.pingFailures"
    assert all(r.resource_id == "host.pingFailures" for r in newest)
