"""A node in-process: stop() ends every thread it started (no loop outlives it)."""

from __future__ import annotations

import threading

from controlplane.config.settings import Settings
from controlplane.server import ManagementNode
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until


def test_stop_ends_every_thread_it_started(etcd: EtcdCluster) -> None:
    before = set(threading.enumerate())
    port = free_port()
    node = ManagementNode(Settings(node_id="solo", listen=f"127.0.0.1:{port}",
                                   advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                   lease_ttl=2, reconcile_interval=0.2, drain_grace=0.5))
    node.start()
    wait_until(lambda: node.ready, timeout=15)
    started = {t.name for t in set(threading.enumerate()) - before}
    assert {"registration", "monitor", "keepalive"} <= started
    assert {"solo-apply", "solo-watch", "solo-reconcile"} <= started
    node.stop()
    ours = ("registration", "monitor", "keepalive", "solo-", "view-start")
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name.startswith(ours) and t not in before],
               timeout=10, message="threads left running after stop()")
    assert not node.ready
