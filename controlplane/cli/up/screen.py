"""What `up` shows: plain log lines (stdout not a terminal: scripts and tests read those) or a
live screen drawn with rich (a terminal).

The screen is a pure function of a ScreenState snapshot, so it can be rendered and measured
without a cluster (tests render it at 80 columns). It is built to fit 80x24: a one-line
title that never wraps, one table row per node, and what does not fit at the bottom is
cropped by rich.live.Live, never the title. Colour says what needs a look: FENCED and exited
in red, not ready in yellow.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from controlplane.procs import exit_text
from controlplane.v1 import cluster_pb2

__all__ = ["MAX_EVENTS", "TITLE", "AgentView", "LiveScreen", "NodeView", "Reporter",
           "RingView", "ScreenState", "render"]

TITLE = "controlplane up"
MAX_EVENTS = 5  # unexpected exits (and fleet milestones) kept on the live screen

_RED = "bold red"
_YELLOW = "yellow"
_GREEN = "green"
_DIM = "dim"


def _now() -> str:
    return time.strftime("%H:%M:%S")


def exit_short(code: int) -> str:
    """`exit 1` or `SIGKILL`: an exit in a table cell."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@dataclass(frozen=True)
class RingView:
    """What a node answered to GetRing, as far as `up` shows it."""

    epoch: int
    incarnation: int
    fenced: bool
    members: tuple[str, ...]  # node ids, in the order the node gave them
    shares: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, ring: cluster_pb2.GetRingResponse) -> RingView:
        return cls(epoch=ring.epoch, incarnation=ring.incarnation, fenced=ring.fenced,
                   members=tuple(m.node_id for m in ring.members), shares=dict(ring.shares))


@dataclass(frozen=True)
class NodeView:
    """One node as `up` last saw it: its process, and what it answered (GetRing, readiness)."""

    node_id: str
    address: str
    log_path: str
    pid: int | None = None
    ready: bool = False
    ring: RingView | None = None  # None: GetRing not answered
    exit_code: int | None = None  # not None: the process exited

    def state(self) -> tuple:
        """What a plain log line is printed for when it changes."""
        if self.exit_code is not None:
            return ("exited", self.exit_code)
        if self.ring is None:
            return ("no answer", self.ready)
        r = self.ring
        return (self.ready, r.epoch, r.members, r.incarnation, r.fenced)

    def describe(self) -> str:
        """One plain line: `node-0 ready=yes epoch=7 members=node-0,node-1 ...`."""
        if self.exit_code is not None:
            return f"{self.node_id} exited ({exit_text(self.exit_code)}, log {self.log_path})"
        if self.ring is None:
            return f"{self.node_id} ready={'yes' if self.ready else 'no'} (GetRing not answered)"
        r = self.ring
        members = ",".join(r.members) or "-"
        return (f"{self.node_id} ready={'yes' if self.ready else 'no'} epoch={r.epoch} "
                f"members={members} incarnation={r.incarnation} "
                f"fenced={'yes' if r.fenced else 'no'}")


@dataclass(frozen=True)
class AgentView:
    """The sim agent process (or, ``backend`` libvirt, the per-host agents: ``running`` of
    them up, ``address`` the first one's)."""

    address: str
    hosts: int
    host_prefix: str
    pid: int | None = None
    exit_code: int | None = None
    backend: str = "sim"
    running: int = 0


@dataclass(frozen=True)
class ScreenState:
    """Everything one frame of the live screen shows."""

    nodes: Sequence[NodeView]
    etcd: str  # endpoints
    embedded_etcd: bool
    lease_ttl: int
    data_dir: str
    temp_dir: bool
    logs_dir: str
    uptime: float
    clock: str = field(default_factory=_now)
    agent: AgentView | None = None
    fleet: str | None = None  # fleet_line() of the last summary answered
    progress: Sequence[str] = ()  # milestones of building the fleet
    building: str = ""  # the step in progress
    events: Sequence[str] = ()  # what went wrong


def _title(s: ScreenState) -> Table:
    """`controlplane up` on the left, the counters on the right; one line at any width
    (the right side is cropped first)."""
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True, overflow="ellipsis")
    nodes = f"{len(s.nodes)} node{'s' if len(s.nodes) != 1 else ''}"
    grid.add_row(Text(TITLE, style="bold cyan"),
                 Text(f"{nodes} · lease {s.lease_ttl}s · up {s.uptime:.0f}s · {s.clock}",
                      style=_DIM))
    return grid


def _ring_line(s: ScreenState) -> Text:
    answered = [n.ring for n in s.nodes if n.ring is not None]
    view = max(answered, key=lambda r: r.epoch, default=None)
    if view is None:
        return Text("ring: no node answers yet", style=_YELLOW)
    epochs = {r.epoch for r in answered}
    line = Text(f"ring epoch {view.epoch}, {len(view.members)} members, ")
    if len(epochs) == 1:
        line.append("all answering nodes agree", style=_GREEN)
    else:
        line.append("nodes DISAGREE", style=_RED)
    ours = {n.node_id for n in s.nodes}
    others = [m for m in view.members if m not in ours]
    if others:
        line.append(f" (also: {', '.join(others)})")
    return line


def _node_table(s: ScreenState) -> Table:
    """One row per node; the share is each node's in the most recent ring any node gave."""
    answered = [n.ring for n in s.nodes if n.ring is not None]
    view = max(answered, key=lambda r: r.epoch, default=None)
    shares = view.shares if view is not None else {}
    # One space between columns (collapse_padding): nine columns of real values (7-digit
    # pids, incarnations and epochs) fit 80 columns.
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  padding=(0, 1), collapse_padding=True)
    table.add_column("NODE", no_wrap=True, overflow="ellipsis")
    table.add_column("ADDRESS", no_wrap=True, overflow="ellipsis")
    table.add_column("PID", justify="right", no_wrap=True)
    table.add_column("STATE", no_wrap=True, min_width=9)
    table.add_column("INCARN", justify="right", no_wrap=True)
    table.add_column("EPOCH", justify="right", no_wrap=True)
    table.add_column("MEMB", justify="right", no_wrap=True)
    table.add_column("SHARE", justify="right", no_wrap=True)
    table.add_column("FENCED", no_wrap=True, min_width=6)
    for n in s.nodes:
        pid = str(n.pid) if n.pid else "-"
        if n.exit_code is not None:
            table.add_row(n.node_id, n.address, pid, Text(exit_short(n.exit_code), style=_RED),
                          "", "", "", "", "")
            continue
        if n.ring is None:
            state = (Text("ready", style=_GREEN) if n.ready
                     else Text("no answer", style=_YELLOW))
            table.add_row(n.node_id, n.address, pid, state, "-", "-", "-", "-", "-")
            continue
        r = n.ring
        state = Text("ready", style=_GREEN) if n.ready else Text("not ready", style=_YELLOW)
        share = shares.get(n.node_id)
        fenced = Text("FENCED", style=_RED) if r.fenced else Text("no")
        table.add_row(n.node_id, n.address, pid, state, str(r.incarnation),
                      str(r.epoch), str(len(r.members)),
                      f"{share:.1%}" if share is not None else "-", fenced)
    return table


def render(s: ScreenState) -> RenderableType:
    """One frame of the live screen."""
    parts: list[RenderableType] = [_title(s)]
    where = Text(f"etcd {s.etcd}{' (embedded)' if s.embedded_etcd else ''} · data ",
                 style=_DIM)
    where.append(f"{s.data_dir}{' (temporary)' if s.temp_dir else ''}", style=_DIM)
    parts += [where, _ring_line(s), Text(""), _node_table(s)]
    if s.agent is not None:
        a = s.agent
        line = Text(f"agent {a.address} ")
        if a.backend == "libvirt":
            line = Text(f"agents {a.address}.. · {a.running}/{a.hosts} running · {a.hosts} "
                        f"libvirt hosts {a.host_prefix}0..{a.host_prefix}{a.hosts - 1}")
        elif a.exit_code is not None:
            line.append(f"exited ({exit_text(a.exit_code)})", style=_RED)
        else:
            line.append(f"pid {a.pid or '-'}")
        if a.backend != "libvirt":
            line.append(f" · {a.hosts} sim hosts {a.host_prefix}0..{a.host_prefix}"
                        f"{a.hosts - 1}")
        parts += [Text(""), line]
    elif s.fleet or s.progress or s.building:
        parts.append(Text(""))
    if s.agent is not None or s.fleet:
        parts.append(Text(f"fleet: {s.fleet or 'no ready node answered yet'}"))
    parts += [Text(f"  {p}", style=_DIM) for p in s.progress]
    if s.building:
        parts.append(Text(f"  {s.building}", style=_YELLOW))
    if s.events:
        # One line each (the full text was printed above the screen too).
        parts += [Text("events:", style=_RED),
                  *(Text(f"  {e}", no_wrap=True, overflow="ellipsis") for e in s.events)]
    parts.append(Text(f"logs in {s.logs_dir} · Ctrl-C to stop", style=_DIM))
    return Group(*parts)


class Reporter:
    """Where `up` tells the user things, from the main loop and the fleet thread alike.

    Not a terminal: every message is a timestamped plain line. A terminal: plain lines are
    printed above the live screen by rich; events also go to a list the screen shows, and
    fleet milestones and the step in progress only to the screen."""

    def __init__(self, live: bool, out: TextIO | None = None) -> None:
        self.live = live
        self.out = out if out is not None else sys.stdout
        # highlight=False: no guessed colours inside plain lines (pids, paths).
        self.console: Console | None = (Console(file=self.out, highlight=False) if live
                                        else None)
        self.failed = False  # something died that should not have: exit code 1
        self.events: tuple[str, ...] = ()
        self.progress: tuple[str, ...] = ()
        self.building = ""  # the step in progress ("creating VMs: 10/100")
        self._lock = threading.Lock()  # one writer at a time on stdout
        self._last_step_line = time.monotonic()

    def say(self, text: str) -> None:
        """A plain line (on a terminal: above the live screen). One write under a lock."""
        with self._lock:
            if self.console is not None:
                self.console.print(Text(f"{_now()} {text}"), soft_wrap=True)
            else:
                self.out.write(f"{_now()} {text}\n")
                self.out.flush()

    def verbatim(self, text: str) -> None:
        """A line printed exactly as given, no timestamp: one a user copies and runs (the
        `export CONTROLPLANE_TLS_DIR=...` line)."""
        with self._lock:
            if self.console is not None:
                self.console.print(Text(text), soft_wrap=True)
            else:
                self.out.write(f"{text}\n")
                self.out.flush()

    def event(self, text: str) -> None:
        """Something went wrong while running: `up` will exit 1. A line (on a terminal,
        above the screen, where scrollback keeps it whole) and, on a terminal, a line in the
        screen's events."""
        self.failed = True
        if self.live:
            with self._lock:
                self.events = (*self.events, f"{_now()} {text}")[-MAX_EVENTS:]
        self.say(text)

    def milestone(self, text: str) -> None:
        """A step of building the fleet is done."""
        if self.live:
            with self._lock:
                self.progress = (*self.progress, f"{_now()} {text}")[-MAX_EVENTS:]
        else:
            self.say(text)

    def step(self, text: str, *, start: bool = False, every: float = 5.0) -> None:
        """The step in progress; as a plain line at most every `every` seconds, counted
        from the step's `start`."""
        self.building = text
        if start:
            self._last_step_line = time.monotonic()
        elif not self.live and text and time.monotonic() - self._last_step_line >= every:
            self._last_step_line = time.monotonic()
            self.say(text)


class LiveScreen:
    """rich.live.Live around the frames: redrawn when `up` has polled (no auto refresh,
    so no frame shows half an update), cropped at the bottom when the terminal is short."""

    def __init__(self, reporter: Reporter) -> None:
        assert reporter.console is not None
        self.reporter = reporter
        self._live = Live(console=reporter.console, auto_refresh=False, transient=False,
                          redirect_stdout=False, redirect_stderr=False,
                          vertical_overflow="ellipsis")

    def __enter__(self) -> LiveScreen:
        self._live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._live.stop()

    def draw(self, state: ScreenState) -> None:
        self._live.update(render(state), refresh=True)
