"""What `up` runs: the embedded etcd, the management nodes and the sim agent.

Nodes and agent are ServingProcess subclasses (controlplane.serving, the process model the
test harness shares), started with_parent: each gets SIGTERM when `up` dies, even by
`kill -9`, so a crashed `up` leaves no orphans. Each runs in its own session, so a
terminal's Ctrl-C reaches only `up`, which stops nodes before etcd.
"""

from __future__ import annotations

import os
import sys

from controlplane.channels import LARGE_MESSAGE_OPTIONS
from controlplane.serving import ServingProcess
from controlplane.store.embedded import EtcdServer

__all__ = ["CHANNEL_OPTIONS", "ETCD_ARGS", "HOST_PREFIX", "AgentChild", "NodeChild",
           "embedded_etcd"]

HOST_PREFIX = "host-"

# ListVms of a large fleet (about 200 bytes a VM) is beyond the default 4 MiB limit.
CHANNEL_OPTIONS = LARGE_MESSAGE_OPTIONS

# etcd closes connections whose clients ping more often than every 5 s ("too_many_pings");
# nodes ping every min(5, ttl/2) s, so short TTLs need a lower floor.
ETCD_ARGS = ("--grpc-keepalive-min-time=500ms",)


def embedded_etcd(data_dir: str, port: int) -> EtcdServer:
    """The single-member etcd of a local cluster: data in DATA/etcd, log in DATA/etcd.log,
    client port `port`, peer port `port`+1."""
    return EtcdServer(
        "up", os.path.join(data_dir, "etcd"), client_port=port, peer_port=port + 1,
        extra_args=ETCD_ARGS, log_path=os.path.join(data_dir, "etcd.log"), with_parent=True,
    )


class NodeChild(ServingProcess):
    """One management node (`controlplane serve`), its log in DATA/logs/NODE.log."""

    kind = "node"
    channel_options = CHANNEL_OPTIONS

    def __init__(self, node_id: str, port: int, metrics_port: int, etcd: str, lease_ttl: int,
                 data_dir: str) -> None:
        self.node_id = node_id
        self.port = port
        self.metrics_port = metrics_port
        self.etcd = etcd
        self.lease_ttl = lease_ttl
        self.data_dir = data_dir
        super().__init__(node_id, os.path.join(data_dir, "logs", f"{node_id}.log"),
                         with_parent=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane", "serve",
            "--node-id", self.node_id,
            "--listen", self.address,
            "--etcd", self.etcd,
            "--lease-ttl", str(self.lease_ttl),
            "--metrics-port", str(self.metrics_port),
            # loopback like everything else `up` runs (stated, not left to the default)
            "--metrics-address", "127.0.0.1",
            "--log-format", "text",
            # one directory for every node: on one box it is "mounted everywhere"
            "--image-dir", os.path.join(self.data_dir, "images"),
        ]  # fmt: skip


class AgentChild(ServingProcess):
    """The sim agent serving every host of the local fleet (host-0..), its log in
    DATA/logs/agent.log. Never restarted by `up`: a restarted sim agent has lost its VMs."""

    kind = "agent"
    channel_options = CHANNEL_OPTIONS

    def __init__(self, port: int, hosts: int, data_dir: str) -> None:
        self.port = port
        self.hosts = hosts
        super().__init__("agent", os.path.join(data_dir, "logs", "agent.log"),
                         with_parent=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def host_ids(self) -> list[str]:
        return [f"{HOST_PREFIX}{i}" for i in range(self.hosts)]

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", self.address,
            "--backend", "sim",
            "--hosts", str(self.hosts),
            "--host-prefix", HOST_PREFIX,
        ]  # fmt: skip
