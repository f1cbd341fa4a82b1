"""``controlplane bench storage``: the storage figures, measured on this machine.

- MDS failover (`mds.py`): three real sim MDS processes, one hanging. Calls drawn with the
  hung MDS first cost one per-attempt deadline and then succeed on the next MDS; once the
  health check has marked it unhealthy, calls skip it. Printed next to the deadline.
- Reconcile (`reconcile.py`): a 10-deep qcow2 chain (real files) through a real management
  node on an embedded etcd: ReconcileVolumeChain through the client library, and the one
  ``qemu-img info`` call alone.
- Live snapshot of a 256 MiB disk on real QEMU (:mod:`controlplane.devtools.bench.snapshot`).

`command.py` runs them; `options.py` is the parser. `run_storage_bench` here loads the
measuring modules only when called: the `controlplane` command builds this parser on every
start.
"""

from __future__ import annotations

import argparse
import importlib

from controlplane.devtools.bench.storage.options import SUITES, add_storage_parser

__all__ = ["SUITES", "add_storage_parser", "run_storage_bench"]


def run_storage_bench(args: argparse.Namespace) -> int:
    """Run the suites not skipped (see `command.run_storage_bench`)."""
    return int(importlib.import_module(f"{__name__}.command").run_storage_bench(args))
