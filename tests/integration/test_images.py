"""Images and volume chains on real qcow2 files, through a real management node and etcd.

Data is written into each layer with qemu-io and read back through the chain the service
returns (qemu-io read -P), so "the chain is right" means "every byte written is readable
through it", not just "the ids look right". Merges are interrupted at each step the way a
crash would leave them (``ImageManager.merge(stop_after=...)`` in-process), then
ReconcileVolumeChain is called over gRPC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest

from controlplane.config.settings import Settings
from controlplane.server import ManagementNode
from controlplane.storage.images import Locked
from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.qemu import pattern_matches, write_pattern
from controlplane.testing.waiting import wait_until
from controlplane.v1 import vm_pb2, volume_pb2

MiB = 1 << 20
# (volume written into, offset, length, pattern): each layer shadows part of the one below.
WRITES = [("base", 0, 2 * MiB, 0x11), ("s1", MiB, MiB, 0x22), ("s1", 4 * MiB, 64 << 10, 0x23),
          ("s2", 2 * MiB, MiB, 0x33), ("s2", 4 * MiB + (32 << 10), 4096, 0x34)]


def visible() -> list[tuple[int, int, int]]:
    """What a reader of the whole chain must see: later writes win, byte ranges split."""
    view: dict[int, int] = {}
    for _, off, length, pattern in WRITES:
        for block in range(off // 4096, (off + length) // 4096):
            view[block] = pattern
    return [(b * 4096, 4096, p) for b, p in sorted(view.items())]


def readable(path: str) -> bool:
    """Every byte ever written reads back right through the chain ending at ``path``,
    checked in runs of equal pattern (one qemu-io call per run)."""
    runs: list[list[int]] = []
    for off, length, pattern in visible():
        if runs and runs[-1][0] + runs[-1][1] == off and runs[-1][2] == pattern:
            runs[-1][1] += length
        else:
            runs.append([off, length, pattern])
    return all(pattern_matches(path, off, length, pattern) for off, length, pattern in runs)


@pytest.fixture
def node(etcd: EtcdCluster, tmp_path) -> Iterator[ManagementNode]:  # type: ignore[no-untyped-def]
    port = free_port()
    mn = ManagementNode(Settings(node_id="mn-i", listen=f"127.0.0.1:{port}",
                                 advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                 lease_ttl=2, reconcile_interval=0.5, drain_grace=0.5,
                                 image_dir=str(tmp_path / "images"),
                                 tls=harness_pki().node("mn-i")))
    mn.start()
    wait_until(lambda: mn.ready, 15, message="node ready")
    yield mn
    mn.stop()


def stub(node: ManagementNode):  # type: ignore[no-untyped-def]
    return c.volumes(node.settings.listen)


def ids(chain: volume_pb2.GetVolumeChainResponse) -> list[str]:
    return [v.volume_id for v in chain.chain]


def build(node: ManagementNode, image_id: str = "img", vm_id: str = "") -> dict[str, str]:
    """base <- s1 <- s2 with WRITES in each layer; returns volume id -> path."""
    s = stub(node)
    chain = s.CreateImage(volume_pb2.CreateImageRequest(image_id=image_id, size_bytes=64 * MiB,
                                                        vm_id=vm_id), timeout=30)
    paths = {v.volume_id: v.path for v in chain.chain}
    for vol in ("s1", "s2"):
        for target, off, length, pattern in WRITES:
            if target == ids(chain)[-1]:
                write_pattern(paths[target], off, length, pattern)
        chain = s.CreateSnapshot(volume_pb2.CreateSnapshotRequest(image_id=image_id,
                                                                  volume_id=vol), timeout=30)
        paths.update({v.volume_id: v.path for v in chain.chain})
    for target, off, length, pattern in WRITES:
        if target == "s2":
            write_pattern(paths[target], off, length, pattern)
    assert ids(chain) == ["base", "s1", "s2"]
    assert readable(paths["s2"])
    return paths


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_create_snapshot_merge_and_errors(node: ManagementNode) -> None:
    s = stub(node)
    assert code_of(lambda: s.CreateImage(volume_pb2.CreateImageRequest(
        image_id="img", size_bytes=0), timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: s.GetVolumeChain(volume_pb2.GetVolumeChainRequest(image_id="img"),
                                            timeout=5)) \
        == grpc.StatusCode.NOT_FOUND
    paths = build(node)
    assert code_of(lambda: s.CreateImage(volume_pb2.CreateImageRequest(
        image_id="img", size_bytes=MiB), timeout=5)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: s.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
        image_id="img", volume_id="s1"), timeout=5)) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: s.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(
        image_id="img", volume_id="base"), timeout=5)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: s.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(
        image_id="img", volume_id="nope"), timeout=5)) == grpc.StatusCode.NOT_FOUND

    # Inner merge: s1 into base; s2 now backed by base, every byte still there.
    chain = s.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(image_id="img", volume_id="s1"),
                             timeout=60)
    assert ids(chain) == ["base", "s2"] and chain.leaf_id == "s2"
    assert not os.path.exists(paths["s1"])
    assert readable(paths["s2"])
    # Leaf merge: s2 into base; base is the leaf and holds everything.
    chain = s.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(image_id="img", volume_id="s2"),
                             timeout=60)
    assert ids(chain) == ["base"] and chain.leaf_id == "base"
    assert readable(paths["base"])
    # Reconcile of a chain that matches the disk changes nothing.
    chain = s.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(image_id="img"),
                                   timeout=30)
    assert (ids(chain), list(chain.changes)) == (["base"], [])
    listed = s.ListImages(volume_pb2.ListImagesRequest(), timeout=5)
    assert [i.image_id for i in listed.images] == ["img"]


@pytest.mark.parametrize("volume_id,step,true_chain,leaf_illegal", [
    # inner merge of s1 into base
    ("s1", "commit", ["base", "s1", "s2"], False),  # data in both: nothing to fix
    ("s1", "rebase", ["base", "s2"], False),  # s2 re-linked to base
    ("s1", "metadata", ["base", "s2"], False),  # metadata done, file not yet deleted
    # leaf merge of s2 into s1
    ("s2", "commit", ["base", "s1", "s2"], False),
    ("s2", "illegal", ["base", "s1"], True),  # ILLEGAL before pivot: dropped, s1 the leaf
])
def test_reconcile_after_an_interrupted_merge(node: ManagementNode, volume_id: str, step: str,
                                              true_chain: list[str], leaf_illegal: bool) -> None:
    paths = build(node)
    node.image_manager.merge("img", volume_id, stop_after=step)
    chain = stub(node).ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(
        image_id="img", leaf_id="s2"), timeout=30)
    assert ids(chain) == true_chain, chain.changes
    assert readable(paths[true_chain[-1]])
    assert all(v.legality == volume_pb2.VOLUME_LEGALITY_LEGAL for v in chain.chain)
    if leaf_illegal:
        assert [(v.volume_id, v.legality) for v in chain.outside] == [("s2",
                                                                       volume_pb2.VOLUME_LEGALITY_ILLEGAL)]
    # A second reconcile finds nothing to change (the metadata now says what the files say).
    again = stub(node).ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(
        image_id="img"), timeout=30)
    assert (ids(again), list(again.changes)) == (true_chain, [])


def test_leaf_file_gone_is_marked_illegal(node: ManagementNode) -> None:
    paths = build(node)
    os.unlink(paths["s2"])
    chain = stub(node).ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(
        image_id="img"), timeout=30)
    assert ids(chain) == ["base", "s1"]
    assert "s2: ILLEGAL" in chain.changes
    # A snapshot on the reconciled chain works again.
    chain = stub(node).CreateSnapshot(volume_pb2.CreateSnapshotRequest(
        image_id="img", volume_id="s3"), timeout=30)
    assert ids(chain) == ["base", "s1", "s3"]


def test_refused_for_a_running_vm_and_while_locked(node: ManagementNode) -> None:
    build(node, vm_id="vm-1")
    node.store.put(node.keys.vm("vm-1"), vm_pb2.Vm(vm_id="vm-1", state="Running",
                                                   host_id="h").SerializeToString())
    s = stub(node)
    for call in (
        lambda: s.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(image_id="img"),
                                       timeout=10),
        lambda: s.MergeSnapshots(volume_pb2.MergeSnapshotsRequest(image_id="img",
                                                                  volume_id="s1"), timeout=10),
        lambda: s.CreateSnapshot(volume_pb2.CreateSnapshotRequest(image_id="img",
                                                                  volume_id="s9"), timeout=10),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "vm-1" in info.value.details() and "Running" in info.value.details()
    node.store.put(node.keys.vm("vm-1"), vm_pb2.Vm(vm_id="vm-1", state="Stopped",
                                                   host_id="h").SerializeToString())
    with node.image_manager.locked("img"):
        with pytest.raises(grpc.RpcError) as info:
            s.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(image_id="img"),
                                   timeout=10)
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert "locked by mn-i" in info.value.details()
        with pytest.raises(Locked):  # the lock is exclusive in-process too
            with node.image_manager.locked("img"):
                pass
    chain = s.ReconcileVolumeChain(volume_pb2.ReconcileVolumeChainRequest(image_id="img"),
                                   timeout=10)
    assert ids(chain) == ["base", "s1", "s2"]
    assert node.store.get(node.keys.image_lock("img")) is None  # released
