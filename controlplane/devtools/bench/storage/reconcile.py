"""Reconcile figures: ReconcileVolumeChain of a deep qcow2 chain through a real node (an
in-process ManagementNode on an embedded etcd), called through the client library."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable

from controlplane.client import Client
from controlplane.config.settings import Settings
from controlplane.devtools.bench.storage.units import ms
from controlplane.server import ManagementNode
from controlplane.storage import qemuimg
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port
from controlplane.testing.waiting import wait_until
from controlplane.v1 import volume_pb2


def reconcile_figures(depth: int, runs: int) -> dict[str, object]:
    """ReconcileVolumeChain of a `depth`-deep chain through a node, `runs` times, next to
    the one `qemu-img info --backing-chain` call it makes."""
    with tempfile.TemporaryDirectory(prefix="cp-bench-img-") as tmp, \
            EtcdCluster(os.path.join(tmp, "etcd"), size=1) as etcd:
        port = free_port()
        node = ManagementNode(Settings(node_id="bench", listen=f"127.0.0.1:{port}",
                                       advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                       lease_ttl=5, image_dir=os.path.join(tmp, "images"),
                                       tls=harness_pki().node("bench")))
        node.start()
        client = Client(node.settings.listen, timeout=30, tls=harness_pki().admin())
        try:
            wait_until(lambda: node.ready, 30)
            volumes = client.volumes
            chain = volumes.CreateImage(volume_pb2.CreateImageRequest(
                image_id="deep", size_bytes=64 << 20))
            for i in range(1, depth):
                chain = volumes.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
                    image_id="deep", volume_id=f"s{i}"))
            leaf = chain.chain[-1].path

            def timed(call: Callable[[], object]) -> list[float]:
                out = []
                for _ in range(runs):
                    started = time.monotonic()
                    call()
                    out.append(time.monotonic() - started)
                return out

            info = timed(lambda: qemuimg.chain_info(leaf))
            grpc_call = timed(lambda: volumes.ReconcileVolumeChain(
                volume_pb2.ReconcileVolumeChainRequest(image_id="deep")))
            final = volumes.GetVolumeChain(volume_pb2.GetVolumeChainRequest(image_id="deep"))
        finally:
            client.close()
            node.stop()
    return {
        "depth": len(final.chain),
        "runs": runs,
        "qemu_img_info_median_ms": ms(statistics.median(info)),
        "reconcile_rpc_median_ms": ms(statistics.median(grpc_call)),
        "reconcile_rpc_max_ms": ms(max(grpc_call)),
    }
