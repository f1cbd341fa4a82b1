"""Primary storage records through the management nodes, against real sim MDS processes.

The owner of a storage id checks its MDS every ``storage.mdsCheckInterval``; calls to the
store (GetVolumeClients) go only to the MDS the record says are healthy, trying the next
on failure. Waits are on the record's health (deadlines), never on sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.testing import cluster as c
from controlplane.testing.etcd import EtcdCluster
from controlplane.testing.mds import MdsProcess
from controlplane.testing.ports import free_ports
from controlplane.testing.waiting import wait_until
from controlplane.v1 import config_pb2, storage_pb2
from controlplane.v1 import mds_pb2 as mpb

VOLUME = "vol-1"


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[MdsProcess]]:
    procs = [MdsProcess(f"mds-{i}", port, str(tmp_path)) for i, port in enumerate(free_ports(3))]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
            p.stub().CreateVolume(mpb.CreateVolumeRequest(volume_id=VOLUME,
                                                             size_bytes=1 << 30), timeout=5)
            p.sim().SetVolumeClients(mpb.SetVolumeClientsRequest(
                volume_id=VOLUME, clients=[mpb.MdsVolumeClient(client_id="host-0")]), timeout=5)
        yield procs
    finally:
        for p in procs:
            if p.pid is not None:
                p.terminate()


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def health(node: object, storage_id: str = "ps-1") -> dict[str, int]:
    record = c.storage(node).GetPrimaryStorage(storage_pb2.GetPrimaryStorageRequest(
        storage_id=storage_id), timeout=5).storage
    return {m.address: m.health for m in record.mds}


def set_config(node: object, **values: str) -> None:
    for key, value in values.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(
            key=key.replace("_", "."), value=value), timeout=5)


def test_records_health_checks_and_try_next(etcd: EtcdCluster, nodes, trio) -> None:  # type: ignore[no-untyped-def]
    a = nodes.start("a", etcd.endpoints, lease_ttl=2)
    b = nodes.start("b", etcd.endpoints, lease_ttl=2)
    set_config(a, **{"storage_mdsCheckInterval": "0.3", "storage_mdsAttemptTimeout": "0.5"})
    addresses = [p.address for p in trio]
    stub = c.storage(a)

    # Bad input is refused before anything is written.
    assert code_of(lambda: stub.AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(
        storage_id="ps-1"), timeout=5).storage) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stub.AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(
        storage_id="ps-1", mds_addresses=["nohost"]), timeout=5).storage) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stub.GetPrimaryStorage(storage_pb2.GetPrimaryStorageRequest(
        storage_id="ps-1"), timeout=5).storage) == grpc.StatusCode.NOT_FOUND

    added = stub.AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(
        storage_id="ps-1", mds_addresses=addresses), timeout=10).storage
    assert [m.health for m in added.mds] == [storage_pb2.MDS_HEALTH_HEALTHY] * 3
    assert all(m.HasField("checked_at") for m in added.mds)  # checked before answering
    assert added.owner in ("a", "b")
    assert code_of(lambda: c.storage(b).AddPrimaryStorage(storage_pb2.AddPrimaryStorageRequest(
        storage_id="ps-1", mds_addresses=addresses), timeout=5).storage) \
        == grpc.StatusCode.ALREADY_EXISTS
    listed = c.storage(b).ListPrimaryStorages(storage_pb2.ListPrimaryStoragesRequest(),
                                              timeout=5)
    assert [s.storage_id for s in listed.storages] == ["ps-1"]

    # One MDS dies, one hangs: the owner's checker marks both unhealthy...
    dead, hung, good = trio
    dead.kill()
    hung.set_fault(mpb.SIM_MDS_FAULT_MODE_HANG)
    unhealthy = {dead.address: storage_pb2.MDS_HEALTH_UNHEALTHY,
                 hung.address: storage_pb2.MDS_HEALTH_UNHEALTHY,
                 good.address: storage_pb2.MDS_HEALTH_HEALTHY}
    wait_until(lambda: health(b) == unhealthy, 10, message="checker marks dead+hung MDS")
    record = c.storage(b).GetPrimaryStorage(storage_pb2.GetPrimaryStorageRequest(storage_id="ps-1"),
                                            timeout=5).storage
    errors = {m.address: m.last_error for m in record.mds}
    assert errors[hung.address].startswith("DEADLINE_EXCEEDED")
    assert errors[dead.address].startswith("UNAVAILABLE")

    # ...and calls through either node go to the healthy one only, at once.
    hung.reset(volumes=False)  # count calls from here on; the hang stays (reset clears it)
    hung.set_fault(mpb.SIM_MDS_FAULT_MODE_HANG)
    for node in (a, b):
        answer = c.storage(node).GetVolumeClients(storage_pb2.GetVolumeClientsRequest(
            storage_id="ps-1", volume_id=VOLUME), timeout=5)
        assert [x.client_id for x in answer.clients] == ["host-0"]
    assert hung.calls().get("GetVolumeClients", 0) == 0

    # Healed: both healthy again after a check.
    dead.restart().wait_ready()
    dead.stub().CreateVolume(mpb.CreateVolumeRequest(volume_id=VOLUME, size_bytes=1),
                             timeout=5)
    hung.set_fault(mpb.SIM_MDS_FAULT_MODE_OK)
    wait_until(lambda: set(health(a).values()) == {storage_pb2.MDS_HEALTH_HEALTHY}, 10,
               message="checker marks healed MDS healthy")

    # Every MDS down: UNAVAILABLE, and the message names every MDS.
    for p in trio:
        p.set_fault(mpb.SIM_MDS_FAULT_MODE_REFUSE)
    with pytest.raises(grpc.RpcError) as info:
        c.storage(a).GetVolumeClients(storage_pb2.GetVolumeClientsRequest(
            storage_id="ps-1", volume_id=VOLUME), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Either every MDS was tried (the call came before the check), or the check had already
    # marked them all unhealthy; both name what happened.
    assert ("every healthy MDS failed" in info.value.details()
            or "no healthy MDS" in info.value.details())

    # NOT_FOUND from the store is the store's answer, not an outage.
    for p in trio:
        p.set_fault(mpb.SIM_MDS_FAULT_MODE_OK)
    wait_until(lambda: set(health(a).values()) == {storage_pb2.MDS_HEALTH_HEALTHY}, 10)
    assert code_of(lambda: c.storage(a).GetVolumeClients(storage_pb2.GetVolumeClientsRequest(
        storage_id="ps-1", volume_id="no-such-volume"), timeout=5)) == grpc.StatusCode.NOT_FOUND

    removed = c.storage(b).RemovePrimaryStorage(storage_pb2.RemovePrimaryStorageRequest(
        storage_id="ps-1"), timeout=5).storage
    assert removed.storage_id == "ps-1"
    assert code_of(lambda: c.storage(a).GetPrimaryStorage(storage_pb2.GetPrimaryStorageRequest(
        storage_id="ps-1"), timeout=5).storage) == grpc.StatusCode.NOT_FOUND
