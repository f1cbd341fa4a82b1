"""What owner work needs, in one place: the caches, the fencing txn, ownership questions.

Every owner write goes through `owner_txn`: the caller's compare-and-swap compares plus the
fencing compare (our member key still has our incarnation). A failed txn is told apart:
`Fenced` (we are no longer the member we were: stop, someone else owns this now) or
`Conflict` (someone wrote first: re-read and decide again; losing the race is normal).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane import errors
from controlplane.agentclient import AgentClients
from controlplane.cluster.registration import Registration
from controlplane.cluster.view import ClusterView
from controlplane.config.live import LiveConfig
from controlplane.security.tls import Transport
from controlplane.store import Keys, Store, StoreError, TxnResult
from controlplane.store import txn as t
from controlplane.store.cache import PrefixCache
from controlplane.v1 import host_pb2, vm_pb2

log = logging.getLogger(__name__)


class Fenced(Exception):
    """Our member key no longer carries our incarnation: owner writes must stop."""


class Conflict(Exception):
    """A compare-and-swap lost: the record changed since it was read."""


@dataclass
class OwnerContext:
    node_id: str
    store: Store
    keys: Keys
    registration: Registration
    view: ClusterView
    vms: PrefixCache[vm_pb2.Vm]
    ops: PrefixCache[vm_pb2.Op]
    hosts: PrefixCache[host_pb2.Host]
    config: LiveConfig
    agents: AgentClients
    tls: Transport  # what this node presents on every channel it opens (agents, MDS)

    def owner_of(self, resource_id: str) -> str:
        ring = self.view.ring
        return ring.owner(resource_id) if len(ring) else ""

    def owns(self, resource_id: str) -> bool:
        return self.owner_of(resource_id) == self.node_id

    def members(self) -> Mapping[str, int]:
        """node id -> incarnation of every current member (who can still run an op)."""
        return {n: m.incarnation for n, m in self.view.table.members.items()}

    def owner_txn(self, compares: Sequence, success: Sequence) -> TxnResult:
        """One fenced compare-and-swap txn. Raises Fenced or Conflict when it did not apply."""
        fence = self.registration.fence()
        result = self.store.txn([*compares, fence.compare()], success,
                                [t.get(fence.member_key)])
        if result.succeeded:
            return result
        member = result.ranges[0] if result.ranges else ()
        if not member or member[0].create_revision != fence.incarnation:
            raise Fenced(f"{self.node_id} incarnation {fence.incarnation} is no longer a member")
        raise Conflict("record changed since it was read")

    def write(self, compares: Sequence, success: Sequence,
              on_conflict: errors.DomainError) -> TxnResult:
        """owner_txn for a request handler: a lost compare raises `on_conflict`; a fenced
        node raises errors.NotServing (nothing written: another node can), an unreachable
        etcd errors.Unreachable (the write may have applied)."""
        try:
            return self.owner_txn(compares, success)
        except Conflict:
            raise on_conflict from None
        except Fenced as exc:
            raise errors.NotServing(str(exc)) from exc  # nothing written: another node can
        except StoreError as exc:
            raise errors.Unreachable(f"cannot write etcd: {exc}") from exc

    def host_record(self, host_id: str) -> host_pb2.Host | None:
        entry = self.hosts.get(self.keys.host(host_id))
        return entry.value if entry else None

    def connected_hosts(self) -> dict[str, int]:
        """host id -> VMs placed on it, for every CONNECTED host (placement input)."""
        out = {}
        for entry in self.hosts.entries():
            host = entry.value
            if (host.status == host_pb2.HOST_STATUS_CONNECTED
                    and not host.HasField("unreachable_since")):
                out[host.host_id] = self.vms.count(host.host_id)
        return out
