"""A loopback TCP proxy whose link to the target can be black-holed, dropped and healed.

Pointing a node at the proxy instead of at etcd lets a test cut that one node off from the store
while the rest of the cluster keeps working. All sockets are non-blocking and served by one
selector thread, so the proxy handles any number of connections and stops cleanly; mode changes
are handed to that thread and applied before the call returns, so a test can rely on them.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
from types import TracebackType

__all__ = ["TcpProxy"]

_CHUNK = 65536
_MAX_BUFFER = 1 << 20  # stop reading a side while this much is waiting for the other side
_MODES = ("pass", "blackhole", "drop")


def _split_hostport(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target must be 'host:port', not {target!r}")
    return host.strip("[]"), int(port)


def _abort(sock: socket.socket | None) -> None:
    """Close with RST (linger 0), so the peer gets an error rather than an orderly EOF."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    """One client connection and its upstream connection."""

    __slots__ = (
        "client", "upstream", "connected", "to_up", "to_client",
        "client_eof", "upstream_eof", "up_shut", "client_shut", "blackholed",
    )  # fmt: skip

    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.connected = False
        self.to_up = bytearray()
        self.to_client = bytearray()
        self.client_eof = False  # client sent FIN
        self.upstream_eof = False  # upstream sent FIN
        self.up_shut = False  # FIN forwarded to upstream
        self.client_shut = False  # FIN forwarded to client
        self.blackholed = False


class TcpProxy:
    """Forward ``listen_host:listen_port`` to ``target`` and misbehave on demand."""

    def __init__(self, target: str, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = target
        self._target_addr = _split_hostport(target)
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._mode = "pass"
        self._conns: dict[int, _Conn] = {}  # keyed by id(conn)
        self._events: dict[socket.socket, int] = {}  # currently registered interest
        self._sel: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[str, threading.Event]] = []
        self._stopping = False

    # ----------------------------------------------------------------- public API

    @property
    def address(self) -> str:
        if self._port is None:
            raise RuntimeError("proxy not started")
        return f"{self._listen_host}:{self._port}"

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._conns)

    def start(self) -> TcpProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        family = socket.AF_INET6 if ":" in self._listen_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self._listen_host, self._listen_port))
            listener.listen(512)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._sel.register(listener, selectors.EVENT_READ)
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy-{self._port}->{self.target}", daemon=True
        )
        self._thread.start()
        return self

    def blackhole(self) -> None:
        """Stop moving bytes; connections stay open, so peers see silence rather than errors."""
        self._command("blackhole")

    def drop(self) -> None:
        """Reset every connection, and reset new ones as soon as they are accepted."""
        self._command("drop")

    def heal(self) -> None:
        """Forward again; black-holed connections are reset because their streams lost time."""
        self._command("pass")

    def stop(self) -> None:
        """Close everything and join the proxy thread; idempotent."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join(timeout=10)
        if thread.is_alive():  # pragma: no cover - would be a bug in _run
            raise RuntimeError("TcpProxy thread did not stop")
        self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.address if self._port is not None else "unstarted"
        return f"<TcpProxy {where} -> {self.target} mode={self._mode} conns={self.connections}>"

    # ----------------------------------------------------------------- commands

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def _command(self, mode: str) -> None:
        assert mode in _MODES
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._mode = mode  # nothing is open, only remember the mode
            return
        done = threading.Event()
        with self._lock:
            self._pending.append((mode, done))
        self._wake()
        if not done.wait(timeout=10):  # pragma: no cover - would be a bug in _run
            raise RuntimeError(f"TcpProxy did not apply {mode!r}")

    def _apply(self, mode: str) -> None:
        previous, self._mode = self._mode, mode
        if mode == "drop":
            for conn in list(self._conns.values()):
                self._close(conn, abort=True)
        elif mode == "blackhole":
            for conn in self._conns.values():
                conn.blackholed = True
                self._update(conn)
        elif mode == "pass" and previous == "blackhole":
            for conn in list(self._conns.values()):
                if conn.blackholed:
                    self._close(conn, abort=True)

    # ----------------------------------------------------------------- event loop

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                with self._lock:
                    pending, self._pending = self._pending, []
                for mode, done in pending:
                    self._apply(mode)
                    done.set()
                for key, mask in sel.select(timeout=1.0):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = key.data
                        if id(conn) in self._conns:  # may have been closed earlier in this batch
                            self._io(conn, sock, mask)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn, abort=True)
        with self._lock:
            pending, self._pending = self._pending, []
        for _, done in pending:
            done.set()
        if self._sel is not None:
            self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._listener = self._wake_r = self._wake_w = None
        self._events.clear()

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):  # drain the backlog without starving the other sockets
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self._mode == "drop":
                _abort(client)
                continue
            client.setblocking(False)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._mode == "blackhole":
                # Accepted but never connected onwards: the target does not see it at all.
                conn = _Conn(client, None)
                conn.blackholed = True
            else:
                upstream = self._connect_upstream()
                if upstream is None:
                    _abort(client)
                    continue
                conn = _Conn(client, upstream)
            self._conns[id(conn)] = conn
            self._update(conn)

    def _connect_upstream(self) -> socket.socket | None:
        host, port = self._target_addr
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return None
        family, socktype, proto, _, addr = infos[0]
        s = socket.socket(family, socktype, proto)
        s.setblocking(False)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            s.close()
            return None
        return s

    def _io(self, conn: _Conn, sock: socket.socket, mask: int) -> None:
        try:
            if sock is conn.upstream and not conn.connected:
                if mask & (selectors.EVENT_WRITE | selectors.EVENT_READ):
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        self._close(conn, abort=True)  # target refused: refuse the client too
                        return
                    conn.connected = True
            elif sock is conn.client:
                if mask & selectors.EVENT_READ:
                    self._read(sock, conn.to_up, conn, client_side=True)
                if mask & selectors.EVENT_WRITE:
                    self._write(sock, conn.to_client)
            else:
                if mask & selectors.EVENT_READ:
                    self._read(sock, conn.to_client, conn, client_side=False)
                if mask & selectors.EVENT_WRITE:
                    self._write(sock, conn.to_up)
            self._forward_eof(conn)
        except OSError:
            self._close(conn, abort=True)
            return
        if id(conn) in self._conns:
            self._update(conn)

    @staticmethod
    def _read(sock: socket.socket, buf: bytearray, conn: _Conn, client_side: bool) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            buf += data
        elif client_side:
            conn.client_eof = True
        else:
            conn.upstream_eof = True

    @staticmethod
    def _write(sock: socket.socket, buf: bytearray) -> None:
        try:
            sent = sock.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        del buf[:sent]

    def _forward_eof(self, conn: _Conn) -> None:
        """Pass half-closes through once the data before them has been delivered."""
        if conn.client_eof and not conn.to_up and not conn.up_shut and conn.connected:
            assert conn.upstream is not None
            conn.upstream.shutdown(socket.SHUT_WR)
            conn.up_shut = True
        if conn.upstream_eof and not conn.to_client and not conn.client_shut:
            conn.client.shutdown(socket.SHUT_WR)
            conn.client_shut = True
        if conn.up_shut and conn.client_shut:
            self._close(conn, abort=False)

    def _update(self, conn: _Conn) -> None:
        """Register exactly the interest each socket has now (none while black-holed)."""
        client_ev = up_ev = 0
        if not conn.blackholed:
            if conn.connected and not conn.client_eof and len(conn.to_up) < _MAX_BUFFER:
                client_ev |= selectors.EVENT_READ
            if conn.to_client:
                client_ev |= selectors.EVENT_WRITE
            if conn.upstream is not None:
                if not conn.connected or conn.to_up:
                    up_ev |= selectors.EVENT_WRITE
                if (
                    conn.connected
                    and not conn.upstream_eof
                    and len(conn.to_client) < _MAX_BUFFER
                ):
                    up_ev |= selectors.EVENT_READ
        self._set_interest(conn.client, client_ev, conn)
        if conn.upstream is not None:
            self._set_interest(conn.upstream, up_ev, conn)

    def _set_interest(self, sock: socket.socket, events: int, conn: _Conn) -> None:
        assert self._sel is not None
        current = self._events.get(sock, 0)
        if events == current:
            return
        if not events:
            self._sel.unregister(sock)
            del self._events[sock]
        elif not current:
            self._sel.register(sock, events, conn)
            self._events[sock] = events
        else:
            self._sel.modify(sock, events, conn)
            self._events[sock] = events

    def _close(self, conn: _Conn, abort: bool) -> None:
        if self._conns.pop(id(conn), None) is None:
            return
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            if sock in self._events and self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
                del self._events[sock]
            if abort:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
