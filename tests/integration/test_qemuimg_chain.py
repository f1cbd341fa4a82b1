"""Volume chains on real qcow2 files: qemu-img reads them, reconcile brings the metadata to them,
and every byte written stays readable through the chain reconcile returns.

The chain is base <- s1 <- s2 with a different byte pattern in each layer (s1 also overwrites
the start of base's data). Offline merges are interrupted at each step; at each, the metadata
the merge would have left is reconciled against ``chain_info`` of the leaf, and the test checks
(a) the chain the plan gives is the chain on disk and (b) every pattern reads back through its
leaf with ``qemu-io read -P``: a chain that is right by its pointers but lost data is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from controlplane.storage import qemuimg
from controlplane.storage.chain import (
    Legality,
    MarkIllegal,
    ReconcilePlan,
    Relink,
    Vol,
    apply,
    chain_of,
    plan_reconcile,
)
from controlplane.storage.qemuimg import QemuImgError, chain_info
from controlplane.testing.qemu import pattern_matches, require, write_pattern

KiB, MiB = 1 << 10, 1 << 20
SIZE = 4 * MiB
IDS = ("base", "s1", "s2")
# What the leaf of base <- s1 <- s2 reads: (offset, length, pattern), covering the whole disk.
EXPECTED = (
    (0, 64 * KiB, 0x23),  # s1 over base
    (64 * KiB, MiB - 64 * KiB, 0x11),  # base
    (MiB, MiB, 0x22),  # s1
    (2 * MiB, MiB, 0x33),  # s2
    (3 * MiB, MiB, 0x00),  # never written
)


@pytest.fixture(autouse=True, scope="module")
def _qemu_tools() -> None:
    require("qemu-img")
    require("qemu-io")
    assert qemuimg.check_available() is None


def build_chain(directory: Path) -> dict[str, str]:
    """base <- s1 <- s2 in ``directory``, patterns per EXPECTED; volume id -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {vol_id: str(directory / f"{vol_id}.qcow2") for vol_id in IDS}
    qemuimg.create(paths["base"], size=SIZE)
    write_pattern(paths["base"], 0, MiB, 0x11)
    qemuimg.create(paths["s1"], backing=paths["base"])
    write_pattern(paths["s1"], MiB, MiB, 0x22)
    write_pattern(paths["s1"], 0, 64 * KiB, 0x23)
    qemuimg.create(paths["s2"], backing=paths["s1"])
    write_pattern(paths["s2"], 2 * MiB, MiB, 0x33)
    return paths


def stored_volumes(*legalities: Legality) -> dict[str, Vol]:
    """The metadata of base <- s1 <- s2 with the given legalities."""
    return {
        vol_id: Vol(vol_id, IDS[i - 1] if i else "", legality)
        for i, (vol_id, legality) in enumerate(zip(IDS, legalities, strict=True))
    }


def reconcile(
    volumes: dict[str, Vol], leaf_id: str, paths: dict[str, str]
) -> tuple[ReconcilePlan, dict[str, Vol]]:
    """What the VolumeService will do: read the real chain from the stored leaf's file (or the
    nearest existing ancestor's), map files to volume ids, plan, apply."""
    stored = chain_of(volumes, leaf_id)
    start = next(v for v in reversed(stored) if os.path.exists(paths[v.volume_id]))
    by_path = {os.path.realpath(p): vol_id for vol_id, p in paths.items()}
    real = [by_path.get(layer.path, layer.path) for layer in chain_info(paths[start.volume_id])]
    plan = plan_reconcile(stored, real)
    return plan, apply(volumes, plan.changes)


def assert_true_chain(
    plan: ReconcilePlan, applied: dict[str, Vol], paths: dict[str, str], expected: list[str]
) -> None:
    """(a) the plan's chain is the one on disk and the metadata now says it; (b) every byte
    written reads back through its leaf."""
    assert list(plan.chain) == expected
    assert [v.volume_id for v in chain_of(applied, plan.leaf_id)] == expected
    assert applied[plan.leaf_id].legality is Legality.LEGAL
    on_disk = [layer.path for layer in chain_info(paths[plan.leaf_id])]
    assert on_disk == [os.path.realpath(paths[vol_id]) for vol_id in expected]
    leaf = paths[plan.leaf_id]
    for offset, length, pattern in EXPECTED:
        assert pattern_matches(leaf, offset, length, pattern), (leaf, offset, length, pattern)


# -- chain_info --------------------------------------------------------------------------


def test_chain_info_reads_the_chain_base_first(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    layers = chain_info(paths["s2"])
    assert [layer.path for layer in layers] == [os.path.realpath(paths[i]) for i in IDS]
    assert [layer.backing_path for layer in layers] == [
        None, os.path.realpath(paths["base"]), os.path.realpath(paths["s1"]),
    ]
    assert all(layer.format == "qcow2" and layer.virtual_size == SIZE for layer in layers)
    assert all(layer.actual_size > 0 for layer in layers)
    for offset, length, pattern in EXPECTED:
        assert pattern_matches(paths["s2"], offset, length, pattern)
    # The check discriminates: s1 does not have s2's data.
    assert not pattern_matches(paths["s1"], 2 * MiB, MiB, 0x33)


def test_relative_backing_names_survive_moving_the_directory(tmp_path: Path) -> None:
    build_chain(tmp_path / "a")
    for vol_id, parent in (("s1", "base"), ("s2", "s1")):
        out = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(tmp_path / "a" / f"{vol_id}.qcow2")],
            capture_output=True, text=True, check=True,
        ).stdout
        assert json.loads(out)["backing-filename"] == f"{parent}.qcow2"
    os.rename(tmp_path / "a", tmp_path / "b")
    moved = str(tmp_path / "b" / "s2.qcow2")
    layers = chain_info(moved)
    assert [layer.path for layer in layers] == [
        os.path.realpath(tmp_path / "b" / f"{vol_id}.qcow2") for vol_id in IDS
    ]
    for offset, length, pattern in EXPECTED:
        assert pattern_matches(moved, offset, length, pattern)


def test_backing_in_another_directory_is_written_absolute(tmp_path: Path) -> None:
    qemuimg.create(str(tmp_path / "base.qcow2"), size=SIZE)
    (tmp_path / "other").mkdir()
    top = str(tmp_path / "other" / "top.qcow2")
    qemuimg.create(top, backing=str(tmp_path / "base.qcow2"))
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", top], capture_output=True, text=True,
        check=True,
    ).stdout
    assert json.loads(info)["backing-filename"] == os.path.realpath(tmp_path / "base.qcow2")


def test_chain_info_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.qcow2")
    with pytest.raises(QemuImgError, match="nope.qcow2") as info:
        chain_info(missing)
    assert info.value.returncode not in (0, None)
    assert missing in info.value.cmd


def test_chain_info_with_a_missing_backing_file_names_it(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    os.unlink(paths["s1"])
    with pytest.raises(QemuImgError, match="s1.qcow2"):
        chain_info(paths["s2"])


def test_create_refuses_an_existing_path_and_leaves_no_temp_files(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    before = Path(paths["s2"]).read_bytes()
    with pytest.raises(FileExistsError):
        qemuimg.create(paths["s2"], size=SIZE)
    with pytest.raises(FileExistsError):
        qemuimg.create(paths["s2"], backing=paths["s1"])
    with pytest.raises(FileExistsError):
        qemuimg.convert(paths["s2"], paths["s1"])
    assert Path(paths["s2"]).read_bytes() == before
    with pytest.raises(QemuImgError):  # a failing create leaves nothing behind either
        qemuimg.create(str(tmp_path / "img" / "bad.qcow2"), backing=str(tmp_path / "absent"))
    assert sorted(os.listdir(tmp_path / "img")) == sorted(f"{i}.qcow2" for i in IDS)


def test_ten_deep_chain_is_read_with_one_call(tmp_path: Path, monkeypatch) -> None:
    paths = [str(tmp_path / "v0.qcow2")]
    qemuimg.create(paths[0], size=SIZE)
    for i in range(1, 10):
        paths.append(str(tmp_path / f"v{i}.qcow2"))
        qemuimg.create(paths[i], backing=paths[i - 1])
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        calls.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(qemuimg.subprocess, "run", counting_run)
    start = time.perf_counter()
    layers = chain_info(paths[-1])
    elapsed = time.perf_counter() - start
    assert [layer.path for layer in layers] == [os.path.realpath(p) for p in paths]
    assert len(calls) == 1 and calls[0][:3] == ["qemu-img", "info", "-U"]
    print(f"chain_info of a 10-deep chain: {elapsed * 1000:.1f} ms, {len(calls)} qemu-img call")


# -- merges interrupted at each step -----------------------------------------------------


def test_merge_of_s1_into_base_interrupted_at_each_step(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    volumes = stored_volumes(Legality.LEGAL, Legality.LEGAL, Legality.LEGAL)

    # Step 1: commit s1 into base (s1 kept). After commit, before rebase: files and metadata
    # still agree.
    qemuimg.commit(paths["s1"])
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan.changes == () and plan.dropped_leaf is None
    assert_true_chain(plan, applied, paths, ["base", "s1", "s2"])

    # Step 2: rebase -u s2 onto base. After rebase, before the metadata update: s1 is out of
    # the real chain, so s2 is relinked to base.
    qemuimg.rebase(paths["s2"], paths["base"], unsafe=True)
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan.changes == (Relink("s2", "base"),)
    assert_true_chain(plan, applied, paths, ["base", "s2"])

    # s1's file deleted, metadata still not updated: the same plan, and nothing needs s1.
    os.unlink(paths["s1"])
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan.changes == (Relink("s2", "base"),)
    assert_true_chain(plan, applied, paths, ["base", "s2"])

    # After the metadata update, a reconcile finds nothing to do.
    again, _ = reconcile(applied, "s2", paths)
    assert again.changes == () and again.chain == ("base", "s2")


def test_merge_of_leaf_s2_into_s1_interrupted_at_each_step(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    volumes = stored_volumes(Legality.LEGAL, Legality.LEGAL, Legality.LEGAL)

    # Step 1: commit s2 into s1 (s2 kept). Before s2 is marked ILLEGAL nothing changes and
    # the VM's leaf is still s2.
    qemuimg.commit(paths["s2"])
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan.changes == () and plan.dropped_leaf is None
    assert_true_chain(plan, applied, paths, ["base", "s1", "s2"])

    # Step 2: s2 marked ILLEGAL before pivot (metadata update): its data is in s1, so it is
    # dropped and the chain ends at s1, which reads every byte.
    volumes["s2"] = Vol("s2", "s1", Legality.ILLEGAL)
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan == ReconcilePlan(chain=("base", "s1"), changes=(), dropped_leaf="s2")
    assert_true_chain(plan, applied, paths, ["base", "s1"])

    # Step 3: s2's file deleted before the metadata update: the chain is read from s1.
    os.unlink(paths["s2"])
    plan, applied = reconcile(volumes, "s2", paths)
    assert plan == ReconcilePlan(chain=("base", "s1"), changes=())
    assert_true_chain(plan, applied, paths, ["base", "s1"])

    # The same, had the leaf not been marked ILLEGAL: reconcile marks it.
    legal = stored_volumes(Legality.LEGAL, Legality.LEGAL, Legality.LEGAL)
    plan, applied = reconcile(legal, "s2", paths)
    assert plan.changes == (MarkIllegal("s2"),)
    assert applied["s2"].legality is Legality.ILLEGAL
    assert_true_chain(plan, applied, paths, ["base", "s1"])


def test_a_file_reconcile_does_not_know_is_refused(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    stranger = str(tmp_path / "img" / "stranger.qcow2")
    qemuimg.create(stranger, backing=paths["base"])
    qemuimg.rebase(paths["s1"], stranger, unsafe=True)
    volumes = stored_volumes(Legality.LEGAL, Legality.LEGAL, Legality.LEGAL)
    with pytest.raises(ValueError, match="stranger.qcow2"):
        reconcile(volumes, "s2", paths)


# -- the other verbs -----------------------------------------------------------------------


def test_commit_into_a_base_further_down(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    qemuimg.commit(paths["s2"], base=paths["base"])
    assert os.path.exists(paths["s2"])  # -d: the caller deletes
    for offset, length, pattern in EXPECTED:
        assert pattern_matches(paths["base"], offset, length, pattern)


def test_safe_rebase_to_standalone_and_convert_keep_the_data(tmp_path: Path) -> None:
    paths = build_chain(tmp_path / "img")
    flat = str(tmp_path / "img" / "flat.qcow2")
    qemuimg.convert(paths["s2"], flat)
    assert [layer.backing_path for layer in chain_info(flat)] == [None]
    qemuimg.rebase(paths["s2"], None, unsafe=False)
    assert len(chain_info(paths["s2"])) == 1
    os.unlink(paths["base"])
    os.unlink(paths["s1"])
    for image in (flat, paths["s2"]):
        for offset, length, pattern in EXPECTED:
            assert pattern_matches(image, offset, length, pattern)
