import datetime

from controlplane.v1.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HostSchedulingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_SCHEDULING_STATE_UNSPECIFIED: _ClassVar[HostSchedulingState]
    HOST_SCHEDULING_STATE_ENABLED: _ClassVar[HostSchedulingState]
    HOST_SCHEDULING_STATE_DISABLED: _ClassVar[HostSchedulingState]
    HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE: _ClassVar[HostSchedulingState]
    HOST_SCHEDULING_STATE_MAINTENANCE: _ClassVar[HostSchedulingState]

class MaintenancePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAINTENANCE_POLICY_UNSPECIFIED: _ClassVar[MaintenancePolicy]
    MAINTENANCE_POLICY_MIGRATE: _ClassVar[MaintenancePolicy]
    MAINTENANCE_POLICY_STOP: _ClassVar[MaintenancePolicy]

class HostStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_STATUS_UNSPECIFIED: _ClassVar[HostStatus]
    HOST_STATUS_CONNECTED: _ClassVar[HostStatus]
    HOST_STATUS_DISCONNECTED: _ClassVar[HostStatus]
    HOST_STATUS_FENCED: _ClassVar[HostStatus]
HOST_SCHEDULING_STATE_UNSPECIFIED: HostSchedulingState
HOST_SCHEDULING_STATE_ENABLED: HostSchedulingState
HOST_SCHEDULING_STATE_DISABLED: HostSchedulingState
HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE: HostSchedulingState
HOST_SCHEDULING_STATE_MAINTENANCE: HostSchedulingState
MAINTENANCE_POLICY_UNSPECIFIED: MaintenancePolicy
MAINTENANCE_POLICY_MIGRATE: MaintenancePolicy
MAINTENANCE_POLICY_STOP: MaintenancePolicy
HOST_STATUS_UNSPECIFIED: HostStatus
HOST_STATUS_CONNECTED: HostStatus
HOST_STATUS_DISCONNECTED: HostStatus
HOST_STATUS_FENCED: HostStatus

class MaintenanceVm(_message.Message):
    __slots__ = ("vm_id", "reason", "tried_at")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRIED_AT_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    reason: str
    tried_at: _timestamp_pb2.Timestamp
    def __init__(self, vm_id: _Optional[str] = ..., reason: _Optional[str] = ..., tried_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HostMaintenance(_message.Message):
    __slots__ = ("policy", "started_at", "finished_at", "vms_at_start", "migrated", "stopped", "left", "moving")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    VMS_AT_START_FIELD_NUMBER: _ClassVar[int]
    MIGRATED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    MOVING_FIELD_NUMBER: _ClassVar[int]
    policy: MaintenancePolicy
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    vms_at_start: int
    migrated: int
    stopped: int
    left: _containers.RepeatedCompositeFieldContainer[MaintenanceVm]
    moving: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, policy: _Optional[_Union[MaintenancePolicy, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vms_at_start: _Optional[int] = ..., migrated: _Optional[int] = ..., stopped: _Optional[int] = ..., left: _Optional[_Iterable[_Union[MaintenanceVm, _Mapping]]] = ..., moving: _Optional[_Iterable[str]] = ...) -> None: ...

class HostAllocation(_message.Message):
    __slots__ = ("host_id", "vms")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vms: _containers.RepeatedCompositeFieldContainer[VmAllocation]
    def __init__(self, host_id: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[VmAllocation, _Mapping]]] = ...) -> None: ...

class VmAllocation(_message.Message):
    __slots__ = ("vm_id", "cpus", "memory_mb", "generation")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    cpus: int
    memory_mb: int
    generation: int
    def __init__(self, vm_id: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("host_id", "address", "status", "added_at", "unreachable_since", "fenced_at", "cpus", "memory_mb", "owner", "scheduling", "maintenance", "allocated_cpus", "allocated_memory_mb", "cpu_capacity", "memory_capacity_mb")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    FENCED_AT_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULING_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_CPUS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    CPU_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_CAPACITY_MB_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    address: str
    status: HostStatus
    added_at: _timestamp_pb2.Timestamp
    unreachable_since: _timestamp_pb2.Timestamp
    fenced_at: _timestamp_pb2.Timestamp
    cpus: int
    memory_mb: int
    owner: str
    scheduling: HostSchedulingState
    maintenance: HostMaintenance
    allocated_cpus: int
    allocated_memory_mb: int
    cpu_capacity: int
    memory_capacity_mb: int
    def __init__(self, host_id: _Optional[str] = ..., address: _Optional[str] = ..., status: _Optional[_Union[HostStatus, str]] = ..., added_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unreachable_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., fenced_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., owner: _Optional[str] = ..., scheduling: _Optional[_Union[HostSchedulingState, str]] = ..., maintenance: _Optional[_Union[HostMaintenance, _Mapping]] = ..., allocated_cpus: _Optional[int] = ..., allocated_memory_mb: _Optional[int] = ..., cpu_capacity: _Optional[int] = ..., memory_capacity_mb: _Optional[int] = ...) -> None: ...

class AddHostRequest(_message.Message):
    __slots__ = ("host_id", "address")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    address: str
    def __init__(self, host_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RemoveHostRequest(_message.Message):
    __slots__ = ("host_id", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class AddHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class GetHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class GetHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class RemoveHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class ReconnectHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class ReconnectHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class EnableHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class EnableHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class DisableHostRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class DisableHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class StartHostMaintenanceRequest(_message.Message):
    __slots__ = ("host_id", "policy")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    policy: MaintenancePolicy
    def __init__(self, host_id: _Optional[str] = ..., policy: _Optional[_Union[MaintenancePolicy, str]] = ...) -> None: ...

class StartHostMaintenanceResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...
