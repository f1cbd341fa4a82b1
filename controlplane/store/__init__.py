"""The only package that talks to etcd. Everything else speaks in records and keys."""

from controlplane.store.client import KV, Store, TxnResult, parse_endpoints
from controlplane.store.errors import Compacted, LeaseLost, StoreError, StoreUnavailable
from controlplane.store.keys import DEFAULT_PREFIX, Keys, valid_node_id
from controlplane.store.lease import KeepAlive
from controlplane.store.txn import Fence
from controlplane.store.watch import PrefixWatch, WatchEvent

__all__ = [
    "DEFAULT_PREFIX",
    "KV",
    "Compacted",
    "Fence",
    "KeepAlive",
    "Keys",
    "LeaseLost",
    "PrefixWatch",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "WatchEvent",
    "parse_endpoints",
    "valid_node_id",
]
