"""Capacity placement, the pure core (controlplane/vm/placement.py) and the allocation
record helpers (controlplane/vm/allocations.py): properties over generated fleets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.v1 import host_pb2, vm_pb2
from controlplane.vm import allocations, placement
from controlplane.vm.placement import HostView, Ratios, Request, place

STATES = ("enabled", "disabled", "preparing-maintenance", "maintenance")


@st.composite
def hosts(draw: st.DrawFn, min_size: int = 0) -> list[HostView]:
    n = draw(st.integers(min_size, 8))
    out = []
    for i in range(n):
        cpus = draw(st.integers(0, 64))
        memory = draw(st.integers(0, 1 << 17))
        out.append(HostView(f"h{i:02d}", cpus, memory, draw(st.integers(0, 4 * cpus + 8)),
                            draw(st.integers(0, memory + 1024)), draw(st.booleans()),
                            draw(st.sampled_from(STATES))))
    return out


ratios_st = st.builds(Ratios, st.floats(0.1, 8.0), st.floats(0.1, 4.0), st.integers(0, 4096))
request_st = st.builds(Request, st.integers(0, 64), st.integers(0, 1 << 16))


@given(hosts(), request_st, ratios_st, st.sampled_from(placement.WEIGHERS))
@settings(max_examples=400)
def test_a_chosen_host_passes_every_filter_and_never_over_commits(
        fleet: list[HostView], request: Request, ratios: Ratios, weigher: str) -> None:
    decision = place(fleet, request, ratios, weigher=weigher)
    by_id = {h.host_id: h for h in fleet}
    if decision.host_id is None:
        # nothing passed: every host has a reason, and none of them could have taken it
        assert all(placement.reject_reason(h, request, ratios) for h in fleet)
        return
    host = by_id[decision.host_id]
    assert host.scheduling == "enabled" and host.connected
    cpus, memory = host.free(ratios)
    assert request.cpus <= cpus and request.memory_mb <= memory
    assert host.used_cpus + request.cpus <= host.cpu_capacity(ratios)
    assert host.used_memory_mb + request.memory_mb <= host.memory_capacity(ratios)


@given(hosts(), request_st, ratios_st, st.sampled_from(placement.WEIGHERS), st.data())
@settings(max_examples=300)
def test_an_excluded_host_is_never_chosen_unless_asked(
        fleet: list[HostView], request: Request, ratios: Ratios, weigher: str,
        data: st.DataObject) -> None:
    ids = [h.host_id for h in fleet]
    excluded = data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set()))
    decision = place(fleet, request, ratios, weigher=weigher, exclude=excluded)
    assert decision.host_id not in excluded
    fallback = place(fleet, request, ratios, weigher=weigher, exclude=excluded,
                     fallback_to_excluded=True)
    if decision.host_id is not None:
        assert fallback.host_id == decision.host_id  # the fallback only applies to nothing
    elif fallback.host_id is not None:
        assert fallback.host_id in excluded


@given(hosts(min_size=1), request_st, ratios_st, st.sampled_from(placement.WEIGHERS))
@settings(max_examples=300)
def test_the_weigher_picks_the_extreme_and_ties_go_to_the_smaller_id(
        fleet: list[HostView], request: Request, ratios: Ratios, weigher: str) -> None:
    decision = place(fleet, request, ratios, weigher=weigher)
    if decision.host_id is None:
        return
    passed = [h for h in fleet if placement.reject_reason(h, request, ratios) is None]
    weights = {h.host_id: placement.weight(h, request, ratios) for h in passed}
    chosen = weights[decision.host_id]
    extreme = max(weights.values()) if weigher == placement.SPREAD else min(weights.values())
    assert chosen == extreme
    assert decision.host_id == min(h for h, w in weights.items() if w == extreme)
    # deterministic: the same input in any order gives the same answer
    assert place(list(reversed(fleet)), request, ratios, weigher=weigher) == decision


def _fill(n_hosts: int, n_vms: int, weigher: str) -> dict[str, int]:
    """Place n_vms equal VMs one by one on n_hosts equal empty hosts; VMs per host."""
    ratios = Ratios(1.0, 1.0, 0)
    used = {f"h{i}": 0 for i in range(n_hosts)}
    for _ in range(n_vms):
        fleet = [HostView(h, 8, 8192, n, n * 1024) for h, n in used.items()]
        decision = place(fleet, Request(1, 1024), ratios, weigher=weigher)
        if decision.host_id is None:
            break
        used[decision.host_id] += 1
    return used


@given(st.integers(1, 6), st.integers(0, 60))
@settings(max_examples=100)
def test_spread_balances_equal_hosts(n_hosts: int, n_vms: int) -> None:
    used = _fill(n_hosts, n_vms, placement.SPREAD)
    assert sum(used.values()) == min(n_vms, 8 * n_hosts)
    assert max(used.values()) - min(used.values()) <= 1


@given(st.integers(1, 6), st.integers(0, 60))
@settings(max_examples=100)
def test_pack_fills_one_host_before_the_next(n_hosts: int, n_vms: int) -> None:
    used = _fill(n_hosts, n_vms, placement.PACK)
    placed = min(n_vms, 8 * n_hosts)
    assert sum(used.values()) == placed
    # as few hosts as possible, filled in id order
    counts = [used[f"h{i}"] for i in range(n_hosts)]
    assert sum(1 for c in counts if c) == -(-placed // 8)
    assert counts == sorted(counts, reverse=True)


def test_capacity_follows_the_ratios_and_the_reserved_memory() -> None:
    host = HostView("h", 16, 65536)
    assert host.cpu_capacity(Ratios(4.0, 1.0, 512)) == 64
    assert host.memory_capacity(Ratios(4.0, 1.0, 512)) == 65024
    assert host.memory_capacity(Ratios(4.0, 1.5, 512)) == 97536
    assert HostView("h", 3, 0).cpu_capacity(Ratios(1.1, 1.0, 0)) == 3
    assert HostView("h", 1, 100).memory_capacity(Ratios(1.0, 1.0, 512)) == 0


def test_nothing_fits_names_the_request_and_the_best_host() -> None:
    ratios = Ratios(1.0, 1.0, 0)
    fleet = [HostView("a", 4, 4096, 4, 0), HostView("b", 4, 4096, 2, 1024),
             HostView("c", 4, 4096, 0, 0, scheduling="disabled")]
    decision = place(fleet, Request(3, 512), ratios)
    assert decision.host_id is None and decision.best is not None
    assert decision.best.host_id == "b"
    text = decision.explain(Request(3, 512), ratios)
    assert "3 cpus, 512 MB" in text and "host b has 2 of 4 cpus and 3072 of 4096 MB free" in text
    assert decision.rejected == {"a": placement.NO_CAPACITY, "b": placement.NO_CAPACITY,
                                 "c": placement.DISABLED}


def test_prefer_keeps_the_previous_host_when_it_passes() -> None:
    ratios = Ratios(1.0, 1.0, 0)
    fleet = [HostView("a", 8, 8192, 6, 0), HostView("b", 8, 8192)]
    assert place(fleet, Request(1, 0), ratios, prefer="a").host_id == "a"
    assert place(fleet, Request(3, 0), ratios, prefer="a").host_id == "b"  # a is full


def test_unknown_weigher_is_refused() -> None:
    with pytest.raises(ValueError, match="weigher"):
        place([], Request(1, 1), Ratios(), weigher="random")


# -- allocation records ---------------------------------------------------------------------

def _vm(vm_id: str, host: str, state: str, cpus: int = 1, memory: int = 512,
        generation: int = 1) -> vm_pb2.Vm:
    return vm_pb2.Vm(vm_id=vm_id, host_id=host, state=state, cpus=cpus, memory_mb=memory,
                     generation=generation)


def test_with_vm_replaces_the_vms_own_entry() -> None:
    record = allocations.with_vm(None, "h", _vm("v1", "h", "Starting"))
    record = allocations.with_vm(record, "h", _vm("v1", "h", "Starting", cpus=2, generation=2))
    record = allocations.with_vm(record, "h", _vm("v0", "h", "Starting"))
    assert [(a.vm_id, a.cpus, a.generation) for a in record.vms] == [("v0", 1, 1), ("v1", 2, 2)]
    assert allocations.used(record) == (3, 1024)
    assert allocations.used(allocations.without(record, ["v1"])) == (1, 512)


def test_drift_drops_what_no_longer_holds_and_adds_what_does() -> None:
    record = host_pb2.HostAllocation(host_id="h", vms=[
        host_pb2.VmAllocation(vm_id=v, cpus=1, memory_mb=512) for v in ("run", "stopped",
                                                                          "moved", "gone")])
    vms = {"run": _vm("run", "h", "Running"), "stopped": _vm("stopped", "h", "Stopped"),
           "moved": _vm("moved", "other", "Running"), "new": _vm("new", "h", "Unknown"),
           "created": _vm("created", "h", "Created")}
    found = allocations.drift("h", record, vms)
    assert found.drop == ("gone", "moved", "stopped")
    assert found.add == ("new",)


@given(st.lists(st.tuples(st.sampled_from(["v1", "v2", "v3", "v4"]),
                          st.sampled_from(["h", "other", ""]),
                          st.sampled_from(["Running", "Stopped", "Starting", "Created",
                                           "Unknown", "Destroyed"])), max_size=8))
def test_after_reconcile_the_record_is_exactly_what_holds_the_host(
        rows: list[tuple[str, str, str]]) -> None:
    vms = {v: _vm(v, h, s) for v, h, s in rows}
    record = host_pb2.HostAllocation(host_id="h", vms=[
        host_pb2.VmAllocation(vm_id=v) for v in ("v1", "v3", "v9")])
    found = allocations.drift("h", record, vms)
    fixed = allocations.without(record, found.drop)
    for vm_id in found.add:
        fixed = allocations.with_vm(fixed, "h", vms[vm_id])
    assert {a.vm_id for a in fixed.vms} == {v for v, vm in vms.items()
                                            if vm.host_id == "h" and allocations.holds(vm)}
    assert allocations.drift("h", fixed, vms) == allocations.Drift((), ())


@given(hosts(min_size=1), request_st, ratios_st, st.sampled_from(placement.WEIGHERS),
       st.integers(1, 5), st.text(max_size=8))
@settings(max_examples=300)
def test_a_subset_pick_is_among_the_best_and_deterministic(
        fleet: list[HostView], request: Request, ratios: Ratios, weigher: str, subset: int,
        salt: str) -> None:
    decision = place(fleet, request, ratios, weigher=weigher, subset=subset, salt=salt)
    if decision.host_id is None:
        return
    passed = [h for h in fleet if placement.reject_reason(h, request, ratios) is None]
    sign = 1.0 if weigher == placement.SPREAD else -1.0
    ranked = sorted(passed, key=lambda h: (-sign * placement.weight(h, request, ratios),
                                           h.host_id))
    assert decision.host_id in {h.host_id for h in ranked[:subset]}
    assert place(list(reversed(fleet)), request, ratios, weigher=weigher, subset=subset,
                 salt=salt) == decision


def test_a_subset_spreads_different_vms_over_the_best_hosts() -> None:
    fleet = [HostView(f"h{i}", 8, 8192) for i in range(4)]
    picks = {place(fleet, Request(1, 512), Ratios(), subset=3, salt=f"vm-{i}").host_id
             for i in range(40)}
    assert picks == {"h0", "h1", "h2"}


def _allocations_over(host: host_pb2.Host) -> allocations.Allocations:
    from types import SimpleNamespace

    from controlplane.store.keys import Keys

    settings_ = {"host.cpuAllocationRatio": 4.0, "host.memoryAllocationRatio": 1.0,
                 "host.reservedMemoryMb": 512}
    ctx = SimpleNamespace(host_record=lambda host_id: host, keys=Keys("/t"),
                          config=SimpleNamespace(get=settings_.__getitem__))
    return allocations.Allocations(ctx, cache=None)  # type: ignore[arg-type]


@given(st.integers(0, 8), st.integers(1, 4))
def test_a_reservation_is_checked_against_the_record_it_compares(held: int, cpus: int) -> None:
    """Found by `bench placement` (a host at 65 of 64 cpus, 1 run in 4): the placement was
    decided on one copy of the host's record and the CAS built on a newer one, which no
    longer had room. Now a share that does not fit the record it would be written into is
    never turned into a txn (Conflict: decide again)."""
    from controlplane.owner import Conflict

    host = host_pb2.Host(host_id="h", cpus=2, memory_mb=1 << 20,
                         status=host_pb2.HOST_STATUS_CONNECTED)  # 8 cpus to reserve
    record = host_pb2.HostAllocation(host_id="h", vms=[
        host_pb2.VmAllocation(vm_id=f"o{i}", cpus=1, memory_mb=1, generation=1)
        for i in range(held)])
    vm = vm_pb2.Vm(vm_id="new", host_id="h", cpus=cpus, memory_mb=1, generation=1)
    alloc = _allocations_over(host)
    if held + cpus > 8:
        with pytest.raises(Conflict):
            alloc.reserve(vm, record, 7)
    else:
        compares, puts = alloc.reserve(vm, record, 7)
        assert len(compares) == 1 and len(puts) == 1
