"""The narrow interface between the agent's gRPC servicer and a hypervisor backend.

The servicer (``server.py``) speaks protobuf and status codes; a backend speaks plain Python
values and raises the small exceptions below. That keeps gRPC out of the backends, so the sim
(``sim.py``) and a later qemu backend implement the same few methods and the servicer maps
their failures to status codes in one table.

Values handed out are immutable (NamedTuples): a listing is a snapshot that the servicer turns
into a response after the backend has released its locks.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from controlplane import errors
from controlplane.agent.events import EventHub

__all__ = [
    "Aborted",
    "Backend",
    "BackendError",
    "BadState",
    "CallerGone",
    "Device",
    "HostCondition",
    "HostInfo",
    "HostUnreachable",
    "InjectedFailure",
    "InvalidArgument",
    "Migrated",
    "NotServed",
    "OpInfo",
    "StaleGeneration",
    "VmInfo",
    "VmListing",
    "VmNotFound",
    "VmState",
    "check_vm_id",
]


class VmState(enum.IntEnum):
    """A VM as its host sees it; the numbers are those of ``AgentVmState`` in agent.proto."""

    RUNNING = 1
    PAUSED = 2
    CRASHED = 3
    STOPPED = 4


class HostCondition(enum.IntEnum):
    """Numbers of ``HostCondition`` in agent.proto (UP, DOWN, PARTITIONED)."""

    UP = 1
    DOWN = 2
    PARTITIONED = 3


class VmInfo(NamedTuple):
    """One VM on one host, with the generation it was started with."""

    vm_id: str
    state: VmState
    generation: int
    # The receiving end of a live migration that has not switched over (not running here).
    incoming: bool = False


class OpInfo(NamedTuple):
    """An operation the backend has in progress (``started_at``: wall-clock seconds)."""

    op_id: str
    vm_id: str
    kind: str
    generation: int
    started_at: float


class VmListing(NamedTuple):
    """What ListVms answers: the VMs, the ops in progress, and whether ops are reported at all
    (``reports_ops`` False: an empty ``ops`` proves nothing)."""

    vms: Sequence[VmInfo]
    ops: Sequence[OpInfo]
    reports_ops: bool


class Device(NamedTuple):
    name: str
    address: str
    mac: str = ""


class Migrated(NamedTuple):
    """What a completed live migration answers: the target's copy and the timings (seconds:
    first byte to switchover acknowledged; the guest paused, running nowhere)."""

    vm: VmInfo
    total: float
    downtime: float


class HostInfo(NamedTuple):
    cpus: int
    memory_mb: int
    vm_count: int


# -- errors: each one a kind of controlplane.errors (rpc.STATUS gives its status code) --


class BackendError(Exception):
    """Base of every failure a backend reports to its caller (the message is the detail)."""


class NotServed(BackendError, errors.NotFound):
    """This agent does not serve the host asked for (NOT_FOUND)."""


class VmNotFound(BackendError, errors.NotFound):
    """The VM is not on the host (NOT_FOUND)."""


class HostUnreachable(BackendError, errors.Unreachable):
    """The host is down or cut off (UNAVAILABLE); the message says which."""


class InjectedFailure(BackendError, errors.Unreachable):
    """A failure the sim was told to inject (UNAVAILABLE)."""


class StaleGeneration(BackendError, errors.Refused):
    """A start older than a generation this host has already seen (FAILED_PRECONDITION)."""


class BadState(BackendError, errors.Refused):
    """The VM is in the wrong state, or another operation holds it (FAILED_PRECONDITION)."""


class Aborted(BackendError, errors.Busy):
    """An operation in progress was cut short by a fence or power-off (ABORTED)."""


class InvalidArgument(BackendError, errors.Invalid):
    """A malformed id or setting (INVALID_ARGUMENT)."""


class CallerGone(BackendError, errors.Cancelled):
    """The caller left before a start began: none is begun for nobody (CANCELLED)."""


# VM ids become etcd key segments on the management side: no '/', a sane charset and length.
_VM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_vm_id(vm_id: str) -> str:
    """Return ``vm_id`` or raise InvalidArgument for an empty or malformed one."""
    if not _VM_ID.match(vm_id):
        raise InvalidArgument(
            f"malformed vm_id {vm_id!r}: 1-128 characters of [A-Za-z0-9._:-], "
            "starting with a letter or digit")
    return vm_id


@runtime_checkable
class Backend(Protocol):
    """What the AgentService servicer needs from a hypervisor backend.

    Every method names the host (one agent may serve many) and raises NotServed for a host
    it does not serve and HostUnreachable when the host cannot be reached (except
    ``host_ids`` and ``fence``). Methods that change a VM block until the change is done,
    and may be called concurrently from many threads.
    """

    name: str
    # Changes the backend learned of (WatchHostEvents streams them; see agent/events.py).
    events: EventHub

    def host_ids(self) -> list[str]:
        """The hosts this agent serves, in a stable order."""
        ...

    def ping(self, host_id: str) -> HostInfo: ...

    def list_vms(self, host_id: str) -> VmListing: ...

    def start_vm(self, host_id: str, vm_id: str, *, generation: int, op_id: str = "",
                 cpus: int = 0, memory_mb: int = 0, disk: str = "",
                 caller_active: Callable[[], bool] = lambda: True) -> VmInfo:
        """Start the VM with ``generation`` and block until it runs.

        ``caller_active`` is asked once, just before the start begins: a start nobody waits
        for is refused (CallerGone). Once begun, the start completes even if the caller
        leaves. StaleGeneration for a generation below the host's high-water mark for the VM.
        ``disk``: the top image of the VM's disk chain (the leaf of its image, from the node),
        when it has one; a backend without disks ignores it.
        """
        ...

    def stop_vm(self, host_id: str, vm_id: str, *, op_id: str = "",
                force: bool = False) -> VmInfo: ...

    def destroy_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo: ...

    def reboot_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo: ...

    def pause_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo: ...

    def resume_vm(self, host_id: str, vm_id: str, *, op_id: str = "") -> VmInfo: ...

    def device_info(self, host_id: str, vm_id: str) -> list[Device]: ...

    def fence(self, host_id: str) -> list[str]:
        """Power the host off out of band (works in any condition); returns the VMs killed."""
        ...

    def close(self) -> None:
        """Abort operations in progress so that blocked calls return (process shutdown)."""
        ...
