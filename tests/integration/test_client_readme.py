"""The README's client library example runs as printed, against real nodes and an agent."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from controlplane.client import Client
from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import host_pb2

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    section = README.read_text().split("## Client library", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no python example in the README's Client library section"
    return found.group(1)


def test_the_readme_example_runs(etcd, nodes, agents) -> None:
    started = [nodes.start(f"mn-{i}", etcd.endpoints) for i in range(2)]
    wait_until(lambda: c.converged(started, {"mn-0", "mn-1"}), 15)
    agent = agents.start("ag", hosts=1)
    with Client(started[0].address, timeout=10) as client:
        client.hosts.AddHost(host_pb2.AddHostRequest(host_id=agent.host_ids[0],
                                                     address=agent.address))
    code = example()
    assert code.count("\n") <= 12
    # The watch runs until Ctrl-C in the README; here it ends at a deadline.
    code = code.replace("timeout=None", "timeout=2")
    env = {**os.environ, "CONTROLPLANE_ENDPOINT": ",".join(n.address for n in started)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"Running {agent.host_ids[0]} served by mn-"), proc.stdout
    owner = first.split("served by ")[1].split()[0]
    assert first.endswith(f"at {nodes.get(owner).address}")  # sent straight to the owner
    assert "DEADLINE_EXCEEDED" in proc.stderr  # the watch ended at our deadline, no retry
