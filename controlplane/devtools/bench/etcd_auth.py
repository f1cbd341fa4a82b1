"""What etcd auth costs the harness: cluster start and a store's first call (its login),
with and without `EtcdCluster(auth=True)`, interleaved so the machine's noise hits both.

``python3 -m controlplane.devtools.bench.etcd_auth [--runs N] [--gets N]``

Printed per mode: start seconds (median, min, max), the first put's milliseconds (with
auth: the Authenticate call, bcrypt at the harness's cost 4), and a get's mean
microseconds over `--gets` calls (etcd checks the token on each).
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
from controlplane.store.keys import DEFAULT_PREFIX
from controlplane.testing.etcd import EtcdCluster

__all__ = ["main", "measure"]


def measure(runs: int = 8, gets: int = 500) -> dict[str, object]:
    starts: dict[bool, list[float]] = {False: [], True: []}
    firsts: dict[bool, list[float]] = {False: [], True: []}
    per_get: dict[bool, list[float]] = {False: [], True: []}
    key = f"{DEFAULT_PREFIX}/bench/auth"
    with tempfile.TemporaryDirectory(prefix="cp-bench-auth-") as tmp:
        for run in range(runs):
            for auth in (False, True):
                began = time.monotonic()
                cluster = EtcdCluster(os.path.join(tmp, f"{run}-{auth}"), auth=auth).start()
                try:
                    starts[auth].append(time.monotonic() - began)
                    store = Store(cluster.urls, login=cluster.login)
                    try:
                        began = time.monotonic()
                        store.put(key, b"1")
                        firsts[auth].append(time.monotonic() - began)
                        began = time.monotonic()
                        for _ in range(gets):
                            store.get(key)
                        per_get[auth].append((time.monotonic() - began) / gets)
                    finally:
                        store.close()
                finally:
                    cluster.stop()
    return {("auth" if auth else "no_auth"): {
        "start_s": {"median": round(statistics.median(starts[auth]), 3),
                    "min": round(min(starts[auth]), 3), "max": round(max(starts[auth]), 3)},
        "first_put_ms_median": round(1000 * statistics.median(firsts[auth]), 1),
        "get_us_median": round(1e6 * statistics.median(per_get[auth])),
    } for auth in (False, True)} | {"runs": runs, "gets": gets}


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
