"""Child processes the project starts: etcd members, management nodes, agents, MDS.

One place for what every child needs: output appended to a log file, its own session (a
terminal's Ctrl-C reaches the parent, which stops children in order), optionally death with
the parent (PR_SET_PDEATHSIG, so `kill -9` of `controlplane up` leaves no orphans), and the
crash/freeze controls tests use.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["ChildProcess", "die_with_parent", "exit_text", "log_tail", "spawn", "wait_stopped"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when this process dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn(
    argv: Sequence[str],
    log_path: str,
    env: Mapping[str, str] | None = None,
    with_parent: bool = False,
    banner: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session with stdout and stderr appended to log_path.

    with_parent: the child gets SIGTERM when this process dies. Done by `setpriv
    --pdeathsig` (util-linux) when it exists, so no Python code runs between fork and exec:
    a preexec_fn forces a full fork(), whose atfork handlers abort a child of a process
    that uses gRPC (seen: `up` with its status channels open, a node killed by SIGABRT at
    start). The preexec_fn is the fallback where setpriv is missing."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    preexec = None
    if with_parent:
        setpriv = shutil.which("setpriv")
        if setpriv:
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        else:
            preexec = die_with_parent()
    with open(log_path, "ab") as log:
        if banner:
            log.write(f"--- {banner} at {time.ctime()} ---\n".encode())
            log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=preexec,
        )


def exit_text(code: int) -> str:
    """`exit code 1` or `killed by SIGKILL`: Popen reports a death by signal as a negative
    code, which reads as nothing to a person."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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


class ChildProcess:
    """A child that can be started, crashed (kill), frozen (pause), stopped and restarted.

    Subclasses say what to run (argv, env); this class owns the process.
    """

    kind = "process"

    def __init__(self, name: str, log_path: str, with_parent: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self.with_parent = with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.is_running():
            raise RuntimeError(f"{self.kind} {self.name} is already running (pid {self.pid})")
        self._proc = spawn(self.argv(), self.log_path, self.env(), self.with_parent,
                           banner=f"starting {self.kind} {self.name}")
        self._paused = False

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Crash it: SIGKILL, no shutdown hooks."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        self._paused = False

    def send_stop(self) -> None:
        """SIGTERM without waiting: a supervisor asks every child at once, then waits for all
        of them against one deadline (so N draining nodes take one grace period, not N)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            if self._paused:  # a stopped process cannot act on SIGTERM until continued
                self._signal(signal.SIGCONT)
        self._paused = False

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the process has exited; None if it is still running after
        `timeout` seconds (or was never started)."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        self.send_stop()
        code = self.wait(timeout)
        if code is None:
            self._signal(signal.SIGKILL)
            code = proc.wait()
        return code

    def pause(self) -> None:
        """Freeze it (SIGSTOP): sockets stay open, nothing answers."""
        if not self.is_running():
            raise RuntimeError(f"{self.kind} {self.name} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True
        assert self._proc is not None
        wait_stopped(self._proc.pid, stopped=True)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self._paused = False
        if self._proc is not None and self._proc.poll() is None:
            wait_stopped(self._proc.pid, stopped=False)

    def wait_up(
        self,
        probe: Callable[[float], str | None],
        timeout: float,
        what: str,
        exited_error: type[Exception] = RuntimeError,
    ) -> None:
        """Poll probe(per_call_timeout) until it returns "ok"; fail at once, with the log
        tail, when the process exits first, and with TimeoutError after `timeout`.
        Any other return value is what the last probe saw, quoted in the timeout error."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None:
                raise RuntimeError(f"{self.kind} {self.name} was never started")
            code = self._proc.poll()
            if code is not None:
                raise exited_error(
                    f"{self.kind} {self.name} exited with code {code} before becoming ready; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            last = probe(max(0.05, min(1.0, deadline - time.monotonic())))
            if last == "ok":
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.kind} {self.name} not {what} after {timeout:.1f}s (last: {last}); "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, max_bytes: int = 8192) -> str:
        return log_tail(self.log_path, max_bytes)
