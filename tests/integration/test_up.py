"""`controlplane up` end to end: real etcd, real node processes, a real SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from controlplane.testing.ports import free_port

# What `up` prints (stdout not a terminal) when a node's report changes.
NODE_LINE = re.compile(r" (node-\d+) ready=(yes|no) epoch=(\d+) members=(\S+)")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int) -> int:
    """A base port whose node (P+i), metrics (P+100+i) and etcd (P+1000, +1) ports are free."""
    offsets = [*range(nodes), *(100 + i for i in range(nodes)), 1000, 1001]
    for _ in range(200):
        base = free_port()
        if base + max(offsets) < 65536 and all(_bindable(base + off) for off in offsets):
            return base
    raise RuntimeError("no free base port")


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes (other than this one) that contain any needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _reader(stream, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _up_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "controlplane", "up", *args]


def test_up_starts_a_cluster_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    base = free_base_port(2)
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        _up_cmd("--nodes", "2", "--base-port", str(base), "--lease-ttl", "2",
                "--data-dir", str(data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    reader.start()
    output: list[str] = []

    def read_until(done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}; output:\n" + "\n".join(output)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"`up` exited ({proc.wait()}) before {what}; output:\n" + (
                "\n".join(output))
            output.append(line)

    try:
        # node id -> (ready, epoch, members), from the latest line about that node
        latest: dict[str, tuple[str, int, str]] = {}

        def both_ready_same_epoch() -> bool:
            if output and (m := NODE_LINE.search(output[-1])):
                latest[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
            states = [latest.get(n) for n in ("node-0", "node-1")]
            return (all(s is not None and s[0] == "yes" and s[2] == "node-0,node-1"
                        for s in states)
                    and len({s[1] for s in states if s is not None}) == 1)

        read_until(both_ready_same_epoch, 60, "both nodes ready at the same epoch")

        status = subprocess.run(
            [sys.executable, "-m", "controlplane", "status", "--endpoint",
             f"127.0.0.1:{base}", "--json"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert sorted(m["node_id"] for m in doc["members"]) == ["node-0", "node-1"]
        assert doc["ring_epoch"] == latest["node-0"][1]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        reader.join(timeout=5)
        while (line := lines.get_nowait() if not lines.empty() else None) is not None:
            output.append(line)
        assert code == 0, "\n".join(output)
        assert output[-1].endswith("stopped cleanly"), "\n".join(output)
        assert "node-0 stopped (exit code 0)" in "\n".join(output)
        left = processes_mentioning(f"127.0.0.1:{base}", str(data_dir))
        assert not left, f"processes left behind: {left}"
        # --data-dir given: kept, with etcd's data and every log
        assert (data_dir / "etcd").is_dir()
        assert (data_dir / "etcd.log").is_file()
        assert (data_dir / "logs" / "node-1.log").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()  # its children get SIGTERM through PR_SET_PDEATHSIG
            proc.wait()


def test_up_refuses_a_port_in_use_and_bad_node_count(tmp_path: Path) -> None:
    base = free_base_port(1)
    data_dir = tmp_path / "up"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        result = subprocess.run(
            _up_cmd("--nodes", "1", "--base-port", str(base), "--data-dir", str(data_dir)),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result
    assert f"port {base}" in result.stderr and "in use" in result.stderr, result.stderr
    assert not data_dir.exists(), "nothing should be started or created"

    result = subprocess.run(_up_cmd("--nodes", "0", "--base-port", str(base)),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result
    assert "--nodes" in result.stderr, result.stderr
