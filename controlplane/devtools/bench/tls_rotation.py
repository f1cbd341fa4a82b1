"""Certificate rotation under load: how long until rotated files are in use, and what the
callers saw meanwhile.

``python3 -m controlplane.devtools.bench.tls_rotation [--rounds N] [--layout secret|files]
[--pause S]``

One etcd, one node, one sim agent, a client pool; two reader threads and two VM threads
(stop/start through the node to the agent) call without a pause (testing/rotation.py).
Each round issues new certificates from the same CA to the node, the agent and the client
at once (`--layout secret`: the kubelet's `..data` symlink swap; `files`: plain file
replacement) and measures from the write until
- the client's pool took its new certificate (it looks at most once a second, on use),
- the node's own pool to the agent took the node's new one (its log line),
- a new handshake to the node and to the agent sees their new serials (a server reloads at
  the handshake after the change: this is how soon after the write a handshake comes);
then waits `--pause` seconds. Printed: those delays (median, max), the calls made and
failed during the rounds, calls/s before the rounds and during them, the node's reload
count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from controlplane.channels import ChannelPool
from controlplane.security import pki as pki_files
from controlplane.security import x509 as cx509
from controlplane.testing import cluster as c
from controlplane.testing.agents import AgentProcess
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.nodes import NodeProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.rotation import (
    Callers,
    RotatingIdentity,
    pool_reloads_logged,
    presented_serial,
)
from controlplane.testing.waiting import wait_until
from controlplane.v1 import host_pb2, host_pb2_grpc, vm_pb2, vm_pb2_grpc

__all__ = ["main", "measure"]

IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


def _delay(start: float, predicate: Callable[[], object], what: str) -> float:
    wait_until(predicate, 30, interval=0.005, message=what)
    return time.monotonic() - start


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def measure(rounds: int = 5, layout: str = "secret", pause: float = 1.0,
            baseline: float = 3.0) -> dict[str, object]:
    """Run the fleet and the rounds; the figures as a dict."""
    pki = harness_pki()
    ca = pki_files.read_ca(pki.base)
    bundle = cx509.pem_cert(ca.cert)
    with tempfile.TemporaryDirectory(prefix="cp-bench-rot-") as tmp, \
            EtcdCluster(os.path.join(tmp, "etcd"), size=1) as etcd:
        base = Path(tmp)
        prefix = "rot-host-"
        ids = {"node": RotatingIdentity(base / "node", layout, "node", "rot-0"),
               "agent": RotatingIdentity(base / "agent", layout, "agent", "rot-ag",
                                         hosts=(f"{prefix}*",)),
               "client": RotatingIdentity(base / "client", layout, "user", "rot-admin",
                                          role="admin")}
        for ident in ids.values():
            ident.issue(ca, bundle)
        metrics_port = free_port()
        etcd_dir = str(Path(pki.node("rot-0").cert).parent)
        node = NodeProcess("rot-0", free_port(), etcd.endpoints, tmp, tls=ids["node"].files,
                           metrics_port=metrics_port,
                           extra_args=["--etcd-tls-dir", etcd_dir])
        agent = AgentProcess("rot-ag", free_port(), tmp, hosts=1, host_prefix=prefix,
                             tls=ids["agent"].files)
        pool = ChannelPool(tls=ids["client"].files)
        callers: Callers | None = None
        try:
            node.start()
            agent.start()
            node.wait_ready(30)
            agent.wait_ready(30)
            host_pb2_grpc.HostServiceStub(pool.get(node.address)).AddHost(
                host_pb2.AddHostRequest(host_id=agent.host_ids[0], address=agent.address),
                timeout=15)
            vm_ids = ["rot-vm-0", "rot-vm-1"]
            for vm_id in vm_ids:
                vm_pb2_grpc.VmServiceStub(pool.get(node.address)).CreateVm(
                    vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE, start=True, wait=True),
                    timeout=30)
            callers = Callers(pool, node.address, vm_ids).start()
            t0 = time.monotonic()
            time.sleep(baseline)  # the rate before any rotation (a duration, not a wait)
            t1 = time.monotonic()
            client_delays, agent_pool_delays, node_delays, agent_delays = [], [], [], []
            for i in range(1, rounds + 1):
                start = time.monotonic()
                for ident in ids.values():
                    ident.issue(ca, bundle)
                node_delays.append(_delay(start, lambda: presented_serial(
                    node.address, ids["client"].files) == ids["node"].serial, "node serial"))
                agent_delays.append(_delay(start, lambda: presented_serial(
                    agent.address, ids["client"].files) == ids["agent"].serial,
                    "agent serial"))
                client_delays.append(_delay(start, lambda i=i: pool.rotations >= i,
                                            "client pool"))
                agent_pool_delays.append(_delay(start, lambda i=i: len(pool_reloads_logged(
                    node.log_text(), ids["node"].files)) >= i, "node's agent pool"))
                time.sleep(pause)  # calls between rounds (a duration, not a wait)
            t2 = time.monotonic()
            callers.join()
            reloads = re.search(r"^controlplane_tls_reloads_total (\S+)$",
                                c.scrape_metrics(metrics_port), re.M)
            return {
                "layout": layout,
                "rounds": rounds,
                "client_pool_took_s": _stats(client_delays),
                "node_agent_pool_took_s": _stats(agent_pool_delays),
                "node_presents_new_s": _stats(node_delays),
                "agent_presents_new_s": _stats(agent_delays),
                "calls_during_rounds": callers.calls_between(t1, t2),
                "failed_calls": len(callers.failures),
                "failures": callers.failures[:5],
                "calls_per_s_before": round(callers.calls_between(t0, t1) / (t1 - t0), 1),
                "calls_per_s_during": round(callers.calls_between(t1, t2) / (t2 - t1), 1),
                "node_reloads": float(reloads.group(1)) if reloads else None,
            }
        finally:
            if callers is not None:
                callers.join()
            pool.close()
            agent.kill()
            node.kill()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m controlplane.devtools.bench.tls_rotation",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layout", choices=("secret", "files"), default="secret")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between rounds")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.rounds, args.layout, args.pause), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
