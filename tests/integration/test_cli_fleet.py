"""The host, vm and config commands as an operator runs them: every step is a real
`controlplane ...` process talking gRPC to a real node, which drives a real sim agent."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from controlplane import wiretime
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2

FLEET_TIMEOUT = 60  # per command: generous, a command normally takes well under a second


def cp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `controlplane ARGS`; with check, fail showing stderr unless it exits 0."""
    done = subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True,
                          text=True, timeout=FLEET_TIMEOUT, check=False)
    if check:
        assert done.returncode == 0, f"controlplane {' '.join(args)} -> {done.returncode}:\n" \
            f"{done.stderr}"
    return done


def cpj(*args: str) -> object:
    """`controlplane ARGS --json`, parsed."""
    return json.loads(cp(*args, "--json").stdout)


def watch(endpoint: str, *args: str) -> subprocess.Popen[str]:
    """A `vm watch` running in the background (its own --timeout bounds every read)."""
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane", "vm", "watch", "--endpoint", endpoint, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def fleet(etcd, nodes, agents):
    """One node, one sim agent with two hosts, and a quick VM sync set through the CLI."""
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=2)
    set_out = cp("config", "set", "vm.syncInterval", "0.3", "--endpoint", node.address).stdout
    assert set_out.split() == ["vm.syncInterval", "0.3", "(default", "60)"]
    return node, agent


def test_config_and_hosts(fleet) -> None:
    node, agent = fleet
    ep = ("--endpoint", node.address)
    entry = cpj("config", "get", "vm.syncInterval", *ep)
    assert entry["value"] == "0.3" and entry["default_value"] == "60" and entry["help"]
    assert "is_default" not in entry  # proto3 JSON omits false
    listed = cpj("config", "list", *ep)
    assert {e["key"] for e in listed} >= {"vm.syncInterval", "host.pingFailures"}
    text = cp("config", "list", *ep).stdout.splitlines()
    assert len(text) == len(listed)
    assert any(line.split() == ["host.pingFailures", "3", "(default)"] for line in text)

    h0, h1 = agent.host_ids
    added = cp("host", "add", h0, "--address", agent.address, *ep).stdout
    # 16 cpus x host.cpuAllocationRatio 4.0; 65536 MiB less host.reservedMemoryMb 512
    assert added.split() == [h0, "CONNECTED", "ENABLED", "cpus=0/64", "mem=0/65024MB",
                             agent.address, "owner=mn-0"]
    doc = cpj("host", "add", h1, "--address", agent.address, *ep)
    assert (doc["host_id"], doc["status"], doc["address"], doc["owner"]) \
        == (h1, "HOST_STATUS_CONNECTED", agent.address, "mn-0")
    assert doc["cpus"] == 16 and doc["memory_mb"] == "65536"  # int64 is a JSON string

    lines = cp("host", "list", *ep).stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[h0, "CONNECTED"], [h1, "CONNECTED"]]
    assert len({line.index("CONNECTED") for line in lines}) == 1  # aligned columns
    hosts = cpj("host", "list", *ep)
    assert [h["host_id"] for h in hosts] == [h0, h1]
    assert cpj("host", "get", h1, *ep)["address"] == agent.address
    assert cp("host", "get", h0, *ep).stdout.split()[:2] == [h0, "CONNECTED"]
    assert cp("host", "reconnect", h0, *ep).stdout.split()[:2] == [h0, "CONNECTED"]

    dup = cp("host", "add", h0, "--address", agent.address, *ep, check=False)
    assert dup.returncode == 1  # the server refused: exit 1 (2 is a usage error)
    assert dup.stderr.startswith(f"error from {node.address}: ALREADY_EXISTS: ")
    bad = cp("config", "set", "vm.syncInterval", "-1", *ep, check=False)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert cpj("config", "get", "vm.syncInterval", *ep)["value"] == "0.3"  # nothing written

    removed = cp("host", "remove", h1, *ep).stdout
    assert removed.split()[0] == h1
    assert [h["host_id"] for h in cpj("host", "list", *ep)] == [h0]
    gone = cp("host", "get", h1, *ep, check=False)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def test_vm_lifecycle_and_watch(fleet) -> None:
    node, agent = fleet
    ep = ("--endpoint", node.address)
    h0, h1 = agent.host_ids
    for host_id in agent.host_ids:
        cp("host", "add", host_id, "--address", agent.address, *ep)

    created = cp("vm", "create", "web-1", "--image-virtual-size", "1G",
                 "--image-actual-size", "256M", "--cpus", "2", "--memory-mb", "1024", *ep)
    assert created.stdout.split() == ["web-1", "Created", "host=-", "gen=0", "ha=none"]
    vm = cpj("vm", "get", "web-1", *ep)
    assert vm["root_disk_size"] == str(1 << 30) and vm["image"]["actual_size"] == str(1 << 28)
    assert vm["cpus"] == 2 and vm["memory_mb"] == "1024"

    # A watch that has listed the VM (SYNCED) sees every later change: start it, read up to
    # SYNCED, then start the VM; it ends by itself after 3 events.
    watcher = watch(node.address, "web-1", "--initial", "--json", "--count", "3",
                    "--timeout", "30")
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        assert first["kind"] == "KIND_PUT" and first["vm"]["state"] == "Created"
        assert json.loads(watcher.stdout.readline())["kind"] == "KIND_SYNCED"

        started = cp("vm", "start", "web-1", "--host", h1, "--wait", *ep).stdout
        assert started.split() == ["web-1", "Running", f"host={h1}", "gen=1", "ha=none"]

        third = json.loads(watcher.stdout.readline())
        assert third["kind"] == "KIND_PUT" and third["vm"]["state"] in ("Starting", "Running")
        assert watcher.wait(timeout=30) == 0, watcher.stderr.read() if watcher.stderr else ""
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    got = cpj("vm", "get", "web-1", *ep)
    assert (got["state"], got["host_id"], got["generation"]) == ("Running", h1, "1")
    assert got["last_op"]["outcome"] == "completed"

    # create + start + wait in one call, HA, on a given host
    ha = cp("vm", "create", "db-1", "--image-virtual-size", "2G", "--image-actual-size",
            "1073741824", "--ha", "never-stop", "--host", h0, "--start", "--wait", *ep)
    assert ha.stdout.split() == ["db-1", "Running", f"host={h0}", "gen=1", "ha=never-stop"]
    assert cp("vm", "audit", "db-1", *ep).stdout == ""
    assert cpj("vm", "audit", "db-1", *ep) == []

    lines = cp("vm", "list", *ep).stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["db-1", "Running", f"host={h0}"],
                                                    ["web-1", "Running", f"host={h1}"]]
    assert len({line.index("host=") for line in lines}) == 1  # aligned columns
    on_h1 = cpj("vm", "list", "--host", h1, *ep)
    assert [v["vm_id"] for v in on_h1] == ["web-1"]
    assert cpj("vm", "list", "--state", "Stopped", *ep) == []

    for op, state in (("pause", "Paused"), ("resume", "Running"), ("reboot", "Running")):
        out = cp("vm", op, "web-1", "--wait", *ep).stdout
        assert out.split()[:2] == ["web-1", state], (op, out)

    # --wait that runs out of time: the answer shows the op in flight and the exit code is 1
    agent.sim().Configure(agent_pb2.ConfigureRequest(reboot_delay=wiretime.duration(3.0)),
                          timeout=5)
    slow = cp("vm", "reboot", "web-1", "--wait", "--timeout", "1.5", *ep, check=False)
    assert slow.returncode == 1, slow.stderr
    assert "still in flight" in slow.stderr
    assert slow.stdout.split()[:2] == ["web-1", "Rebooting"] and "op=reboot" in slow.stdout
    busy = cp("vm", "stop", "web-1", *ep, check=False)
    assert busy.returncode == 1 and "FAILED_PRECONDITION" in busy.stderr
    wait_until(lambda: cpj("vm", "get", "web-1", *ep).get("state") == "Running"
               and "op" not in cpj("vm", "get", "web-1", *ep), 20, interval=0.2,
               message="the slow reboot finished")

    stopped = cp("vm", "stop", "web-1", "--wait", *ep).stdout
    assert stopped.split()[:2] == ["web-1", "Stopped"]
    assert cpj("vm", "list", "--state", "Stopped", *ep)[0]["vm_id"] == "web-1"
    destroyed = cp("vm", "destroy", "web-1", "--wait", *ep).stdout
    assert destroyed.split()[:2] == ["web-1", "Destroyed"]
    forced = cp("vm", "stop", "db-1", "--force", "--wait", *ep).stdout
    assert forced.split()[:2] == ["db-1", "Stopped"]

    # errors: an unknown VM, an operation not allowed in the state
    missing = cp("vm", "get", "nope", *ep, check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"error from {node.address}: NOT_FOUND: ")
    resume = cp("vm", "resume", "db-1", *ep, check=False)
    assert resume.returncode == 1 and "FAILED_PRECONDITION" in resume.stderr
    assert "Stopped" in resume.stderr

    # a text watch, ended by Ctrl-C once it is running: exit 0, no traceback
    watcher = watch(node.address, "--initial", "--timeout", "30")
    try:
        assert watcher.stdout is not None
        text = [watcher.stdout.readline().split() for _ in range(3)]
        assert [t[:3] for t in text[:2]] == [["PUT", "db-1", "Stopped"],
                                             ["PUT", "web-1", "Destroyed"]]
        assert text[2][0] == "SYNCED" and text[2][1].startswith("rev=")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
        assert watcher.stderr is not None and "Traceback" not in watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    # without an ID: the command makes one, in the server's format
    unnamed = cpj("vm", "create", "--root-disk-offering-size", "1G", *ep)
    assert re.fullmatch(r"vm-[0-9a-f]{12}", unnamed["vm_id"]), unnamed
    assert cpj("vm", "get", unnamed["vm_id"], *ep)["state"] == "Created"


def test_bad_arguments_are_usage_errors() -> None:
    """Refused by the command itself (exit 2, argparse's message), before any call."""
    for args, flag in (
        (["vm", "create", "x", "--image-virtual-size", "-1G"], "--image-virtual-size"),
        (["vm", "create", "x", "--image-actual-size", "12Q"], "--image-actual-size"),
        (["vm", "create", "x", "--root-disk-offering-size", "1.5G"], "--root-disk-offering-size"),
        (["vm", "create", "x", "--cpus", "-2"], "--cpus"),
        (["vm", "create", "x", "--ha", "always"], "--ha"),
        (["vm", "watch", "--count", "0"], "--count"),
        (["host", "add", "h"], "--address"),
    ):
        done = cp(*args, check=False)
        assert done.returncode == 2, (args, done)
        assert "error: " in done.stderr and flag in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    wait = cp("vm", "create", "x", "--wait", check=False)
    assert wait.returncode == 2 and "--wait needs --start" in wait.stderr
    host = cp("vm", "create", "x", "--host", "h", check=False)
    assert host.returncode == 2 and "--host needs --start" in host.stderr
    helps = cp("vm", "watch", "--help").stdout
    assert "--count" in helps and "Ctrl-C" in helps
