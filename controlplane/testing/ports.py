"""Loopback ports for test processes.

Binding to port 0 asks the kernel for a free port; remembering every port handed out stops the
same test process from giving one port to two servers (the kernel may offer it again as soon as
the probe socket is closed, before the server that was meant to have it binds it).
"""

from __future__ import annotations

import socket
import threading

__all__ = ["free_port", "free_ports"]

_lock = threading.Lock()
_handed_out: set[int] = set()


def _probe(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now and that this process has not handed out before."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (see :func:`free_port`)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    ports: list[int] = []
    with _lock:
        attempts = 0
        while len(ports) < n:
            attempts += 1
            if attempts > 1000 + 10 * n:
                raise RuntimeError(f"could not find {n} unused ports on {host}")
            port = _probe(host)
            if port in _handed_out:
                continue
            _handed_out.add(port)
            ports.append(port)
    return ports
