"""The live image commands as an operator runs them: every step is a real `controlplane ...`
process talking gRPC to a real node, whose block jobs run on a real QEMU started by a sim
agent process with ``--block-backend qemu`` (the node opens the VM's disk on the agent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from controlplane.store import Keys, Store
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing import cluster as c
from controlplane.testing.qemu import pattern_matches, write_pattern
from controlplane.v1 import host_pb2, vm_pb2, volume_pb2

MiB = 1 << 20
COMMAND_TIMEOUT = 60  # per command: generous, a live snapshot of this disk takes a second


def cp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `controlplane ARGS`; with check, fail showing stderr unless it exits 0."""
    done = subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT, check=False)
    if check:
        assert done.returncode == 0, f"controlplane {' '.join(args)} -> {done.returncode}:\n" \
            f"{done.stderr}"
    return done


def cpj(*args: str) -> dict:
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


def test_live_snapshot_merge_job(etcd, nodes, agents) -> None:  # type: ignore[no-untyped-def]
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=1, extra_args=["--block-backend", "qemu"])
    c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                  address=agent.address), timeout=10)
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="vm-1", image=vm_pb2.ImageInfo(image_id="img", virtual_size=64 * MiB,
                                             actual_size=MiB)), timeout=5)
    ep = ("--endpoint", node.address)
    cp("image", "create", "img", "--size", "64M", "--vm", "vm-1", *ep)
    base, s1 = (row[6] for row in lines(cp("image", "snapshot", "img", "s1", *ep)))
    write_pattern(base, 0, 2 * MiB, 0x11)
    write_pattern(s1, MiB, MiB, 0x22)

    # Offline (the VM is not Running): refused before any job, nothing recorded.
    done = cp("image", "live-merge", "img", "s1", "--job", "m-0", *ep, check=False)
    assert refused(done, node.address, "FAILED_PRECONDITION") and "Running" in done.stderr
    assert refused(cp("image", "job", "m-0", *ep, check=False), node.address, "NOT_FOUND")

    c.vms(node).StartVm(vm_pb2.StartVmRequest(vm_id="vm-1", wait=True), timeout=30)
    snap = cp("image", "live-snapshot", "img", "--job", "s-1", *ep).stdout.splitlines()
    first = snap[0].split()
    assert first[:6] == ["s-1", "live-snapshot", "COMPLETED", "image=img", "vm=vm-1",
                         "node=mn-0"], snap
    assert first[6].startswith("copied=") and first[6] != "copied=0", snap
    output = os.path.join(os.path.dirname(s1), "s-1.qcow2")
    assert snap[1:] == [f"top={s1}", f"base={base}", f"output={output}"], snap
    assert pattern_matches(output, 0, MiB, 0x11) and pattern_matches(output, MiB, MiB, 0x22)
    doc = cpj("image", "job", "s-1", *ep)
    assert (doc["phase"], doc["kind"], doc["output"]) == ("COMPLETED", "live-snapshot", output)
    assert int(doc["bytes_copied"]) > 0
    assert cp("image", "job", "s-1", *ep).stdout == "\n".join(snap) + "\n"
    assert refused(cp("image", "live-snapshot", "img", "--job", "s-1", *ep, check=False),
                   node.address, "ALREADY_EXISTS")

    merged = lines(cp("image", "live-merge", "img", "s1", "--job", "m-1", *ep))
    assert merged[0][:3] == ["m-1", "live-merge", "COMPLETED"], merged
    assert merged[1:] == [[f"top={s1}"], [f"base={base}"]]
    assert [v["volume_id"] for v in cpj("image", "chain", "img", *ep)["chain"]] == ["base"]
    assert cpj("image", "resume-job", "m-1", *ep)["phase"] == "COMPLETED"  # ended: as it is

    assert refused(cp("image", "job", "nope", *ep, check=False), node.address, "NOT_FOUND")
    assert refused(cp("image", "resume-job", "nope", *ep, check=False), node.address,
                   "NOT_FOUND")

    # A FAILED job is printed, then exit 1 (text and --json alike).
    store = Store(etcd.endpoints)
    try:
        store.put(Keys(DEFAULT_PREFIX).job("f-1"), volume_pb2.BlockJob(
            job_id="f-1", kind="live-snapshot", image_id="img", vm_id="vm-1", node_id="mn-0",
            phase="FAILED", top="/a b/top.qcow2", base="/a b/top.qcow2",
            error="mirror: job vanished", bytes_copied=3 * MiB).SerializeToString())
    finally:
        store.close()
    done = cp("image", "job", "f-1", *ep, check=False)
    assert done.returncode == 1 and done.stdout.splitlines() == [
        "f-1  live-snapshot  FAILED  image=img  vm=vm-1  node=mn-0  copied=3M",
        "top=/a b/top.qcow2", "base=/a b/top.qcow2", "error=mirror: job vanished"]
    done = cp("image", "job", "f-1", "--json", *ep, check=False)
    assert done.returncode == 1 and '"phase": "FAILED"' in done.stdout


def test_live_help_and_arguments() -> None:
    for command in ("live-snapshot", "live-merge", "job", "resume-job"):
        text = " ".join(cp("image", command, "--help").stdout.split())
        assert "Running" in text and "NOT_FOUND" in text, command
        if command != "job":
            assert "FAILED_PRECONDITION" in text and "ABORTED" in text, command
    text = " ".join(cp("image", "live-snapshot", "--help").stdout.split())
    assert "ALREADY_EXISTS" in text and "default 600" in text
    assert "until its lease expires" in " ".join(cp("image", "resume-job", "--help")
                                                 .stdout.split())
    done = cp("image", "live-snapshot", "img", "--output", "sub/rel.qcow2", "--endpoint",
              "127.0.0.1:1", check=False)
    assert done.returncode == 2 and "--output" in done.stderr.splitlines()[-1]
    assert "error from" not in done.stderr
