"""The MDS client's try-next against three real sim MDS processes over gRPC.

One trio of sim MDS processes serves the whole module (started once, reset before each
test). Per-attempt deadlines are 0.5 s; the order of each call is chosen by seeding the
client's ``random.Random`` and setting each MDS's fault by its place in that order. Asserts
are on outcomes and on which MDS were tried (the client's attempts and the sims' own call
counts), never on wall time; the times are printed.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from controlplane import wiretime
from controlplane.storage.mds import MdsClient, MdsEndpoint, MdsError, MdsResult
from controlplane.storage.retry import Outcome, attempt_order
from controlplane.testing.mds import MdsProcess
from controlplane.testing.pki import harness_pki
from controlplane.testing.ports import free_port, free_ports
from controlplane.testing.waiting import wait_until
from controlplane.v1 import mds_pb2 as pb

ATTEMPT = 0.5  # the per-attempt deadline of these tests (30 s in production)
SEED = 7
VOLUME = "vol-1"
HANG, REFUSE = pb.SIM_MDS_FAULT_MODE_HANG, pb.SIM_MDS_FAULT_MODE_REFUSE
FAIL, SLOW = pb.SIM_MDS_FAULT_MODE_FAIL, pb.SIM_MDS_FAULT_MODE_SLOW


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MdsProcess]]:
    base = tmp_path_factory.mktemp("mds")
    procs = [MdsProcess(f"mds-{i}", port, str(base)) for i, port in enumerate(free_ports(3))]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            if p.pid is not None:
                p.terminate()


@pytest.fixture(autouse=True)
def clean(trio: list[MdsProcess]) -> None:
    """No faults, no counts; VOLUME on every MDS (each sim has its own metadata)."""
    for p in trio:
        if not p.is_running():  # a test killed it: bring it back
            p.restart().wait_ready()
        p.reset(volumes=True)
        p.stub().CreateVolume(pb.CreateVolumeRequest(volume_id=VOLUME, size_bytes=1 << 30),
                              timeout=5)
        p.sim().SetVolumeClients(pb.SetVolumeClientsRequest(
            volume_id=VOLUME, clients=[pb.MdsVolumeClient(client_id="host-0",
                                                          address="10.0.0.5")]), timeout=5)
        p.reset(volumes=False)  # the seeding calls are not the test's


def endpoints(procs: list[MdsProcess]) -> list[MdsEndpoint]:
    return [MdsEndpoint(p.address) for p in procs]


def in_call_order(procs: list[MdsProcess], seed: int = SEED) -> list[MdsProcess]:
    """The MDS in the order a client seeded with ``seed`` tries them on its first call."""
    by_address = {p.address: p for p in procs}
    return [by_address[e.address] for e in attempt_order(endpoints(procs), random.Random(seed))]


def client(procs: list[MdsProcess] | list[MdsEndpoint], **kwargs: object) -> MdsClient:
    eps = [p if isinstance(p, MdsEndpoint) else MdsEndpoint(p.address) for p in procs]
    options: dict[str, object] = {"attempt_timeout": ATTEMPT, "rng": random.Random(SEED),
                                  "tls": harness_pki().node("test"), **kwargs}
    return MdsClient(eps, **options)  # type: ignore[arg-type]


def timed(what: str, fn: Callable[[], MdsResult]) -> tuple[MdsResult | MdsError, float]:
    """The call's result or error, and its time (printed for the reader, never asserted)."""
    started = time.monotonic()
    try:
        result: MdsResult | MdsError = fn()
    except MdsError as exc:
        result = exc
    elapsed = time.monotonic() - started
    print(f"{what}: {elapsed:.3f}s: {result if isinstance(result, MdsError) else 'ok'}")
    return result, elapsed


def tried(result: MdsResult | MdsError) -> list[tuple[str, Outcome]]:
    return [(a.address, a.outcome) for a in result.attempts]


def calls(procs: list[MdsProcess], method: str) -> list[int]:
    return [p.calls().get(method, 0) for p in procs]


GET_CLIENTS = pb.StorageMdsServiceGetVolumeClientsRequest(volume_id=VOLUME)


def test_idempotent_call_goes_past_a_hanging_and_a_refusing_mds(trio: list[MdsProcess]) -> None:
    hanging, refusing, answering = in_call_order(trio)
    hanging.set_fault(HANG)
    refusing.set_fault(REFUSE)
    with client(trio) as c:
        result, _ = timed("hang, refuse, ok (idempotent)", lambda: c.call(
            "GetVolumeClients", GET_CLIENTS, idempotent=True))
    assert isinstance(result, MdsResult), result
    assert tried(result) == [(hanging.address, Outcome.TIMEOUT),
                             (refusing.address, Outcome.TRANSPORT),
                             (answering.address, Outcome.OK)]
    assert [(x.client_id, x.address) for x in result.response.clients] == \
        [("host-0", "10.0.0.5")]
    assert calls(in_call_order(trio), "GetVolumeClients") == [1, 1, 1]


def test_non_idempotent_call_stops_after_the_first_timeout(trio: list[MdsProcess]) -> None:
    hanging, refusing, answering = in_call_order(trio)
    hanging.set_fault(HANG)
    refusing.set_fault(REFUSE)
    with client(trio) as c:
        error, _ = timed("hang, refuse, ok (create)", lambda: c.call(
            "CreateVolume", pb.CreateVolumeRequest(volume_id="vol-2", size_bytes=10),
            idempotent=False))
    assert isinstance(error, MdsError)
    assert tried(error) == [(hanging.address, Outcome.TIMEOUT)]
    assert error.not_tried == (refusing.address, answering.address)
    assert "not marked idempotent" in str(error) and hanging.address in str(error)
    assert calls(in_call_order(trio), "CreateVolume") == [1, 0, 0]
    assert "vol-2" not in hanging.volume_ids()  # a hang never applies


def test_non_idempotent_call_stops_after_an_operation_error(trio: list[MdsProcess]) -> None:
    failing, _, _ = in_call_order(trio)
    failing.set_fault(FAIL, "DeleteVolume", code=grpc.StatusCode.FAILED_PRECONDITION,
                      details="volume is being cloned")
    with client(trio) as c:
        error, _ = timed("fail (delete)", lambda: c.delete_volume(VOLUME))
    assert isinstance(error, MdsError)
    assert error.errors == ((failing.address, "FAILED_PRECONDITION", "volume is being cloned"),)
    assert calls(in_call_order(trio), "DeleteVolume") == [1, 0, 0]


def test_non_idempotent_call_goes_on_after_a_transport_error(trio: list[MdsProcess]) -> None:
    """Refused (UNAVAILABLE) means not executed: even a create may go on, and is done once."""
    refusing, answering, _ = in_call_order(trio)
    refusing.set_fault(REFUSE, "CreateVolume")
    with client(trio) as c:
        result = c.call("CreateVolume", pb.CreateVolumeRequest(volume_id="vol-2",
                                                                  size_bytes=10),
                        idempotent=False)
    assert tried(result) == [(refusing.address, Outcome.TRANSPORT),
                             (answering.address, Outcome.OK)]
    assert result.response.volume.volume_id == "vol-2" and result.response.volume.size_bytes == 10
    assert ["vol-2" in p.volume_ids() for p in in_call_order(trio)] == [False, True, False]


def test_all_fail_raises_one_error_naming_every_mds(trio: list[MdsProcess]) -> None:
    hanging, refusing, failing = in_call_order(trio)
    hanging.set_fault(HANG)
    refusing.set_fault(REFUSE, details="not serving: rebalancing")
    failing.set_fault(FAIL, "GetVolumeClients", details="disk error")
    with client(trio) as c:
        error, _ = timed("hang, refuse, fail (idempotent)", lambda: c.call(
            "GetVolumeClients", GET_CLIENTS, idempotent=True))
    assert isinstance(error, MdsError)
    assert [(a, code) for a, code, _ in error.errors] == [
        (hanging.address, "DEADLINE_EXCEEDED"), (refusing.address, "UNAVAILABLE"),
        (failing.address, "INTERNAL")]
    assert error.not_tried == ()
    message = str(error)
    assert "every healthy MDS failed (3)" in message
    assert f"{refusing.address}: UNAVAILABLE: not serving: rebalancing" in message
    assert f"{failing.address}: INTERNAL: disk error" in message
    assert f"{hanging.address}: DEADLINE_EXCEEDED" in message


def test_connection_refused_by_a_dead_address_goes_on(trio: list[MdsProcess]) -> None:
    """Nobody listens on ``dead``: a real connection refused, tried first (only seed order)."""
    dead = f"127.0.0.1:{free_port()}"
    eps = [MdsEndpoint(dead), MdsEndpoint(trio[0].address)]
    seed = next(s for s in range(100)
                if attempt_order(eps, random.Random(s))[0].address == dead)
    with client(eps, rng=random.Random(seed)) as c:
        result = c.call("CreateVolume", pb.CreateVolumeRequest(volume_id="vol-3",
                                                                  size_bytes=1),
                        idempotent=False)
    assert tried(result) == [(dead, Outcome.TRANSPORT), (trio[0].address, Outcome.OK)]
    assert result.attempts[0].code == "UNAVAILABLE"


def test_unhealthy_mds_are_not_tried(trio: list[MdsProcess]) -> None:
    hanging = trio[0]
    hanging.set_fault(HANG)
    eps = [MdsEndpoint(trio[0].address, healthy=False), MdsEndpoint(trio[1].address),
           MdsEndpoint(trio[2].address, healthy=False)]
    with client(eps) as c:
        result = c.call("GetVolume", pb.GetVolumeRequest(volume_id=VOLUME), idempotent=True)
    assert tried(result) == [(trio[1].address, Outcome.OK)]
    assert calls(trio, "GetVolume") == [0, 1, 0]


def test_a_rejection_stops_at_once_even_when_idempotent(trio: list[MdsProcess]) -> None:
    first, _, _ = in_call_order(trio)
    with client(trio) as c, pytest.raises(MdsError) as info:
        c.get_volume("no-such-volume")
    assert info.value.errors[0][:2] == (first.address, "NOT_FOUND")
    assert len(info.value.attempts) == 1 and len(info.value.not_tried) == 2


def test_the_budget_stops_before_the_third_mds(trio: list[MdsProcess]) -> None:
    """Budget 0.8 s with 0.5 s attempts: the second attempt gets what is left (~0.3 s) and
    the third MDS is never asked, although it would have answered."""
    first, second, third = in_call_order(trio)
    first.set_fault(HANG)
    second.set_fault(HANG)
    with client(trio, budget=0.8) as c:
        error, _ = timed("hang, hang, ok (budget 0.8 s)", lambda: c.call(
            "GetVolumeClients", GET_CLIENTS, idempotent=True))
    assert isinstance(error, MdsError)
    assert "budget of 0.8s is spent" in str(error)
    assert {o for _, o in tried(error)} == {Outcome.TIMEOUT}
    assert third.address in error.not_tried
    assert third.calls().get("GetVolumeClients", 0) == 0


def test_slow_mds_within_the_deadline_answers(trio: list[MdsProcess]) -> None:
    slow, _, _ = in_call_order(trio)
    slow.set_fault(SLOW, "GetVolume", delay=0.1)
    with client(trio) as c:
        result = c.call("GetVolume", pb.GetVolumeRequest(volume_id=VOLUME), idempotent=True)
    assert tried(result) == [(slow.address, Outcome.OK)]


def test_a_timed_out_create_may_still_be_applied(trio: list[MdsProcess]) -> None:
    """Why a non-idempotent call stops after a timeout: the slow MDS creates the volume after
    its caller gave up; a create on the next MDS would have made a second one."""
    slow, _, _ = in_call_order(trio)
    slow.set_fault(SLOW, "CreateVolume", delay=ATTEMPT + 0.3)
    with client(trio) as c, pytest.raises(MdsError) as info:
        c.create_volume("vol-late", 10)
    assert tried(info.value) == [(slow.address, Outcome.TIMEOUT)]
    wait_until(lambda: "vol-late" in slow.volume_ids(), 5,
               message="the slow create was never applied")
    assert ["vol-late" in p.volume_ids() for p in trio].count(True) == 1


def test_a_killed_mds_is_reached_again_soon_after_its_restart(trio: list[MdsProcess]) -> None:
    """The channel's reconnect backoff is short: a restarted MDS answers the same client."""
    victim = trio[2]
    with client([victim]) as c:
        assert c.get_volume(VOLUME).volume_id == VOLUME
        victim.kill()
        with pytest.raises(MdsError) as info:
            c.get_volume(VOLUME)
        assert info.value.codes == ("UNAVAILABLE",)
        victim.restart().wait_ready()
        victim.stub().CreateVolume(pb.CreateVolumeRequest(volume_id=VOLUME, size_bytes=1),
                                   timeout=5)
        started = time.monotonic()
        wait_until(lambda: c.get_volume(VOLUME), 3, interval=0.05,
                   message="the client never reached the restarted MDS")
        print(f"restarted MDS reached again after {time.monotonic() - started:.3f}s")


def test_sim_answers_and_refusals(trio: list[MdsProcess]) -> None:
    stub = trio[0].stub()
    vol = stub.CreateVolume(pb.CreateVolumeRequest(volume_id="v9", size_bytes=5), timeout=5).volume
    assert (vol.volume_id, vol.size_bytes) == ("v9", 5) and vol.HasField("created_at")
    assert stub.GetVolume(pb.GetVolumeRequest(volume_id="v9"), timeout=5).volume == vol
    assert list(stub.GetVolumeClients(pb.StorageMdsServiceGetVolumeClientsRequest(volume_id="v9"),
                                      timeout=5).clients) == []
    for fn, code in [
        (lambda: stub.CreateVolume(pb.CreateVolumeRequest(volume_id="v9", size_bytes=5),
                                   timeout=5).volume, grpc.StatusCode.ALREADY_EXISTS),
        (lambda: stub.CreateVolume(pb.CreateVolumeRequest(volume_id="v0", size_bytes=0),
                                   timeout=5).volume, grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: trio[0].set_fault(HANG, "Nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: trio[0].sim().SetFault(pb.SetFaultRequest(mode=FAIL, code=99), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: trio[0].sim().SetFault(pb.SetFaultRequest(
            mode=SLOW, delay_seconds=wiretime.duration(-1)), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            fn()
        assert info.value.code() == code  # type: ignore[attr-defined]
    assert stub.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v9"), timeout=5).volume_id \
        == "v9"
    with pytest.raises(grpc.RpcError) as info:
        stub.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v9"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    state = trio[0].set_fault(FAIL, "GetVolume", code=grpc.StatusCode.DATA_LOSS)
    assert [(f.method, f.mode, f.code) for f in state.faults] == \
        [("GetVolume", FAIL, grpc.StatusCode.DATA_LOSS.value[0])]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetVolume(pb.GetVolumeRequest(volume_id=VOLUME), timeout=5)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS  # type: ignore[attr-defined]
    assert not trio[0].set_fault(pb.SIM_MDS_FAULT_MODE_OK, "GetVolume").faults


@pytest.mark.parametrize("volume_id", ["..", ".", "../x", "a/b", "x\0", "v" * 100_000],
                         ids=["dotdot", "dot", "up", "slash", "nul", "100k"])
def test_volume_ids_are_names_whatever_the_fault(trio: list[MdsProcess], volume_id: str
                                                 ) -> None:
    """A real store names a file after each volume: a volume id that is not a name is
    INVALID_ARGUMENT (naming the field, echoing at most 64 characters of it) on every call,
    before any fault applies and before anything is stored."""
    stub = trio[0].stub()
    trio[0].set_fault(HANG)
    calls = [
        lambda: stub.CreateVolume(pb.CreateVolumeRequest(volume_id=volume_id, size_bytes=5),
                                  timeout=5).volume,
        lambda: stub.GetVolume(pb.GetVolumeRequest(volume_id=volume_id), timeout=5).volume,
        lambda: stub.GetVolumeClients(
            pb.StorageMdsServiceGetVolumeClientsRequest(volume_id=volume_id), timeout=5),
        lambda: stub.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=5),
        lambda: trio[0].sim().SetVolumeClients(pb.SetVolumeClientsRequest(volume_id=volume_id),
                                               timeout=5),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        details = info.value.details()  # type: ignore[attr-defined]
        assert "volume_id" in details and len(details) < 300, details
    assert trio[0].volume_ids() == [VOLUME]


def test_mds_main_flags_and_a_clean_sigterm(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "controlplane.mds.main",
                          "--listen", "7070"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    proc = MdsProcess("solo", free_port(), str(tmp_path)).start()
    try:
        proc.wait_ready()
        proc.set_fault(HANG)
        hung = proc.stub().GetVolume.future(pb.GetVolumeRequest(volume_id="x"), timeout=30)
        wait_until(lambda: proc.calls().get("GetVolume") == 1, 5)
        assert proc.terminate() == 0  # a hanging call does not hold the shutdown
        with pytest.raises(grpc.RpcError):
            hung.result(timeout=5)
    finally:
        proc.kill()
    assert "sim MDS stopped" in proc.log_text()
