"""Issue 11 items 3, 4 and 11 against a real node: out-of-range enums and oversized fields are
refused before anything is written, the refusal names the field and its limit without
echoing the input, and List calls page through a fleet larger than one page."""

from __future__ import annotations

import grpc
import pytest

from controlplane import client as client_lib
from controlplane.store import DEFAULT_PREFIX, Keys, Store
from controlplane.testing import cluster as c
from controlplane.v1 import host_pb2, storage_pb2, vm_pb2

MiB = 1 << 20
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


@pytest.fixture
def node(etcd, nodes):
    return nodes.start("mn-0", etcd.endpoints)


def stored_vm_ids(etcd) -> set[str]:
    store = Store(etcd.endpoints)
    try:
        kvs, _ = store.list_prefix(Keys(DEFAULT_PREFIX).vm(""))
    finally:
        store.close()
    return {kv.key.rsplit("/", 1)[-1] for kv in kvs}


@pytest.mark.parametrize("ha", [2, 99, -1, 2**31 - 1])
def test_an_undefined_ha_level_is_refused_and_nothing_is_written(node, etcd, ha) -> None:
    """Before: the VM was stored with ha 99, then the call answered UNKNOWN."""
    err = refused(lambda: c.vms(node).CreateVm(
        vm_pb2.CreateVmRequest(vm_id="bad-ha", image=IMAGE, ha=ha), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ha" in err.details() and "defined enum" in err.details()
    assert "bad-ha" not in stored_vm_ids(etcd)


@pytest.mark.parametrize(("field", "request_of"), [
    ("name", lambda big: vm_pb2.CreateVmRequest(vm_id="big", name=big, image=IMAGE)),
    ("image.image_id", lambda big: vm_pb2.CreateVmRequest(
        vm_id="big", image=vm_pb2.ImageInfo(image_id=big, virtual_size=1, actual_size=1))),
])
def test_a_1_mib_vm_field_is_refused_naming_the_field_and_not_echoed(node, etcd, field,
                                                                      request_of) -> None:
    """Before: a 1 MiB name or image id was stored as a 1 MiB etcd value."""
    big = "n" * MiB
    err = refused(lambda: c.vms(node).CreateVm(request_of(big), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}:") or f"; {field}:" in err.details()
    assert len(err.details()) < 1024 and "nnnnnnnnnnnnnnnn" not in err.details()
    assert "big" not in stored_vm_ids(etcd)


def test_a_1_mib_address_is_invalid_argument_not_a_metadata_overflow(node) -> None:
    """Before: AddHost echoed the address into the details, and the answer came back as
    RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"; AddPrimaryStorage
    stored a 1 MiB MDS address."""
    big = "h" * MiB + ":1"
    err = refused(lambda: c.hosts(node).AddHost(
        host_pb2.AddHostRequest(host_id="h1", address=big), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "address" in err.details()
    err = refused(lambda: c.storage(node).AddPrimaryStorage(
        storage_pb2.AddPrimaryStorageRequest(storage_id="ps", mds_addresses=[big]), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mds_addresses[0]" in err.details()


def test_a_host_whose_address_is_not_an_agent_is_refused(node) -> None:
    """The fuzzer's finding: AddHost with the address of a live process that is not an
    agent (here the node itself) answered UNAVAILABLE 'unreachable: Method not found'."""
    err = refused(lambda: c.hosts(node).AddHost(
        host_pb2.AddHostRequest(host_id="h1", address=node.address), timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a host agent" in err.details()


def test_list_vms_pages_through_more_than_one_page(node) -> None:
    """page_size, page_token, next_page_token (AIP-158); the client library's list_all
    joins the pages; a forged token is INVALID_ARGUMENT."""
    vms = c.vms(node)
    for i in range(7):
        vms.CreateVm(vm_pb2.CreateVmRequest(vm_id=f"p-{i}", image=IMAGE), timeout=5)
    first = vms.ListVms(vm_pb2.ListVmsRequest(page_size=3), timeout=5)
    assert [v.vm_id for v in first.vms] == ["p-0", "p-1", "p-2"] and first.next_page_token
    second = vms.ListVms(vm_pb2.ListVmsRequest(page_size=3, page_token=first.next_page_token),
                         timeout=5)
    assert [v.vm_id for v in second.vms] == ["p-3", "p-4", "p-5"]
    with client_lib.Client(node.address, timeout=5, route=False) as client:
        every = client_lib.list_all(client.vms.ListVms, vm_pb2.ListVmsRequest(page_size=2),
                                    "vms")
    assert [v.vm_id for v in every.vms] == [f"p-{i}" for i in range(7)]
    assert not every.next_page_token
    err = refused(lambda: vms.ListVms(vm_pb2.ListVmsRequest(page_token="forged"), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.details()
    err = refused(lambda: vms.ListVms(vm_pb2.ListVmsRequest(page_size=5000), timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in err.details()
