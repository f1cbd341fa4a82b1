"""The storage and image commands as an operator runs them: every step is a real
`controlplane ...` process talking gRPC to a real node, which runs qemu-img on real qcow2
files (image) or asks a real sim MDS process (storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.testing.mds import MdsProcess
from controlplane.testing.ports import free_port
from controlplane.v1 import mds_pb2 as mpb

COMMAND_TIMEOUT = 60  # per command: generous, a command normally takes well under a second


def cp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `controlplane ARGS`; with check, fail showing stderr unless it exits 0."""
    done = subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT, check=False)
    if check:
        assert done.returncode == 0, f"controlplane {' '.join(args)} -> {done.returncode}:\n" \
            f"{done.stderr}"
    return done


def cpj(*args: str) -> object:
    """`controlplane ARGS --json`, parsed."""
    return json.loads(cp(*args, "--json").stdout)


def lines(done: subprocess.CompletedProcess[str]) -> list[list[str]]:
    return [line.split() for line in done.stdout.splitlines()]


def refused(done: subprocess.CompletedProcess[str], endpoint: str, code: str) -> bool:
    """Exit 1 (the server refused) with the one-line `error from ENDPOINT: CODE: ...`
    report, no traceback."""
    return (done.returncode == 1 and done.stdout == ""
            and done.stderr.startswith(f"error from {endpoint}: {code}: ")
            and len(done.stderr.splitlines()) == 1)


@pytest.fixture
def mds(tmp_path: Path) -> Iterator[MdsProcess]:
    """One sim MDS holding vol-1, opened by host-0."""
    proc = MdsProcess("mds-0", free_port(), str(tmp_path))
    try:
        proc.start()
        proc.wait_ready()
        proc.stub().CreateVolume(mpb.CreateVolumeRequest(volume_id="vol-1",
                                                            size_bytes=1 << 30), timeout=5)
        proc.sim().SetVolumeClients(mpb.SetVolumeClientsRequest(
            volume_id="vol-1", clients=[mpb.MdsVolumeClient(client_id="host-0")]), timeout=5)
        yield proc
    finally:
        if proc.pid is not None:
            proc.terminate()


def test_image_create_snapshot_merge_reconcile(etcd, nodes) -> None:  # type: ignore[no-untyped-def]
    node = nodes.start("mn-0", etcd.endpoints)
    ep = ("--endpoint", node.address)
    assert refused(cp("image", "chain", "img", *ep, check=False), node.address, "NOT_FOUND")

    created = lines(cp("image", "create", "img", "--size", "64M", "--vm", "vm-1", *ep))
    assert [row[:6] for row in created] == [["img", "base", "parent=-", "LEGAL",
                                             "virtual=64M", "leaf"]]
    base_path = created[0][6]
    assert base_path.endswith("/img/base.qcow2") and os.path.exists(base_path)
    snap = lines(cp("image", "snapshot", "img", "s1", *ep))
    assert [row[1:6] for row in snap] == [["base", "parent=-", "LEGAL", "virtual=64M",
                                           "in-chain"],
                                          ["s1", "parent=base", "LEGAL", "virtual=64M", "leaf"]]
    doc = cpj("image", "snapshot", "img", "s2", *ep)
    assert [v["volume_id"] for v in doc["chain"]] == ["base", "s1", "s2"]
    assert doc["leaf_id"] == "s2" and doc["image"]["vm_id"] == "vm-1"
    assert doc["chain"][2]["virtual_size"] == str(64 << 20)  # int64 is a JSON string
    assert "changes" not in doc and "outside" not in doc  # proto3 JSON omits empty lists
    s2_path = doc["chain"][2]["path"]

    chain = cp("image", "chain", "img", *ep).stdout.splitlines()
    assert [line.split()[1] for line in chain] == ["base", "s1", "s2"]
    assert len({line.index("LEGAL") for line in chain}) == 1  # aligned columns
    assert cpj("image", "chain", "img", *ep)["chain"] == doc["chain"]
    listed = lines(cp("image", "list", *ep))
    assert [row[:4] for row in listed] == [["img", "vm=vm-1", "leaf=s2", "volumes=3"]]
    assert listed[0][4] == os.path.dirname(base_path)
    assert [i["image_id"] for i in cpj("image", "list", *ep)] == ["img"]

    # Inner merge: the change first, then the chain with s2 re-linked to base.
    merged = cp("image", "merge", "img", "s1", *ep).stdout.splitlines()
    assert merged[0] == "change: s1: merged into base"
    assert [line.split()[1:3] for line in merged[1:]] == [["base", "parent=-"],
                                                         ["s2", "parent=base"]]
    assert refused(cp("image", "merge", "img", "base", *ep, check=False), node.address,
                   "FAILED_PRECONDITION")
    assert refused(cp("image", "merge", "img", "nope", *ep, check=False), node.address,
                   "NOT_FOUND")

    # Reconcile of a chain that matches its files; then of one whose leaf file is gone.
    same = cp("image", "reconcile", "img", *ep).stdout.splitlines()
    assert same[0] == "no change" and [line.split()[1] for line in same[1:]] == ["base", "s2"]
    os.unlink(s2_path)
    fixed = cp("image", "reconcile", "img", "--leaf", "s2", *ep).stdout.splitlines()
    assert "change: s2: ILLEGAL" in fixed
    table = [line.split() for line in fixed if not line.startswith("change: ")]
    assert [row[1:6] for row in table] == [
        ["base", "parent=-", "LEGAL", "virtual=64M", "leaf"],
        ["s2", "parent=base", "ILLEGAL", "virtual=64M", "outside-chain"]]
    after = cpj("image", "reconcile", "img", *ep)
    assert "changes" not in after and after["leaf_id"] == "base"
    assert [(v["volume_id"], v["legality"]) for v in after["outside"]] == [("s2",
                                                                            "VOLUME_LEGALITY_ILLEGAL")]


def test_storage_add_get_list_check_clients_remove(etcd, nodes, mds) -> None:  # type: ignore[no-untyped-def]
    node = nodes.start("mn-0", etcd.endpoints)
    ep = ("--endpoint", node.address)
    assert refused(cp("storage", "get", "ps-1", *ep, check=False), node.address, "NOT_FOUND")

    healthy = ["ps-1", mds.address, "HEALTHY", "failures=0", "owner=mn-0", "error=-"]
    assert lines(cp("storage", "add", "ps-1", "--mds", mds.address, *ep)) == [healthy]
    assert refused(cp("storage", "add", "ps-1", "--mds", mds.address, *ep, check=False),
                   node.address, "ALREADY_EXISTS")
    doc = cpj("storage", "get", "ps-1", *ep)
    assert (doc["storage_id"], doc["owner"]) == ("ps-1", "mn-0")
    assert [(m["address"], m["health"]) for m in doc["mds"]] == [(mds.address,
                                                                  "MDS_HEALTH_HEALTHY")]
    assert doc["mds"][0]["checked_at"] > "2026"  # an RFC 3339 time: checked before the answer
    assert lines(cp("storage", "list", *ep)) == [healthy]
    assert [s["storage_id"] for s in cpj("storage", "list", *ep)] == ["ps-1"]

    assert lines(cp("storage", "clients", "ps-1", "vol-1", *ep)) == [
        ["ps-1", "vol-1", "host-0", "address=-"]]
    assert cpj("storage", "clients", "ps-1", "vol-1", *ep) == {
        "volume_id": "vol-1", "clients": [{"client_id": "host-0"}]}
    assert refused(cp("storage", "clients", "ps-1", "vol-9", *ep, check=False), node.address,
                   "NOT_FOUND")

    # The MDS refuses every call: a check marks it, and the store has no MDS left to ask.
    mds.set_fault(mpb.SIM_MDS_FAULT_MODE_REFUSE)
    sick = lines(cp("storage", "check", "ps-1", *ep))
    assert [row[:4] for row in sick] == [["ps-1", mds.address, "UNHEALTHY", "failures=1"]]
    assert sick[0][5].startswith("error=") and sick[0][5] != "error=-"
    assert refused(cp("storage", "clients", "ps-1", "vol-1", *ep, check=False), node.address,
                   "UNAVAILABLE")
    mds.set_fault(mpb.SIM_MDS_FAULT_MODE_OK)
    assert lines(cp("storage", "check", "ps-1", *ep)) == [healthy]

    assert lines(cp("storage", "remove", "ps-1", *ep)) == [healthy]
    assert cpj("storage", "list", *ep) == []
    assert refused(cp("storage", "remove", "ps-1", *ep, check=False), node.address,
                   "NOT_FOUND")


@pytest.mark.parametrize("args,flag", [
    (["image", "create", "x", "--size", "0"], "--size"),
    (["image", "create", "x", "--size", "-1G"], "--size"),
    (["image", "create", "x", "--size", "1.5G"], "--size"),
    (["image", "create", "x"], "--size"),
    (["storage", "add", "x", "--mds", "nohost"], "--mds"),
    (["storage", "add", "x", "--mds", "h:70000"], "--mds"),
])
def test_bad_arguments_are_usage_errors(args: list[str], flag: str) -> None:
    """Refused by the command itself (exit 2, argparse's message), before any call: the
    endpoint is a closed port, so a call would fail differently."""
    done = cp(*args, "--endpoint", "127.0.0.1:1", check=False)
    last = done.stderr.splitlines()[-1]
    assert done.returncode == 2 and ": error: " in last and flag in last, done.stderr
    assert "Traceback" not in done.stderr and "error from" not in done.stderr
