"""`controlplane up` end to end: real etcd, real node processes, a real SIGTERM; and on an
80x24 terminal as a user sees it (a pty read by the pyte terminal emulator)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest

from controlplane.channels import open_channel
from controlplane.security.tls import ENV_TLS_DIR, PLAINTEXT, TlsFiles
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import WaitTimeout, wait_until
from controlplane.v1 import (
    config_pb2,
    config_pb2_grpc,
    host_pb2,
    host_pb2_grpc,
    vm_pb2,
    vm_pb2_grpc,
)

# What `up` prints (stdout not a terminal) when a node's report changes.
NODE_LINE = re.compile(r" (node-\d+) ready=(yes|no) epoch=(\d+) members=(\S+)")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int, agent: bool = False) -> int:
    """A base port whose node (P+i), metrics (P+100+i) and etcd (P+1000, +1) ports are free,
    and with ``agent`` the sim agent's (P+200)."""
    offsets = [*range(nodes), *(100 + i for i in range(nodes)), 1000, 1001,
               *([200] if agent else [])]
    for _ in range(200):
        base = free_port()
        if base + max(offsets) < 65536 and all(_bindable(base + off) for off in offsets):
            return base
    raise RuntimeError("no free base port")


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes (other than this one) that contain any needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def listening_on(port: int) -> set[str]:
    """The local addresses of the sockets listening on TCP `port` (from /proc/net/tcp and
    tcp6, the kernel's own table): what a process really bound, whatever it was told."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, _, port_hex = local.partition(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(socket.inet_ntop(family, raw))
            mapped = getattr(ip, "ipv4_mapped", None)  # gRPC binds ::ffff:127.0.0.1
            found.add(str(mapped or ip))
    return found


def _reader(stream, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _up_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "controlplane", "up", *args]


def test_up_starts_a_cluster_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    base = free_base_port(2)
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        _up_cmd("--nodes", "2", "--base-port", str(base), "--lease-ttl", "2",
                "--data-dir", str(data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    reader.start()
    output: list[str] = []

    def read_until(done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}; output:\n" + "\n".join(output)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"`up` exited ({proc.wait()}) before {what}; output:\n" + (
                "\n".join(output))
            output.append(line)

    try:
        # node id -> (ready, epoch, members), from the latest line about that node
        latest: dict[str, tuple[str, int, str]] = {}

        def both_ready_same_epoch() -> bool:
            if output and (m := NODE_LINE.search(output[-1])):
                latest[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
            states = [latest.get(n) for n in ("node-0", "node-1")]
            return (all(s is not None and s[0] == "yes" and s[2] == "node-0,node-1"
                        for s in states)
                    and len({s[1] for s in states if s is not None}) == 1)

        read_until(both_ready_same_epoch, 60, "both nodes ready at the same epoch")

        # mutual TLS by default: `up` printed the one line a user needs, and it works
        exports = [line for line in output if line.startswith("export CONTROLPLANE_TLS_DIR=")]
        assert exports == [f"export CONTROLPLANE_TLS_DIR={data_dir / 'tls' / 'admin'}"], output
        env = {**os.environ, ENV_TLS_DIR: exports[0].split("=", 1)[1]}
        status = subprocess.run(
            [sys.executable, "-m", "controlplane", "status", "--endpoint",
             f"127.0.0.1:{base}", "--json"],
            capture_output=True, text=True, timeout=30, check=False, env=env,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert sorted(m["node_id"] for m in doc["members"]) == ["node-0", "node-1"]
        assert doc["ring_epoch"] == latest["node-0"][1]
        # everything `up` runs is on loopback, the metrics endpoints too (base + 100 + i)
        for port in (base + 100, base + 101):
            assert listening_on(port) == {"127.0.0.1"}, (port, listening_on(port))
        assert listening_on(base) == {"127.0.0.1"}

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        reader.join(timeout=5)
        while (line := lines.get_nowait() if not lines.empty() else None) is not None:
            output.append(line)
        assert code == 0, "\n".join(output)
        assert output[-1].endswith("stopped cleanly"), "\n".join(output)
        assert "node-0 stopped (exit code 0)" in "\n".join(output)
        left = processes_mentioning(f"127.0.0.1:{base}", str(data_dir))
        assert not left, f"processes left behind: {left}"
        # --data-dir given: kept, with etcd's data and every log
        assert (data_dir / "etcd").is_dir()
        assert (data_dir / "etcd.log").is_file()
        assert (data_dir / "logs" / "node-1.log").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()  # its children get SIGTERM through PR_SET_PDEATHSIG
            proc.wait()


def test_up_refuses_a_port_in_use_and_bad_node_count(tmp_path: Path) -> None:
    base = free_base_port(1)
    data_dir = tmp_path / "up"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        result = subprocess.run(
            _up_cmd("--nodes", "1", "--base-port", str(base), "--data-dir", str(data_dir)),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result
    assert f"port {base}" in result.stderr and "in use" in result.stderr, result.stderr
    assert not data_dir.exists(), "nothing should be started or created"

    result = subprocess.run(_up_cmd("--nodes", "0", "--base-port", str(base)),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2, result
    assert "--nodes" in result.stderr, result.stderr


def test_up_builds_a_fleet_of_hosts_and_vms(tmp_path: Path) -> None:
    """--hosts/--vms: the hosts are CONNECTED and the VMs Running, as a node's API sees them;
    SIGTERM stops nodes, agent and etcd cleanly."""
    base = free_base_port(2, agent=True)
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        _up_cmd("--nodes", "2", "--hosts", "2", "--vms", "4", "--base-port", str(base),
                "--lease-ttl", "2", "--data-dir", str(data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(line.rstrip("\n")
                                                           for line in proc.stdout or ()),
                              daemon=True)
    reader.start()
    # the admin identity `up` writes (opened once it is there)
    admin = TlsFiles.from_dir(data_dir / "tls" / "admin")
    channels: list = []
    try:
        def fleet() -> tuple | str:
            if proc.poll() is not None:
                return "up exited"
            if not channels:
                if admin.signature() is None:
                    return ()
                channels.append(open_channel(f"127.0.0.1:{base}",
                                             [("grpc.max_reconnect_backoff_ms", 200)],
                                             tls=admin))
            channel = channels[0]
            hosts = host_pb2_grpc.HostServiceStub(channel).ListHosts(
                host_pb2.ListHostsRequest(), timeout=1).hosts
            vms = vm_pb2_grpc.VmServiceStub(channel).ListVms(
                vm_pb2.ListVmsRequest(), timeout=1).vms
            done = (len(hosts) == 2
                    and all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in hosts)
                    and len(vms) == 4 and all(v.state == "Running" for v in vms))
            return (hosts, vms) if done else ()

        found = wait_until(fleet, 60, interval=0.1,
                           message="2 hosts CONNECTED and 4 VMs Running through node-0's API")
        assert found != "up exited", "\n".join(output)
        hosts, vms = found
        assert [h.host_id for h in hosts] == ["host-0", "host-1"]
        assert {h.address for h in hosts} == {f"127.0.0.1:{base + 200}"}
        # round-robin over the hosts, HA never-stop for every other VM, 1 GiB root disks
        assert [(v.vm_id, v.host_id, v.ha) for v in vms] == [
            ("vm-0000", "host-0", vm_pb2.HA_LEVEL_NEVER_STOP), ("vm-0001", "host-1",
                                                                vm_pb2.HA_LEVEL_UNSPECIFIED),
            ("vm-0002", "host-0", vm_pb2.HA_LEVEL_NEVER_STOP), ("vm-0003", "host-1",
                                                                vm_pb2.HA_LEVEL_UNSPECIFIED)]
        assert {v.root_disk_size for v in vms} == {1 << 30}
        wait_until(lambda: any(line.endswith("created 4 VMs") for line in output), 10,
                   message="the progress lines")
        text = "\n".join(output)
        assert "registered 2 hosts" in text
        wait_until(lambda: any("fleet: hosts 2/2 connected, 4 VMs: Running 4" in line
                               for line in output), 10, message="the fleet summary line")

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        reader.join(timeout=5)
        text = "\n".join(output)
        assert code == 0, text
        assert output[-1].endswith("stopped cleanly"), text
        assert "agent stopped (exit code 0)" in text
        left = processes_mentioning(f"127.0.0.1:{base}", f"127.0.0.1:{base + 200}",
                                    str(data_dir))
        assert not left, f"processes left behind: {left}"
        assert (data_dir / "logs" / "agent.log").is_file()
    finally:
        for channel in channels:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_refuses_bad_fleet_sizes() -> None:
    for args, text in ((["--vms", "3"], "--vms needs --hosts"),
                       (["--hosts", "-1"], "--hosts"),
                       (["--hosts", "10001"], "--hosts"),
                       (["--hosts", "1", "--vms", "100001"], "--vms")):
        result = subprocess.run(_up_cmd("--nodes", "1", *args), capture_output=True, text=True,
                                timeout=30, check=False)
        assert result.returncode == 2, (args, result)
        assert text in result.stderr, (args, result.stderr)


def test_kill_9_of_up_takes_its_children_with_it(tmp_path: Path) -> None:
    """Children die with `up` even when it cannot clean up (PR_SET_PDEATHSIG, set by
    setpriv before exec so no Python runs in a forked child of a gRPC-using parent)."""
    base = free_base_port(1, agent=True)
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        _up_cmd("--nodes", "1", "--hosts", "1", "--base-port", str(base), "--lease-ttl", "2",
                "--data-dir", str(data_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    output: list[str] = []
    # etcd (its data dir), the node (its listen address) and the agent (its listen address)
    needles = (str(data_dir), f"127.0.0.1:{base} ", f"127.0.0.1:{base + 200} ")
    try:
        def registered() -> bool:
            while not lines.empty():
                line = lines.get_nowait()
                assert line is not None, "\n".join(output)
                output.append(line)
            return any("registered 1 hosts" in line for line in output)

        wait_until(registered, 60, message="up registered its host")
        children = processes_mentioning(*needles)
        assert len(children) >= 3, children  # etcd, the node and the agent run
    finally:
        proc.kill()
        proc.wait(timeout=10)
    wait_until(lambda: not processes_mentioning(*needles), 20,
               message="children of a killed `up` exit")


COLUMNS, LINES = 80, 24


class Terminal:
    """`controlplane up ARGS` on a pty of COLUMNS x LINES, its output fed to pyte.

    Started by Popen on the pty's slave end (not pty.fork): no Python code may run between
    fork and exec in a process that uses gRPC."""

    def __init__(self, *args: str) -> None:
        self.screen = pyte.Screen(COLUMNS, LINES)
        self._stream = pyte.ByteStream(self.screen)
        self._lock = threading.Lock()
        self.raw = bytearray()
        self.fd, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        try:
            self.proc = subprocess.Popen(_up_cmd(*args), stdin=slave, stdout=slave,
                                         stderr=slave, env=env, start_new_session=True)
        finally:
            os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the pty
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self._stream.feed(data)

    def lines(self) -> list[str]:
        with self._lock:
            return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        with self._lock:
            return self.raw.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its children get SIGTERM through PR_SET_PDEATHSIG
            self.proc.wait()
        self._reader.join(timeout=5)
        os.close(self.fd)


def _screen(lines: list[str]) -> str:
    return "\n".join(f"|{line}" for line in lines)


def _wait_screen(term: Terminal, done: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_until, with the screen as the user would see it in the failure."""
    try:
        wait_until(done, timeout, interval=0.1, message=what)
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}\n{_screen(term.lines())}") from None


def test_up_on_an_80x24_terminal_keeps_its_title_and_shows_an_exited_node(
        tmp_path: Path) -> None:
    base = free_base_port(3, agent=True)
    data_dir = tmp_path / "up"
    term = Terminal("--nodes", "3", "--hosts", "2", "--vms", "4", "--base-port", str(base),
                    "--lease-ttl", "2", "--data-dir", str(data_dir))
    try:
        def title_row() -> int | None:
            lines = term.lines()
            rows = [i for i, line in enumerate(lines) if line.startswith("controlplane up")]
            return rows[-1] if rows else None

        def all_ready() -> bool:
            lines = term.lines()
            row = title_row()
            if row is None:
                return False
            states = [line.split()[3] for line in lines[row:]
                      if re.match(r"node-\d ", line) and len(line.split()) > 3]
            return (states == ["ready"] * 3
                    and any("fleet: hosts 2/2 connected, 4 VMs: Running 4" in line
                            for line in lines))

        _wait_screen(term, all_ready, 60, "3 ready nodes and the fleet on screen")
        lines = term.lines()
        row = title_row()
        assert row is not None
        # the title line carries its counters: it did not wrap
        assert "3 nodes" in lines[row] and "lease 2s" in lines[row], _screen(lines)
        assert lines[row + 1].startswith("etcd https://127.0.0.1:"), _screen(lines)
        assert any(line.startswith("NODE ") and line.rstrip().endswith("FENCED")
                   for line in lines[row:]), _screen(lines)
        assert any("Ctrl-C to stop" in line for line in lines[row:]), _screen(lines)

        # kill -9 node-1 (its pid is in its start line): an exited row, an event
        match = re.search(r"node-1 starting on \S+ \(pid (\d+)", term.text())
        assert match, term.text()
        os.kill(int(match.group(1)), signal.SIGKILL)

        def exited_row() -> bool:
            lines = term.lines()
            return any(re.match(r"node-1 .*SIGKILL", line) for line in lines) and any(
                "node-1 exited unexpectedly (killed by SIGKILL)" in line for line in lines)

        _wait_screen(term, exited_row, 20, "node-1 shown as killed")
        row = title_row()
        assert row is not None and "3 nodes" in term.lines()[row], _screen(term.lines())

        term.proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = term.proc.wait(timeout=40)
        text = term.text()
        assert code == 1, text  # a node died that should not have
        assert "SIGINT: stopping" in text and "stopped (with errors, see above)" in text, text
        assert not processes_mentioning(f"127.0.0.1:{base}", f"127.0.0.1:{base + 200}",
                                        str(data_dir))
    finally:
        term.close()


@pytest.mark.slow
def test_up_with_the_libvirt_backend_runs_real_guests_and_powers_hosts_off_and_on() -> None:
    """--backend libvirt --hosts 2 --vms 2: each host its own session daemon and agent, the
    VMs Running as real guests (a domain running on each daemon); SIGUSR1 powers host-0 off
    (its domain destroyed, its agent gone: the host is no longer connected), SIGUSR2 on
    again (its HA VM runs again, exactly once); SIGTERM stops everything and removes the
    domains. ~40 s: two daemons, three guest boots (slow tier)."""
    libvirt = pytest.importorskip("libvirt")
    from controlplane.agent import libvirtd

    base = free_base_port(1, agent=True)
    prefix = "cp-uptest-"
    data_dir = Path(tempfile.mkdtemp(prefix="cp-up-libvirt-"))  # not pytest's tmp (0700)
    proc = subprocess.Popen(
        _up_cmd("--nodes", "1", "--hosts", "2", "--vms", "2", "--backend", "libvirt",
                "--libvirt-user-prefix", prefix, "--base-port", str(base), "--lease-ttl", "2",
                "--data-dir", str(data_dir), "--insecure"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip  (plaintext: this test is about guests; TLS is tested above)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(line.rstrip("\n")
                                                           for line in proc.stdout or ()),
                              daemon=True)
    reader.start()
    channel = open_channel(f"127.0.0.1:{base}", tls=PLAINTEXT)
    hosts_api = host_pb2_grpc.HostServiceStub(channel)
    vms_api = vm_pb2_grpc.VmServiceStub(channel)

    def running_domains() -> dict[str, list[str]]:
        out = {}
        for i in range(2):
            uri = libvirtd.session_uri(pwd.getpwnam(f"{prefix}{i}").pw_uid)
            conn = libvirt.open(uri)
            try:
                out[f"host-{i}"] = sorted(d.name() for d in conn.listAllDomains(
                    libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            finally:
                conn.close()
        return out

    def state() -> tuple[dict[str, int], dict[str, tuple[str, str, int]]]:
        hosts = hosts_api.ListHosts(host_pb2.ListHostsRequest(), timeout=2).hosts
        vms = vms_api.ListVms(vm_pb2.ListVmsRequest(), timeout=2).vms
        return ({h.host_id: h.status for h in hosts},
                {v.vm_id: (v.state, v.host_id, v.generation) for v in vms})

    connected = host_pb2.HOST_STATUS_CONNECTED
    try:
        def fleet() -> bool:
            assert proc.poll() is None, "\n".join(output)
            hosts, vms = state()
            return hosts == {"host-0": connected, "host-1": connected} and vms == {
                "vm-0000": ("Running", "host-0", 1), "vm-0001": ("Running", "host-1", 1)}

        wait_until(fleet, 120, interval=0.2, message="2 hosts CONNECTED, 2 VMs Running")
        assert running_domains() == {"host-0": ["vm-0000"], "host-1": ["vm-0001"]}
        config = config_pb2_grpc.ConfigServiceStub(channel)
        for key, value in {"vm.syncInterval": "1", "host.pingTimeout": "1",
                           "host.pingFailures": "2"}.items():  # a dead host seen in seconds
            config.UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                timeout=5)
        for host_id in ("host-0", "host-1"):  # a pull now: the next waits the new interval
            hosts_api.ReconnectHost(host_pb2.ReconnectHostRequest(host_id=host_id), timeout=10)

        proc.send_signal(signal.SIGUSR1)  # host-0 off
        wait_until(lambda: any("host-0 powered off" in line for line in output), 30,
                   message="host-0 powered off")
        assert running_domains()["host-0"] == []
        wait_until(lambda: state()[0]["host-0"] != connected, 30,
                   message="host-0 no longer connected")
        proc.send_signal(signal.SIGUSR2)  # and on again
        wait_until(lambda: state()[0]["host-0"] == connected, 60,
                   message="host-0 connected again")
        # the HA VM (vm-0000) runs again, once, with the next generation
        final = wait_until(lambda: (s := state()[1])["vm-0000"][0] == "Running"
                           and s["vm-0000"][2] == 2 and s, 90, interval=0.2,
                           message="vm-0000 Running again after the power cycle")
        domains = running_domains()
        assert sum(d.count("vm-0000") for d in domains.values()) == 1, domains
        assert "vm-0000" in domains[final["vm-0000"][1]]

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        reader.join(timeout=5)
        text = "\n".join(output)
        assert code == 0, text
        assert output[-1].endswith("stopped cleanly"), text
        uids = {pwd.getpwnam(f"{prefix}{i}").pw_uid for i in range(2)}
        left = [p.name for p in Path("/proc").iterdir()
                if p.name.isdigit() and _owner(p) in uids]
        assert not left, f"processes of the host users left (QEMU, libvirtd): {left}"
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def _owner(proc_dir: Path) -> int | None:
    try:
        return proc_dir.stat().st_uid
    except OSError:
        return None
