"""The client library's pure parts: endpoints, which field a method routes on, its ring."""

from __future__ import annotations

import argparse
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.channels import ChannelPool
from controlplane.cli import argtypes
from controlplane.client import (
    RESOURCE_FIELDS,
    Client,
    ClientRing,
    endpoints_from_env,
    parse_endpoints,
    resource_field,
)
from controlplane.cluster.ring import Ring
from controlplane.testing.pki import harness_pki
from controlplane.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    host_pb2,
    storage_pb2,
    vm_pb2,
    vm_pb2_grpc,
    volume_pb2,
)


def test_parse_endpoints() -> None:
    assert parse_endpoints("a:1, b:2,,a:1") == ["a:1", "b:2"]
    assert parse_endpoints(["x:9"]) == ["x:9"]
    assert parse_endpoints("[::1]:7070") == ["[::1]:7070"]
    with pytest.raises(ValueError):
        parse_endpoints(" , ")


@pytest.mark.parametrize("bad", ["nohost", "h:", ":7070", "h:0", "h:70000", "h:7o70"])
def test_parse_endpoints_names_the_bad_entry(bad: str) -> None:
    """Every entry is checked, not only the first: the later ones are the ones tried when
    the first is down."""
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        parse_endpoints(f"a:1,{bad}")
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        Client(["a:1", bad])


def test_the_cli_endpoint_type_is_the_client_parser() -> None:
    assert argtypes.endpoints(" a:1,b:2 ,a:1") == "a:1,b:2"
    with pytest.raises(argparse.ArgumentTypeError, match="'h:70000'"):
        argtypes.endpoints("a:1,h:70000")


def test_the_pool_builds_one_stub_per_class_and_address() -> None:
    pool = ChannelPool(tls=harness_pki().admin())
    try:
        with ThreadPoolExecutor(8) as workers:
            stubs = list(workers.map(
                lambda _: pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:1"),
                range(64)))
        assert len({id(s) for s in stubs}) == 1
        other = pool.stub(vm_pb2_grpc.VmServiceStub, "127.0.0.1:1")
        assert other is not stubs[0]
        assert pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:2") is not stubs[0]
        pool.close()  # a closed pool starts afresh
        assert pool.stub(cluster_pb2_grpc.ClusterServiceStub, "127.0.0.1:1") is not stubs[0]
    finally:
        pool.close()


def test_endpoints_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTROLPLANE_ENDPOINT", raising=False)
    assert endpoints_from_env() == "127.0.0.1:7070"
    assert endpoints_from_env("h:1") == "h:1"
    monkeypatch.setenv("CONTROLPLANE_ENDPOINT", "n1:7070,n2:7070")
    assert endpoints_from_env("h:1") == "n1:7070,n2:7070"
    monkeypatch.setenv("CONTROLPLANE_ENDPOINT", "  ")
    assert endpoints_from_env("h:1") == "h:1"


def _routes(module, service: str) -> dict[str, str | None]:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    return {m.name: resource_field(descriptor, m) for m in descriptor.methods}


def test_routed_methods_come_from_the_descriptors() -> None:
    vm = _routes(vm_pb2, "VmService")
    assert {vm[m] for m in ("CreateVm", "StartVm", "StopVm", "DestroyVm", "GetVm")} == {"vm_id"}
    assert vm["ListVms"] is None  # its host_id filters a list; it names no VM
    assert vm["WatchVms"] is None  # streams are served by any node
    host = _routes(host_pb2, "HostService")
    assert host["AddHost"] == host["RemoveHost"] == host["ReconnectHost"] == "host_id"
    assert host["ListHosts"] is None
    volume = _routes(volume_pb2, "VolumeService")
    assert volume["LiveSnapshot"] == volume["ReconcileVolumeChain"] == "image_id"
    assert volume["ResumeBlockJob"] is None  # a job id is not on the ring
    storage = _routes(storage_pb2, "StorageService")
    assert storage["AddPrimaryStorage"] == storage["CheckPrimaryStorage"] == "storage_id"
    cluster = _routes(cluster_pb2, "ClusterService")
    assert cluster["Locate"] == "resource_id" and cluster["GetRing"] is None


def test_every_resource_field_is_a_real_request_field() -> None:
    """A renamed proto field must not silently turn routing off."""
    modules = {"controlplane.v1.VmService": vm_pb2, "controlplane.v1.HostService": host_pb2,
               "controlplane.v1.VolumeService": volume_pb2,
               "controlplane.v1.StorageService": storage_pb2,
               "controlplane.v1.ClusterService": cluster_pb2}
    for service, name in RESOURCE_FIELDS.items():
        descriptor = modules[service].DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]]
        assert any(resource_field(descriptor, m) == name for m in descriptor.methods), service


def test_every_service_is_there_and_callable() -> None:
    client = Client("127.0.0.1:1")
    try:
        for name in ("cluster", "hosts", "vms", "config", "storage", "volumes", "health"):
            service = getattr(client, name)
            for method in service.descriptor.methods:
                assert callable(getattr(service, method.name))
        assert client.endpoint == "127.0.0.1:1"
    finally:
        client.close()


names = st.lists(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1,
                         max_size=12), min_size=1, max_size=6, unique=True)


@given(names, st.integers(0, 1 << 40), st.sampled_from([1, 16, 256]),
       st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=20))
def test_the_client_ring_names_the_owner_the_nodes_name(members, epoch, vnodes,
                                                        resources) -> None:
    """The node builds Ring.build(table.members, epoch, vnodes); GetRing sends those; the
    client must pick the same owner for every resource."""
    node_ring = Ring.build(members, epoch, vnodes)
    reply = cluster_pb2.GetRingResponse(
        epoch=epoch, vnodes=vnodes,
        members=[cluster_pb2.Member(node_id=m, address=f"{m}:7070") for m in sorted(members)])
    client_ring = ClientRing.from_reply(reply)
    assert client_ring.epoch == epoch
    for resource in resources:
        owner = node_ring.owner(resource)
        assert client_ring.owner_address(resource) == (owner, f"{owner}:7070")


def test_an_empty_ring_routes_nowhere() -> None:
    assert ClientRing.from_reply(cluster_pb2.GetRingResponse()).owner_address("x") is None
