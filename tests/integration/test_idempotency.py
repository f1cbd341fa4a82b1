"""Idempotency keys on VM operations (AIP-155 `request_id`): a retry joins, never refuses.

Found by the churn bench (issue 11's notes): a client whose call died with its owner (killed
mid-call) retries; the new owner found the VM busy with the op the first attempt had begun,
or already in the state it asked for, and refused (FAILED_PRECONDITION) a call that had in
fact worked. A CreateVm retried answered ALREADY_EXISTS for the VM it had itself created.
With a request_id (the client library sets one per call), the retry is answered with the op
that call began.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from controlplane.client import Client, with_request_id
from controlplane.testing import cluster as c
from controlplane.testing.waiting import wait_until
from controlplane.v1 import config_pb2, host_pb2, vm_pb2

IMAGE = vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30, actual_size=1 << 28)
START_DELAY = 2.0


def configure(node, agent) -> None:
    for key, value in {"vm.syncInterval": "0.3", "host.pingTimeout": "1"}.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)
    for host_id in agent.host_ids:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=host_id, address=agent.address),
                              timeout=10)


@pytest.fixture
def one_node(etcd, nodes, agents):
    node = nodes.start("mn-0", etcd.endpoints)
    agent = agents.start("ag", hosts=1, start_delay=START_DELAY)
    configure(node, agent)
    return node, agent


def test_the_client_library_keys_every_call_once() -> None:
    request = vm_pb2.StartVmRequest(vm_id="v1")
    keyed = with_request_id(request)
    assert keyed.request_id and not request.request_id  # a copy: the caller's is untouched
    assert with_request_id(keyed) is keyed  # a key given is kept (and so every retry's)
    create = with_request_id(vm_pb2.CreateVmRequest())
    assert create.vm_id.startswith("vm-") and create.request_id
    assert with_request_id(vm_pb2.GetVmRequest(vm_id="v1")) == vm_pb2.GetVmRequest(vm_id="v1")


def test_a_retried_start_joins_the_op_it_began_and_then_answers_it(one_node) -> None:
    node, agent = one_node
    vms = c.vms(node)
    vms.CreateVm(vm_pb2.CreateVmRequest(vm_id="v1", image=IMAGE), timeout=5)
    first = vms.StartVm(vm_pb2.StartVmRequest(vm_id="v1", request_id="r-1"), timeout=5).vm
    assert first.state == "Starting" and first.op.request_id == "r-1"

    # another caller's start is still refused while the op runs
    with pytest.raises(grpc.RpcError) as err:
        vms.StartVm(vm_pb2.StartVmRequest(vm_id="v1", request_id="r-other"), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # the same key for another kind of op is a caller's mistake
    with pytest.raises(grpc.RpcError) as err:
        vms.StopVm(vm_pb2.StopVmRequest(vm_id="v1", request_id="r-1"), timeout=5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    # the retry of the first call joins its op, and its wait waits for that op
    joined = vms.StartVm(vm_pb2.StartVmRequest(vm_id="v1", request_id="r-1", wait=True),
                         timeout=START_DELAY + 10).vm
    assert (joined.state, joined.generation, joined.last_op.op_id) == (
        "Running", 1, first.op.op_id)
    # once it finished, the retry is answered with the VM and that op as last_op
    again = vms.StartVm(vm_pb2.StartVmRequest(vm_id="v1", request_id="r-1"), timeout=5).vm
    assert (again.state, again.generation, again.last_op.op_id, again.last_op.request_id) == (
        "Running", 1, first.op.op_id, "r-1")
    assert not again.op.op_id
    # a start without the key is refused as before: the VM runs already
    with pytest.raises(grpc.RpcError) as err:
        vms.StartVm(vm_pb2.StartVmRequest(vm_id="v1"), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_a_retried_create_answers_the_vm_it_created(one_node) -> None:
    node, _ = one_node
    vms = c.vms(node)
    request = vm_pb2.CreateVmRequest(vm_id="v2", image=IMAGE, start=True, request_id="c-1")
    first = vms.CreateVm(request, timeout=5).vm
    again = vms.CreateVm(request, timeout=5).vm
    assert again.vm_id == "v2" and again.create_request_id == "c-1"
    assert again.generation == 1 and (again.op.op_id or again.last_op.op_id) == first.op.op_id
    other = vm_pb2.CreateVmRequest(vm_id="v2", image=IMAGE, request_id="c-2")
    with pytest.raises(grpc.RpcError) as err:
        vms.CreateVm(other, timeout=5)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_a_start_whose_owner_is_killed_mid_call_is_not_refused_on_retry(
        etcd, nodes, agents) -> None:
    """The churn case end to end: the client library's call is in flight on the VM's owner,
    which is killed -9 after it began the op; the client retries on the other node, which
    (once the owner's lease is gone) owns the VM and finds it busy with that very op."""
    mns = [nodes.start(f"mn-{i}", etcd.endpoints, lease_ttl=2) for i in range(2)]
    wait_until(lambda: c.converged(mns, {n.node_id for n in mns}), 15,
               message="the nodes agree on the ring")
    agent = agents.start("ag", hosts=1, start_delay=6.0)
    configure(mns[0], agent)
    owner_id = c.owners(mns[0], ["probe"])[0]
    vm_id = next(f"k-{i}" for i in range(1000) if c.owners(mns[0], [f"k-{i}"]) == [owner_id])
    victim = next(n for n in mns if n.node_id == owner_id)
    c.vms(victim).CreateVm(vm_pb2.CreateVmRequest(vm_id=vm_id, image=IMAGE), timeout=5)

    answer: list[object] = []
    with Client([n.address for n in mns], timeout=30) as client:
        def call() -> None:
            try:
                answer.append(client.vms.StartVm(vm_pb2.StartVmRequest(vm_id=vm_id, wait=True)))
            except grpc.RpcError as exc:
                answer.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        wait_until(lambda: c.vms(victim).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=2)
                   .vm.op.op_id, 5, message="the start was begun")
        victim.kill()
        caller.join(40)
        assert answer, "the call did not end"
        result = answer[0]
        assert not isinstance(result, grpc.RpcError), f"{result.code()}: {result.details()}"
        assert client.retries >= 1  # it was retried, on the other node
        vm = result.vm
        assert vm.generation == 1 and vm.host_id == agent.host_ids[0]
        assert vm.op.op_id or vm.last_op.op_id  # the op the first attempt began
