"""Key layout in etcd. Everything outside store/ speaks in these names, never raw strings."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "/controlplane"
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def valid_node_id(node_id: str) -> bool:
    """Node ids become key segments and pod names: a DNS-label-like charset, <= 63 chars."""
    return bool(_NODE_ID.match(node_id))


@dataclass(frozen=True)
class Keys:
    """All keys of one control plane deployment, under one prefix.

    Several deployments (or tests) can share an etcd by using different prefixes.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"key prefix must start with '/' and not end with it: {self.prefix!r}")

    @property
    def members(self) -> str:
        """Prefix of the member keys (with the trailing slash)."""
        return f"{self.prefix}/members/"

    def member(self, node_id: str) -> str:
        return f"{self.members}{node_id}"

    def node_id_of(self, member_key: str | bytes) -> str:
        key = member_key.decode() if isinstance(member_key, bytes) else member_key
        if not key.startswith(self.members):
            raise ValueError(f"not a member key: {key!r}")
        return key[len(self.members) :]

    # -- resources: one prefix per record type, the id is the last key segment ------

    def collection(self, kind: str) -> str:
        """Prefix (with the trailing slash) of one record type: hosts, vms, ops, config."""
        return f"{self.prefix}/{kind}/"

    @property
    def hosts(self) -> str:
        return self.collection("hosts")

    def host(self, host_id: str) -> str:
        return f"{self.hosts}{host_id}"

    @property
    def vms(self) -> str:
        return self.collection("vms")

    def vm(self, vm_id: str) -> str:
        return f"{self.vms}{vm_id}"

    @property
    def ops(self) -> str:
        """In-flight VM operations, one per VM: ops/<vm_id>."""
        return self.collection("ops")

    def op(self, vm_id: str) -> str:
        return f"{self.ops}{vm_id}"

    @property
    def allocations(self) -> str:
        """The cpus and memory reserved on each host: allocations/<host_id>
        (host_pb2.HostAllocation, one record per host: the compare-and-swap of placement)."""
        return self.collection("allocations")

    def allocation(self, host_id: str) -> str:
        return f"{self.allocations}{host_id}"

    @property
    def config(self) -> str:
        return self.collection("config")

    def config_key(self, name: str) -> str:
        return f"{self.config}{name}"

    @property
    def storages(self) -> str:
        """Primary storage records: storages/<storage_id>."""
        return self.collection("storages")

    def storage(self, storage_id: str) -> str:
        return f"{self.storages}{storage_id}"

    @property
    def images(self) -> str:
        """Images with their volume chains: images/<image_id>."""
        return self.collection("images")

    def image(self, image_id: str) -> str:
        return f"{self.images}{image_id}"

    def job(self, job_id: str) -> str:
        """Live block jobs (snapshot, merge): jobs/<job_id>."""
        return f"{self.collection('jobs')}{job_id}"

    def image_lock(self, image_id: str) -> str:
        """The exclusive lock of one image: locks/images/<image_id>, on the holder's lease."""
        return f"{self.collection('locks')}images/{image_id}"

    def audit(self, vm_id: str) -> str:
        """Prefix of one VM's HA audit records: audit/<vm_id>/<decided_at>-<op_id>."""
        return f"{self.collection('audit')}{vm_id}/"

    @property
    def call_audit(self) -> str:
        """The audit trail of mutating calls: calls/<time_ns>-<node_id>-<seq>, so key order
        is time order (security/audit.py)."""
        return self.collection("calls")

    @staticmethod
    def last_segment(key: str | bytes) -> str:
        """The id at the end of a resource key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.rsplit("/", 1)[-1]

