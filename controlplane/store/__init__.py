"""The only package that talks to etcd. Everything else speaks in records and keys.

The names below are loaded on first use (PEP 562), so a process that needs only
`store.errors` or `store.keys` (an agent, the CLI, the client library) does not import the
etcd client."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "KV": "client", "Store": "client", "TxnResult": "client", "parse_endpoints": "client",
    "Compacted": "errors", "LeaseLost": "errors", "StoreError": "errors",
    "StoreUnavailable": "errors",
    "DEFAULT_PREFIX": "keys", "Keys": "keys", "valid_node_id": "keys",
    "KeepAlive": "lease",
    "Fence": "txn",
    "PrefixWatch": "watch", "WatchEvent": "watch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
