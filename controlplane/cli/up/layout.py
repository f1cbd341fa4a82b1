"""The ports a local cluster takes, checked before anything starts.

A bad invocation (a node count of 0, a busy port, two roles on one port) must leave nothing
behind: no data directory, no etcd, no half-started node. So every check runs here, first,
and raises UsageError (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from controlplane.cli import common

__all__ = ["MAX_HOSTS", "MAX_LIBVIRT_HOSTS", "MAX_LIBVIRT_VMS", "MAX_VMS", "Ports", "UsageError",
           "check_args", "port_in_use"]

MAX_HOSTS = 10_000
MAX_VMS = 100_000
MAX_LIBVIRT_HOSTS = 8  # each one a libvirt daemon and an agent on this machine
MAX_LIBVIRT_VMS = 32  # each one a real guest (QEMU, 128 MiB)


# Bad sizes, clashing or occupied ports: `controlplane` reports it like an argparse error
# of `up` (exit 2), the one way usage errors are printed.
UsageError = common.UsageError


@dataclass(frozen=True)
class Ports:
    """Where everything listens: node i on base+i, its metrics on metrics_base+i (0: no
    metrics), the embedded etcd on etcd/etcd+1 (None with --etcd), the agent (None without
    --hosts)."""

    base: int
    nodes: int
    metrics_base: int
    etcd: int | None
    agent: int | None
    agents: int = 1  # agent processes on agent, agent+1, ... (libvirt: one per host)

    def node(self, index: int) -> int:
        return self.base + index

    def metrics(self, index: int) -> int:
        return self.metrics_base + index if self.metrics_base else 0

    def wanted(self) -> list[tuple[int, str, str]]:
        """(port, what, bind host) of every port `up` would take."""
        wanted = [(self.node(i), f"node-{i}", "127.0.0.1") for i in range(self.nodes)]
        if self.metrics_base:
            wanted += [(self.metrics(i), f"node-{i} metrics", "0.0.0.0")
                       for i in range(self.nodes)]
        if self.etcd is not None:
            wanted += [(self.etcd, "etcd client", "127.0.0.1"),
                       (self.etcd + 1, "etcd peer", "127.0.0.1"),
                       (self.etcd + 2, "etcd health", "127.0.0.1")]
        if self.agent is not None:
            if self.agents == 1:  # the sim agent, and its fault injection beside it
                wanted += [(self.agent, "agent", "127.0.0.1"),
                           (self.agent + 1, "agent sim control", "127.0.0.1")]
            else:  # --backend libvirt: one agent per host
                wanted += [(self.agent + i, f"agent of host-{i}", "127.0.0.1")
                           for i in range(self.agents)]
        return wanted


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could not bind host:port now (SO_REUSEADDR, as servers bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_args(a: argparse.Namespace) -> Ports:
    """The ports of this invocation; UsageError for bad fleet sizes, clashing or busy ports
    (single values are checked by the flags' own types)."""
    if not 0 <= a.hosts <= MAX_HOSTS:
        raise UsageError(f"--hosts must be in 0-{MAX_HOSTS}, got {a.hosts}")
    if not 0 <= a.vms <= MAX_VMS:
        raise UsageError(f"--vms must be in 0-{MAX_VMS}, got {a.vms}")
    if a.vms > 0 and a.hosts == 0:
        raise UsageError("--vms needs --hosts: VMs are started on the hosts of the sim "
                         "agent that --hosts starts")
    libvirt = getattr(a, "backend", "sim") == "libvirt"
    if libvirt:
        if a.hosts > MAX_LIBVIRT_HOSTS:
            raise UsageError(f"--backend libvirt: at most {MAX_LIBVIRT_HOSTS} hosts (each "
                             f"runs a libvirt daemon here), got {a.hosts}")
        if a.vms > MAX_LIBVIRT_VMS:
            raise UsageError(f"--backend libvirt: at most {MAX_LIBVIRT_VMS} VMs (each is a "
                             f"real guest), got {a.vms}")
        if os.geteuid() != 0:
            raise UsageError("--backend libvirt needs root (it creates one Unix user and "
                             "libvirt daemon per host)")
    base = a.base_port
    ports = Ports(
        base=base,
        nodes=a.nodes,
        metrics_base=base + 100 if a.metrics_base_port is None else a.metrics_base_port,
        etcd=None if a.etcd is not None else (base + 1000 if a.etcd_port is None
                                              else a.etcd_port),
        agent=None if a.hosts == 0 else (base + 200 if a.agent_port is None else a.agent_port),
        agents=a.hosts if libvirt else 1,
    )
    seen: dict[int, str] = {}
    for port, what, _host in ports.wanted():
        if not 0 < port < 65536:
            raise UsageError(f"port {port} ({what}) is out of range 1-65535")
        if port in seen:
            raise UsageError(f"port {port} would be used by both {seen[port]} and {what}; "
                             "choose other --base-port/--metrics-base-port/--etcd-port/"
                             "--agent-port")
        seen[port] = what
    for port, what, host in ports.wanted():
        if port_in_use(port, host):
            raise UsageError(f"port {port} ({what}) is already in use on {host}; is another "
                             "cluster running? choose another --base-port (or --etcd-port / "
                             "--metrics-base-port / --agent-port)")
    return ports
