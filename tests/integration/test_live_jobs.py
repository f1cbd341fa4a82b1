"""Live snapshot and live merge through a management node, on a real QEMU run by the agent.

Real everything: etcd, a node process, a sim agent process with ``--block-backend qemu``
(one ``qemu-system-x86_64 -machine none`` per opened disk, driven over QMP), qcow2 files
checked with qemu-io. The node's runner decides completion and persists the job in etcd
(``jobs/<id>``); the image record follows the disk in vdsm's order.
"""

from __future__ import annotations

import os

import grpc
import pytest

from controlplane import wiretime
from controlplane.store import Keys, Store
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing import cluster as c
from controlplane.testing.qemu import pattern_matches, write_pattern
from controlplane.testing.waiting import wait_until
from controlplane.v1 import blockjob_pb2, blockjob_pb2_grpc, host_pb2, vm_pb2, volume_pb2

MiB = 1 << 20


@pytest.fixture
def live(etcd, nodes, agents):  # type: ignore[no-untyped-def]
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=1, extra_args=["--block-backend", "qemu"])
    c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                  address=agent.address), timeout=10)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="vm-1", image=vm_pb2.ImageInfo(image_id="img", virtual_size=64 * MiB,
                                             actual_size=MiB)), timeout=5)
    return node, agent


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_live_snapshot_then_active_merge(live) -> None:  # type: ignore[no-untyped-def]
    node, agent = live
    v = c.volumes(node)
    chain = v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=64 * MiB,
                                                        vm_id="vm-1"), timeout=30)
    base = chain.chain[0].path
    write_pattern(base, 0, 2 * MiB, 0x11)
    chain = v.CreateSnapshot(volume_pb2.CreateSnapshotRequest(image_id="img", volume_id="s1"),
                             timeout=30)
    s1 = chain.chain[-1].path
    write_pattern(s1, MiB, MiB, 0x22)

    # Offline, live operations are refused.
    assert code_of(lambda: v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(image_id="img"),
                                          timeout=30).job) == grpc.StatusCode.FAILED_PRECONDITION
    c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30)
    # ...and, running, the offline ones are.
    assert code_of(lambda: v.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(
        image_id="img", volume_id="s1"), timeout=30)) == grpc.StatusCode.FAILED_PRECONDITION

    # A guest write through the VM's QEMU, then a live snapshot.
    disk = blockjob_pb2_grpc.AgentBlockJobsServiceStub(agent.channel())
    disk.OpenDisk(blockjob_pb2.OpenDiskRequest(vm_id="vm-1", path=s1), timeout=30)
    disk.GuestWrite(blockjob_pb2.GuestWriteRequest(vm_id="vm-1", offset=3 * MiB,
                                                   length=MiB, pattern=0x33), timeout=30)
    job = v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(image_id="img", job_id="snap-1"),
                         timeout=120).job
    assert job.phase == "COMPLETED", job.error
    assert job.bytes_copied > 0 and os.path.exists(job.output)
    for off, length, pattern in ((0, MiB, 0x11), (MiB, MiB, 0x22), (3 * MiB, MiB, 0x33)):
        assert pattern_matches(job.output, off, length, pattern)
    stored = v.GetBlockJob(volume_pb2.GetBlockJobRequest(job_id="snap-1"), timeout=5).job
    assert (stored.phase, stored.output, stored.node_id) == ("COMPLETED", job.output, "mn-0")
    assert code_of(lambda: v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(
        image_id="img", job_id="snap-1"), timeout=30).job) == grpc.StatusCode.ALREADY_EXISTS

    # Live merge of the active leaf: READY, FINISHING persisted with s1 ILLEGAL, pivot, done.
    job = v.LiveMerge(volume_pb2.LiveMergeRequest(image_id="img", volume_id="s1",
                                                  job_id="merge-1"), timeout=120).job
    assert job.phase == "COMPLETED", job.error
    chain = v.GetVolumeChain(volume_pb2.GetVolumeChainRequest(image_id="img"), timeout=5)
    assert [x.volume_id for x in chain.chain] == ["base"] and chain.leaf_id == "base"
    assert not chain.outside and not os.path.exists(s1)
    assert list(disk.GetDiskChain(blockjob_pb2.GetDiskChainRequest(vm_id="vm-1"),
                                  timeout=10).paths) \
        == [os.path.realpath(base)]
    # Writes after the pivot land in base; a clean QEMU exit flushes, then every byte reads.
    disk.GuestWrite(blockjob_pb2.GuestWriteRequest(vm_id="vm-1", offset=5 * MiB,
                                                   length=MiB, pattern=0x55), timeout=30)
    disk.CloseDisk(blockjob_pb2.CloseDiskRequest(vm_id="vm-1"), timeout=30)
    for off, length, pattern in ((0, MiB, 0x11), (MiB, MiB, 0x22), (3 * MiB, MiB, 0x33),
                                 (5 * MiB, MiB, 0x55)):
        assert pattern_matches(base, off, length, pattern)
    wait_until(lambda: v.GetBlockJob(volume_pb2.GetBlockJobRequest(job_id="merge-1"),
                                     timeout=5).job.phase == "COMPLETED", 5)


def test_a_merge_left_ready_by_a_dead_node_is_finished_by_resume(live, etcd) -> None:  # type: ignore[no-untyped-def]
    """A node died after writing FINISHING (leaf ILLEGAL) but before its pivot went out: the
    job is still READY in QEMU. ResumeBlockJob on a live node pivots it and updates the
    chain from the record alone."""
    node, agent = live
    v = c.volumes(node)
    v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=64 * MiB,
                                                vm_id="vm-1"), timeout=30)
    chain = v.CreateSnapshot(volume_pb2.CreateSnapshotRequest(image_id="img", volume_id="s1"),
                             timeout=30)
    base, s1 = (x.path for x in chain.chain)
    write_pattern(s1, 0, MiB, 0x44)
    c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30)
    disk = blockjob_pb2_grpc.AgentBlockJobsServiceStub(agent.channel())
    disk.OpenDisk(blockjob_pb2.OpenDiskRequest(vm_id="vm-1", path=s1), timeout=30)
    started = disk.StartCommit(blockjob_pb2.StartCommitRequest(
        vm_id="vm-1", job_id="m-dead", top=s1, base=base), timeout=30)
    assert started.active
    wait_until(lambda: disk.GetJob(blockjob_pb2.GetJobRequest(vm_id="vm-1", job_id="m-dead"),
                                   timeout=5).status.ready, 30, message="commit READY")

    # What the dead node had written: FINISHING, and s1 ILLEGAL in the same txn.
    keys = Keys(DEFAULT_PREFIX)
    store = Store(etcd.endpoints)
    try:
        image = volume_pb2.Image.FromString(store.get(keys.image("img")).value)
        leaf = next(x for x in image.volumes if x.volume_id == "s1")
        leaf.legality = volume_pb2.VOLUME_LEGALITY_ILLEGAL
        store.put(keys.image("img"), image.SerializeToString())
        store.put(keys.job("m-dead"), volume_pb2.BlockJob(
            job_id="m-dead", kind="live-merge", image_id="img", vm_id="vm-1",
            host_id=agent.host_ids[0], phase="FINISHING", top=s1, base=base, volume_id="s1",
            node_id="mn-dead", started_at=wiretime.stamp(1.0)).SerializeToString())
    finally:
        store.close()

    job = v.ResumeBlockJob(volume_pb2.ResumeBlockJobRequest(job_id="m-dead"), timeout=60).job
    assert (job.phase, job.node_id) == ("COMPLETED", "mn-0"), job.error
    chain = v.GetVolumeChain(volume_pb2.GetVolumeChainRequest(image_id="img"), timeout=5)
    assert [x.volume_id for x in chain.chain] == ["base"]
    assert list(disk.GetDiskChain(blockjob_pb2.GetDiskChainRequest(vm_id="vm-1"),
                                  timeout=10).paths) \
        == [os.path.realpath(base)]
    disk.CloseDisk(blockjob_pb2.CloseDiskRequest(vm_id="vm-1"), timeout=30)
    assert pattern_matches(base, 0, MiB, 0x44)
    # A finished job resumes to itself.
    assert v.ResumeBlockJob(volume_pb2.ResumeBlockJobRequest(job_id="m-dead"),
                            timeout=10).job.phase \
        == "COMPLETED"


def test_a_vm_does_not_start_while_an_offline_image_operation_holds_the_lock(live) -> None:  # type: ignore[no-untyped-def]
    """The start's begin txn compares the image lock absent; the image operation checks the
    VM after taking the lock: whichever commits first wins."""
    node, _agent = live
    v = c.volumes(node)
    v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=MiB, vm_id="vm-1"),
                  timeout=30)
    keys = Keys(DEFAULT_PREFIX)
    store = Store(node.etcd)
    try:
        store.put(keys.image_lock("img"), b"mn-other")  # an offline operation in progress
        with pytest.raises(grpc.RpcError) as info:
            c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "image img is locked by mn-other" in info.value.details()
        assert c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="vm-1"), timeout=5).vm.state == "Created"
        store.delete(keys.image_lock("img"))
    finally:
        store.close()
    started = c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30).vm
    assert started.state == "Running"
