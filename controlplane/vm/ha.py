"""HA guards and placement, pure: the partition breaker and the choice of a target host.

The breaker is what keeps a network partition from looking like a mass host failure. When
more than half of all hosts became unreachable within one sync interval of each other, the
likelier story is that *we* are cut off (or the network is), not that the hosts died; a
restart storm then would run VMs twice the moment the partition heals. So HA freezes until
enough hosts are back that the burst is no longer a majority.

It is stateless on purpose: it reads the `unreachable_since` stamps the host owners write
into the host records, so every management node reaches the same verdict from its cache,
and a node that restarts does not forget that the breaker was open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def largest_burst(times: Sequence[float], window: float) -> int:
    """The most timestamps that fall within any span of `window` seconds."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def breaker_open(unreachable_since: Sequence[float], total_hosts: int, window: float) -> bool:
    """True when more than half of all hosts went unreachable within one `window`.

    `unreachable_since` holds one stamp per host that is unreachable now; hosts that came
    back have none, so the breaker closes as they return.
    """
    if total_hosts <= 1:
        return False
    return largest_burst(unreachable_since, window) * 2 > total_hosts


def pick_host(candidates: Mapping[str, int], exclude: str = "") -> str | None:
    """The connected host with the fewest VMs (ties by id, so every node picks the same),
    other than `exclude` unless it is the only one. `candidates`: host id -> VM count."""
    others = {h: n for h, n in candidates.items() if h != exclude}
    pool = others or {h: n for h, n in candidates.items() if h == exclude}
    if not pool:
        return None
    return min(pool, key=lambda h: (pool[h], h))

