"""The supervisor of `controlplane up`: start the children, watch them, stop them in order.

Start: etcd (waited for: nodes would only retry), the agent (with --backend libvirt: each
host's daemon and agent, libvirt_hosts.py), every node (not waited for), then
the fleet thread. Watch: every POLL_INTERVAL, GetRing and readiness of every node at once
(futures: a frozen node costs one timeout per poll, not one each); an unexpected exit is an
event and makes the exit code 1, and the others keep running. Stop: SIGTERM to every node at
once, so each revokes its lease while etcd is still there, then the agent (after the nodes,
so no node sees its hosts vanish and starts HA on the way out), then etcd.

The children are ServingProcess / ChildProcess objects (controlplane.serving, procs), the
process model the test harness shares; what they run is in children.py, the fleet in
fleet.py, what is shown in screen.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace

import grpc

from controlplane.cli.up.children import (
    ETCD_USER,
    HOST_PREFIX,
    AgentChild,
    NodeChild,
    embedded_etcd,
    setup_etcd_auth,
    up_pki,
)
from controlplane.cli.up.fleet import FLEET_CALL_TIMEOUT, FleetBuilder, FleetSummary
from controlplane.cli.up.layout import UsageError, check_args
from controlplane.cli.up.libvirt_hosts import VM_MEMORY_MB, LibvirtHostSet
from controlplane.cli.up.retry import wait_for
from controlplane.cli.up.screen import (
    AgentView,
    LiveScreen,
    NodeView,
    Reporter,
    RingView,
    ScreenState,
)
from controlplane.procs import exit_text, log_tail
from controlplane.serving import ServingProcess, health_status
from controlplane.store.embedded import EtcdServer
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc

__all__ = ["Supervisor", "UsageError", "run_up"]

POLL_TIMEOUT = 0.5  # per GetRing / health call: a frozen node must not freeze the screen
POLL_INTERVAL = 0.5  # seconds between polls (and screen redraws)
NODE_STOP_TIMEOUT = 15.0  # SIGTERM -> SIGKILL; a node drains for at most --drain-grace (5 s)
AGENT_STOP_TIMEOUT = 10.0
ETCD_READY_TIMEOUT = 30.0


class Supervisor:
    """Starts, watches and stops etcd, the nodes and the agent; reports what they do."""

    def __init__(self, args: argparse.Namespace, stopping: threading.Event | None = None,
                 signals: list[str] | None = None, live: bool | None = None) -> None:
        self.args = args
        self.stopping = stopping or threading.Event()  # set by a signal handler to stop
        self.signals = signals if signals is not None else []  # their names, for the log
        self.report = Reporter(sys.stdout.isatty() if live is None else live)
        self.started_at = time.monotonic()
        ports = check_args(args)  # before anything exists: a refusal leaves nothing behind
        self.temp_dir = args.data_dir is None
        self.data_dir = (tempfile.mkdtemp(prefix="controlplane-up-") if self.temp_dir
                         else os.path.abspath(args.data_dir))
        node_ids = [f"node-{i}" for i in range(args.nodes)]
        self.pki = up_pki(self.data_dir, node_ids, ports.agent is not None,
                          getattr(args, "insecure", False))
        self.etcd: EtcdServer | None = (embedded_etcd(self.data_dir, ports.etcd, self.pki.etcd)
                                        if ports.etcd is not None else None)
        self._etcd_lost = False  # exited while running: reported once, nothing to stop
        # the scheme spelled out (https://, or http:// with --insecure): a node neither
        # falls back to plaintext nor tries TLS with a certificate from the environment
        self.etcd_endpoints: str = (f"{self.etcd.scheme}://{self.etcd.endpoint}"
                                    if self.etcd else args.etcd)
        self.nodes = [NodeChild(node_id, ports.node(i), ports.metrics(i),
                                self.etcd_endpoints, args.lease_ttl, self.data_dir,
                                self.pki.nodes[node_id], self.pki.admin,
                                self.pki.etcd_password_file if self.etcd else None)
                      for i, node_id in enumerate(node_ids)]
        self.views = {n.node_id: NodeView(n.node_id, n.address, n.log_path)
                      for n in self.nodes}
        self._reported: dict[str, tuple] = {}  # node id -> state last printed as a line
        self.libvirt: LibvirtHostSet | None = None  # --backend libvirt: hosts of their own
        self.agent: AgentChild | None = None
        if ports.agent is not None and getattr(args, "backend", "sim") == "libvirt":
            self.libvirt = LibvirtHostSet(args.hosts, ports.agent, self.data_dir,
                                          args.libvirt_user_prefix, self.pki.agent,
                                          self.pki.admin)
        elif ports.agent is not None:
            self.agent = AgentChild(ports.agent, args.hosts, self.data_dir, self.pki.agent,
                                    self.pki.admin)
        self.power_requests: list[str] = []  # "off"/"on", from SIGUSR1/SIGUSR2
        self._agent_exit: int | None = None
        self.fleet: FleetBuilder | None = None
        self.summary = FleetSummary(POLL_INTERVAL)
        self._fleet_reported: str | None = None

    @property
    def failed(self) -> bool:
        return self.report.failed

    def say(self, text: str) -> None:
        self.report.say(text)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """etcd (waited for), the agent, every node (not waited for), the fleet thread."""
        self.say(f"data directory {self.data_dir}"
                 f"{' (temporary, removed at exit)' if self.temp_dir else ''}")
        if self.pki.admin_dir is None:
            self.say("PLAINTEXT (--insecure): no certificates; anyone who reaches the ports "
                     "can call")
        else:
            self.say(f"mutual TLS: CA and certificates in {self.pki.admin_dir.parent}; "
                     "to call this cluster:")
            self.report.verbatim(f"export CONTROLPLANE_TLS_DIR={self.pki.admin_dir}")
        if self.etcd is not None:
            self.etcd.start()
            self.say(f"etcd starting on {self.etcd.endpoint} (pid {self.etcd.pid}, "
                     f"log {self.etcd.log_path})")
            self._wait_etcd(self.etcd)
            if self.stopping.is_set():
                return
            self.say(f"etcd ready on {self.etcd.endpoint}")
            if self.pki.etcd is not None:
                setup_etcd_auth(self.pki, self.etcd.endpoint, DEFAULT_PREFIX)
                self.say("etcd: client and peer TLS, nodes log in as the etcd user "
                         f"{ETCD_USER!r} (a role limited to {DEFAULT_PREFIX})")
        else:
            self.say(f"using etcd at {self.etcd_endpoints}")
        agent = self.agent
        if agent is not None and not self.stopping.is_set():
            agent.start()
            self.say(f"agent starting on {agent.address} (pid {agent.pid}, "
                     f"{agent.hosts} sim hosts {HOST_PREFIX}0.., log {agent.log_path})")
        if self.libvirt is not None and not self.stopping.is_set():
            self.libvirt.start(self.say)
        for node in self.nodes:
            if self.stopping.is_set():
                return
            node.start()
            metrics = f", metrics :{node.metrics_port}" if node.metrics_port else ""
            self.say(f"{node.node_id} starting on {node.address} (pid {node.pid}{metrics}, "
                     f"log {node.log_path})")
        if agent is not None and not self.stopping.is_set():
            self.fleet = FleetBuilder(agent.address, agent.host_ids, self.args.vms,
                                      [n.address for n in self.nodes], self._ready_addresses,
                                      self.report, self.stopping, tls=self.pki.admin)
            self.fleet.start()
        lv = self.libvirt
        if lv is not None and not self.stopping.is_set():
            self.fleet = FleetBuilder([a.address for a in lv.agents], lv.host_ids,
                                      self.args.vms, [n.address for n in self.nodes],
                                      self._ready_addresses, self.report, self.stopping,
                                      cpus=1, memory_mb=VM_MEMORY_MB, tls=self.pki.admin)
            self.fleet.start()

    def _wait_etcd(self, etcd: EtcdServer) -> None:
        """Like EtcdServer.wait_ready, but gives up at once on Ctrl-C/SIGTERM."""
        def healthy() -> bool:
            if not etcd.is_running():
                raise RuntimeError(f"etcd exited before becoming ready; log tail "
                                   f"({etcd.log_path}):\n{log_tail(etcd.log_path)}")
            return etcd.healthy(timeout=0.5)

        if not wait_for(healthy, ETCD_READY_TIMEOUT, 0.1, self.stopping) and (
                not self.stopping.is_set()):
            raise RuntimeError(f"etcd not healthy after {ETCD_READY_TIMEOUT:.0f}s; log tail "
                               f"({etcd.log_path}):\n{log_tail(etcd.log_path)}")

    def stop(self) -> None:
        """The fleet thread, every node at once (one deadline for all), the agent, etcd;
        then the temporary data directory."""
        self.stopping.set()  # the fleet thread gives up between calls
        if self.fleet is not None:
            self.fleet.join(FLEET_CALL_TIMEOUT + 5)
        running = [n for n in self.nodes if n.is_running()]
        if running:
            self.say(f"stopping {len(running)} node(s)")
        for node in self.nodes:
            node.close_channel()  # no call of ours in flight for a node to wait for
        for node in running:
            node.send_stop()
        deadline = time.monotonic() + NODE_STOP_TIMEOUT
        for node in running:
            self._reap(node, max(0.0, deadline - time.monotonic()), NODE_STOP_TIMEOUT)
        if self.agent is not None and self.agent.is_running():
            self.agent.send_stop()
            self._reap(self.agent, AGENT_STOP_TIMEOUT, AGENT_STOP_TIMEOUT)
        if self.libvirt is not None:
            self.libvirt.stop_agents(
                lambda a: self._reap(a, AGENT_STOP_TIMEOUT, AGENT_STOP_TIMEOUT))
            self.libvirt.stop_daemons(self.say)
        if self.etcd is not None and not self._etcd_lost and self.etcd.pid is not None:
            self.etcd.stop()
            self.say("etcd stopped")
        if self.temp_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _reap(self, child: ServingProcess, wait: float, limit: float) -> None:
        """Wait for a child sent SIGTERM; SIGKILL when it outlasts `wait`. Anything but a
        clean exit 0 makes `up` exit 1."""
        code = child.wait(wait)
        if code is None:
            child.kill()
            self.report.failed = True
            self.say(f"{child.name} did not stop within {limit:.0f}s: killed")
            return
        if code != 0:
            self.report.failed = True
        self.say(f"{child.name} stopped ({exit_text(code)})")

    # -- watching ---------------------------------------------------------------------

    def _ready_addresses(self) -> list[str]:
        """Nodes ready now (the fleet thread asks before every call)."""
        return [v.address for v in self.views.values() if v.ready and v.exit_code is None]

    def poll(self) -> None:
        """Check every child's process, ask every node at once, take the fleet summary."""
        report = self.report
        if (self.etcd is not None and not self._etcd_lost and self.etcd.pid is not None
                and not self.etcd.is_running()):
            self._etcd_lost = True
            report.event(f"etcd exited unexpectedly (log {self.etcd.log_path})")
        agent = self.agent
        if agent is not None and agent.pid is not None and self._agent_exit is None:
            code = agent.returncode
            if code is not None:
                self._agent_exit = code
                report.event(f"agent exited unexpectedly ({exit_text(code)}); its hosts will "
                             f"be Disconnected (log {agent.log_path})")
        if self.libvirt is not None:
            self._poll_libvirt(self.libvirt)
        ready = next((n for n in self.nodes if self.views[n.node_id].ready and n.is_running()),
                     None)
        self.summary.ask(ready.channel() if ready is not None else None)
        calls = []
        for node in self.nodes:
            view = self.views[node.node_id]
            if node.pid is None or view.exit_code is not None:
                continue
            code = node.returncode
            if code is not None:
                node.close_channel()
                self.views[node.node_id] = view = replace(view, exit_code=code, ring=None,
                                                          ready=False)
                report.event(f"{node.node_id} exited unexpectedly ({exit_text(code)}); the "
                             f"others keep running (log {node.log_path})")
                self._reported[node.node_id] = view.state()
                continue
            ring = pb_grpc.ClusterServiceStub(node.channel()).GetRing.future(
                pb.GetRingRequest(), timeout=POLL_TIMEOUT)
            calls.append((node, ring, node.health_future("readiness", POLL_TIMEOUT)))
        for node, ring, health in calls:
            try:
                answer: RingView | None = RingView.from_reply(ring.result())
            except (grpc.RpcError, grpc.FutureCancelledError):
                answer = None
            view = replace(self.views[node.node_id], pid=node.pid, ring=answer,
                           ready=health_status(health) == "SERVING")
            self.views[node.node_id] = view
            if view.state() != self._reported.get(node.node_id):
                self._reported[node.node_id] = view.state()
                if not report.live:
                    self.say(view.describe())
        line = self.summary.read()
        if not report.live and line is not None and line != self._fleet_reported:
            self._fleet_reported = line
            self.say(f"fleet: {line}")

    def _poll_libvirt(self, lv: LibvirtHostSet) -> None:
        """Agents that died by themselves; the power requests the signals left."""
        for host_id, code, log_path in lv.poll():
            self.report.event(f"{host_id}: agent exited unexpectedly ({exit_text(code)}); "
                              f"the host will be Disconnected (log {log_path})")
        while self.power_requests:
            what = self.power_requests.pop(0)
            index = lv.next_on() if what == "off" else lv.next_off()
            if index is None:
                self.say(f"power {what}: no host is {'on' if what == 'off' else 'off'}")
                continue
            host_id = lv.host_ids[index]
            if what == "off":
                killed = lv.power_off(index)
                self.say(f"{host_id} powered off: agent killed, domains destroyed "
                         f"({', '.join(killed) or 'none'})")
            else:
                lv.power_on(index)
                self.say(f"{host_id} powered on: agent starting "
                         f"(pid {lv.agents[index].pid})")

    def screen_state(self) -> ScreenState:
        """What the live screen shows now."""
        agent = self.agent
        return ScreenState(
            nodes=[replace(self.views[n.node_id], pid=n.pid) for n in self.nodes],
            etcd=self.etcd_endpoints, embedded_etcd=self.etcd is not None,
            lease_ttl=self.args.lease_ttl, data_dir=self.data_dir, temp_dir=self.temp_dir,
            logs_dir=os.path.join(self.data_dir, "logs"),
            uptime=time.monotonic() - self.started_at,
            agent=(AgentView(agent.address, agent.hosts, HOST_PREFIX, agent.pid,
                             self._agent_exit) if agent is not None
                   else AgentView(self.libvirt.agents[0].address, self.libvirt.count,
                                  HOST_PREFIX, backend="libvirt",
                                  running=self.libvirt.running())
                   if self.libvirt is not None and self.libvirt.agents else None),
            fleet=self.summary.line, progress=self.report.progress,
            building=self.report.building, events=self.report.events,
        )

    def _loop(self, screen: LiveScreen | None) -> None:
        deadline = (time.monotonic() + self.args.duration) if self.args.duration else None
        while not self.stopping.is_set():
            self.poll()
            if screen is not None:
                screen.draw(self.screen_state())
            if deadline is not None and time.monotonic() >= deadline:
                self.say(f"--duration {self.args.duration:g}s reached")
                break
            wait = POLL_INTERVAL if deadline is None else min(
                POLL_INTERVAL, max(0.0, deadline - time.monotonic()))
            self.stopping.wait(wait)

    def run(self) -> int:
        """Start, poll until a signal or --duration, stop; the exit code of `up`."""
        try:
            self.start()
            if self.report.live:
                with LiveScreen(self.report) as screen:
                    self._loop(screen)
            else:
                self._loop(None)
        except (RuntimeError, OSError) as exc:  # etcd did not come up, a spawn failed
            print(f"controlplane up: {exc}", file=sys.stderr)
            self.report.failed = True
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
    power: list[str] = []
    if getattr(args, "backend", "sim") == "libvirt":
        # power a simulated host off/on (the poll loop does it: no work in a handler)
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1,
                                                 lambda *_: power.append("off"))
        previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2,
                                                 lambda *_: power.append("on"))
    try:
        # A UsageError (bad sizes, busy ports) goes up to `controlplane`'s one usage-error
        # printer (exit 2); nothing has been started yet.
        supervisor = Supervisor(args, stopping, signals)
        supervisor.power_requests = power
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
