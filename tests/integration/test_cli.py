"""The command line as an operator uses it: help, status/ring JSON shapes, the bench, exit
codes, the endpoint list from CONTROLPLANE_ENDPOINT, completion scripts, tables; and, against
an in-process fake VmService, what a test must decide exactly (a retried create, an operation
waited for that did not complete)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
from concurrent import futures

import grpc
import pytest
from rich.console import Console

from controlplane.cli import common
from controlplane.config.settings import ENV_PREFIX, SERVE_FLAGS
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.v1 import vm_pb2, vm_pb2_grpc


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
    assert empty.returncode == 1 and "INVALID_ARGUMENT" in empty.stderr


def test_bench_cluster_prints_figures() -> None:
    out = run("bench", "cluster", "--runs", "1", "--lookups", "5000", "--json").stdout
    doc = json.loads(out)
    assert doc["ring_lookups_per_s"] > 0
    # the last keepalive went out up to TTL/3 before the kill: the floor is 2/3 TTL
    assert doc["lease_ttl_s"] * 0.6 <= doc["failover_kill9_median_s"] < doc["lease_ttl_s"] + 5
    assert doc["graceful_leave_median_s"] < 5


def test_bench_churn_prints_figures() -> None:
    done = run("bench", "churn", "--duration", "6", "--kill-interval", "2", "--clients", "2",
               "--json")
    doc = json.loads(done.stdout)
    assert doc["ops"] == doc["ok"] + doc["failed"] and doc["ops"] > 0
    assert doc["kills"] >= 1 and doc["longest_wait_s"] > 0
    assert doc["vms_on_two_hosts"] == [] and doc["ha_audit_records"] == {}


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


def test_endpoint_from_environment_skips_a_dead_first_endpoint(
        etcd: EtcdCluster, nodes: NodeFactory) -> None:
    """CONTROLPLANE_ENDPOINT is the default of --endpoint: a list tried in turn, unary calls
    and the watch stream alike."""
    node = nodes.start("node-0", etcd.endpoints)
    env = {**os.environ, "CONTROLPLANE_ENDPOINT": f"127.0.0.1:{free_port()},{node.address}"}

    def env_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controlplane", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    status = env_run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert [m["node_id"] for m in json.loads(status.stdout)["members"]] == ["node-0"]
    listed = env_run("host", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    watched = env_run("vm", "watch", "--initial", "--count", "1", "--json", "--timeout", "30")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["kind"] == "KIND_SYNCED"
    # --endpoint given wins over the variable; its help names the variable
    flag = env_run("status", "--json", "--endpoint", node.address)
    assert flag.returncode == 0 and json.loads(flag.stdout)["node_id"] == "node-0"
    assert "CONTROLPLANE_ENDPOINT" in " ".join(run("vm", "list", "--help").stdout.split())


def test_rpc_error_exits_1_with_one_report(etcd: EtcdCluster, nodes: NodeFactory) -> None:
    """The server refused: exit 1, stdout empty, one report on stderr (a JSON object with
    --json)."""
    node = nodes.start("node-0", etcd.endpoints)
    text = run("vm", "get", "nope", "--endpoint", node.address, check=False)
    assert text.returncode == 1 and text.stdout == ""
    assert text.stderr.startswith(f"error from {node.address}: NOT_FOUND: ")
    assert len(text.stderr.splitlines()) == 1
    done = run("vm", "get", "nope", "--endpoint", node.address, "--json", check=False)
    assert done.returncode == 1 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    error = json.loads(done.stderr)["error"]
    assert (error["code"], error["endpoint"]) == ("NOT_FOUND", node.address)
    assert error["details"] and error["details"] in text.stderr
    unreachable = run("host", "list", "--endpoint", f"127.0.0.1:{free_port()}", "--json",
                      check=False)
    assert unreachable.returncode == 1
    assert json.loads(unreachable.stderr)["error"]["code"] == "UNAVAILABLE"


def test_usage_errors_exit_2() -> None:
    """argparse's message, exit 2, no call made (the endpoints are closed ports)."""
    dead = f"127.0.0.1:{free_port()}"
    for args, needle in (
        (["vm", "frobnicate", "--endpoint", dead], "invalid choice"),
        (["vm", "list", "--endpoint", "nohost"], "--endpoint"),
        (["vm", "list", "--endpoint", f"{dead},h:70000"], "--endpoint"),
        (["vm", "list", "--timeout", "0", "--endpoint", dead], "--timeout"),
        (["host", "add", "h", "--address", "noport", "--endpoint", dead], "--address"),
        (["completion", "fish"], "invalid choice"),
    ):
        done = run(*args, check=False)
        assert done.returncode == 2, (args, done)
        assert needle in done.stderr and "error from" not in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    # Arguments that parse but not together: the sub-command's own usage, not the root's.
    together = run("vm", "create", "x", "--wait", "--endpoint", dead, check=False)
    assert together.returncode == 2 and "--wait needs --start" in together.stderr
    assert together.stderr.startswith("usage: controlplane vm create ")
    assert "controlplane vm create: error: " in together.stderr
    bad_env = subprocess.run([sys.executable, "-m", "controlplane", "status"],
                             env={**os.environ, "CONTROLPLANE_ENDPOINT": "nope"},
                             capture_output=True, text=True, timeout=60)
    assert bad_env.returncode == 2 and "--endpoint" in bad_env.stderr


def test_completion_scripts() -> None:
    bash = run("completion", "bash").stdout
    assert "complete " in bash and "controlplane" in bash
    for word in ("vm", "host", "storage", "live-snapshot", "--endpoint"):
        assert word in bash, word
    zsh = run("completion", "zsh").stdout
    assert zsh.startswith("#compdef controlplane") and "live-snapshot" in zsh
    checked = subprocess.run(["bash", "-n"], input=bash, capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_tables_on_a_terminal_and_elsewhere() -> None:
    """On a terminal a rich table with a header; elsewhere the same layout without it (and
    without trailing blanks), the lines the other CLI tests read."""
    rows = [["h-0", "CONNECTED", "127.0.0.1:1", "owner=mn-0"],
            ["host-10", "DISCONNECTED", "[::1]:7070", "owner=-"]]
    header = ["HOST", "STATUS", "AGENT", "OWNER"]
    plain = common.aligned(rows)
    assert plain == ["h-0      CONNECTED     127.0.0.1:1  owner=mn-0",
                     "host-10  DISCONNECTED  [::1]:7070   owner=-"]
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None,
                      highlight=False, markup=False)
    console.print(common.rich_table(rows, None))
    assert [line.rstrip() for line in console.file.getvalue().splitlines()] == plain
    console = Console(file=io.StringIO(), width=200, force_terminal=True,
                      color_system="standard", highlight=False, markup=False)
    console.print(common.rich_table(rows, header))
    out = console.file.getvalue()
    assert "\x1b[" in out  # coloured states
    text = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert text[0].split() == header and [line.split() for line in text[1:]] == rows


class FakeVms(vm_pb2_grpc.VmServiceServicer):
    """A VmService answering as the test says: the first CreateVm UNAVAILABLE (a node that
    was not ready), operations with the VM given in `answer`."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.answer = vm_pb2.Vm()
        self.lock = threading.Lock()

    def CreateVm(self, request, context):
        with self.lock:
            self.created.append(request.vm_id)
            first = len(self.created) == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not ready yet")
        return vm_pb2.CreateVmResponse(vm=vm_pb2.Vm(vm_id=request.vm_id, state="Created"))

    def StartVm(self, request, context):
        return vm_pb2.StartVmResponse(vm=self.answer)


@pytest.fixture
def fake_vms():
    fake = FakeVms()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    vm_pb2_grpc.add_VmServiceServicer_to_server(fake, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, harness_pki().server_credentials())
    server.start()
    yield fake, address
    server.stop(0)


def test_a_retried_create_without_an_id_names_one_vm(fake_vms) -> None:
    """The id is made by the command, once: the retry after UNAVAILABLE asks for the same VM
    (a node generating it would have made two VMs had the first attempt taken effect)."""
    fake, address = fake_vms
    done = run("vm", "create", "--image-virtual-size", "1G", "--endpoint", address, "--json",
               check=False)
    assert done.returncode == 0, done.stderr
    assert len(fake.created) == 2 and fake.created[0] == fake.created[1]
    assert re.fullmatch(r"vm-[0-9a-f]{12}", fake.created[0])  # the server's own format
    assert json.loads(done.stdout)["vm_id"] == fake.created[0]


@pytest.mark.parametrize(("answer", "code", "words"), [
    (vm_pb2.Vm(vm_id="v", state="Starting", op=vm_pb2.Op(op_id="o1", kind="start")),
     "DEADLINE_EXCEEDED", "still in flight"),
    (vm_pb2.Vm(vm_id="v", state="Stopped", last_op=vm_pb2.LastOp(
        op_id="o1", kind="start", outcome="failed", detail="no room")), "ABORTED", "no room"),
    (vm_pb2.Vm(vm_id="v", state="Unknown", last_op=vm_pb2.LastOp(
        op_id="o1", kind="start", outcome="unknown")), "UNKNOWN", "unknown"),
])
def test_a_wait_that_did_not_complete_is_reported_by_the_one_printer(fake_vms, answer, code,
                                                                    words) -> None:
    """Exit 1 after printing the VM; the reason as the JSON error object on stderr with
    --json (a script parses it), as `error from ENDPOINT: CODE: ...` without."""
    fake, address = fake_vms
    fake.answer = answer
    done = run("vm", "start", "v", "--wait", "--endpoint", address, "--json", check=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["vm_id"] == "v"
    assert len(done.stderr.splitlines()) == 1, done.stderr
    error = json.loads(done.stderr)["error"]
    assert (error["code"], error["endpoint"]) == (code, address)
    assert words in error["details"]
    text = run("vm", "start", "v", "--wait", "--endpoint", address, check=False)
    assert text.returncode == 1 and text.stdout.split()[:2] == ["v", answer.state]
    assert text.stderr.startswith(f"error from {address}: {code}: ") and words in text.stderr
