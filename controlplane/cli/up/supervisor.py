"""`controlplane up`: a whole local cluster in one command.

An embedded single-member etcd (unless --etcd is given) and N management node processes, a live
status screen (or plain log lines when stdout is not a terminal), and a clean stop: SIGTERM to
every node first so each revokes its lease while etcd is still there, then etcd. Children get
PR_SET_PDEATHSIG (procs.spawn) so that even `kill -9` of `up` leaves no orphans behind.

With --hosts H, one sim agent process serving host-0..host-{H-1} runs beside the nodes, and a
background thread registers those hosts and creates --vms V VMs through the public gRPC API of
whichever nodes are ready (so a demo exercises the same paths an operator's calls take).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.channels import reconnect_options
from controlplane.cli.commands import ring_to_dict
from controlplane.procs import log_tail, spawn
from controlplane.store.embedded import EtcdServer
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc
from controlplane.v1 import host_pb2, host_pb2_grpc, vm_pb2, vm_pb2_grpc

__all__ = ["Supervisor", "UsageError", "run_up"]

POLL_TIMEOUT = 0.5  # per GetRing / health call: a frozen node must not freeze the screen
POLL_INTERVAL = 0.5  # seconds between polls (and screen redraws)
NODE_STOP_TIMEOUT = 15.0  # SIGTERM -> SIGKILL; a node drains for at most --drain-grace (5 s)
ETCD_READY_TIMEOUT = 30.0
MAX_EVENTS = 5  # unexpected exits kept on the live screen
MAX_HOSTS = 10_000
MAX_VMS = 100_000
AGENT_STOP_TIMEOUT = 10.0
HOST_PREFIX = "host-"
FLEET_READY_TIMEOUT = 60.0  # for a node to become ready before hosts can be registered
FLEET_RETRY_BUDGET = 60.0  # per host/VM: retried while nodes and the agent come up
FLEET_CALL_TIMEOUT = 10.0
FLEET_WORKERS = 16  # calls in flight while building the fleet
SUMMARY_TIMEOUT = 30.0  # ListHosts/ListVms for the fleet line (large fleets: large answers)
SUMMARY_COST_FACTOR = 10  # ask again after max(POLL_INTERVAL, 10 x the last answer's time)
VM_IMAGE = vm_pb2.ImageInfo(image_id="up-image", virtual_size=1 << 30, actual_size=256 << 20)

# While the fleet is built: the node (or the agent behind it) is still starting, the host is
# not yet in the owner's cache (NOT_FOUND from a start), or the owner changed meanwhile.
_FLEET_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                              grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND})

T = TypeVar("T")

# etcd closes connections whose clients ping more often than every 5 s ("too_many_pings");
# nodes ping every min(5, ttl/2) s, so short TTLs need a lower floor.
ETCD_ARGS = ("--grpc-keepalive-min-time=500ms",)

# Reconnect quickly to a node that is still starting, and never through an HTTP proxy.
_CHANNEL_OPTIONS = [
    *reconnect_options(500),
    # ListVms of a large fleet (about 200 bytes a VM) is beyond the default 4 MiB limit.
    ("grpc.max_receive_message_length", -1),
]

# The directory holding the `controlplane` package: children run the same code as `up`.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])

_SERVING = health_pb2.HealthCheckResponse.SERVING


class UsageError(Exception):
    """Bad arguments or an occupied port: reported on stderr with exit code 2."""


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could not bind host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _exit_text(code: int) -> str:
    """`exit code 1` or `killed by SIGKILL` (Popen reports a signal as a negative code)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _child_env() -> dict[str, str]:
    """Children run the same code as `up` and write their logs unbuffered."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    return env


def vm_name(index: int, total: int) -> str:
    """vm-0000, vm-0001, ...: zero-padded so names sort in creation order."""
    return f"vm-{index:0{max(4, len(str(total - 1)))}d}"


def fleet_line(hosts: host_pb2.ListHostsResponse, vms: vm_pb2.ListVmsReply) -> str:
    """`hosts 2/3 connected, 10 VMs: Running 9, Starting 1` (states sorted by name, so the
    line only changes when the fleet does)."""
    connected = sum(1 for h in hosts.hosts if h.status == host_pb2.CONNECTED)
    states = Counter(v.state for v in vms.vms)
    per_state = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
    return (f"hosts {connected}/{len(hosts.hosts)} connected, {len(vms.vms)} VMs"
            + (f": {per_state}" if per_state else ""))


class _Halted(Exception):
    """`up` is stopping: the fleet thread gives up what it was doing."""


class _NoReadyNode(Exception):
    """No node is ready to take a fleet call now (retried like UNAVAILABLE)."""


@dataclass
class Agent:
    """The sim agent process serving every host of the local fleet."""

    port: int
    hosts: int
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def host_ids(self) -> list[str]:
        return [f"{HOST_PREFIX}{i}" for i in range(self.hosts)]


@dataclass
class Node:
    """One management node process and what it last reported."""

    node_id: str
    port: int
    metrics_port: int
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    ring: dict | None = None  # ring_to_dict() of the last GetRing answer, None if no answer
    ready: bool = False
    exit_code: int | None = None
    reported: tuple | None = field(default=None, repr=False)  # last state printed as a line

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def state(self) -> tuple:
        """What a plain log line is printed for when it changes."""
        if self.exit_code is not None:
            return ("exited", self.exit_code)
        if self.ring is None:
            return ("no answer", self.ready)
        members = tuple(m["node_id"] for m in self.ring["members"])
        return (self.ready, self.ring["ring_epoch"], members, self.ring["incarnation"],
                self.ring["fenced"])

    def describe(self) -> str:
        """One plain line: `node-0 ready=yes epoch=7 members=node-0,node-1 ...`."""
        if self.exit_code is not None:
            return f"{self.node_id} exited ({_exit_text(self.exit_code)}, log {self.log_path})"
        if self.ring is None:
            return f"{self.node_id} ready={'yes' if self.ready else 'no'} (GetRing not answered)"
        r = self.ring
        members = ",".join(m["node_id"] for m in r["members"]) or "-"
        return (f"{self.node_id} ready={'yes' if self.ready else 'no'} epoch={r['ring_epoch']} "
                f"members={members} incarnation={r['incarnation']} "
                f"fenced={'yes' if r['fenced'] else 'no'}")


class Supervisor:
    """Starts, watches and stops etcd and the nodes; renders what they report."""

    def __init__(self, args: argparse.Namespace, stopping: threading.Event | None = None,
                 signals: list[str] | None = None, live: bool | None = None) -> None:
        self.args = args
        self.live = sys.stdout.isatty() if live is None else live
        self.stopping = stopping or threading.Event()  # set by a signal handler to stop
        self.signals = signals if signals is not None else []  # their names, for the log
        self.events: list[str] = []  # unexpected exits, shown on the live screen
        self.started_at = time.monotonic()
        self.failed = False  # something died that should not have: exit code 1
        self._out = threading.Lock()  # one writer at a time on stdout
        base = args.base_port
        metrics_base = base + 100 if args.metrics_base_port is None else args.metrics_base_port
        etcd_port = base + 1000 if args.etcd_port is None else args.etcd_port
        agent_port = base + 200 if args.agent_port is None else args.agent_port
        self._check_args(metrics_base, etcd_port, agent_port)
        self.temp_dir = args.data_dir is None
        self.data_dir = (tempfile.mkdtemp(prefix="controlplane-up-") if self.temp_dir
                         else os.path.abspath(args.data_dir))
        self.etcd: EtcdServer | None = None
        if args.etcd is None:
            self.etcd = EtcdServer(
                "up", os.path.join(self.data_dir, "etcd"), client_port=etcd_port,
                peer_port=etcd_port + 1, extra_args=ETCD_ARGS,
                log_path=os.path.join(self.data_dir, "etcd.log"), with_parent=True,
            )
        self.etcd_endpoints = self.etcd.endpoint if self.etcd else args.etcd
        self.nodes = [
            Node(f"node-{i}", base + i, metrics_base + i if metrics_base else 0,
                 os.path.join(self.data_dir, "logs", f"node-{i}.log"))
            for i in range(args.nodes)
        ]
        self.agent = (Agent(agent_port, args.hosts, os.path.join(self.data_dir, "logs",
                                                                  "agent.log"))
                      if args.hosts > 0 else None)
        self.fleet: str | None = None  # fleet_line() of the last summary answered
        self.fleet_reported: str | None = None  # last one printed as a plain line
        self.progress: list[str] = []  # milestones of building the fleet
        self.building = ""  # the step in progress ("creating VMs: 10/100"), live screen only
        self._fleet_thread: threading.Thread | None = None
        self._summary: tuple[grpc.Future, grpc.Future, float] | None = None
        self._next_summary = 0.0

    # -- checks -----------------------------------------------------------------------

    def _check_args(self, metrics_base: int, etcd_port: int, agent_port: int) -> None:
        """Refuse before starting anything, so a bad invocation leaves nothing behind."""
        a = self.args
        if a.nodes < 1:
            raise UsageError(f"--nodes must be >= 1, got {a.nodes}")
        if not 0 <= a.hosts <= MAX_HOSTS:
            raise UsageError(f"--hosts must be in 0-{MAX_HOSTS}, got {a.hosts}")
        if not 0 <= a.vms <= MAX_VMS:
            raise UsageError(f"--vms must be in 0-{MAX_VMS}, got {a.vms}")
        if a.vms > 0 and a.hosts == 0:
            raise UsageError("--vms needs --hosts: VMs are started on the hosts of the sim "
                             "agent that --hosts starts")
        if a.lease_ttl < 2:
            raise UsageError(f"--lease-ttl must be >= 2 (etcd's minimum), got {a.lease_ttl}")
        if a.duration is not None and a.duration <= 0:
            raise UsageError(f"--duration must be > 0, got {a.duration}")
        wanted: list[tuple[int, str, str]] = [
            (a.base_port + i, f"node-{i}", "127.0.0.1") for i in range(a.nodes)
        ]
        if metrics_base:
            wanted += [(metrics_base + i, f"node-{i} metrics", "0.0.0.0") for i in range(a.nodes)]
        if a.etcd is None:
            wanted += [(etcd_port, "etcd client", "127.0.0.1"),
                       (etcd_port + 1, "etcd peer", "127.0.0.1")]
        if a.hosts > 0:
            wanted.append((agent_port, "agent", "127.0.0.1"))
        seen: dict[int, str] = {}
        for port, what, _host in wanted:
            if not 0 < port < 65536:
                raise UsageError(f"port {port} ({what}) is out of range 1-65535")
            if port in seen:
                raise UsageError(f"port {port} would be used by both {seen[port]} and {what}; "
                                 "choose other --base-port/--metrics-base-port/--etcd-port/"
                                 "--agent-port")
            seen[port] = what
        for port, what, host in wanted:
            if _port_in_use(port, host):
                raise UsageError(f"port {port} ({what}) is already in use on {host}; is another "
                                 "cluster running? choose another --base-port (or --etcd-port / "
                                 "--metrics-base-port / --agent-port)")

    # -- output -----------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A plain log line (also used on a terminal before and after the live screen).
        One write under a lock: the fleet thread says things too."""
        with self._out:
            sys.stdout.write(f"{_now()} {text}\n")
            sys.stdout.flush()

    def event(self, text: str) -> None:
        """Something went wrong while running: a line, or a line on the live screen."""
        self.failed = True
        if self.live:
            self.events = [*self.events, f"{_now()} {text}"][-MAX_EVENTS:]
        else:
            self.say(text)

    def milestone(self, text: str) -> None:
        """A step of building the fleet is done: a line, or a line in the status area."""
        if self.live:
            self.progress = [*self.progress, f"{_now()} {text}"][-MAX_EVENTS:]
        else:
            self.say(text)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """etcd (waited for: nodes would only retry), then every node (not waited for)."""
        self.say(f"data directory {self.data_dir}"
                 f"{' (temporary, removed at exit)' if self.temp_dir else ''}")
        if self.etcd is not None:
            self.etcd.start()
            self.say(f"etcd starting on {self.etcd.endpoint} (pid {self.etcd.pid}, "
                     f"log {self.etcd.log_path})")
            self._wait_etcd(self.etcd)
            if self.stopping.is_set():
                return
            self.say(f"etcd ready on {self.etcd.endpoint}")
        else:
            self.say(f"using etcd at {self.etcd_endpoints}")
        if self.agent is not None and not self.stopping.is_set():
            self._start_agent(self.agent)
            self.say(f"agent starting on {self.agent.address} (pid {self.agent.pid}, "
                     f"{self.agent.hosts} sim hosts {HOST_PREFIX}0.., log {self.agent.log_path})")
        for node in self.nodes:
            if self.stopping.is_set():
                return
            self._start_node(node)
            metrics = f", metrics :{node.metrics_port}" if node.metrics_port else ""
            self.say(f"{node.node_id} starting on {node.address} (pid {node.pid}{metrics}, "
                     f"log {node.log_path})")
        if self.agent is not None and not self.stopping.is_set():
            self._fleet_thread = threading.Thread(target=self._build_fleet, name="fleet",
                                                  daemon=True)
            self._fleet_thread.start()

    def _wait_etcd(self, etcd: EtcdServer) -> None:
        """Like EtcdServer.wait_ready, but gives up at once on Ctrl-C/SIGTERM."""
        deadline = time.monotonic() + ETCD_READY_TIMEOUT
        while not self.stopping.is_set():
            if not etcd.is_running():
                raise RuntimeError(f"etcd exited before becoming ready; log tail "
                                   f"({etcd.log_path}):\n{log_tail(etcd.log_path)}")
            if etcd.healthy(timeout=0.5):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"etcd not healthy after {ETCD_READY_TIMEOUT:.0f}s; log tail "
                                   f"({etcd.log_path}):\n{log_tail(etcd.log_path)}")
            self.stopping.wait(0.1)

    def _start_node(self, node: Node) -> None:
        argv = [
            sys.executable, "-m", "controlplane", "serve",
            "--node-id", node.node_id,
            "--listen", node.address,
            "--etcd", self.etcd_endpoints,
            "--lease-ttl", str(self.args.lease_ttl),
            "--metrics-port", str(node.metrics_port),
            "--log-format", "text",
            # one directory for every node: on one box it is "mounted everywhere"
            "--image-dir", os.path.join(self.data_dir, "images"),
        ]  # fmt: skip
        # Own session: a terminal's Ctrl-C reaches only `up`, which stops nodes before etcd;
        # and the node dies with `up`, even if `up` is killed -9.
        node.proc = spawn(argv, node.log_path, _child_env(), with_parent=True)
        node.channel = grpc.insecure_channel(node.address, options=_CHANNEL_OPTIONS)

    def _start_agent(self, agent: Agent) -> None:
        """Like a node: own session, log file, dies with `up`; not restarted when it exits
        (that is an event, as for a node: a restarted sim agent would have lost its VMs)."""
        argv = [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", agent.address,
            "--backend", "sim",
            "--hosts", str(agent.hosts),
            "--host-prefix", HOST_PREFIX,
        ]  # fmt: skip
        agent.proc = spawn(argv, agent.log_path, _child_env(), with_parent=True)

    def stop(self) -> None:
        """The fleet thread, the nodes (SIGTERM: each revokes its lease, which needs etcd),
        then the agent (after the nodes, so that no node sees its hosts vanish and starts HA
        on the way out), then etcd."""
        self.stopping.set()  # the fleet thread gives up between calls
        if self._fleet_thread is not None:
            self._fleet_thread.join(FLEET_CALL_TIMEOUT + 5)
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in self.nodes:
            node.close_channel()  # no call of ours in flight to wait for while draining
        if running:
            self.say(f"stopping {len(running)} node(s)")
        for node in running:
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NODE_STOP_TIMEOUT
        for node in running:
            assert node.proc is not None
            try:
                code = node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                code = node.proc.wait()
                self.failed = True
                self.say(f"{node.node_id} did not stop within {NODE_STOP_TIMEOUT:.0f}s: killed")
                continue
            if code != 0:
                self.failed = True
            self.say(f"{node.node_id} stopped ({_exit_text(code)})")
        self._stop_agent()
        if self.etcd is not None and self.etcd.pid is not None:
            self.etcd.stop()
            self.say("etcd stopped")
        if self.temp_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _stop_agent(self) -> None:
        agent = self.agent
        if agent is None or agent.proc is None or agent.proc.poll() is not None:
            return
        agent.proc.send_signal(signal.SIGTERM)
        try:
            code = agent.proc.wait(AGENT_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
            self.failed = True
            self.say(f"agent did not stop within {AGENT_STOP_TIMEOUT:.0f}s: killed")
            return
        if code != 0:
            self.failed = True
        self.say(f"agent stopped ({_exit_text(code)})")

    # -- building the fleet (a thread of its own) -------------------------------------

    def _ready_addresses(self) -> list[str]:
        return [n.address for n in self.nodes if n.ready and n.exit_code is None]

    def _build_fleet(self) -> None:
        """Register the agent's hosts, then create --vms VMs round-robin over them.

        Runs beside the poll loop, so the screen stays live while a large fleet is built.
        Every call goes to a ready node (any node answers any call and forwards it to the
        owner); a failure that lasts past the retry budget is an event, like a node exiting.
        """
        assert self.agent is not None
        channels: dict[str, grpc.Channel] = {}
        rotation = itertools.count()

        def channel() -> grpc.Channel:
            """A ready node's channel, a different one each call (spreads the load)."""
            ready = self._ready_addresses()
            if not ready:
                raise _NoReadyNode("no node is ready")
            address = ready[next(rotation) % len(ready)]
            if address not in channels:
                channels[address] = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            return channels[address]

        def retried(call: Callable[[grpc.Channel], T], retryable: frozenset) -> T:
            deadline = time.monotonic() + FLEET_RETRY_BUDGET
            while True:
                if self.stopping.is_set():
                    raise _Halted()
                try:
                    return call(channel())
                except grpc.RpcError as exc:
                    if exc.code() not in retryable or time.monotonic() >= deadline:
                        raise
                except _NoReadyNode:
                    if time.monotonic() >= deadline:
                        raise
                self.stopping.wait(0.2)

        try:
            if not self._wait_any_ready():
                return
            hosts = self.agent.host_ids
            failures = self._in_parallel(
                len(hosts), lambda i: self._add_host(hosts[i], retried), "registering hosts")
            if failures:
                self.event(f"could not register {len(failures)} of {len(hosts)} hosts "
                           f"(first: {failures[0]})")
            self.milestone(f"registered {len(hosts) - len(failures)} hosts")
            if self.args.vms:
                failures = self._in_parallel(
                    self.args.vms, lambda i: self._create_vm(i, hosts, retried), "creating VMs")
                if failures:
                    self.event(f"could not create {len(failures)} of {self.args.vms} VMs "
                               f"(first: {failures[0]})")
                self.milestone(f"created {self.args.vms - len(failures)} VMs")
        except _Halted:
            pass
        finally:
            self.building = ""
            for chan in channels.values():
                chan.close()

    def _wait_any_ready(self) -> bool:
        deadline = time.monotonic() + FLEET_READY_TIMEOUT
        self.building = "waiting for a ready node to register hosts"
        while not self._ready_addresses():
            if self.stopping.is_set():
                return False
            if time.monotonic() >= deadline:
                self.event(f"no node ready after {FLEET_READY_TIMEOUT:.0f}s: hosts not "
                           "registered")
                return False
            self.stopping.wait(0.1)
        return True

    def _in_parallel(self, total: int, work: Callable[[int], None], what: str) -> list[str]:
        """work(0..total-1) on FLEET_WORKERS threads; the failures, as text. Raises _Halted
        when `up` stops meanwhile."""
        indexes = iter(range(total))
        lock = threading.Lock()
        done = [0]
        failures: list[str] = []
        last_line = [time.monotonic()]

        def worker() -> None:
            while not self.stopping.is_set():
                with lock:
                    i = next(indexes, None)
                if i is None:
                    return
                try:
                    work(i)
                except _Halted:
                    return
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"#{i}: {exc.code().name}: {exc.details()}")
                except _NoReadyNode as exc:
                    with lock:
                        failures.append(f"#{i}: {exc}")
                with lock:
                    done[0] += 1
                    self.building = f"{what}: {done[0]}/{total}"
                    if not self.live and time.monotonic() - last_line[0] >= 5.0:
                        last_line[0] = time.monotonic()
                        self.say(self.building)

        self.building = f"{what}: 0/{total}"
        threads = [threading.Thread(target=worker, name=f"fleet-{k}", daemon=True)
                   for k in range(min(FLEET_WORKERS, total))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.stopping.is_set():
            raise _Halted()
        return failures

    def _add_host(self, host_id: str, retried: Callable) -> None:
        """AddHost; an existing host (a reused --data-dir, or a retry after a lost answer)
        counts as registered."""
        assert self.agent is not None
        request = host_pb2.AddHostRequest(host_id=host_id, address=self.agent.address)
        try:
            retried(lambda ch: host_pb2_grpc.HostServiceStub(ch).AddHost(
                request, timeout=FLEET_CALL_TIMEOUT),
                _FLEET_RETRYABLE - {grpc.StatusCode.NOT_FOUND})
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def _create_vm(self, index: int, hosts: list[str], retried: Callable) -> None:
        """CreateVm(start, no wait) of VM `index` on hosts[index % len(hosts)], HA for every
        other VM.

        Create-and-start is two steps on the server: the record may be written and the start
        refused (the host not yet in the owner's cache) or the answer lost. The retry then
        meets ALREADY_EXISTS, and a VM still Created with no operation is started here."""
        vm_id = vm_name(index, self.args.vms)
        host_id = hosts[index % len(hosts)]
        request = vm_pb2.CreateVmRequest(
            vm_id=vm_id, ha=vm_pb2.NEVER_STOP if index % 2 == 0 else vm_pb2.HA_NONE,
            image=VM_IMAGE, host_id=host_id, start=True, wait=False)
        try:
            retried(lambda ch: vm_pb2_grpc.VmServiceStub(ch).CreateVm(
                request, timeout=FLEET_CALL_TIMEOUT), _FLEET_RETRYABLE)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        vm = retried(lambda ch: vm_pb2_grpc.VmServiceStub(ch).GetVm(
            vm_pb2.VmRef(vm_id=vm_id), timeout=FLEET_CALL_TIMEOUT),
            frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}))
        if vm.state == "Created" and not vm.op.op_id:
            retried(lambda ch: vm_pb2_grpc.VmServiceStub(ch).StartVm(
                vm_pb2.VmOpRequest(vm_id=vm_id, host_id=host_id), timeout=FLEET_CALL_TIMEOUT),
                _FLEET_RETRYABLE)

    # -- watching ---------------------------------------------------------------------

    def poll(self) -> None:
        """Ask every node at once (futures), so a frozen node costs 0.5 s per poll, not each."""
        if self.etcd is not None and self.etcd.pid is not None and not self.etcd.is_running():
            self.event(f"etcd exited unexpectedly (log {self.etcd.log_path})")
            self.etcd = None  # reported once; nothing left to stop
        agent = self.agent
        if agent is not None and agent.proc is not None and agent.exit_code is None:
            code = agent.proc.poll()
            if code is not None:
                agent.exit_code = code
                self.event(f"agent exited unexpectedly ({_exit_text(code)}); its hosts will "
                           f"be Disconnected (log {agent.log_path})")
        self._ask_fleet()
        calls = []
        for node in self.nodes:
            if node.proc is None or node.exit_code is not None:
                continue
            code = node.proc.poll()
            if code is not None:
                node.exit_code, node.ring, node.ready = code, None, False
                node.close_channel()
                self.event(f"{node.node_id} exited unexpectedly ({_exit_text(code)}); the others "
                           f"keep running (log {node.log_path})")
                node.reported = node.state()
                continue
            assert node.channel is not None
            ring = pb_grpc.ClusterServiceStub(node.channel).GetRing.future(
                pb.GetRingRequest(), timeout=POLL_TIMEOUT)
            health = health_pb2_grpc.HealthStub(node.channel).Check.future(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=POLL_TIMEOUT)
            calls.append((node, ring, health))
        for node, ring, health in calls:
            try:
                node.ring = ring_to_dict(ring.result())
            except grpc.RpcError:
                node.ring = None
            try:
                node.ready = health.result().status == _SERVING
            except grpc.RpcError:
                node.ready = False
            if node.state() != node.reported:
                node.reported = node.state()
                if not self.live:
                    self.say(node.describe())
        self._read_fleet()

    def _ask_fleet(self) -> None:
        """Start ListHosts + ListVms on a ready node when due and none is in flight. Not
        waited for here: a large fleet's listing may take longer than a poll."""
        if self._summary is not None or time.monotonic() < self._next_summary:
            return
        node = next((n for n in self.nodes if n.ready and n.channel is not None), None)
        if node is None or node.channel is None:
            return
        hosts = host_pb2_grpc.HostServiceStub(node.channel).ListHosts.future(
            host_pb2.ListHostsRequest(), timeout=SUMMARY_TIMEOUT)
        vms = vm_pb2_grpc.VmServiceStub(node.channel).ListVms.future(
            vm_pb2.ListVmsRequest(), timeout=SUMMARY_TIMEOUT)
        self._summary = (hosts, vms, time.monotonic())

    def _read_fleet(self) -> None:
        """Take the summary answers if they are in; the next one is due after a pause that
        grows with what the last one cost (so a big fleet is not listed twice a second)."""
        if self._summary is None:
            return
        hosts, vms, asked_at = self._summary
        if not (hosts.done() and vms.done()):
            return
        self._summary = None
        cost = time.monotonic() - asked_at
        self._next_summary = time.monotonic() + max(POLL_INTERVAL - cost,
                                                    SUMMARY_COST_FACTOR * cost)
        try:
            self.fleet = fleet_line(hosts.result(), vms.result())
        except (grpc.RpcError, grpc.FutureCancelledError):
            return  # keep the last answer; the next poll asks again (maybe another node)
        if not self.live and self.fleet != self.fleet_reported:
            self.fleet_reported = self.fleet
            self.say(f"fleet: {self.fleet}")

    def render(self) -> str:
        """The live screen: the cluster as the most up-to-date node sees it, then each node."""
        answered = [n.ring for n in self.nodes if n.ring is not None]
        view = max(answered, key=lambda r: r["ring_epoch"], default=None)
        etcd = (f"embedded etcd {self.etcd_endpoints}" if self.args.etcd is None
                else f"etcd {self.etcd_endpoints}")
        lines = [
            f"controlplane up: {len(self.nodes)} nodes, {etcd}, lease ttl {self.args.lease_ttl}s"
            f"   {_now()}  (up {time.monotonic() - self.started_at:.0f}s)",
            f"data {self.data_dir}{' (temporary)' if self.temp_dir else ''}",
            "",
        ]
        if view is None:
            lines.append("ring: no node answers yet")
        else:
            epochs = {n.ring["ring_epoch"] for n in self.nodes if n.ring is not None}
            agree = "all answering nodes agree" if len(epochs) == 1 else "nodes DISAGREE"
            lines.append(f"ring epoch {view['ring_epoch']} ({agree}), "
                         f"{len(view['members'])} members:")
            for m in view["members"]:
                share = view["shares"].get(m["node_id"], 0.0)
                lines.append(f"  {m['node_id']:<12} {m['address']:<22} share {share:6.1%}")
        lines += ["", f"{'NODE':<10} {'ADDRESS':<18} {'PID':>7}  {'READY':<6} "
                      f"{'INCARNATION':>11} {'EPOCH':>7} {'MEMBERS':>7}  FENCED"]
        for n in self.nodes:
            if n.exit_code is not None:
                status = f"exited ({_exit_text(n.exit_code)})"
            elif n.ring is None:
                status = f"{'yes' if n.ready else 'no':<6} (not answering)"
            else:
                r = n.ring
                status = (f"{'yes' if n.ready else 'no':<6} {r['incarnation']:>11} "
                          f"{r['ring_epoch']:>7} {len(r['members']):>7}  "
                          f"{'YES' if r['fenced'] else 'no'}")
            lines.append(f"{n.node_id:<10} {n.address:<18} {n.pid or '-':>7}  {status}")
        if self.agent is not None:
            a = self.agent
            state = (f"exited ({_exit_text(a.exit_code)})" if a.exit_code is not None
                     else f"pid {a.pid or '-'}")
            lines += ["", f"agent {a.address} ({state}), {a.hosts} sim hosts "
                          f"{HOST_PREFIX}0..{HOST_PREFIX}{a.hosts - 1}"]
        lines += ["", f"fleet: {self.fleet or 'no ready node answered yet'}"]
        lines += [f"  {p}" for p in self.progress]
        if self.building:
            lines.append(f"  {self.building}")
        if self.events:
            lines += ["", "events:", *(f"  {e}" for e in self.events)]
        lines += ["", f"node logs in {os.path.join(self.data_dir, 'logs')}; Ctrl-C to stop"]
        return "\n".join(lines)

    def draw(self) -> None:
        """Home, each line cleared to its end, then the rest of the screen: no flicker."""
        text = "\n".join(line + "\x1b[K" for line in self.render().split("\n"))
        with self._out:
            sys.stdout.write("\x1b[H" + text + "\n\x1b[J")
            sys.stdout.flush()

    def run(self) -> int:
        """Start, poll until a signal or --duration, stop; the exit code of `up`."""
        deadline = (time.monotonic() + self.args.duration) if self.args.duration else None
        try:
            self.start()
            if self.live:
                sys.stdout.write("\x1b[2J")
            while not self.stopping.is_set():
                self.poll()
                if self.live:
                    self.draw()
                if deadline is not None and time.monotonic() >= deadline:
                    self.say(f"--duration {self.args.duration:g}s reached")
                    break
                wait = POLL_INTERVAL if deadline is None else min(
                    POLL_INTERVAL, max(0.0, deadline - time.monotonic()))
                self.stopping.wait(wait)
        except (RuntimeError, OSError) as exc:  # etcd did not come up, a spawn failed
            print(f"controlplane up: {exc}", file=sys.stderr)
            self.failed = True
        finally:
            if self.signals:
                self.say(f"{self.signals[0]}: stopping")
            self.stop()
        self.say("stopped" + (" (with errors, see above)" if self.failed else " cleanly"))
        return 1 if self.failed else 0


def run_up(args: argparse.Namespace) -> int:
    """The `up` command: 0 on a clean stop, 2 on bad arguments or a busy port, else 1."""
    stopping = threading.Event()
    signals: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        # No printing here: the main thread may be in the middle of a write to stdout.
        signals.append(signal.Signals(signum).name)
        stopping.set()

    # Before the Supervisor exists, so a signal at any time after this still cleans up.
    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            supervisor = Supervisor(args, stopping, signals)
        except UsageError as exc:
            print(f"controlplane up: {exc}", file=sys.stderr)
            return 2
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
