"""Ids that name files, and paths built from requests, stay inside the node's image directory.

Against a real node process (and, for LiveSnapshot, a real QEMU run by the agent): every
hostile id or path is refused with INVALID_ARGUMENT naming the field, and the directories
around the image directory are listed before and after to show that nothing was created
outside it (issue 11, item 5: `image create ..` used to write `<data>/base.qcow2`).
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from controlplane.storage import qemuimg
from controlplane.store import Keys, Store
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing import cluster as c
from controlplane.v1 import (
    blockjob_pb2,
    blockjob_pb2_grpc,
    host_pb2,
    storage_pb2,
    vm_pb2,
    volume_pb2,
)

MiB = 1 << 20


def listing(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``root`` (relative), except the subtree ``skip`` and log files, which
    the node appends to."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            if not name.endswith(".log"):
                out.add(str((here / name).relative_to(root)))
    return out


def refused(call, field: str) -> str:  # type: ignore[no-untyped-def]
    """The call answers INVALID_ARGUMENT with details that name ``field``; the details."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    assert field in details, details
    assert len(details) < 400, details  # never the whole input echoed back
    return details


@pytest.fixture
def node(etcd, nodes, tmp_path):  # type: ignore[no-untyped-def]
    mn = nodes.start("mn-0", etcd.endpoints)
    image_dir = tmp_path / "nodes" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    return mn, image_dir


@pytest.mark.parametrize("image_id", ["..", ".", "../x", "a/b", "/abs", "x\0y", ".hidden",
                                      "-rf", "a" * 200],
                         ids=["dotdot", "dot", "up", "slash", "abs", "nul", "hidden", "option",
                              "long"])
def test_image_create_refuses_ids_that_are_not_names(node, tmp_path, image_id) -> None:  # type: ignore[no-untyped-def]
    mn, image_dir = node
    v = c.volumes(mn)
    before = listing(tmp_path / "nodes", skip=image_dir), listing(image_dir)
    refused(lambda: v.CreateImage(volume_pb2.CreateImageRequest(
        image_id=image_id, size_bytes=MiB), timeout=30), "image_id")
    assert (listing(tmp_path / "nodes", skip=image_dir), listing(image_dir)) == before
    assert not os.path.exists(tmp_path / "nodes" / "base.qcow2")


@pytest.mark.parametrize("volume_id", ["..", ".", "../../x", "a/b", "x\0"],
                         ids=["dotdot", "dot", "up", "slash", "nul"])
def test_volume_ids_that_are_not_names_are_refused(node, tmp_path, volume_id) -> None:  # type: ignore[no-untyped-def]
    mn, image_dir = node
    v = c.volumes(mn)
    refused(lambda: v.CreateImage(volume_pb2.CreateImageRequest(
        image_id="img", size_bytes=MiB, volume_id=volume_id), timeout=30), "volume_id")
    v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=MiB), timeout=30)
    before = listing(tmp_path / "nodes", skip=image_dir), listing(image_dir)
    refused(lambda: v.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
        image_id="img", volume_id=volume_id), timeout=30), "volume_id")
    assert (listing(tmp_path / "nodes", skip=image_dir), listing(image_dir)) == before


def test_a_symlink_in_the_image_dir_pointing_outside_is_refused(node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mn, image_dir = node
    v = c.volumes(mn)
    outside = tmp_path / "outside"
    outside.mkdir()
    (image_dir / "evil").symlink_to(outside)
    details = refused(lambda: v.CreateImage(volume_pb2.CreateImageRequest(
        image_id="evil", size_bytes=MiB), timeout=30), "image_id")
    assert "outside" in details
    assert listing(outside) == set()
    # A volume file planted as a symlink to a file outside: refused, the target untouched.
    v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=MiB), timeout=30)
    victim = outside / "victim"
    victim.write_text("keep me")
    (image_dir / "img" / "s1.qcow2").symlink_to(victim)
    refused(lambda: v.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
        image_id="img", volume_id="s1"), timeout=30), "volume_id")
    assert victim.read_text() == "keep me" and listing(outside) == {"victim"}
    assert [x.volume_id for x in v.GetVolumeChain(
        volume_pb2.GetVolumeChainRequest(image_id="img"), timeout=5).chain] == ["base"]


def test_a_record_whose_files_are_outside_is_refused_not_followed(node, etcd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An image record written before ids were names (`image create ..` stored files above
    the image dir): offline operations refuse it (FAILED_PRECONDITION) instead of committing
    into, or deleting, files outside."""
    mn, _ = node
    outside = tmp_path / "outside"
    outside.mkdir()
    base, s1 = str(outside / "base.qcow2"), str(outside / "s1.qcow2")
    qemuimg.create(base, size=MiB)
    qemuimg.create(s1, backing=base)
    store = Store(etcd.endpoints)
    try:
        store.put(Keys(DEFAULT_PREFIX).image("old"), volume_pb2.Image(
            image_id="old", leaf_id="s1", directory=str(outside), volumes=[
                volume_pb2.Volume(volume_id="base", path=base, format="qcow2"),
                volume_pb2.Volume(volume_id="s1", parent_id="base", path=s1, format="qcow2"),
            ]).SerializeToString())
    finally:
        store.close()
    v = c.volumes(mn)
    for call in (lambda: v.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(
                     image_id="old", volume_id="s1"), timeout=30),
                 lambda: v.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
                     image_id="old", volume_id="s2"), timeout=30),
                 lambda: v.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(
                     image_id="old"), timeout=30)):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        assert "outside the image directory" in info.value.details()
    assert listing(outside) == {"base.qcow2", "s1.qcow2"}


def test_other_ids_that_name_files_are_names(node) -> None:  # type: ignore[no-untyped-def]
    mn, _ = node
    v = c.volumes(mn)
    refused(lambda: v.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(
        image_id="img", leaf_id="../base"), timeout=10), "leaf_id")
    refused(lambda: v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(
        image_id="img", job_id="../j"), timeout=10).job, "job_id")
    refused(lambda: v.GetBlockJob(volume_pb2.GetBlockJobRequest(job_id=".."), timeout=10).job,
            "job_id")
    s = c.storage(mn)
    refused(lambda: s.AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(
        storage_id="..", mds_addresses=["127.0.0.1:1"]), timeout=10).storage, "storage_id")
    refused(lambda: s.GetVolumeClients(storage_pb2.GetVolumeClientsRequest(
        storage_id="ps", volume_id="../v"), timeout=10), "volume_id")


# -- LiveSnapshot's output_path: only a file directly in the image's own directory ----------

@pytest.fixture
def running(etcd, nodes, agents, tmp_path):  # type: ignore[no-untyped-def]
    """A node, a sim agent with real QEMU block jobs, image `img` of the Running VM vm-1,
    its disk open in QEMU."""
    mn = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=1, extra_args=["--block-backend", "qemu"])
    c.hosts(mn).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                address=agent.address), timeout=10)
    c.vms(mn).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="vm-1", image=vm_pb2.ImageInfo(image_id="img", virtual_size=8 * MiB,
                                             actual_size=MiB)), timeout=5)
    v = c.volumes(mn)
    chain = v.CreateImage(volume_pb2.CreateImageRequest(image_id="img", size_bytes=8 * MiB,
                                                        vm_id="vm-1"), timeout=30)
    c.vms(mn).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30)
    disk = blockjob_pb2_grpc.AgentBlockJobsServiceStub(agent.channel())
    disk.OpenDisk(blockjob_pb2.OpenDiskRequest(vm_id="vm-1", path=chain.chain[0].path),
                  timeout=30)
    return mn, tmp_path / "nodes" / "images"


def test_live_snapshot_output_outside_the_image_directory_is_refused(running, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mn, image_dir = running
    v = c.volumes(mn)
    outside = tmp_path / "outside"
    outside.mkdir()
    (image_dir / "img" / "link").symlink_to(outside)
    before = (listing(tmp_path / "nodes", skip=image_dir), listing(image_dir),
              listing(outside))
    for n, output in enumerate([str(outside / "snap.qcow2"), str(image_dir / "x.qcow2"),
                                str(image_dir / "img" / ".." / "y.qcow2"), "../z.qcow2",
                                "link/w.qcow2", str(image_dir / "img" / "link" / "w.qcow2"),
                                "..", ".", "", "x\0.qcow2", "o" * 5000]):
        if not output:
            continue
        request = volume_pb2.LiveSnapshotRequest(image_id="img", job_id=f"snap-{n}",
                                                 output_path=output)
        details = refused(lambda r=request: v.LiveSnapshot(r, timeout=60), "output_path")
        assert "o" * 100 not in details
    assert (listing(tmp_path / "nodes", skip=image_dir), listing(image_dir),
            listing(outside)) == before
    # A name, or an absolute path directly in the image's own directory, is written there.
    job = v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(
        image_id="img", job_id="ok-1", output_path="backup.qcow2"), timeout=120).job
    assert job.phase == "COMPLETED", job.error
    assert job.output == str((image_dir / "img" / "backup.qcow2").resolve())
    job = v.LiveSnapshot(volume_pb2.LiveSnapshotRequest(
        image_id="img", job_id="ok-2", output_path=str(image_dir / "img" / "b2.qcow2")),
        timeout=120).job
    assert job.phase == "COMPLETED", job.error
    assert os.path.exists(image_dir / "img" / "b2.qcow2")
    assert listing(tmp_path / "nodes", skip=image_dir) == before[0] and \
        listing(outside) == before[2]


def test_agent_block_jobs_take_normal_absolute_paths_and_named_jobs(agents, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The agent has no directory to confine to (the node builds its paths): it refuses a
    path that is relative or not normal, and a job id that is not a name."""
    agent = agents.start("ag", hosts=1)
    disk = blockjob_pb2_grpc.AgentBlockJobsServiceStub(agent.channel())
    leaf = str(tmp_path / "leaf.qcow2")
    for path in ("rel.qcow2", str(tmp_path / ".." / "x.qcow2"), f"{tmp_path}/./x",
                 "/x\0y", "/" + "p" * 5000):
        refused(lambda p=path: disk.OpenDisk(blockjob_pb2.OpenDiskRequest(
            vm_id="vm-1", path=p), timeout=10), "path")
    disk.OpenDisk(blockjob_pb2.OpenDiskRequest(vm_id="vm-1", path=leaf), timeout=10)
    refused(lambda: disk.StartMirror(blockjob_pb2.StartMirrorRequest(
        vm_id="vm-1", job_id="j1", target_path=str(tmp_path / ".." / "t.qcow2"), sync="full"),
        timeout=10), "target_path")
    refused(lambda: disk.StartMirror(blockjob_pb2.StartMirrorRequest(
        vm_id="vm-1", job_id="../j", target_path=str(tmp_path / "t.qcow2"), sync="full"),
        timeout=10), "job_id")
    refused(lambda: disk.StartCommit(blockjob_pb2.StartCommitRequest(
        vm_id="vm-1", job_id="j2", top=leaf, base="base.qcow2"), timeout=10), "base")
    refused(lambda: disk.GetJob(blockjob_pb2.GetJobRequest(vm_id="vm-1", job_id=".."), timeout=10),
            "job_id")
    assert not os.path.exists(tmp_path.parent / "t.qcow2")
