"""The fuzzer's request builders, without a cluster: every method of every service gets
requests that serialize, the sweep reaches every field, and the descriptions stay short.

Why: the API is being reworked (names, enums, Timestamp, pagination); these fail at once
when a descriptor shape appears that the builders cannot handle, instead of the
integration fuzzer silently skipping it.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.testing import fuzz as fz

POOL = fz.IdPool({"vm_id": ["vm-1"], "host_id": ["h-0"], "address": ["127.0.0.1:9"]})
METHODS = [m for s in fz.controlplane_services().values() for m in s.methods]


def test_services_are_found_from_the_generated_modules() -> None:
    names = set(fz.controlplane_services())
    assert "controlplane.v1.VmService" in names and "controlplane.v1.SimMdsControlService" in names
    assert all(fz.find_service(n) is not None for n in names)


@settings(max_examples=150, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.data())
def test_every_method_gets_requests_that_serialize(data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(METHODS))
    corpus = fz.Corpus()
    request = data.draw(fz.requests(method, POOL, corpus))
    again = fz.message_class(method.input_type).FromString(request.SerializeToString())
    assert again == request or again.SerializeToString() == request.SerializeToString()
    assert len(fz.shape(request)) < 4000
    corpus.add(method, request)
    mutated = data.draw(fz.requests(method, POOL, corpus))
    mutated.SerializeToString()


def test_the_sweep_sets_each_field_to_its_edges_and_freshens_the_id() -> None:
    method = fz.find_service("controlplane.v1.VmService").methods_by_name["CreateVm"]
    cls = fz.message_class(method.input_type)
    seed = cls(vm_id="vm-1", name="web", cpus=1)
    counter = itertools.count()
    swept = list(fz.sweep(method.input_type, seed, fresh=lambda: f"fz{next(counter)}"))
    touched = {fd.name for m in swept for fd, _ in m.ListFields()
               if getattr(m, fd.name) != getattr(seed, fd.name)}
    assert touched >= {fd.name for fd in method.input_type.fields} - {"image"}
    assert any(m.name == fz.HUGE for m in swept)
    assert any(m.ha not in (0, 1) for m in swept)  # an enum number no value defines
    assert any(m.vm_id.startswith("fz") for m in swept)  # the freshened variant
    assert all(m.SerializeToString() for m in swept)


def test_records_and_string_values_walk_nested_messages() -> None:
    method = fz.find_service("controlplane.v1.VmService").methods_by_name["CreateVm"]
    request = fz.message_class(method.input_type)(vm_id="a", image={"image_id": "img-x"})
    assert set(fz.string_values(request)) == {"a", "img-x"}
    assert [r.image_id for r in fz.records(request, "image_id")] == ["img-x"]
    assert "image={image_id='img-x'}" in fz.shape(request)


def test_findings_group_by_method_problem_and_gist() -> None:
    found = fz.Findings()
    found.add("m", "UNKNOWN", "value 99 is bad", "{a=1}")
    found.add("m", "UNKNOWN", "value 7 is bad", "{a=2}")
    found.add("m", "UNKNOWN", "something else", "{a=3}")
    assert len(found) == 2
    assert "x2" in found.report()
