"""A flood of long-lived streams must not starve a node (issue 11, item 6).

Before the stream budget every open WatchVms stream held one of the node's 32 worker threads:
with 32 open, the liveness probe, GetRing and every unary call queued until a stream closed
(in Kubernetes the pod would have been killed). Now streams have their own budget
(``serve --max-streams``): one beyond it is refused with RESOURCE_EXHAUSTED at once, and the
unary calls and the health probe keep their own threads whatever the streams do.

The probes use a call deadline of 1 s and require success: a deadline, not a timed assert.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import vm_pb2, vm_pb2_grpc

CAP = 48        # the node's --max-streams
STREAMS = 200   # opened at once
PROBE = 1.0     # the deadline every probe must answer within
IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)


class Watcher:
    """One WatchVms stream (initial=True) read by a thread of its own: whether the node
    admitted it (its SYNCED marker came), refused it (the status code), and its events."""

    def __init__(self, channel: grpc.Channel, vm_id: str = "") -> None:
        stub = vm_pb2_grpc.VmServiceStub(channel)
        self.call = stub.WatchVms(vm_pb2.WatchVmsRequest(initial=True, vm_id=vm_id),
                                  timeout=120)
        self.synced = threading.Event()
        self.done = threading.Event()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.events: list[vm_pb2.WatchVmsResponse] = []
        threading.Thread(target=self._read, name="watcher", daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.call:
                if event.kind == vm_pb2.WatchVmsResponse.KIND_SYNCED:
                    self.synced.set()
                else:
                    self.events.append(event)
        except grpc.RpcError as exc:
            self.code, self.details = exc.code(), exc.details() or ""
        finally:
            self.done.set()

    @property
    def answered(self) -> bool:
        return self.synced.is_set() or self.done.is_set()

    def close(self) -> None:
        self.call.cancel()


def open_watchers(channel: grpc.Channel, count: int) -> list[Watcher]:
    watchers = [Watcher(channel) for _ in range(count)]
    wait_until(lambda: all(w.answered for w in watchers), 20,
               message=f"every one of {count} streams admitted or refused")
    return watchers


def admit(channel: grpc.Channel, count: int) -> list[Watcher]:
    """`count` admitted streams. A refused one is tried again: the server learns of a cancel
    a moment after the client does, so permits of streams just closed come back shortly."""
    admitted: list[Watcher] = []

    def more() -> bool:
        admitted.extend(w for w in open_watchers(channel, count - len(admitted))
                        if w.synced.is_set())
        return len(admitted) == count

    wait_until(more, 10, interval=0.05, message=f"{count} streams admitted again")
    return admitted


def close_all(watchers: list[Watcher]) -> None:
    for w in watchers:
        w.close()
    wait_until(lambda: all(w.done.is_set() for w in watchers), 10, message="streams closed")


def probe(node) -> None:
    """Liveness, readiness, GetRing, GetVm and a CreateVm, each within PROBE seconds."""
    health = health_pb2_grpc.HealthStub(c.channel(node))
    for service in ("liveness", "readiness"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=PROBE)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert node.node_id in {m.node_id for m in c.ring(node, timeout=PROBE).members}
    assert c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id="before"), timeout=PROBE).vm.vm_id \
        == "before"


@pytest.fixture
def node(etcd, nodes):
    node = nodes.start("mn-0", etcd.endpoints, extra_args=["--max-streams", str(CAP)])
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="before", image=IMAGE), timeout=5)
    return node


def test_a_flood_of_watch_streams_leaves_health_and_unary_calls_served(node) -> None:
    flood = node.new_channel()
    try:
        watchers = open_watchers(flood, STREAMS)
        admitted = [w for w in watchers if w.synced.is_set()]
        refused = [w for w in watchers if not w.synced.is_set()]
        assert len(admitted) == CAP
        assert {w.code for w in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("stream" in w.details for w in refused), refused[0].details
        assert not any(w.done.is_set() for w in admitted)  # still open

        # with the budget full: the probes, and calls that change what the streams watch
        probe(node)
        c.vms(node).CreateVm(vm_pb2.CreateVmRequest(vm_id="during", image=IMAGE), timeout=PROBE)
        probe(node)
        wait_until(lambda: all(any(e.vm.vm_id == "during" for e in w.events)
                               for w in admitted), 10,
                   message="every admitted stream saw the VM created during the flood")

        # one more stream of any kind is refused at once, health's own Watch too
        late = Watcher(flood)
        assert late.done.wait(5) and late.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        watch = health_pb2_grpc.HealthStub(flood).Watch(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        with pytest.raises(grpc.RpcError) as refused_watch:
            next(watch)
        assert refused_watch.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        close_all(admitted)
        # the whole budget is back: CAP new streams admitted, the next one refused
        again = admit(flood, CAP)
        probe(node)
        extra = Watcher(flood)
        assert extra.done.wait(5) and extra.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        close_all(again)
        fresh = Watcher(flood, vm_id="before")
        assert fresh.synced.wait(5)
        fresh.close()
    finally:
        flood.close()
    assert node.is_running()
