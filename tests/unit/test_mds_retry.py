"""The MDS try-next policy (pure) and the client's loop over it, without a network.

The client is driven through its ``invoke`` hook by a fake MDS per address: hypothesis picks
the endpoints, their health, what each one answers and whether the call is idempotent, and
the test checks the client against the policy walked by hand.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from controlplane.storage import retry
from controlplane.storage.mds import MdsClient, MdsEndpoint, MdsError
from controlplane.storage.retry import Decision, Outcome, attempt_order, classify, decide
from controlplane.v1 import mds_pb2

SC = grpc.StatusCode
MAY_HAVE_APPLIED = (Outcome.TIMEOUT, Outcome.OPERATION)


# -- the pure policy --------------------------------------------------------------------


@pytest.mark.parametrize("code, outcome", [
    (None, Outcome.OK),
    (SC.OK, Outcome.OK),
    (SC.UNAVAILABLE, Outcome.TRANSPORT),
    (SC.DEADLINE_EXCEEDED, Outcome.TIMEOUT),
    (SC.INTERNAL, Outcome.OPERATION),
    (SC.FAILED_PRECONDITION, Outcome.OPERATION),
    (SC.UNKNOWN, Outcome.OPERATION),
    (SC.ABORTED, Outcome.OPERATION),
    (SC.RESOURCE_EXHAUSTED, Outcome.OPERATION),
    (SC.CANCELLED, Outcome.OPERATION),
    (SC.DATA_LOSS, Outcome.OPERATION),
    (SC.UNIMPLEMENTED, Outcome.OPERATION),
    (SC.NOT_FOUND, Outcome.REJECTED),
    (SC.ALREADY_EXISTS, Outcome.REJECTED),
    (SC.INVALID_ARGUMENT, Outcome.REJECTED),
    (SC.OUT_OF_RANGE, Outcome.REJECTED),
    (SC.PERMISSION_DENIED, Outcome.REJECTED),
    (SC.UNAUTHENTICATED, Outcome.REJECTED),
])
def test_classify(code: grpc.StatusCode | None, outcome: Outcome) -> None:
    assert classify(code) is outcome


def test_every_status_code_has_an_outcome() -> None:
    """Only UNAVAILABLE counts as "not executed": an unlisted code must never be taken for
    a safe transport error."""
    transport = [c for c in SC if classify(c) is Outcome.TRANSPORT]
    assert transport == [SC.UNAVAILABLE]


@given(st.sampled_from(Outcome), st.booleans())
def test_decide(outcome: Outcome, idempotent: bool) -> None:
    decision = decide(outcome, idempotent)
    assert (decision is Decision.DONE) == (outcome is Outcome.OK)
    if outcome is Outcome.TRANSPORT:
        assert decision is Decision.NEXT  # never executed: safe for any call
    if outcome in MAY_HAVE_APPLIED:
        # the tryNext rule: only an idempotent call may be done a second time
        assert decision is (Decision.NEXT if idempotent else Decision.STOP)
    if outcome is Outcome.REJECTED:
        assert decision is Decision.STOP  # any MDS would say the same


addresses = st.lists(st.integers(1, 65535), unique=True, max_size=8).map(
    lambda ports: [f"10.0.0.1:{p}" for p in ports])


@st.composite
def endpoint_lists(draw: st.DrawFn) -> list[MdsEndpoint]:
    return [MdsEndpoint(a, draw(st.booleans())) for a in draw(addresses)]


@given(endpoint_lists(), st.integers(0, 2**32))
def test_attempt_order_is_a_seeded_shuffle_of_the_healthy(endpoints: list[MdsEndpoint],
                                                          seed: int) -> None:
    before = list(endpoints)
    order = attempt_order(endpoints, random.Random(seed))
    assert endpoints == before  # not shuffled in place
    assert sorted(order, key=lambda e: e.address) == \
        sorted((e for e in endpoints if e.healthy), key=lambda e: e.address)
    assert order == attempt_order(endpoints, random.Random(seed))  # tests choose the order


def test_attempt_order_reaches_every_order() -> None:
    endpoints = [MdsEndpoint(f"mds-{i}:1") for i in range(3)]
    orders = {tuple(e.address for e in attempt_order(endpoints, random.Random(s)))
              for s in range(200)}
    assert len(orders) == 6


# -- the client's loop, with fake MDS ----------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeMds:
    """Answers per address: a status code (an error) or None (the response)."""

    def __init__(self, answers: dict[str, grpc.StatusCode | None],
                 on_call: Callable[[float], None] = lambda timeout: None) -> None:
        self.answers = answers
        self.on_call = on_call
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, address: str, method: str, request: Message, timeout: float) -> Message:
        self.calls.append((address, method, timeout))
        self.on_call(timeout)
        code = self.answers[address]
        if code is not None:
            raise FakeRpcError(code, f"fake error from {address}")
        return mds_pb2.StorageMdsServiceGetVolumeClientsResponse(volume_id=address)


answer_codes = st.sampled_from([None, SC.UNAVAILABLE, SC.DEADLINE_EXCEEDED, SC.INTERNAL,
                                SC.FAILED_PRECONDITION, SC.NOT_FOUND])
REQUEST = mds_pb2.StorageMdsServiceGetVolumeClientsRequest(volume_id="vol-1")


@given(endpoint_lists(), st.data(), st.booleans(), st.integers(0, 2**32))
def test_client_follows_the_policy(endpoints: list[MdsEndpoint], data: st.DataObject,
                                   idempotent: bool, seed: int) -> None:
    answers = {e.address: data.draw(answer_codes, label=e.address) for e in endpoints}
    fake = FakeMds(answers)
    client = MdsClient(endpoints, attempt_timeout=0.5, budget=3600.0,
                       rng=random.Random(seed), invoke=fake)

    order = [e.address for e in attempt_order(endpoints, random.Random(seed))]
    expected: list[str] = []
    decision = Decision.STOP
    for address in order:  # the policy walked by hand
        expected.append(address)
        decision = decide(classify(answers[address]), idempotent)
        if decision is not Decision.NEXT:
            break

    try:
        result = client.call("GetVolumeClients", REQUEST, idempotent=idempotent)
    except MdsError as exc:
        assert decision is not Decision.DONE
        assert [a.address for a in exc.attempts] == expected
        assert [c[0] for c in fake.calls] == expected
        assert list(exc.not_tried) == order[len(expected):]
        assert exc.errors == tuple((a, answers[a].name, f"fake error from {a}")  # type: ignore[union-attr]
                                   for a in expected)
        for address in expected:  # the message names every MDS tried, with its code
            assert f"{address}: {answers[address].name}" in str(exc)  # type: ignore[union-attr]
    else:
        assert decision is Decision.DONE
        assert [a.address for a in result.attempts] == expected == [c[0] for c in fake.calls]
        assert result.response.volume_id == result.address == expected[-1]
        assert [a.outcome for a in result.attempts][-1] is Outcome.OK
    assert all(timeout == 0.5 for _, _, timeout in fake.calls)  # the per-attempt deadline
    assert all(method == "GetVolumeClients" for _, method, _ in fake.calls)


def test_the_budget_stops_attempts_and_cuts_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MDS hangs (each attempt takes its whole deadline) on a fake clock: with a 1.2 s
    budget and 0.5 s attempts, the third attempt gets only the 0.2 s left, and the fourth
    MDS is never tried."""
    now = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])

    def hang(timeout: float) -> None:
        now[0] += timeout

    endpoints = [MdsEndpoint(f"mds-{i}:1") for i in range(4)]
    fake = FakeMds(dict.fromkeys((e.address for e in endpoints), SC.DEADLINE_EXCEEDED),
                   on_call=hang)
    client = MdsClient(endpoints, attempt_timeout=0.5, budget=1.2, rng=random.Random(0),
                       invoke=fake)
    with pytest.raises(MdsError) as info:
        client.call("GetVolumeClients", REQUEST, idempotent=True)
    assert [round(t, 6) for _, _, t in fake.calls] == [0.5, 0.5, 0.2]
    assert len(info.value.not_tried) == 1
    assert "budget of 1.2s is spent" in str(info.value)


def test_default_budget_gives_every_healthy_mds_one_full_attempt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])

    def hang(timeout: float) -> None:
        now[0] += timeout

    endpoints = [MdsEndpoint("a:1"), MdsEndpoint("b:1", healthy=False), MdsEndpoint("c:1"),
                 MdsEndpoint("d:1")]
    answers = {"a:1": SC.DEADLINE_EXCEEDED, "c:1": SC.DEADLINE_EXCEEDED, "d:1": None}
    fake = FakeMds(answers, on_call=hang)  # type: ignore[arg-type]
    client = MdsClient(endpoints, attempt_timeout=30.0, rng=random.Random(1), invoke=fake)
    order = [e.address for e in attempt_order(endpoints, random.Random(1))]
    result = client.call("GetVolumeClients", REQUEST, idempotent=True)
    assert [c[0] for c in fake.calls] == order[:order.index("d:1") + 1]
    assert all(t == 30.0 for _, _, t in fake.calls)
    assert result.address == "d:1"


def test_no_healthy_mds_is_an_error_naming_them() -> None:
    fake = FakeMds({})
    client = MdsClient([MdsEndpoint("a:1", False), MdsEndpoint("b:1", False)], invoke=fake)
    with pytest.raises(MdsError, match=r"no healthy MDS \(a:1, b:1\)") as info:
        client.call("GetVolume", mds_pb2.GetVolumeRequest(volume_id="v"), idempotent=True)
    assert info.value.attempts == () and fake.calls == []
    client.update_endpoints([MdsEndpoint("a:1", True)])
    fake.answers["a:1"] = None
    assert client.call("GetVolume", mds_pb2.GetVolumeRequest(volume_id="v"),
                       idempotent=True).address == "a:1"


def test_caller_bugs_are_not_mds_errors() -> None:
    client = MdsClient([MdsEndpoint("a:1")], invoke=FakeMds({"a:1": None}))
    with pytest.raises(ValueError, match="no method 'Nope'"):
        client.call("Nope", REQUEST, idempotent=True)
    with pytest.raises(TypeError, match="GetVolume takes"):
        client.call("GetVolume", REQUEST, idempotent=True)
    with pytest.raises(ValueError, match="listed twice"):
        MdsClient([MdsEndpoint("a:1"), MdsEndpoint("a:1", False)])
    with pytest.raises(ValueError, match="attempt_timeout"):
        MdsClient([MdsEndpoint("a:1")], attempt_timeout=0)
    with pytest.raises(ValueError, match="budget"):
        MdsClient([MdsEndpoint("a:1")], budget=-1)


def test_not_tried_helper() -> None:
    order = [MdsEndpoint("a:1"), MdsEndpoint("b:1"), MdsEndpoint("c:1")]
    assert retry.not_tried(order, 1) == ["b:1", "c:1"]
    assert retry.not_tried(order, 3) == []
