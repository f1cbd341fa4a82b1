"""What every part of the fleet bench shares: progress lines, process CPU and etcd request
counters, starting etcd / agents / nodes, and the cluster calls that set a fleet up (through
the client library).

The etcd is the test one (`--unsafe-no-fsync`, as the test harness runs it): absolute txn
rates are higher than on a production etcd with fsync; the ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Sequence

from controlplane.client import Client
from controlplane.security.tls import Transport
from controlplane.testing import cluster as c
from controlplane.testing.agents import AgentProcess
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import agent_pb2, config_pb2, host_pb2, vm_pb2

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A part could not be measured; the message says why (with log tails)."""


def progress(message: str) -> None:
    """Progress of long phases, on stderr so that stdout stays the figures."""
    print(f"[bench fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    """Resident memory of this process in MiB (VmRSS), 0.0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc), 0.0 without it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group of processes, and by this one ("clients":
    the bench's client threads are what runs here during a throughput run)."""
    out = {role: sum(process_cpu_s(p) for p in group) for role, group in pids.items()}
    out["clients"] = time.process_time()
    return out


def diff_cpu(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in after}


def etcd_requests(client_url: str) -> dict[str, int]:
    """KV requests etcd itself has answered, by method (Range, Txn, Put, ...), from its
    /metrics: the only count that includes what the node processes sent."""
    with _NO_PROXY.open(client_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("grpc_server_handled_total{") or "etcdserverpb.KV" not in line:
            continue
        labels, _, value = line.rpartition(" ")
        method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
        counts[method] = counts.get(method, 0) + int(float(value))
    return counts


def diff_counts(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def split_requests(counts: dict[str, int]) -> tuple[int, int, int]:
    """(reads, writes, other) of a request count by method. A Txn counts as a write: the
    node's read-modify-write txns are, and a read-only txn is still a round trip to the
    leader."""
    reads = counts.get("Range", 0)
    writes = sum(counts.get(m, 0) for m in ("Txn", "Put", "DeleteRange"))
    return reads, writes, sum(counts.values()) - reads - writes


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- processes ------------------------------------------------------------------------


def start_etcd(stack: contextlib.ExitStack, base: str) -> EtcdCluster:
    """A one-member test etcd, stopped when `stack` unwinds.

    No child here is started with `with_parent` (PR_SET_PDEATHSIG): that needs a
    preexec_fn, i.e. Python code run between fork and exec, and in this process gRPC is
    live (the sync part's in-process node): the forked child then aborted in gRPC's fork
    handler ("epoll_wait error: Bad file descriptor", exit -6). Cleanup relies on the
    ExitStacks instead, which also run on Ctrl-C and errors."""
    cluster = EtcdCluster(base, size=1)
    stack.callback(cluster.stop)
    return cluster.start()


def start_agent(stack: contextlib.ExitStack, base: str, name: str, hosts: int,
                prefix: str, *, tls: Transport | None = None,
                metrics_port: int | None = None) -> AgentProcess:
    """One sim agent serving `hosts` hosts with zero delays, logging warnings only (it
    would log a line per seeded host and per operation otherwise). `tls`: None for its
    harness certificate, PLAINTEXT for --insecure."""
    extra = ["--metrics-port", str(metrics_port)] if metrics_port else []
    agent = AgentProcess(name, free_port(), base, hosts=hosts, host_prefix=prefix,
                         log_level="WARNING", tls=tls, extra_args=extra)
    stack.callback(agent.kill)
    agent.start()
    agent.wait_ready(60)
    return agent


def start_nodes(stack: contextlib.ExitStack, base: str, etcd: str, count: int, *,
                prefix: str = "node-", lease_ttl: int = 10,
                reconcile_interval: float = 3.0, tls: Transport | None = None,
                metrics: bool = False) -> list[NodeProcess]:
    """`count` `controlplane serve` processes, ready and agreeing on the ring. By default
    with the production lease TTL and reconcile interval (a bench on 2 busy cores must not
    fence itself on a short TTL); the churn bench wants short ones on purpose. `tls`: None
    for each node's harness certificate, PLAINTEXT for --insecure; `metrics`: each on a
    metrics port of its own (NodeProcess.metrics_port)."""
    nodes = [NodeProcess(f"{prefix}{i}", free_port(), etcd, base, lease_ttl=lease_ttl,
                         reconcile_interval=reconcile_interval, tls=tls,
                         metrics_port=free_port() if metrics else None)
             for i in range(count)]
    for node in nodes:
        stack.callback(node.kill)
        node.start()
    for node in nodes:
        node.wait_ready(60)
    everyone = {n.node_id for n in nodes}
    wait_until(lambda: c.converged(nodes, everyone), 60, message="rings converged")
    return nodes


def cluster_client(stack: contextlib.ExitStack, nodes: Sequence[NodeProcess],
                   **kwargs: object) -> Client:
    """A Client over every node (presenting what the harness calls them with), closed when
    `stack` unwinds."""
    kwargs.setdefault("tls", nodes[0].client_tls)
    client = Client([n.address for n in nodes], **kwargs)  # type: ignore[arg-type]
    stack.callback(client.close)
    return client


# -- the fleet ------------------------------------------------------------------------


def set_config(client: Client, settings: dict[str, str]) -> None:
    for key, value in settings.items():
        client.config.UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value))


def add_hosts(client: Client, agent: AgentProcess) -> list[str]:
    for host_id in agent.host_ids:
        client.hosts.AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address))
    return list(agent.host_ids)


def image() -> vm_pb2.ImageInfo:
    return vm_pb2.ImageInfo(image_id="bench-img", virtual_size=1 << 30, actual_size=1 << 28)


def devices() -> agent_pb2.DeviceInfo:
    """What a VM record carries after its start (device info stored): steady-state records."""
    return agent_pb2.DeviceInfo(devices=[
        agent_pb2.Device(name="disk0", address="0000:00:04.0"),
        agent_pb2.Device(name="nic0", address="0000:00:03.0", mac="52:54:00:12:34:56")])
