"""One settings mechanism for `serve`, `agent` and `mds`: every flag reads CONTROLPLANE_<FLAG>,
its help names the variable, a flag beats its variable, and a bad variable is refused with
the same argparse error as the bad flag."""

from __future__ import annotations

import argparse

import pytest

from controlplane.cli.main import build_parser
from controlplane.config import settings as s
from controlplane.mds import main as mds_main
from controlplane.security.tls import PLAINTEXT, TlsFiles

COMMANDS = ("serve", "agent", "mds")
REQUIRED = {"serve": ["--node-id", "n-1"], "agent": ["--listen", "127.0.0.1:1"],
            "mds": ["--listen", "127.0.0.1:1"]}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(s.ENV_PREFIX):
            monkeypatch.delenv(name)


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_reads_its_variable_and_help_names_it(command: str) -> None:
    parser = subparser(command)
    assert isinstance(parser, s.EnvArgumentParser)
    text = " ".join(parser.format_help().split())
    for action in options(parser):
        flag = action.option_strings[-1]
        assert action.env_var == s.env_name(flag), flag
        assert f"[env {s.env_name(flag)}" in text, flag


@pytest.mark.parametrize("command", COMMANDS)
def test_log_and_metrics_flags_are_shared(command: str, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    args = parse(command, *REQUIRED[command])
    assert (args.log_format, args.log_level, args.metrics_port) == ("text", "INFO", 0)
    assert args.metrics_address is None  # unset: the host of --listen (below)
    monkeypatch.setenv("CONTROLPLANE_LOG_FORMAT", "json")
    monkeypatch.setenv("CONTROLPLANE_LOG_LEVEL", "debug")
    monkeypatch.setenv("CONTROLPLANE_METRICS_PORT", "9100")
    monkeypatch.setenv("CONTROLPLANE_METRICS_ADDRESS", "::")
    args = parse(command, *REQUIRED[command])
    assert (args.log_format, args.log_level, args.metrics_port, args.metrics_address) == (
        "json", "DEBUG", 9100, "::")
    # a flag given on the command line wins over its variable
    args = parse(command, *REQUIRED[command], "--log-format", "text")
    assert args.log_format == "text"


def test_agent_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("agent", "--listen", "127.0.0.1:1").report_ops is True
    for name, value in {"LISTEN": "10.0.0.1:7100", "HOSTS": "3", "HOST_PREFIX": "hv-",
                        "START_DELAY": "0.5", "NO_REPORT_OPS": "true", "SEED": "7",
                        "BLOCK_BACKEND": "none"}.items():
        monkeypatch.setenv(s.ENV_PREFIX + name, value)
    args = parse("agent")
    assert (args.listen, args.hosts, args.host_prefix, args.start_delay) == (
        "10.0.0.1:7100", 3, "hv-", 0.5)
    assert (args.report_ops, args.seed, args.block_backend) == (False, 7, "none")
    monkeypatch.setenv("CONTROLPLANE_NO_REPORT_OPS", "false")
    assert parse("agent").report_ops is True


def test_serve_and_mds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_NODE_ID", "pod-1")
    monkeypatch.setenv("CONTROLPLANE_LEASE_TTL", "4")
    monkeypatch.setenv("CONTROLPLANE_LISTEN", "127.0.0.1:7300")
    monkeypatch.setenv("CONTROLPLANE_TLS_DIR", "/etc/controlplane/tls")
    settings = s.settings_from_args(parse("serve"))
    assert (settings.node_id, settings.lease_ttl, settings.advertise) == (
        "pod-1", 4, "127.0.0.1:7300")
    assert settings.tls == TlsFiles.from_dir("/etc/controlplane/tls")
    assert parse("mds").listen == "127.0.0.1:7300"
    # `python -m controlplane.mds.main` builds its own parser: the same variables
    standalone = mds_main._configure(s.EnvArgumentParser(prog="mds"))
    assert standalone.parse_args([]).listen == "127.0.0.1:7300"


@pytest.mark.parametrize(("command", "name", "value", "flag"), [
    ("serve", "LEASE_TTL", "1", "--lease-ttl"),
    ("serve", "LOG_FORMAT", "xml", "--log-format"),
    ("serve", "METRICS_ADDRESS", "not an address", "--metrics-address"),
    ("agent", "HOSTS", "0", "--hosts"),
    ("agent", "START_DELAY", "nan", "--start-delay"),
    ("agent", "BACKEND", "qemu", "--backend"),
    ("agent", "METRICS_PORT", "70000", "--metrics-port"),
    ("mds", "LOG_LEVEL", "loud", "--log-level"),
    ("mds", "LISTEN", "7070", "--listen"),
])
def test_a_bad_variable_gets_the_flag_error(command: str, name: str, value: str, flag: str,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = [] if name == "LISTEN" else REQUIRED[command]
    with pytest.raises(SystemExit) as from_flag:
        parse(command, *argv, flag, value)
    flag_error = capsys.readouterr().err
    monkeypatch.setenv(s.ENV_PREFIX + name, value)
    with pytest.raises(SystemExit) as from_env:
        parse(command, *argv)
    env_error = capsys.readouterr().err
    assert from_flag.value.code == from_env.value.code == 2
    assert f"error: argument {flag}" in env_error
    assert env_error == flag_error


def test_a_flag_that_takes_no_value_refuses_a_bad_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CONTROLPLANE_NO_REPORT_OPS", "maybe")
    with pytest.raises(SystemExit) as done:
        parse("agent", "--listen", "127.0.0.1:1")
    assert done.value.code == 2 and "CONTROLPLANE_NO_REPORT_OPS" in capsys.readouterr().err


def test_a_plain_argparse_parser_is_refused() -> None:
    """It would take env_var and never read it: the variable would be silently ignored."""
    with pytest.raises(TypeError, match="EnvArgumentParser"):
        s.add_env_argument(argparse.ArgumentParser(), "--x", help="x")


def test_serve_flags_table_names_match_the_flags() -> None:
    for f in s.SERVE_FLAGS:
        assert f.env == "CONTROLPLANE_" + f.flag[2:].replace("-", "_").upper()


def test_children_drop_exactly_the_settings_variables() -> None:
    """serving.child_env strips the settings' own prefix (spelled there: serving sits below
    config) and nothing else."""
    from controlplane import serving

    assert serving.SETTINGS_PREFIX == s.ENV_PREFIX


@pytest.mark.parametrize(("address", "listen", "bound"), [
    (None, "0.0.0.0:7070", "0.0.0.0"),  # a pod: scraped from outside, like its gRPC port
    (None, "127.0.0.1:7070", "127.0.0.1"),  # `up`, the harness: loopback only
    (None, "[::1]:7070", "::1"),
    (None, "[::]:7070", "::"),
    (None, ":7070", "0.0.0.0"),  # no host: every interface, as gRPC binds it
    (None, "node-a.example:7070", "node-a.example"),
    ("10.0.0.5", "0.0.0.0:7070", "10.0.0.5"),  # given: it wins
])
def test_metrics_bind_where_grpc_listens_unless_told(address: str | None, listen: str,
                                                      bound: str) -> None:
    assert s.metrics_bind_address(address, listen) == bound


@pytest.mark.parametrize("command", COMMANDS)
def test_metrics_follow_the_listen_host_on_every_command(command: str) -> None:
    listen = ["--listen", "127.0.0.1:7171"]
    args = parse(command, *({"serve": ["--node-id", "n-1"]}.get(command, [])), *listen)
    assert s.metrics_bind_address(args.metrics_address, args.listen) == "127.0.0.1"
    if command == "serve":
        args.insecure = True
        assert s.settings_from_args(args).metrics_address == "127.0.0.1"
        default = s.settings_from_args(parse("serve", "--node-id", "n-1", "--insecure"))
        assert (default.listen, default.metrics_address) == ("0.0.0.0:7070", "0.0.0.0")


def test_up_runs_its_nodes_with_metrics_on_loopback(tmp_path) -> None:
    from controlplane.cli.up.children import NodeChild

    argv = NodeChild("node-0", 7000, 7100, "127.0.0.1:2379", 10, str(tmp_path),
                     PLAINTEXT, PLAINTEXT).argv()
    assert argv[argv.index("--listen") + 1].startswith("127.0.0.1:")
    assert argv[argv.index("--metrics-address") + 1] == "127.0.0.1"


# -- the transport: mutual TLS, or an explicit --insecure, never a silent default ----------

@pytest.mark.parametrize("command", [*COMMANDS, "status"])
def test_a_process_without_certificates_or_insecure_refuses_naming_both(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(command, *REQUIRED.get(command, []))
    with pytest.raises(SystemExit) as exited:
        s.transport_from_args(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--tls-dir" in err and "--insecure" in err and "CONTROLPLANE_TLS_DIR" in err


@pytest.mark.parametrize("command", [*COMMANDS, "status"])
def test_the_transport_flags_and_their_variables(command: str, tmp_path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    required = REQUIRED.get(command, [])
    assert s.transport_from_args(parse(command, *required, "--insecure")) is PLAINTEXT
    tls = s.transport_from_args(parse(command, *required, "--tls-dir", str(tmp_path)))
    assert tls == TlsFiles.from_dir(tmp_path)
    files = s.transport_from_args(parse(command, *required, "--ca", "/a/ca", "--cert",
                                        "/a/c", "--key", "/a/k"))
    assert files == TlsFiles("/a/ca", "/a/c", "/a/k")
    monkeypatch.setenv("CONTROLPLANE_TLS_DIR", str(tmp_path))
    assert s.transport_from_args(parse(command, *required)) == TlsFiles.from_dir(tmp_path)
    monkeypatch.delenv("CONTROLPLANE_TLS_DIR")
    monkeypatch.setenv("CONTROLPLANE_INSECURE", "true")
    assert s.transport_from_args(parse(command, *required)) is PLAINTEXT


@pytest.mark.parametrize("extra", [
    ["--insecure", "--tls-dir", "/x"],      # both
    ["--tls-dir", "/x", "--ca", "/a"],      # a directory and files
    ["--ca", "/a", "--cert", "/b"],         # no key
])
def test_contradictory_transport_flags_are_a_usage_error(
        extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        s.transport_from_args(parse("serve", "--node-id", "n-1", *extra))
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_config_get_key_and_the_key_flag_do_not_collide() -> None:
    """`config get KEY` has a positional named key; --key (the TLS key file) has its own
    dest, so neither overwrites the other."""
    args = parse("config", "get", "vm.syncInterval", "--key", "/k", "--ca", "/c",
                 "--cert", "/t")
    assert args.key == "vm.syncInterval"
    assert s.transport_from_args(args) == TlsFiles("/c", "/t", "/k")
