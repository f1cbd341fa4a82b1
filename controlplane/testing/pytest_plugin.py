"""pytest fixtures for testing against real etcd members and management node processes.

Enable with ``pytest_plugins = ["controlplane.testing.pytest_plugin"]`` in the root conftest.
Every process a fixture starts is killed at teardown, and when the test failed the tail of each
process log is printed, so a CI failure can be read without re-running it.

Mutual TLS everywhere: the session fixture `pki` (autouse) makes one CA for the session;
every node, agent and MDS the harness starts gets a certificate from it, and the tests call
as its admin user: CONTROLPLANE_TLS_DIR points at that identity for the whole session, so
`Client()` and the `controlplane` commands a test runs use it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.security.tls import ENV_TLS_DIR
from controlplane.store.embedded import log_tail
from controlplane.testing.agents import AgentProcess
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.libvirt import LibvirtHosts
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import HarnessPki, use_pki
from controlplane.testing.ports import free_port
from controlplane.testing.proxy import TcpProxy

__all__ = [
    "AgentFactory",
    "NodeFactory",
    "agents",
    "etcd",
    "etcd3",
    "guest_image",
    "libvirt_hosts",
    "libvirt_system",
    "nodes",
    "pki",
    "proxy_factory",
]

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_FACTORIES = pytest.StashKey[list["NodeFactory"]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report so fixtures can tell at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


def _print_logs(title: str, logs: list[tuple[str, str]], max_bytes: int = 6000) -> None:
    for name, path in logs:
        if os.path.exists(path):
            print(f"\n===== {title} {name}: tail of {path} =====\n{log_tail(path, max_bytes)}")


def _etcd_cluster(request: pytest.FixtureRequest, base: Path, size: int) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(str(base), size=size)
    cluster.start()
    try:
        yield cluster
    finally:
        # Nodes first, whatever order the test listed its fixtures in: a node that outlives
        # its etcd fills its log with reconnect noise right where the failure is being read.
        for factory in request.node.stash.get(_FACTORIES, []):
            factory.kill_all()
        cluster.stop()
        if _test_failed(request):
            _print_logs("etcd", [(m.name, m.log_path) for m in cluster.members])


@pytest.fixture(scope="session", autouse=True)
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HarnessPki]:
    """The session's CA and identities (one CA per session: issuing is the expensive part of
    TLS in tests, and every process of the session trusts the same CA)."""
    harness = HarnessPki(tmp_path_factory.mktemp("pki"))
    use_pki(harness)
    before = os.environ.get(ENV_TLS_DIR)
    os.environ[ENV_TLS_DIR] = str(harness.admin_dir)
    try:
        yield harness
    finally:
        use_pki(None)
        if before is None:
            os.environ.pop(ENV_TLS_DIR, None)
        else:
            os.environ[ENV_TLS_DIR] = before


@pytest.fixture
def etcd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started single-member etcd; ``etcd.endpoints`` is what nodes and clients take."""
    yield from _etcd_cluster(request, tmp_path / "etcd", 1)


@pytest.fixture
def etcd3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started three-member etcd, for tests that lose a member or the leader."""
    yield from _etcd_cluster(request, tmp_path / "etcd3", 3)


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str], TcpProxy]]:
    """``proxy_factory("127.0.0.1:2379")`` -> a started TcpProxy, stopped at teardown."""
    proxies: list[TcpProxy] = []

    def make(target: str) -> TcpProxy:
        proxy = TcpProxy(target).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


class NodeFactory:
    """Starts management nodes for one test and cleans up after it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.all: list[NodeProcess] = []

    def start(
        self,
        node_id: str,
        etcd_endpoints: str,
        *,
        port: int | None = None,
        wait: bool = True,
        ready_timeout: float = 20.0,
        **kwargs: Any,
    ) -> NodeProcess:
        """Start a node on a fresh port; ``kwargs`` go to :class:`NodeProcess`."""
        node = NodeProcess(
            node_id,
            port if port is not None else free_port(),
            etcd_endpoints,
            str(self.base_dir),
            **kwargs,
        )
        self.all.append(node)
        node.start()
        if wait:
            node.wait_ready(timeout=ready_timeout)
        return node

    def get(self, node_id: str) -> NodeProcess:
        for node in self.all:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def running(self) -> list[NodeProcess]:
        return [n for n in self.all if n.is_running()]

    def kill_all(self) -> None:
        for node in self.all:
            node.kill()


@pytest.fixture
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeFactory]:
    """Factory of management node processes; all killed at teardown, logs shown on failure."""
    factory = NodeFactory(tmp_path / "nodes")
    request.node.stash.setdefault(_FACTORIES, []).append(factory)
    try:
        yield factory
    finally:
        factory.kill_all()
        if _test_failed(request):
            _print_logs("node", [(n.node_id, n.log_path) for n in factory.all])


class AgentFactory:
    """Starts host agent processes (sim backend) for one test and cleans up after it."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.all: list[AgentProcess] = []

    def start(
        self,
        name: str,
        hosts: int = 1,
        host_prefix: str | None = None,
        *,
        port: int | None = None,
        wait: bool = True,
        ready_timeout: float = 20.0,
        **kwargs: Any,
    ) -> AgentProcess:
        """Start an agent on a fresh port serving ``hosts`` hosts named ``host_prefix`` + i
        (default ``f"{name}-host-"``, so two agents of one test never share a host id);
        ``kwargs`` go to :class:`AgentProcess` (start_delay, stop_delay, reboot_delay,
        pause_delay, report_ops, cpus, memory_mb, seed, extra_args, env...)."""
        agent = AgentProcess(
            name,
            port if port is not None else free_port(),
            str(self.base_dir),
            hosts=hosts,
            host_prefix=host_prefix if host_prefix is not None else f"{name}-host-",
            **kwargs,
        )
        self.all.append(agent)
        agent.start()
        if wait:
            agent.wait_ready(timeout=ready_timeout)
        return agent

    def get(self, name: str) -> AgentProcess:
        for agent in self.all:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def running(self) -> list[AgentProcess]:
        return [a for a in self.all if a.is_running()]

    def kill_all(self) -> None:
        for agent in self.all:
            agent.kill()


@pytest.fixture
def agents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AgentFactory]:
    """Factory of host agent processes (sim backend); all killed at teardown, logs shown
    on failure."""
    factory = AgentFactory(tmp_path / "agents")
    try:
        yield factory
    finally:
        factory.kill_all()
        if _test_failed(request):
            _print_logs("agent", [(a.name, a.log_path) for a in factory.all])


# ---- libvirt: shared for the whole session (a daemon start and a guest boot are the
# expensive parts; tests that need a booted guest share one per module themselves) ----


@pytest.fixture(scope="session")
def guest_image() -> Any:
    """The guest image (kernel + initrd), built into its cache on first use."""
    from controlplane.agent import guest

    return guest.ensure_image()


@pytest.fixture(scope="session")
def libvirt_hosts() -> Iterator[LibvirtHosts]:
    """The pool of simulated libvirt hosts: ``libvirt_hosts.host(i)`` is host i (its session
    daemon started on first use, as the Unix user ``cp-host-<i>``), shared by every test of
    the session; ``libvirt_hosts.shared_dir(name)`` a directory every host can use for disks
    and console files. At the end every domain is destroyed and every daemon stopped (the
    daemon logs stay in the pool's ``logs/`` directory)."""
    # Not under pytest's tmp dir: every pytest process on the machine resets its root to
    # 0700, and then no host user can reach the guests' files.
    base = tempfile.mkdtemp(prefix="cp-libvirt-")
    pool = LibvirtHosts(base)
    try:
        yield pool
    finally:
        pool.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirt_system() -> str:
    """The URI of the system daemon (qemu:///system), started the way these machines need
    when it is not running."""
    from controlplane.agent import libvirtd

    return libvirtd.ensure_system_daemon()
