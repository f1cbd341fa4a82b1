"""Capacity-aware placement, pure: filters, then a weigher, as Nova's filter scheduler does.

Why this shape (Nova's FilterScheduler): a filter says yes or no per host and names why
(kept for the refusal message and the maintenance's "what is left and why"); the weigher
orders what passed. Filters here: the host takes placements (scheduling ENABLED), is
connected, and the VM fits in what is left after the allocation ratios and the host's
reserved memory. Weigher: `spread` puts the VM where the most stays free (Nova's default,
RAM and CPU weighers with positive multipliers), `pack` where the least stays free (negative
multipliers: fill a host before using the next).

Deterministic: ties go to the smaller host id, so every node decides the same from the same
records. Racing placements (many starts at once) would all pick the same best host and
serialize on its allocation record (measured: with 8 clients on 4 equal hosts some starts
lost 30 compares in a row); so, like Nova's host_subset_size, the pick is among the best
`subset` hosts, chosen by a stable hash of a salt (the VM id): different VMs spread over
them, the same VM and records give the same answer on every node.

No I/O: the shells (vm/operations.py, host/maintenance.py) read the host records and
allocation records and hand them in; the decision is then settled in etcd by one
compare-and-swap on the chosen host's allocation record, so a stale input can cost a retry,
never an over-commit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SPREAD = "spread"
PACK = "pack"
WEIGHERS = (SPREAD, PACK)

# why a host was filtered out
DISABLED = "disabled"
MAINTENANCE = "in maintenance"
NOT_CONNECTED = "not connected"
EXCLUDED = "excluded"
NO_CAPACITY = "not enough free capacity"


@dataclass(frozen=True)
class Ratios:
    """The live settings host.cpuAllocationRatio, host.memoryAllocationRatio and
    host.reservedMemoryMb."""

    cpu: float = 4.0
    memory: float = 1.0
    reserved_memory_mb: int = 512


@dataclass(frozen=True)
class Request:
    cpus: int
    memory_mb: int

    def __str__(self) -> str:
        return f"{self.cpus} cpus, {self.memory_mb} MB"


@dataclass(frozen=True)
class HostView:
    """One host as placement sees it: its record's capacity and state plus its allocation."""

    host_id: str
    cpus: int
    memory_mb: int
    used_cpus: int = 0
    used_memory_mb: int = 0
    connected: bool = True
    # "enabled", "disabled", "preparing-maintenance" or "maintenance"
    scheduling: str = "enabled"

    def cpu_capacity(self, ratios: Ratios) -> int:
        # floor with a small epsilon: 3 cpus x 1.1 must be 3, not 3.3000000000000003 -> 3
        return max(0, math.floor(self.cpus * ratios.cpu + 1e-9))

    def memory_capacity(self, ratios: Ratios) -> int:
        return max(0, math.floor((self.memory_mb - ratios.reserved_memory_mb) * ratios.memory
                                 + 1e-9))

    def free(self, ratios: Ratios) -> tuple[int, int]:
        """(cpus, MB) placement may still reserve here (negative: over-committed already,
        e.g. after a ratio was lowered)."""
        return (self.cpu_capacity(ratios) - self.used_cpus,
                self.memory_capacity(ratios) - self.used_memory_mb)

    def fits(self, request: Request, ratios: Ratios) -> bool:
        cpus, memory = self.free(ratios)
        return request.cpus <= cpus and request.memory_mb <= memory

    def describe_free(self, ratios: Ratios) -> str:
        cpus, memory = self.free(ratios)
        return (f"host {self.host_id} has {cpus} of {self.cpu_capacity(ratios)} cpus and "
                f"{memory} of {self.memory_capacity(ratios)} MB free")


@dataclass(frozen=True)
class Decision:
    """The chosen host (None: nothing passed), why each other host was filtered out, and
    the usable host with the most room (for the RESOURCE_EXHAUSTED message)."""

    host_id: str | None
    rejected: Mapping[str, str] = field(default_factory=dict)
    best: HostView | None = None

    def explain(self, request: Request, ratios: Ratios) -> str:
        """Why nothing was chosen, in words: the request and the best host's free room."""
        if self.best is not None:
            return f"no host fits {request}: the best, {self.best.describe_free(ratios)}"
        if not self.rejected:
            return f"no host to place {request} on"
        reasons = ", ".join(f"{h} {why}" for h, why in sorted(self.rejected.items())[:8])
        return f"no host to place {request} on ({reasons})"


def reject_reason(host: HostView, request: Request, ratios: Ratios) -> str | None:
    """The first filter `host` fails, or None when it passes them all."""
    if host.scheduling == "disabled":
        return DISABLED
    if host.scheduling in ("preparing-maintenance", "maintenance"):
        return MAINTENANCE
    if not host.connected:
        return NOT_CONNECTED
    if not host.fits(request, ratios):
        return NO_CAPACITY
    return None


def weight(host: HostView, request: Request, ratios: Ratios) -> float:
    """The share of the host's cpus and memory left free after placing `request` (0..2 on
    a host with both; a dimension the host has none of counts 0). Spread picks the
    highest, pack the lowest. A share, not an absolute: a big host and a small one that are
    equally full weigh the same."""
    cpus, memory = host.free(ratios)
    total_cpus, total_memory = host.cpu_capacity(ratios), host.memory_capacity(ratios)
    score = 0.0
    if total_cpus > 0:
        score += (cpus - request.cpus) / total_cpus
    if total_memory > 0:
        score += (memory - request.memory_mb) / total_memory
    return score


def place(hosts: Iterable[HostView], request: Request, ratios: Ratios, *,
          weigher: str = SPREAD, exclude: Iterable[str] = (), prefer: str = "",
          fallback_to_excluded: bool = False, subset: int = 1, salt: str = "") -> Decision:
    """Pick the host for `request`.

    `exclude`: hosts never chosen (the host being evacuated, the host HA restarts from),
    unless `fallback_to_excluded` and no other host passes (HA may restart a VM in place
    when its host is the only one). `prefer`: a host kept when it passes the filters (a
    restarted VM stays where it was, as it did before capacity placement). `subset`: pick
    among the best this many, by a stable hash of `salt` (1: the best)."""
    if weigher not in WEIGHERS:
        raise ValueError(f"weigher must be one of {', '.join(WEIGHERS)}, not {weigher!r}")
    excluded = set(exclude)
    passed: list[HostView] = []
    passed_excluded: list[HostView] = []
    rejected: dict[str, str] = {}
    best: HostView | None = None
    for host in sorted(hosts, key=lambda h: h.host_id):
        why = reject_reason(host, request, ratios)
        if why == NO_CAPACITY and (best is None or _room(host, ratios) > _room(best, ratios)):
            best = host  # sorted by id: a tie keeps the smaller id
        if why is not None:
            rejected[host.host_id] = why
        elif host.host_id in excluded:
            rejected[host.host_id] = EXCLUDED
            passed_excluded.append(host)
        else:
            passed.append(host)
    pool = passed or (passed_excluded if fallback_to_excluded else [])
    if not pool:
        return Decision(None, rejected, best)
    if prefer and any(h.host_id == prefer for h in pool):
        return Decision(prefer, rejected, best)
    sign = 1.0 if weigher == SPREAD else -1.0
    ranked = sorted(pool, key=lambda h: (-sign * weight(h, request, ratios), h.host_id))
    top = ranked[:max(1, subset)]
    index = 0
    if len(top) > 1:
        digest = hashlib.blake2b(salt.encode(), digest_size=8).digest()
        index = int.from_bytes(digest, "big") % len(top)
    return Decision(top[index].host_id, rejected, best)


def _room(host: HostView, ratios: Ratios) -> float:
    """Order of "most room" among hosts that do not fit: the smaller of the two shares left
    (the dimension that binds)."""
    cpus, memory = host.free(ratios)
    total_cpus, total_memory = host.cpu_capacity(ratios), host.memory_capacity(ratios)
    shares = [cpus / total_cpus if total_cpus else -1.0,
              memory / total_memory if total_memory else -1.0]
    return min(shares)
