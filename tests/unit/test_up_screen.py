"""The screen of `controlplane up`: it fits 80 columns with its title on top, and says which
node is FENCED and which one exited; and the plain lines scripts read."""

from __future__ import annotations

import argparse
import io
import re

import pytest
from rich.console import Console

from controlplane.cli.up import add_up_parser
from controlplane.cli.up.layout import UsageError, check_args
from controlplane.cli.up.screen import (
    TITLE,
    AgentView,
    NodeView,
    Reporter,
    RingView,
    ScreenState,
    render,
)

MEMBERS = ("node-0", "node-1", "node-2")


def _ring(incarnation: int, epoch: int, fenced: bool = False) -> RingView:
    return RingView(epoch=epoch, incarnation=incarnation, fenced=fenced, members=MEMBERS,
                    shares={m: 1 / 3 for m in MEMBERS})


def _state(**overrides: object) -> ScreenState:
    """A cluster in trouble, with long values everywhere a real one can have them."""
    data = "/tmp/controlplane-up-k2j4h5g6"
    nodes = [
        NodeView("node-0", "127.0.0.1:7070", f"{data}/logs/node-0.log", pid=4194301,
                 ready=True, ring=_ring(1234567, 1234570)),
        NodeView("node-1", "127.0.0.1:7071", f"{data}/logs/node-1.log", pid=4194302,
                 ready=False, ring=_ring(1234568, 1234569, fenced=True)),
        NodeView("node-2", "127.0.0.1:7072", f"{data}/logs/node-2.log", pid=4194303,
                 exit_code=-9),
        NodeView("node-3", "127.0.0.1:7073", f"{data}/logs/node-3.log", pid=4194304),
    ]
    values: dict = dict(
        nodes=nodes, etcd="127.0.0.1:8070", embedded_etcd=True, lease_ttl=10, data_dir=data,
        temp_dir=True, logs_dir=f"{data}/logs", uptime=86399.6, clock="23:59:59",
        agent=AgentView("127.0.0.1:7270", 10_000, "host-", 4194305),
        fleet="hosts 9999/10000 connected, 100000 VMs: Running 99998, Starting 1, Stopped 1",
        progress=("23:59:01 registered 10000 hosts",), building="creating VMs: 99999/100000",
        events=("23:59:58 node-2 exited unexpectedly (killed by SIGKILL); the others keep "
                f"running (log {data}/logs/node-2.log)",),
    )
    values.update(overrides)
    return ScreenState(**values)


def _draw(state: ScreenState, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, force_terminal=True, color_system="truecolor",
                      file=io.StringIO())
    console.print(render(state))
    return console.export_text(styles=False).splitlines()


def test_the_screen_fits_80_columns_with_the_title_on_its_first_line() -> None:
    lines = _draw(_state())
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(lines)
    assert lines[0].startswith(TITLE), "\n".join(lines)
    # the counters share the title line: it does not wrap
    assert "4 nodes" in lines[0] and "23:59:59" in lines[0], "\n".join(lines)
    rows = {line.split()[0]: line for line in lines if line.startswith("node-")}
    assert "FENCED" in rows["node-1"] and "not ready" in rows["node-1"], "\n".join(lines)
    assert "SIGKILL" in rows["node-2"], "\n".join(lines)
    assert "no answer" in rows["node-3"], "\n".join(lines)
    assert "ready" in rows["node-0"] and "FENCED" not in rows["node-0"]
    text = "\n".join(lines)
    assert "nodes DISAGREE" in text  # epochs 1234570 and 1234569
    assert "Ctrl-C to stop" in text


def test_a_screen_for_a_24_line_terminal() -> None:
    """3 nodes, a fleet and an event fit 24 lines; the bottom is what Live crops, so the
    title must come first."""
    state = _state(nodes=_state().nodes[:3])
    lines = _draw(state)
    assert len(lines) <= 24, "\n".join(lines)
    assert lines[0].startswith(TITLE)


def test_narrow_terminals_keep_the_title_and_stay_within_width() -> None:
    for width in (60, 100):
        lines = _draw(_state(), width)
        assert lines[0].startswith(TITLE)
        assert max(len(line) for line in lines) <= width, "\n".join(lines)


def test_colours_mark_fenced_exited_and_not_ready() -> None:
    console = Console(width=80, record=True, force_terminal=True, color_system="standard",
                      file=io.StringIO())
    console.print(render(_state()))
    rows = {line.split(" ", 1)[0]: line
            for line in console.export_text(styles=True).splitlines()
            if line.startswith("node-")}

    def colour_of(node: str, word: str) -> set[str]:
        """The SGR codes `word` is drawn with in the node's row: 31 red, 32 green, 33 yellow."""
        found = re.search(r"\x1b\[([0-9;]*)m" + re.escape(word), rows[node])
        assert found, f"{word!r} not drawn with a style: {rows[node]!r}"
        return set(found.group(1).split(";"))

    assert "31" in colour_of("node-1", "FENCED")
    assert "33" in colour_of("node-1", "not ready")
    assert "31" in colour_of("node-2", "SIGKILL")
    assert "32" in colour_of("node-0", "ready")


def test_the_screen_before_any_node_answers() -> None:
    state = _state(nodes=[NodeView("node-0", "127.0.0.1:7070", "/l")], agent=None,
                   fleet=None, progress=(), building="", events=())
    lines = _draw(state)
    assert lines[0].startswith(TITLE) and "1 node " in lines[0]
    assert any("ring: no node answers yet" in line for line in lines)


def test_plain_lines_are_what_scripts_read() -> None:
    out = io.StringIO()
    report = Reporter(live=False, out=out)
    node = NodeView("node-1", "127.0.0.1:7071", "/l", ready=True,
                    ring=_ring(5, 7, fenced=True))
    report.say(node.describe())
    report.milestone("registered 2 hosts")
    report.event("node-2 exited unexpectedly")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(" node-1 ready=yes epoch=7 members=node-0,node-1,node-2 "
                             "incarnation=5 fenced=yes")
    assert lines[1].endswith(" registered 2 hosts")
    assert lines[2].endswith(" node-2 exited unexpectedly")
    assert report.failed
    assert NodeView("n", "a", "/l", exit_code=-9).describe() == "n exited (killed by SIGKILL, " \
        "log /l)"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_up_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["up", *argv])


def test_up_parser_defaults() -> None:
    args = _args()
    assert (args.nodes, args.base_port, args.lease_ttl, args.hosts, args.vms) == (
        3, 7070, 10, 0, 0)
    assert args.data_dir is None and args.etcd is None and args.duration is None


@pytest.mark.parametrize("argv", [["--nodes", "0"], ["--lease-ttl", "1"], ["--duration", "0"],
                                  ["--duration", "nan"], ["--etcd", "nohost"]])
def test_bad_single_values_are_refused_by_the_flags(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    """`up --duration nan` used to pass the `<= 0` check and spin; a flag's type refuses."""
    with pytest.raises(SystemExit) as exit_:
        _args(*argv)
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "text"), [
    (["--vms", "3"], "--vms needs --hosts"),
    (["--base-port", "65535", "--nodes", "2"], "out of range"),
    (["--base-port", "20000", "--hosts", "1", "--agent-port", "20001"], "both node-1 and agent"),
])
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str], text: str) -> None:
    with pytest.raises(UsageError, match=text):
        check_args(_args(*argv))


def test_ports_follow_the_base_port() -> None:
    ports = check_args(_args("--nodes", "2", "--base-port", "21000", "--hosts", "1"))
    assert [ports.node(i) for i in range(2)] == [21000, 21001]
    assert [ports.metrics(i) for i in range(2)] == [21100, 21101]
    assert (ports.etcd, ports.agent) == (22000, 21200)
    external = check_args(_args("--base-port", "21000", "--etcd", "10.0.0.1:2379"))
    assert external.etcd is None and external.agent is None


def test_up_children_do_not_inherit_controlplane_variables(monkeypatch, tmp_path) -> None:
    """An exported CONTROLPLANE_* setting would reach every child of `up` (serve, agent):
    they are configured by their flags alone."""
    from controlplane.cli.up.children import AgentChild, NodeChild
    from controlplane.security.tls import PLAINTEXT

    monkeypatch.setenv("CONTROLPLANE_METRICS_PORT", "9100")
    monkeypatch.setenv("CONTROLPLANE_LOG_FORMAT", "json")
    monkeypatch.setenv("UNRELATED_SETTING", "kept")
    for child in (NodeChild("node-0", 7070, 0, "127.0.0.1:2379", 10, str(tmp_path),
                            PLAINTEXT, PLAINTEXT),
                  AgentChild(7270, 2, str(tmp_path), PLAINTEXT, PLAINTEXT)):
        env = child.env()
        assert not [k for k in env if k.startswith("CONTROLPLANE_")], child.name
        assert env["UNRELATED_SETTING"] == "kept" and env["PYTHONPATH"]
