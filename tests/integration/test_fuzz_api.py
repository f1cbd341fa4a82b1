"""Every RPC of every process, fed hostile requests generated from the descriptors.

A cluster from the harness (real etcd, two management nodes, a sim agent with three hosts,
a sim MDS, a primary storage, images with snapshots, VMs running, stopped and idle, a
finished block job) plus an agent and an MDS that are deliberately down. The services come
from the ``controlplane.v1`` modules and each process's reflection; requests from
``controlplane.testing.fuzz`` (descriptor-driven: no method or request type is named here,
so the test follows the API as it changes). Each call has a 5 s deadline.

Allowed answers: OK, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS,
ABORTED, OUT_OF_RANGE, RESOURCE_EXHAUSTED. UNAVAILABLE only (a) for a request naming
something deliberately unreachable (the down agent's host, address or VM, the down MDS's
address, the storage whose only MDS is down, or any HOST:PORT no process of the test
serves), or (b) after a fault was injected (an OK from a ``Sim*`` fault-injection service
or from ``Fence``) until the fixture healed it. Never UNKNOWN, INTERNAL, CANCELLED,
UNIMPLEMENTED, a DEADLINE_EXCEEDED before the deadline, or no answer within it.

Invariants: no file created outside the image and etcd directories (the tree of the test
session's tmp root walked after every call, ~0.3 ms; the processes run with their cwd
inside it, so relative paths land there too), no record in etcd over ``MAX_RECORD_BYTES``
(64 KiB: with ids bounded to 256 bytes a legitimate record here is a few KiB; etcd's own
request limit is 1.5 MiB) or key over ``MAX_KEY_BYTES`` (read through controlplane.store
after every method), no process dead (a dead one is restarted to go on), and at the end
every node live and ready (grpc.health.v1 Check SERVING), the agent and the MDS running.

The slow variant sweeps more edge values over more seeds, draws many more examples, and
fuzzes the node services again under injected faults (the MDS hanging, a host partitioned,
a slow agent): UNAVAILABLE is allowed there for every call, and so is a call that lasts
until its deadline (never a DEADLINE_EXCEEDED before it).

Methods that change or destroy (their verb: Destroy, Remove, Fence, ...) run after the
others of their service, fault-injection services run last, and after each service the
fixture heals what the test needs (faults cleared, hosts re-added and reconnected, VMs
restarted or replaced under a new id, settings restored, a dead process restarted and
recorded as a finding). Failures are collected, not raised one by one (no shrinking: one
call can take seconds), and reported together: method, problem, details, request shape.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2  # noqa: F401 - puts grpc.health.v1 in the pool
from hypothesis import HealthCheck, Phase, given, settings

from controlplane.rpc import valid_address
from controlplane.serving import ServingProcess
from controlplane.store.client import Store
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing import fuzz as fz
from controlplane.testing.agents import AgentProcess
from controlplane.testing.mds import MdsProcess
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.ports import free_ports

DEADLINE = 5.0
MAX_RECORD_BYTES = 64 << 10
MAX_KEY_BYTES = 1024
MiB = 1 << 20
ALLOWED = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
})
# Fast host checks so the down agent's host goes DISCONNECTED during the run.
SETTINGS = {"vm.syncInterval": "0.3", "host.pingTimeout": "1", "host.pingFailures": "2",
            "storage.mdsCheckInterval": "1", "storage.mdsAttemptTimeout": "1"}
# Verbs of methods that change or destroy what later methods need: they run last in their
# service. An ordering aid only: a verb missing here costs depth, not correctness.
LATE_VERBS = ("Update", "Set", "Configure", "Seed", "Crash", "Stop", "Pause", "Reboot",
              "Cancel", "Complete", "Release", "Close", "Merge", "Delete", "Remove", "Destroy",
              "Reset", "Fence")
FAULT_PREFIX = "Sim"  # fault-injection services: Sim* (SimControl, SimMdsControl)
FAULT_METHODS = ("Fence",)  # powers a host off out of band
# Services fuzzed nowhere: server reflection is a bidirectional stream of grpcio's own.
SKIPPED = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


@dataclass
class Fleet:
    """The cluster under fuzz, the ids of its objects, and how to heal it."""

    tmp_path: Path
    etcd_endpoints: str
    nodes: list[NodeProcess]
    agent: AgentProcess
    mds: MdsProcess
    cwd: Path
    pool: fz.IdPool
    down: set[str]  # ids and addresses of what is deliberately unreachable
    down_agent_address: str = ""
    findings: fz.Findings = field(default_factory=fz.Findings)
    corpus: fz.Corpus = field(default_factory=fz.Corpus)
    faulted: bool = False
    hanging: bool = False  # the under-faults phase: an MDS hangs, an agent is slow
    served: dict[str, list[ServingProcess]] = field(default_factory=dict)
    calls: int = 0
    codes: dict[str, Counter[str]] = field(default_factory=dict)  # per method, for the report
    replaced: itertools.count = field(default_factory=lambda: itertools.count(1))
    fresh: itertools.count = field(default_factory=itertools.count)  # new ids: fz0, fz1...
    tree: set[str] = field(default_factory=set)  # the walked tree as last seen
    reported_keys: set[str] = field(default_factory=set)

    @property
    def processes(self) -> list[ServingProcess]:
        return [*self.nodes, self.agent, self.mds]

    def node(self) -> grpc.Channel:
        return self.nodes[0].channel()

    def live_addresses(self) -> set[str]:
        return {p.address for p in self.processes}

    # -- invariants --------------------------------------------------------------------

    def new_files_outside(self) -> list[str]:
        """Paths created since the last look, outside the image and etcd directories (and
        not a process log); the baseline moves on, so each is reported once."""
        now = snapshot_tree(self.tmp_path.parent)
        new, self.tree = now - self.tree, now
        allowed = [str(self.tmp_path / "nodes" / "images"), str(self.tmp_path / "etcd")]
        return sorted(p for p in new if not p.endswith(".log") and not any(
            p == root or p.startswith(root + os.sep) for root in allowed))

    def oversized_records(self) -> list[str]:
        """Records over MAX_RECORD_BYTES (or keys over MAX_KEY_BYTES) in etcd now, read
        through controlplane.store; each key reported once."""
        store = Store(self.etcd_endpoints)
        try:
            kvs, _ = store.list_prefix(DEFAULT_PREFIX + "/")
        finally:
            store.close()
        problems = []
        for kv in kvs:
            key = kv.key.decode(errors="replace") if isinstance(kv.key, bytes) else str(kv.key)
            size = len(kv.value)
            if (size > MAX_RECORD_BYTES or len(key.encode()) > MAX_KEY_BYTES) \
                    and key not in self.reported_keys:
                self.reported_keys.add(key)
                kind = key[len(DEFAULT_PREFIX) + 1:].split("/", 1)[0]
                problems.append(f"{kind} record of {size} bytes, key of {len(key.encode())} "
                                f"bytes (limits {MAX_RECORD_BYTES}, {MAX_KEY_BYTES}): "
                                f"{key[:80]!r}")
        return problems

    # -- judging ---------------------------------------------------------------------

    def unavailable_allowed(self, request: Message) -> bool:
        if self.faulted:
            return True
        live = self.live_addresses()
        for text in fz.string_values(request):
            if any(token in text for token in self.down):
                return True
            if valid_address(text) and text not in live:
                return True
        return False

    def judge(self, method: MethodDescriptor, request: Message, out: fz.Outcome) -> None:
        code = out.code
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if out.elapsed >= DEADLINE - 0.25 and self.hanging:
                return  # a dependency made to hang: the caller's deadline ends the call
            problem = ("DEADLINE_EXCEEDED before the deadline" if out.elapsed < DEADLINE - 0.25
                       else f"no answer within the {DEADLINE:g} s deadline")
        elif code in ALLOWED:
            return
        elif code == grpc.StatusCode.UNAVAILABLE and self.unavailable_allowed(request):
            return
        else:
            problem = code.name
        self.findings.add(method.full_name, problem, out.details, fz.shape(request))

    # -- healing ---------------------------------------------------------------------

    def invoke(self, service: str, method: str, fields: dict[str, Any],
               channel: grpc.Channel | None = None, timeout: float = DEADLINE) -> Message:
        """A fixture call (raises grpc.RpcError); answered OK, it seeds the corpus."""
        return fz.invoke(channel or self.node(), service, method, fields, timeout,
                         corpus=self.corpus)

    def quiet(self, service: str, method: str, fields: dict[str, Any],
              channel: grpc.Channel | None = None, timeout: float = DEADLINE) -> Message | None:
        try:
            return self.invoke(service, method, fields, channel, timeout)
        except grpc.RpcError:
            return None

    def revive(self) -> None:
        """A process that died is a finding; restart it (in the fuzz cwd) to go on."""
        for proc in self.processes:
            if not proc.is_running():
                self.findings.add(f"process {proc.name}", "died", f"exit {proc.returncode}",
                                  "see its log")
                with contextlib.chdir(self.cwd):
                    proc.restart().wait_ready()

    def heal(self) -> None:
        """Clear injected faults and bring back what later methods need (best effort)."""
        self.revive()
        mds = self.mds.channel()
        self.quiet("SimMdsControlService", "Reset", {"volumes": False}, mds)
        self.quiet("StorageMdsService", "CreateVolume", {"volume_id": "vol-0", "size_bytes": MiB},
                   mds)
        self.quiet("SimMdsControlService", "SetVolumeClients", {"volume_id": "vol-0", "clients": [
            {"client_id": self.agent.host_ids[0], "address": "127.0.0.1"}]}, mds)
        sim = self.agent.sim_channel()
        self.quiet("SimControlService", "Configure", {
            "start_delay": "0s", "stop_delay": "0s", "reboot_delay": "0s", "pause_delay": "0s",
            "device_info_failure_rate": 0, "report_ops": True}, sim)
        for host_id in self.agent.host_ids:
            self.quiet("SimControlService", "SetHostCondition", {"host_id": host_id,
                                                                 "condition": 1},
                       sim)
        listed = self.quiet("ConfigService", "ListConfig", {})
        for entry in fz.records(listed, "key") if listed is not None else ():
            want = SETTINGS.get(entry.key, getattr(entry, "default_value", entry.value))
            if entry.value != want:
                self.quiet("ConfigService", "UpdateConfig", {"key": entry.key, "value": want})
        for host_id in self.agent.host_ids:
            host = self.quiet("HostService", "GetHost", {"host_id": host_id})
            if host is None:
                self.quiet("HostService", "AddHost", {"host_id": host_id,
                                                      "address": self.agent.address})
            elif next(fz.records(host, "status")).status != 1:  # not CONNECTED
                self.quiet("HostService", "ReconnectHost", {"host_id": host_id})
        for storage_id, addresses in (("ps-0", [self.mds.address, *self.down_mds()]),):
            if self.quiet("StorageService", "GetPrimaryStorage", {"storage_id": storage_id}) \
                    is None:
                self.quiet("StorageService", "AddPrimaryStorage",
                           {"storage_id": storage_id, "mds_addresses": addresses})
        if self.quiet("VolumeService", "GetVolumeChain", {"image_id": "img-free"}) is None:
            make_image(self, "img-free", "")
        for vm_id in ("vm-run", "vm-ha"):
            self.keep_running(vm_id)
        self.faulted = self.hanging = False

    def inject_faults(self) -> None:
        """The faults of the under-faults phase (enum values by number: wire-stable): the
        MDS hangs on every method, one host is partitioned, the agent is slow (2 s per
        operation), one in three device-info calls fails."""
        self.faulted = self.hanging = True
        self.quiet("SimMdsControlService", "SetFault", {"method": "", "mode": 3},
                   self.mds.channel())
        self.quiet("SimControlService", "SetHostCondition", {"host_id": self.agent.host_ids[2],
                                                      "condition": 3},
                   self.agent.sim_channel())
        self.quiet("SimControlService", "Configure", {"start_delay": "2s", "stop_delay": "2s",
                                               "device_info_failure_rate": 0.3},
                   self.agent.sim_channel())

    def down_mds(self) -> list[str]:
        return [a for a in self.down if valid_address(a) and a != self.down_agent_address]

    def keep_running(self, vm_id: str) -> None:
        """The VM (or its latest replacement) Running; a destroyed one is replaced."""
        current = [v for v in self.pool.kinds().get("vm_id", []) if v.startswith(vm_id)][-1]
        vm = self.quiet("VmService", "GetVm", {"vm_id": current})
        state = next(fz.records(vm, "state")).state if vm is not None else "Destroyed"
        if state in ("Stopped", "Created"):
            self.quiet("VmService", "StartVm", {"vm_id": current, "wait": True,
                                                "host_id": self.agent.host_ids[0]})
        elif state == "Paused":
            self.quiet("VmService", "ResumeVm", {"vm_id": current, "wait": True})
        elif state == "Destroyed":
            new = f"{vm_id}-r{next(self.replaced)}"
            if self.quiet("VmService", "CreateVm", {
                    "vm_id": new, "ha": 1 if vm_id == "vm-ha" else 0, "start": True,
                    "wait": True, "host_id": self.agent.host_ids[0],
                    "image": {"image_id": "img-run", "virtual_size": 64 * MiB,
                              "actual_size": MiB}}) is not None:
                self.pool.add("vm_id", new)


def make_image(fleet: Fleet, image_id: str, vm_id: str) -> None:
    """base <- s1, the volumes' paths into the pool."""
    fleet.invoke("VolumeService", "CreateImage",
                 {"image_id": image_id, "size_bytes": 64 * MiB, "vm_id": vm_id}, timeout=30)
    chain = fleet.invoke("VolumeService", "CreateSnapshot",
                         {"image_id": image_id, "volume_id": "s1"}, timeout=30)
    fleet.pool.add("path", *(v.path for v in fz.records(chain, "path")))


def snapshot_tree(root: Path) -> set[str]:
    paths: set[str] = set()
    for top, dirs, files in os.walk(root):
        paths.update(os.path.join(top, name) for name in (*dirs, *files))
    return paths


@contextlib.contextmanager
def started_mds(tmp_path: Path, names: list[str]) -> Iterator[list[MdsProcess]]:
    procs = [MdsProcess(n, port, str(tmp_path / "mds")) for n, port in
             zip(names, free_ports(len(names)), strict=True)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def fleet(etcd, nodes, agents, tmp_path: Path) -> Iterator[Fleet]:  # type: ignore[no-untyped-def]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The children run in cwd (inside the walked tree): a relative path lands there.
    with contextlib.ExitStack() as stack:
        with contextlib.chdir(cwd):
            mds, mds_gone = stack.enter_context(started_mds(tmp_path, ["mds-0", "mds-gone"]))
            node_a = nodes.start("mn-a", etcd.endpoints)
            node_b = nodes.start("mn-b", etcd.endpoints)
            agent = agents.start("ag", hosts=3)
            gone = agents.start("gone", hosts=1)
        down = {gone.address, *gone.host_ids, "vm-gone", mds_gone.address, "ps-gone"}
        f = Fleet(tmp_path, etcd.endpoints, [node_a, node_b], agent, mds, cwd, fz.IdPool(),
                  down, down_agent_address=gone.address)
        yield from _build(f, gone, mds_gone)


def _build(f: Fleet, gone: AgentProcess, mds_gone: MdsProcess) -> Iterator[Fleet]:
    for key, value in SETTINGS.items():
        f.invoke("ConfigService", "UpdateConfig", {"key": key, "value": value})
    for agent in (f.agent, gone):
        for host_id in agent.host_ids:
            f.invoke("HostService", "AddHost", {"host_id": host_id, "address": agent.address})
    f.invoke("StorageMdsService", "CreateVolume", {"volume_id": "vol-0", "size_bytes": MiB},
             f.mds.channel())
    f.invoke("StorageService", "AddPrimaryStorage",
             {"storage_id": "ps-0", "mds_addresses": [f.mds.address, mds_gone.address]})
    f.invoke("StorageService", "AddPrimaryStorage",
             {"storage_id": "ps-gone", "mds_addresses": [mds_gone.address]})
    make_image(f, "img-free", "")
    make_image(f, "img-run", "vm-run")
    h0, h1, _h2 = f.agent.host_ids
    image = {"image_id": "img-run", "virtual_size": 64 * MiB, "actual_size": MiB}
    start = {"start": True, "wait": True}
    for vm_id, extra in (("vm-run", {**start, "host_id": h0}),
                         ("vm-ha", {**start, "host_id": h1, "ha": 1}),
                         ("vm-stopped", {**start, "host_id": h1}),
                         ("vm-idle", {}),
                         ("vm-gone", {**start, "host_id": gone.host_ids[0]})):
        f.invoke("VmService", "CreateVm",
                 {"vm_id": vm_id, "cpus": 1, "memory_mb": 256, "image": image, **extra})
    f.invoke("VmService", "StopVm", {"vm_id": "vm-stopped", "wait": True})
    job = f.invoke("VolumeService", "LiveSnapshot",
                   {"image_id": "img-run", "job_id": "snap-0"}, timeout=60)
    # Seeds for the sweep: read-only calls that reach deep when answered OK.
    agent, mds = f.agent.channel(), f.mds.channel()
    for service, method, fields, channel in (
            ("StorageService", "GetVolumeClients", {"storage_id": "ps-0", "volume_id": "vol-0"},
             None),
            ("VolumeService", "GetBlockJob", {"job_id": "snap-0"}, None),
            ("VolumeService", "ReconcileVolumeChain", {"image_id": "img-free"}, None),
            ("ClusterService", "Locate", {"resource_id": "vm-run"}, None),
            ("VmService", "ListHaAudit", {"vm_id": "vm-ha"}, None),
            ("AgentService", "Ping", {"host_id": h0}, agent),
            ("AgentService", "ListVms", {"host_id": h0}, agent),
            ("AgentService", "SyncVmDeviceInfo", {"host_id": h0, "vm_id": "vm-run"}, agent),
            ("AgentBlockJobsService", "GetDiskChain", {"vm_id": "vm-run"}, agent),
            ("StorageMdsService", "GetVolume", {"volume_id": "vol-0"}, mds),
            ("StorageMdsService", "GetVolumeClients", {"volume_id": "vol-0"}, mds)):
        f.quiet(service, method, fields, channel)
    gone.kill()
    mds_gone.kill()

    members = [m.node_id for m in fz.records(
        f.invoke("ClusterService", "GetRing", {}), "node_id")]
    config_keys = [e.key for e in fz.records(f.invoke("ConfigService", "ListConfig",
                                                       {}), "key")]
    paths = [*f.pool.for_field("path"), *(v for v in (getattr(job, "output", ""),) if v),
             str(f.tmp_path / "outside.qcow2"), str(f.tmp_path.parent / "fuzz-abs" / "x")]
    all_hosts = [*f.agent.host_ids, *gone.host_ids]
    vm_ids = ["vm-run", "vm-ha", "vm-stopped", "vm-idle", "vm-gone"]
    targets = [*f.processes, SimPort(f.agent)]
    services = sorted({name for p in targets for name in fz.served_services(p.channel())})
    kinds: dict[str, list[str]] = {
        "vm_id": vm_ids, "host_id": all_hosts, "client_id": all_hosts,
        "image_id": ["img-free", "img-run"], "volume_id": ["base", "s1", "vol-0"],
        "leaf_id": ["base", "s1"], "storage_id": ["ps-0", "ps-gone"], "job_id": ["snap-0"],
        "node_id": members, "resource_id": [*vm_ids, *all_hosts, "img-run", "ps-0"],
        "address": sorted({*(p.address for p in f.processes), gone.address, mds_gone.address}),
        "key": config_keys, "path": paths, "top": paths, "base": paths, "target": paths,
        "output": paths, "service": ["", "liveness", "readiness", *services],
        "method": [m.name for s in fz.controlplane_services().values() for m in s.methods],
        "sync": ["top", "full"], "state": ["Running", "Stopped", "Created", "Unknown"],
        "kind": ["start", "stop", "live-snapshot"], "value": ["1", "0.5", "600"],
    }
    for kind, ids in kinds.items():
        f.pool.add(kind, *ids)
    for proc in targets:
        for name in fz.served_services(proc.channel()):
            f.served.setdefault(name, []).append(proc)
    yield f


@dataclass
class SimPort:
    """The agent's SimControl port (`--sim-control-listen`, not the agent's own) as a fuzz
    target: fuzzed like a process, restarted with its agent."""

    agent: AgentProcess

    @property
    def name(self) -> str:
        return f"{self.agent.name} sim control"

    @property
    def address(self) -> str:
        return self.agent.sim_address

    def channel(self) -> grpc.Channel:
        return self.agent.sim_channel()

    def is_running(self) -> bool:
        return self.agent.is_running()


# -- the run ------------------------------------------------------------------------------

def _late(method: MethodDescriptor) -> bool:
    return method.name.startswith(LATE_VERBS)


def _ordered(fleet: Fleet) -> list[ServiceDescriptor]:
    """Node services first, then the agent's and the MDS's, fault injection last."""
    services = []
    for name in fleet.served:
        if name in SKIPPED:
            continue
        service = fz.find_service(name)
        assert service is not None, f"{name} is served but no descriptor of it is importable"
        services.append(service)

    def rank(service: ServiceDescriptor) -> tuple[int, int, str]:
        first = fleet.served[service.full_name][0]
        kind = 0 if first in fleet.nodes else 1 if first is fleet.agent else 2
        return (service.name.startswith(FAULT_PREFIX), kind, service.full_name)
    return sorted(services, key=rank)


def fuzz_method(fleet: Fleet, method: MethodDescriptor, examples: int, thorough: bool,
                derandomize: bool) -> None:
    """The one-field sweep of the method's first seed (every seed when ``thorough``), then
    ``examples`` hypothesis requests (no shrinking: failures are recorded, not raised)."""
    service = method.containing_service
    targets = fleet.served[service.full_name]
    turn = itertools.count()
    injects = service.name.startswith(FAULT_PREFIX) or method.name in FAULT_METHODS

    def one(request: Message) -> None:
        target = targets[next(turn) % len(targets)]
        if not target.is_running():
            return  # died on an earlier request: revive() records it after the method
        out = fz.call(target.channel(), method, request, DEADLINE)
        fleet.calls += 1
        fleet.codes.setdefault(method.full_name, Counter())[out.code.name] += 1
        fleet.judge(method, request, out)
        for path in fleet.new_files_outside():  # a walk of a small tree: ~0.3 ms
            fleet.findings.add(method.full_name, f"{out.code.name}, and a file created "
                               "outside the data and image directories", path,
                               fz.shape(request))
        if out.code == grpc.StatusCode.OK:
            fleet.corpus.add(method, request)
            fleet.faulted = fleet.faulted or injects

    cls = fz.message_class(method.input_type)
    seeds = [cls.FromString(b) for b in fleet.corpus.seeds(method)] or [cls()]
    for seed in seeds[:4] if thorough else seeds[:1]:
        for request in fz.sweep(method.input_type, seed, thorough=thorough,
                                fresh=lambda: f"fz{next(fleet.fresh)}"):
            one(request)

    @settings(max_examples=examples, deadline=None, derandomize=derandomize,
              database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fz.requests(method, fleet.pool, fleet.corpus))
    def run(request: Message) -> None:
        one(request)

    run()
    fleet.revive()
    for path in fleet.new_files_outside():  # one created after its call was answered
        fleet.findings.add(method.full_name, "file created outside the data and image "
                           "directories", path, "(a request of this method)")
    for problem in fleet.oversized_records():
        fleet.findings.add(method.full_name, "oversized etcd record", problem,
                           "(a request of this method)")


def fuzz_service(fleet: Fleet, service: ServiceDescriptor, examples: int, thorough: bool,
                 derandomize: bool) -> None:
    """Every method (changing ones last; client streams are not fuzzed), then heal."""
    for method in sorted(service.methods, key=_late):  # stable: descriptor order otherwise
        if not method.client_streaming:
            fuzz_method(fleet, method, examples, thorough, derandomize)
    fleet.heal()


def check_after(fleet: Fleet) -> list[str]:
    """The invariants of the whole run (files and records are checked as the run goes, so
    each is reported under the method or service that made it); one line per violation."""
    problems: list[str] = []
    for node in fleet.nodes:
        for service in ("liveness", "readiness"):
            status = node.health(service, timeout=5)
            if status != "SERVING":
                problems.append(f"node {node.node_id}: health {service} is {status}")
    for proc in (fleet.agent, fleet.mds):
        if not proc.is_running():
            problems.append(f"{proc.name} is not running ({proc.returncode})")
    return problems


def fuzz_all(fleet: Fleet, examples: int, *, thorough: bool, derandomize: bool,
             under_faults: bool = False, report: Callable[[str], None] = print) -> None:
    services = _ordered(fleet)
    declared = set(fz.controlplane_services())
    assert declared <= set(fleet.served), \
        f"services no process of the test serves (not fuzzed): {declared - set(fleet.served)}"
    fleet.heal()
    fleet.tree = snapshot_tree(fleet.tmp_path.parent)
    start = time.monotonic()
    for service in services:
        fuzz_service(fleet, service, examples, thorough, derandomize)
    if under_faults:
        # The node services again, with dependencies failing on purpose: UNAVAILABLE is
        # allowed for every call here, and so is a call that lasts until its deadline.
        fleet.inject_faults()
        for service in services:
            if fleet.served[service.full_name][0] in fleet.nodes \
                    and not service.full_name.startswith("grpc."):
                for method in sorted(service.methods, key=_late):
                    if not method.client_streaming:
                        fuzz_method(fleet, method, max(1, examples // 4), False, derandomize)
                fleet.faulted = fleet.hanging = True
        fleet.heal()
    problems = check_after(fleet)
    report(f"\nfuzzed {len(services)} services, {fleet.calls} calls in "
           f"{time.monotonic() - start:.1f} s; {len(fleet.findings)} distinct failures, "
           f"{len(problems)} broken invariants")
    for name, codes in sorted(fleet.codes.items()):
        report(f"  {name}: " + ", ".join(f"{c} {n}" for c, n in codes.most_common()))
    lines = [*problems, *fleet.findings.report().splitlines()]
    report("\n".join(lines))
    assert not lines, "\n".join(lines)



def test_every_rpc_answers_hostile_input_properly(fleet: Fleet) -> None:
    fuzz_all(fleet, examples=int(os.environ.get("FUZZ_EXAMPLES", "8")), thorough=False,
             derandomize=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_rpc_answers_hostile_input_properly_many_examples(fleet: Fleet) -> None:
    fuzz_all(fleet, examples=int(os.environ.get("FUZZ_EXAMPLES", "100")), thorough=True,
             derandomize=False, under_faults=True)
