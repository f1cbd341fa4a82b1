"""``controlplane bench storage``: the storage figures, measured on this machine.

- MDS failover: three real sim MDS processes, one hanging. Calls drawn with the hung MDS
  first cost one per-attempt deadline and then succeed on the next MDS; once the health
  check has marked it unhealthy, calls skip it. Printed next to the deadline.
- Reconcile: a 10-deep qcow2 chain (real files) through a real management node on an
  embedded etcd: ReconcileVolumeChain over gRPC, and the one ``qemu-img info`` call alone.
- Live snapshot of a 256 MiB disk on real QEMU (:mod:`controlplane.devtools.bench.snapshot`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

__all__ = ["add_storage_parser", "run_storage_bench"]

SUITES = ("mds", "reconcile", "snapshot")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def mds_figures(calls: int, attempt_timeout: float) -> dict[str, object]:
    from controlplane.storage.mds import MdsClient, MdsEndpoint
    from controlplane.testing.mds import MdsProcess
    from controlplane.testing.ports import free_ports
    from controlplane.v1 import mds_pb2

    with tempfile.TemporaryDirectory(prefix="cp-bench-mds-") as tmp:
        procs = [MdsProcess(f"mds-{i}", p, tmp) for i, p in enumerate(free_ports(3))]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.wait_ready()
                p.stub().CreateVolume(mds_pb2.MdsCreateVolumeRequest(volume_id="v",
                                                                     size_bytes=1), timeout=5)
            hung = procs[0]
            hung.set_fault(mds_pb2.SIM_MDS_HANG)
            request = mds_pb2.MdsGetVolumeClientsRequest(volume_id="v")
            failover: list[float] = []
            direct: list[float] = []
            with MdsClient([MdsEndpoint(p.address) for p in procs], attempt_timeout,
                           rng=random.Random(1)) as client:
                while len(failover) < calls or len(direct) < calls:
                    started = time.monotonic()
                    result = client.call("GetVolumeClients", request, idempotent=True)
                    took = time.monotonic() - started
                    (failover if len(result.attempts) > 1 else direct).append(took)
            skipped: list[float] = []
            eps = [MdsEndpoint(p.address, p is not hung) for p in procs]
            with MdsClient(eps, attempt_timeout, rng=random.Random(2)) as client:
                client.get_volume_clients("v")  # channel warm-up
                for _ in range(calls):
                    started = time.monotonic()
                    client.get_volume_clients("v")
                    skipped.append(time.monotonic() - started)
        finally:
            for p in procs:
                p.kill()
    return {
        "attempt_timeout_s": attempt_timeout,
        "calls_each": calls,
        "hung_first_median_s": round(statistics.median(failover[:calls]), 3),
        "hung_first_max_s": round(max(failover[:calls]), 3),
        "hung_not_first_median_ms": _ms(statistics.median(direct[:calls])),
        "hung_marked_unhealthy_median_ms": _ms(statistics.median(skipped)),
    }


def reconcile_figures(depth: int, runs: int) -> dict[str, object]:
    from controlplane.config.settings import Settings
    from controlplane.server import ManagementNode
    from controlplane.storage import qemuimg
    from controlplane.testing import cluster as c
    from controlplane.testing.etcd import EtcdCluster
    from controlplane.testing.ports import free_port
    from controlplane.testing.waiting import wait_until
    from controlplane.v1 import volume_pb2

    with tempfile.TemporaryDirectory(prefix="cp-bench-img-") as tmp, \
            EtcdCluster(os.path.join(tmp, "etcd"), size=1) as etcd:
        port = free_port()
        node = ManagementNode(Settings(node_id="bench", listen=f"127.0.0.1:{port}",
                                       advertise=f"127.0.0.1:{port}", etcd=etcd.endpoints,
                                       lease_ttl=5, image_dir=os.path.join(tmp, "images")))
        node.start()
        try:
            wait_until(lambda: node.ready, 30)
            stub = c.volumes(node.settings.listen)
            chain = stub.CreateImage(volume_pb2.CreateImageRequest(
                image_id="deep", size_bytes=64 << 20), timeout=30)
            for i in range(1, depth):
                chain = stub.CreateSnapshot(volume_pb2.CreateSnapshotRequest(
                    image_id="deep", volume_id=f"s{i}"), timeout=30)
            leaf = chain.chain[-1].path

            def timed(call: Callable[[], object]) -> list[float]:
                out = []
                for _ in range(runs):
                    started = time.monotonic()
                    call()
                    out.append(time.monotonic() - started)
                return out

            info = timed(lambda: qemuimg.chain_info(leaf))
            grpc_call = timed(lambda: stub.ReconcileVolumeChain(
                volume_pb2.ReconcileVolumeChainRequest(image_id="deep"), timeout=30))
            final = stub.GetVolumeChain(volume_pb2.ImageRef(image_id="deep"), timeout=10)
        finally:
            node.stop()
    return {
        "depth": len(final.chain),
        "runs": runs,
        "qemu_img_info_median_ms": _ms(statistics.median(info)),
        "reconcile_rpc_median_ms": _ms(statistics.median(grpc_call)),
        "reconcile_rpc_max_ms": _ms(max(grpc_call)),
    }


def snapshot_figures(size_mib: int) -> dict[str, object]:
    from controlplane.devtools.bench.snapshot import measure

    return measure(size_mib)


def add_storage_parser(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "storage", help="MDS failover, volume chain reconcile and live snapshot figures",
        description="Measures on this machine, with real processes and files: the time of a "
        "call to three sim MDS when the hung one is tried first (next to the per-attempt "
        "deadline), and once it is marked unhealthy; ReconcileVolumeChain of a --depth deep "
        "qcow2 chain through a real node on an embedded etcd; a live snapshot of a "
        "--snapshot-mib disk on real QEMU (time and bytes copied).")
    p.add_argument("--calls", type=int, default=5, help="MDS calls of each kind (default 5)")
    p.add_argument("--attempt-timeout", type=float, default=1.0,
                   help="per-attempt MDS deadline in seconds (default 1.0; production: 30)")
    p.add_argument("--depth", type=int, default=10, help="chain depth (default 10)")
    p.add_argument("--runs", type=int, default=20, help="reconcile runs (default 20)")
    p.add_argument("--snapshot-mib", type=int, default=256, help="disk size (default 256)")
    p.add_argument("--skip", default="", help=f"comma-separated suites to skip: {SUITES}")
    p.add_argument("--json", action="store_true")


def run_storage_bench(args: argparse.Namespace) -> int:
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SUITES)
    if unknown:
        print(f"--skip: unknown suites {sorted(unknown)}; known: {', '.join(SUITES)}")
        return 2
    if args.calls < 1 or args.runs < 1 or args.depth < 2 or args.snapshot_mib < 1:
        print("--calls, --runs and --snapshot-mib must be >= 1, --depth >= 2")
        return 2
    figures: dict[str, object] = {}
    if "mds" not in skip:
        figures["mds_failover"] = mds_figures(args.calls, args.attempt_timeout)
    if "reconcile" not in skip:
        figures["reconcile"] = reconcile_figures(args.depth, args.runs)
    if "snapshot" not in skip:
        figures["live_snapshot"] = snapshot_figures(args.snapshot_mib)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for suite, values in figures.items():
            for key, value in values.items():  # type: ignore[attr-defined]
                print(f"{suite}.{key}: {value}")
    return 0
