"""Errors the store raises: callers never see the etcd client's own exception types."""

from __future__ import annotations


class StoreError(Exception):
    """etcd answered, but not with what we needed."""


class StoreUnavailable(StoreError):
    """etcd could not be reached in time (transport error, deadline, no leader).

    Transient: callers retry within a budget, and an RPC handler maps it to UNAVAILABLE.
    """


class Compacted(StoreError):
    """A watch asked for history etcd has compacted away: re-list, then re-watch."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted up to {revision}")
        self.revision = revision


class LeaseLost(StoreError):
    """The lease expired or was revoked: keys attached to it are gone."""
