"""VM, op and host records as stored in etcd, and the plain views the pure cores take."""

from __future__ import annotations

from controlplane import wiretime
from controlplane.v1 import vm_pb2
from controlplane.vm.sync import OpView, VmRecordView

AGENT_STATE_NAMES = {1: "running", 2: "paused", 3: "crashed", 4: "stopped"}


def vm_view(vm: vm_pb2.Vm, mod_revision: int) -> VmRecordView:
    return VmRecordView(vm.vm_id, vm.state, vm.host_id, vm.generation,
                        vm.ha == vm_pb2.HA_LEVEL_NEVER_STOP, mod_revision,
                        start_failed=vm.last_op.kind == "start"
                        and vm.last_op.outcome == "failed")


def op_view(op: vm_pb2.Op, mod_revision: int) -> OpView:
    return OpView(op.vm_id, op.op_id, op.kind, op.node_id, op.incarnation,
                  wiretime.seconds(op.orphaned_at), mod_revision,
                  deadline=wiretime.seconds(op.deadline))


def root_disk_size(offering_size: int, virtual_size: int | None,
                   actual_size: int | None) -> int:
    """Root disk bytes: the offering's size, else max(image virtual size, actual size).

    Raises ValueError (an INVALID_ARGUMENT for the caller) for a negative size, or when no
    offering is given and the image lacks a size: a clear error, not a crash later.
    """
    for name, value in (("root disk offering size", offering_size),
                        ("image virtual size", virtual_size), ("image actual size", actual_size)):
        if value is not None and value < 0:
            raise ValueError(f"{name} is negative ({value})")
    if offering_size:
        return offering_size
    missing = [n for n, v in (("virtual_size", virtual_size), ("actual_size", actual_size))
               if v is None]
    if missing:
        raise ValueError(f"no root disk offering and the image has no {' or '.join(missing)}: "
                         "cannot size the root disk")
    assert virtual_size is not None and actual_size is not None
    return max(virtual_size, actual_size)
