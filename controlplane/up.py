"""`controlplane up`: a whole local cluster in one command.

An embedded single-member etcd (unless --etcd is given) and N management node processes, a live
status screen (or plain log lines when stdout is not a terminal), and a clean stop: SIGTERM to
every node first so each revokes its lease while etcd is still there, then etcd. Children get
PR_SET_PDEATHSIG (procs.spawn) so that even `kill -9` of `up` leaves no orphans behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.cli import ring_to_dict
from controlplane.procs import log_tail, spawn
from controlplane.store.embedded import EtcdServer
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc

__all__ = ["Supervisor", "UsageError", "run_up"]

POLL_TIMEOUT = 0.5  # per GetRing / health call: a frozen node must not freeze the screen
POLL_INTERVAL = 0.5  # seconds between polls (and screen redraws)
NODE_STOP_TIMEOUT = 15.0  # SIGTERM -> SIGKILL; a node drains for at most --drain-grace (5 s)
ETCD_READY_TIMEOUT = 30.0
MAX_EVENTS = 5  # unexpected exits kept on the live screen

# etcd closes connections whose clients ping more often than every 5 s ("too_many_pings");
# nodes ping every min(5, ttl/2) s, so short TTLs need a lower floor.
ETCD_ARGS = ("--grpc-keepalive-min-time=500ms",)

# Reconnect quickly to a node that is still starting, and never through an HTTP proxy.
_CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

# The directory holding the `controlplane` package: children run the same code as `up`.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])

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
        base = args.base_port
        metrics_base = base + 100 if args.metrics_base_port is None else args.metrics_base_port
        etcd_port = base + 1000 if args.etcd_port is None else args.etcd_port
        self._check_args(metrics_base, etcd_port)
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

    # -- checks -----------------------------------------------------------------------

    def _check_args(self, metrics_base: int, etcd_port: int) -> None:
        """Refuse before starting anything, so a bad invocation leaves nothing behind."""
        a = self.args
        if a.nodes < 1:
            raise UsageError(f"--nodes must be >= 1, got {a.nodes}")
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
        seen: dict[int, str] = {}
        for port, what, _host in wanted:
            if not 0 < port < 65536:
                raise UsageError(f"port {port} ({what}) is out of range 1-65535")
            if port in seen:
                raise UsageError(f"port {port} would be used by both {seen[port]} and {what}; "
                                 "choose other --base-port/--metrics-base-port/--etcd-port")
            seen[port] = what
        for port, what, host in wanted:
            if _port_in_use(port, host):
                raise UsageError(f"port {port} ({what}) is already in use on {host}; is another "
                                 "cluster running? choose another --base-port (or --etcd-port / "
                                 "--metrics-base-port)")

    # -- output -----------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A plain log line (also used on a terminal before and after the live screen)."""
        print(f"{_now()} {text}", flush=True)

    def event(self, text: str) -> None:
        """Something went wrong while running: a line, or a line on the live screen."""
        self.failed = True
        if self.live:
            self.events = [*self.events, f"{_now()} {text}"][-MAX_EVENTS:]
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
        for node in self.nodes:
            if self.stopping.is_set():
                return
            self._start_node(node)
            metrics = f", metrics :{node.metrics_port}" if node.metrics_port else ""
            self.say(f"{node.node_id} starting on {node.address} (pid {node.pid}{metrics}, "
                     f"log {node.log_path})")

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
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        # Own session: a terminal's Ctrl-C reaches only `up`, which stops nodes before etcd;
        # and the node dies with `up`, even if `up` is killed -9.
        node.proc = spawn(argv, node.log_path, env, with_parent=True)
        node.channel = grpc.insecure_channel(node.address, options=_CHANNEL_OPTIONS)

    def stop(self) -> None:
        """Nodes first (SIGTERM: each revokes its lease, which needs etcd), then etcd."""
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
        if self.etcd is not None and self.etcd.pid is not None:
            self.etcd.stop()
            self.say("etcd stopped")
        if self.temp_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- watching ---------------------------------------------------------------------

    def poll(self) -> None:
        """Ask every node at once (futures), so a frozen node costs 0.5 s per poll, not each."""
        if self.etcd is not None and self.etcd.pid is not None and not self.etcd.is_running():
            self.event(f"etcd exited unexpectedly (log {self.etcd.log_path})")
            self.etcd = None  # reported once; nothing left to stop
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
        if self.events:
            lines += ["", "events:", *(f"  {e}" for e in self.events)]
        lines += ["", f"node logs in {os.path.join(self.data_dir, 'logs')}; Ctrl-C to stop"]
        return "\n".join(lines)

    def draw(self) -> None:
        """Home, each line cleared to its end, then the rest of the screen: no flicker."""
        text = "\n".join(line + "\x1b[K" for line in self.render().split("\n"))
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
