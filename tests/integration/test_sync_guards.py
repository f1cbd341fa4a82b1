"""Sync's compare-and-swap guards on a real etcd, with one in-process management node.

The races are made deterministic by writing the "concurrent" change ourselves between the
moment a report's records were read and the moment the plan is applied.
"""

from __future__ import annotations

import time

import pytest

from controlplane import wiretime
from controlplane.config.settings import Settings
from controlplane.server import ManagementNode
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import vm_pb2
from controlplane.vm.records import op_view, vm_view
from controlplane.vm.sync import MarkOrphan, SetState


@pytest.fixture
def node(etcd):
    port = free_port()
    mn = ManagementNode(Settings(node_id="mn-x", listen=f"127.0.0.1:{port}",
                                 advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                 lease_ttl=2, reconcile_interval=0.5, drain_grace=0.5,
                                 tls=harness_pki().node("mn-x")))
    mn.start()
    wait_until(lambda: mn.ready, 15, message="node ready")
    yield mn
    mn.stop()


def put(node, key: str, message) -> int:
    return node.store.put(key, message.SerializeToString())


def cached(cache, key: str, revision: int):
    assert cache.wait_for_revision(revision, 5)
    return cache.get(key)


def test_a_report_whose_record_changed_during_the_pull_is_dropped(node) -> None:
    keys, syncer = node.keys, node.tracker.syncer
    rev = put(node, keys.vm("s1"), vm_pb2.Vm(vm_id="s1", state="Running", host_id="hx",
                                            generation=1))
    before = vm_view(cached(node.vms, keys.vm("s1"), rev).value, rev)  # read at pull start
    # meanwhile an operation moved the record on
    put(node, keys.vm("s1"), vm_pb2.Vm(vm_id="s1", state="Stopping", host_id="hx",
                                       generation=1))
    applied = syncer.apply([SetState(before, "Stopped", "stopped")])
    assert (applied.writes, applied.dropped) == (0, 1)
    assert vm_pb2.Vm.FromString(node.store.get(keys.vm("s1")).value).state == "Stopping"


def test_orphan_removal_never_deletes_a_newer_op(node) -> None:
    keys, syncer = node.keys, node.tracker.syncer
    vm_rev = put(node, keys.vm("s2"), vm_pb2.Vm(vm_id="s2", state="Starting", host_id="hx",
                                               generation=1))
    old = vm_pb2.Op(op_id="old", vm_id="s2", kind="start", node_id="gone", incarnation=1,
                    orphaned_at=wiretime.stamp(time.time() - 10_000))
    op_rev = put(node, keys.op("s2"), old)
    old_view = op_view(cached(node.ops, keys.op("s2"), op_rev).value, op_rev)
    vm_before = vm_view(cached(node.vms, keys.vm("s2"), vm_rev).value, vm_rev)
    # a new owner started a new op on the VM meanwhile
    put(node, keys.op("s2"), vm_pb2.Op(op_id="new", vm_id="s2", kind="start",
                                       node_id="mn-x", incarnation=node.registration.incarnation))
    applied = syncer.apply([SetState(vm_before, "Starting", "", old_view, "orphan-expired")])
    assert applied.dropped == 1
    assert vm_pb2.Op.FromString(node.store.get(keys.op("s2")).value).op_id == "new"
    # and stamping an orphan that changed meanwhile writes nothing either
    stamp_rev = node.store.get(keys.op("s2")).mod_revision
    syncer.apply([MarkOrphan(old_view)])
    assert node.store.get(keys.op("s2")).mod_revision == stamp_rev


def test_a_fenced_off_node_cannot_write(node) -> None:
    keys, syncer = node.keys, node.tracker.syncer
    rev = put(node, keys.vm("s3"), vm_pb2.Vm(vm_id="s3", state="Running", host_id="hx",
                                            generation=1))
    view = vm_view(cached(node.vms, keys.vm("s3"), rev).value, rev)
    # our member key replaced by another incarnation (we were evicted and someone took it)
    node.store.delete(keys.member("mn-x"))
    node.store.put(keys.member("mn-x"), b"")
    applied = syncer.apply([SetState(view, "Stopped", "stopped")])
    assert applied.writes == 0
    assert vm_pb2.Vm.FromString(node.store.get(keys.vm("s3")).value).state == "Running"
