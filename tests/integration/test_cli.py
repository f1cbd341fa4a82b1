"""The command line as an operator uses it: help, status/ring JSON shapes, the bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from controlplane.config.settings import ENV_PREFIX, SERVE_FLAGS
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pytest_plugin import NodeFactory


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane", *args], capture_output=True,
                          text=True, timeout=120, check=check)


def test_serve_help_documents_every_env_variable() -> None:
    text = run("serve", "--help").stdout
    for f in SERVE_FLAGS:
        assert f.flag in text
        assert f.env.startswith(ENV_PREFIX)
        assert f.env in text.replace("\n", "").replace(" ", "")


def test_serve_reads_settings_from_environment(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    node = nodes.start("env-node", etcd.endpoints, env={"CONTROLPLANE_PREFIX": "/envtest"})
    doc = json.loads(run("status", "--endpoint", node.address, "--json").stdout)
    assert [m["node_id"] for m in doc["members"]] == ["env-node"]
    bad = run("serve", "--node-id", "bad/id", check=False)
    assert bad.returncode == 2 and "node-id" in bad.stderr


def test_status_and_ring_owner_json(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    a = nodes.start("node-0", etcd.endpoints)
    nodes.start("node-1", etcd.endpoints)
    doc = json.loads(run("status", "--endpoint", a.address, "--json").stdout)
    assert {"members", "ring_epoch", "lease_ttl", "shares"} <= set(doc)
    assert doc["lease_ttl"] == 2
    assert doc["members"] and {"node_id", "address", "incarnation"} <= set(doc["members"][0])
    assert abs(sum(doc["shares"].values()) - 1.0) < 1e-9
    owner = json.loads(run("ring", "owner", "vm-7", "--endpoint", a.address, "--json").stdout)
    located = json.loads(
        run("ring", "owner", "vm-7", "--locate", "--endpoint", a.address, "--json").stdout)
    assert owner["owner"] == located["owner"]
    empty = run("ring", "owner", "", "--endpoint", a.address, check=False)
    assert empty.returncode == 2 and "INVALID_ARGUMENT" in empty.stderr


def test_bench_cluster_prints_figures() -> None:
    out = run("bench", "cluster", "--runs", "1", "--lookups", "5000", "--json").stdout
    doc = json.loads(out)
    assert doc["ring_lookups_per_s"] > 0
    # the last keepalive went out up to TTL/3 before the kill: the floor is 2/3 TTL
    assert doc["lease_ttl_s"] * 0.6 <= doc["failover_kill9_median_s"] < doc["lease_ttl_s"] + 5
    assert doc["graceful_leave_median_s"] < 5


def test_bad_settings_are_refused_cleanly_from_flags_and_environment() -> None:
    for args in (["--prefix", "x"], ["--vnodes", "0"], ["--etcd", "nope"],
                 ["--log-format", "xml"], ["--lease-ttl", "1"], ["--metrics-port", "70000"]):
        done = run("serve", "--node-id", "a", *args, check=False)
        assert done.returncode == 2 and "error: argument" in done.stderr, args
        assert "Traceback" not in done.stderr
    env_run = subprocess.run([sys.executable, "-m", "controlplane", "serve"],
                             env={**os.environ, "CONTROLPLANE_NODE_ID": "a",
                                  "CONTROLPLANE_LEASE_TTL": "1"},
                             capture_output=True, text=True, timeout=60)
    assert env_run.returncode == 2 and "--lease-ttl" in env_run.stderr
    assert "Traceback" not in env_run.stderr
