"""What etcd auth costs the harness: cluster start and a store's first call (its login),
with and without `EtcdCluster(auth=True)`, interleaved so the machine's noise hits both.

``python3 -m controlplane.devtools.bench.etcd_auth [--runs N] [--gets N]``

Printed per mode: start seconds (median, min, max), the first put's milliseconds (with
auth: the Authenticate call, bcrypt at the harness's cost 4), and a get's mean
microseconds over `--gets` calls (etcd checks the token on each). `auth_cn` is a second
store on the auth cluster that is authenticated by its certificate's CN (`root`), with no
token: the difference to `auth` is what the token costs on our side, per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

from controlplane.store import Store
from controlplane.store.auth import ROOT
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.pki import harness_pki

__all__ = ["main", "measure"]


def measure(runs: int = 8, gets: int = 500) -> dict[str, object]:
    modes = ("no_auth", "auth", "auth_cn")
    starts: dict[bool, list[float]] = {False: [], True: []}
    firsts: dict[str, list[float]] = {m: [] for m in modes}
    per_get: dict[str, list[float]] = {m: [] for m in modes}
    key = f"{DEFAULT_PREFIX}/bench/auth"
    root = harness_pki().files("user", ROOT, "admin")  # CN root: etcd's root user

    def timed(store: Store, mode: str) -> None:
        try:
            began = time.monotonic()
            store.put(key, b"1")
            firsts[mode].append(time.monotonic() - began)
            began = time.monotonic()
            for _ in range(gets):
                store.get(key)
            per_get[mode].append((time.monotonic() - began) / gets)
        finally:
            store.close()

    with tempfile.TemporaryDirectory(prefix="cp-bench-auth-") as tmp:
        for run in range(runs):
            for auth in (False, True):
                began = time.monotonic()
                cluster = EtcdCluster(os.path.join(tmp, f"{run}-{auth}"), auth=auth).start()
                try:
                    starts[auth].append(time.monotonic() - began)
                    timed(Store(cluster.urls, login=cluster.login),
                          "auth" if auth else "no_auth")
                    if auth:
                        timed(Store(cluster.urls, tls=root), "auth_cn")
                finally:
                    cluster.stop()
    out: dict[str, object] = {}
    for mode in modes:
        started = starts[mode != "no_auth"]
        out[mode] = {
            "start_s": {"median": round(statistics.median(started), 3),
                        "min": round(min(started), 3), "max": round(max(started), 3)},
            "first_put_ms_median": round(1000 * statistics.median(firsts[mode]), 1),
            "get_us_median": round(1e6 * statistics.median(per_get[mode])),
        }
    return out | {"runs": runs, "gets": gets}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m controlplane.devtools.bench.etcd_auth",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--gets", type=int, default=500)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.runs, args.gets), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
