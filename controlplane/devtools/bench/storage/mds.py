"""MDS failover figures: the storage MDS client against three real sim MDS, one hung.

Not a cluster call: the MDS client is the node's own (controlplane.storage.mds), measured
directly, without a node in between.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time

from controlplane.devtools.bench.storage.units import ms
from controlplane.storage.mds import MdsClient, MdsEndpoint
from controlplane.testing.mds import MdsProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_ports
from controlplane.v1 import mds_pb2


def mds_figures(calls: int, attempt_timeout: float) -> dict[str, object]:
    """The MDS client's try-next against three sim MDS processes, one of them hung."""
    with tempfile.TemporaryDirectory(prefix="cp-bench-mds-") as tmp:
        procs = [MdsProcess(f"mds-{i}", p, tmp) for i, p in enumerate(free_ports(3))]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.wait_ready()
                p.stub().CreateVolume(mds_pb2.CreateVolumeRequest(volume_id="v",
                                                                     size_bytes=1), timeout=5)
            hung = procs[0]
            hung.set_fault(mds_pb2.SIM_MDS_FAULT_MODE_HANG)
            request = mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id="v")
            failover: list[float] = []
            direct: list[float] = []
            tls = harness_pki().node("bench")  # what a node presents to its MDS
            with MdsClient([MdsEndpoint(p.address) for p in procs], attempt_timeout,
                           rng=random.Random(1), tls=tls) as client:
                while len(failover) < calls or len(direct) < calls:
                    started = time.monotonic()
                    result = client.call("GetVolumeClients", request, idempotent=True)
                    took = time.monotonic() - started
                    (failover if len(result.attempts) > 1 else direct).append(took)
            skipped: list[float] = []
            eps = [MdsEndpoint(p.address, p is not hung) for p in procs]
            with MdsClient(eps, attempt_timeout, rng=random.Random(2), tls=tls) as client:
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
        "hung_not_first_median_ms": ms(statistics.median(direct[:calls])),
        "hung_marked_unhealthy_median_ms": ms(statistics.median(skipped)),
    }
