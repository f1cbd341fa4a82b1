import datetime

from controlplane.v1.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentVmState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_VM_STATE_UNSPECIFIED: _ClassVar[AgentVmState]
    AGENT_VM_STATE_RUNNING: _ClassVar[AgentVmState]
    AGENT_VM_STATE_PAUSED: _ClassVar[AgentVmState]
    AGENT_VM_STATE_CRASHED: _ClassVar[AgentVmState]
    AGENT_VM_STATE_STOPPED: _ClassVar[AgentVmState]

class HostCondition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_CONDITION_UNSPECIFIED: _ClassVar[HostCondition]
    HOST_CONDITION_UP: _ClassVar[HostCondition]
    HOST_CONDITION_DOWN: _ClassVar[HostCondition]
    HOST_CONDITION_PARTITIONED: _ClassVar[HostCondition]
AGENT_VM_STATE_UNSPECIFIED: AgentVmState
AGENT_VM_STATE_RUNNING: AgentVmState
AGENT_VM_STATE_PAUSED: AgentVmState
AGENT_VM_STATE_CRASHED: AgentVmState
AGENT_VM_STATE_STOPPED: AgentVmState
HOST_CONDITION_UNSPECIFIED: HostCondition
HOST_CONDITION_UP: HostCondition
HOST_CONDITION_DOWN: HostCondition
HOST_CONDITION_PARTITIONED: HostCondition

class AgentVm(_message.Message):
    __slots__ = ("vm_id", "state", "generation", "incoming")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    state: AgentVmState
    generation: int
    incoming: bool
    def __init__(self, vm_id: _Optional[str] = ..., state: _Optional[_Union[AgentVmState, str]] = ..., generation: _Optional[int] = ..., incoming: _Optional[bool] = ...) -> None: ...

class AgentOp(_message.Message):
    __slots__ = ("op_id", "vm_id", "kind", "generation", "started_at")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    vm_id: str
    kind: str
    generation: int
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, op_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., kind: _Optional[str] = ..., generation: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AgentServiceListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentServiceListHostsResponse(_message.Message):
    __slots__ = ("host_ids", "backend")
    HOST_IDS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    host_ids: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    def __init__(self, host_ids: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ...) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("host_id", "cpus", "memory_mb", "vm_count", "backend")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    VM_COUNT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    cpus: int
    memory_mb: int
    vm_count: int
    backend: str
    def __init__(self, host_id: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., vm_count: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class AgentServiceListVmsResponse(_message.Message):
    __slots__ = ("host_id", "vms", "ops", "reports_ops")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_OPS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vms: _containers.RepeatedCompositeFieldContainer[AgentVm]
    ops: _containers.RepeatedCompositeFieldContainer[AgentOp]
    reports_ops: bool
    def __init__(self, host_id: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[AgentVm, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[AgentOp, _Mapping]]] = ..., reports_ops: _Optional[bool] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "address", "mac")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    mac: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., mac: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class FenceResponse(_message.Message):
    __slots__ = ("host_id", "vms_killed")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_KILLED_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vms_killed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_id: _Optional[str] = ..., vms_killed: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentServiceWatchHostEventsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentHostEvent(_message.Message):
    __slots__ = ("host_id", "vm_id", "state", "reason", "at")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    state: AgentVmState
    reason: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., state: _Optional[_Union[AgentVmState, str]] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AgentServiceWatchHostEventsResponse(_message.Message):
    __slots__ = ("events", "resync")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AgentHostEvent]
    resync: bool
    def __init__(self, events: _Optional[_Iterable[_Union[AgentHostEvent, _Mapping]]] = ..., resync: _Optional[bool] = ...) -> None: ...

class SeedVmsRequest(_message.Message):
    __slots__ = ("host_id", "vms")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vms: _containers.RepeatedCompositeFieldContainer[AgentVm]
    def __init__(self, host_id: _Optional[str] = ..., vms: _Optional[_Iterable[_Union[AgentVm, _Mapping]]] = ...) -> None: ...

class SeedVmsResponse(_message.Message):
    __slots__ = ("seeded",)
    SEEDED_FIELD_NUMBER: _ClassVar[int]
    seeded: int
    def __init__(self, seeded: _Optional[int] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class AgentServiceListVmsRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class AgentServiceStartVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force", "disk_path", "volumes")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    disk_path: str
    volumes: _containers.RepeatedCompositeFieldContainer[AgentVolume]
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ..., disk_path: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[AgentVolume, _Mapping]]] = ...) -> None: ...

class AgentVolume(_message.Message):
    __slots__ = ("storage_id", "volume_id", "mds_addresses")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    MDS_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    volume_id: str
    mds_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, storage_id: _Optional[str] = ..., volume_id: _Optional[str] = ..., mds_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentServiceStartVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServiceStopVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AgentServiceStopVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServiceRebootVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AgentServiceRebootVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServicePauseVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AgentServicePauseVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServiceResumeVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AgentServiceResumeVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServiceDestroyVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class AgentServiceDestroyVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class SyncVmDeviceInfoRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class SyncVmDeviceInfoResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class FenceRequest(_message.Message):
    __slots__ = ("host_id",)
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    def __init__(self, host_id: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("start_delay", "stop_delay", "reboot_delay", "pause_delay", "device_info_failure_rate", "report_ops", "migrate_prepare_delay", "migrate_transfer_delay", "migrate_answer_delay", "migrate_downtime", "migrate_fail")
    START_DELAY_FIELD_NUMBER: _ClassVar[int]
    STOP_DELAY_FIELD_NUMBER: _ClassVar[int]
    REBOOT_DELAY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_DELAY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INFO_FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    REPORT_OPS_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_PREPARE_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_TRANSFER_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_ANSWER_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_DOWNTIME_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FAIL_FIELD_NUMBER: _ClassVar[int]
    start_delay: _duration_pb2.Duration
    stop_delay: _duration_pb2.Duration
    reboot_delay: _duration_pb2.Duration
    pause_delay: _duration_pb2.Duration
    device_info_failure_rate: float
    report_ops: bool
    migrate_prepare_delay: _duration_pb2.Duration
    migrate_transfer_delay: _duration_pb2.Duration
    migrate_answer_delay: _duration_pb2.Duration
    migrate_downtime: _duration_pb2.Duration
    migrate_fail: bool
    def __init__(self, start_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stop_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reboot_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pause_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., device_info_failure_rate: _Optional[float] = ..., report_ops: _Optional[bool] = ..., migrate_prepare_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_transfer_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_answer_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_downtime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_fail: _Optional[bool] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ("start_delay", "stop_delay", "reboot_delay", "pause_delay", "device_info_failure_rate", "report_ops", "migrate_prepare_delay", "migrate_transfer_delay", "migrate_answer_delay", "migrate_downtime", "migrate_fail")
    START_DELAY_FIELD_NUMBER: _ClassVar[int]
    STOP_DELAY_FIELD_NUMBER: _ClassVar[int]
    REBOOT_DELAY_FIELD_NUMBER: _ClassVar[int]
    PAUSE_DELAY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_INFO_FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    REPORT_OPS_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_PREPARE_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_TRANSFER_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_ANSWER_DELAY_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_DOWNTIME_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_FAIL_FIELD_NUMBER: _ClassVar[int]
    start_delay: _duration_pb2.Duration
    stop_delay: _duration_pb2.Duration
    reboot_delay: _duration_pb2.Duration
    pause_delay: _duration_pb2.Duration
    device_info_failure_rate: float
    report_ops: bool
    migrate_prepare_delay: _duration_pb2.Duration
    migrate_transfer_delay: _duration_pb2.Duration
    migrate_answer_delay: _duration_pb2.Duration
    migrate_downtime: _duration_pb2.Duration
    migrate_fail: bool
    def __init__(self, start_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stop_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reboot_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pause_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., device_info_failure_rate: _Optional[float] = ..., report_ops: _Optional[bool] = ..., migrate_prepare_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_transfer_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_answer_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_downtime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., migrate_fail: _Optional[bool] = ...) -> None: ...

class SetHostConditionRequest(_message.Message):
    __slots__ = ("host_id", "condition")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    condition: HostCondition
    def __init__(self, host_id: _Optional[str] = ..., condition: _Optional[_Union[HostCondition, str]] = ...) -> None: ...

class SetHostConditionResponse(_message.Message):
    __slots__ = ("host_id", "condition")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    condition: HostCondition
    def __init__(self, host_id: _Optional[str] = ..., condition: _Optional[_Union[HostCondition, str]] = ...) -> None: ...

class CrashVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class CrashVmResponse(_message.Message):
    __slots__ = ("host_id", "vm")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ...) -> None: ...

class AgentServicePrepareIncomingVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "cpus", "memory_mb", "disk_path", "source_host_id", "volumes")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_PATH_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    cpus: int
    memory_mb: int
    disk_path: str
    source_host_id: str
    volumes: _containers.RepeatedCompositeFieldContainer[AgentVolume]
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_path: _Optional[str] = ..., source_host_id: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[AgentVolume, _Mapping]]] = ...) -> None: ...

class AgentServicePrepareIncomingVmResponse(_message.Message):
    __slots__ = ("host_id", "vm", "uri")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    uri: str
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ..., uri: _Optional[str] = ...) -> None: ...

class AgentServiceMigrateVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation", "target_generation", "target_host_id", "target_uri", "timeout")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_GENERATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_URI_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    target_generation: int
    target_host_id: str
    target_uri: str
    timeout: _duration_pb2.Duration
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ..., target_generation: _Optional[int] = ..., target_host_id: _Optional[str] = ..., target_uri: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentServiceMigrateVmResponse(_message.Message):
    __slots__ = ("host_id", "vm", "total", "downtime")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm: AgentVm
    total: _duration_pb2.Duration
    downtime: _duration_pb2.Duration
    def __init__(self, host_id: _Optional[str] = ..., vm: _Optional[_Union[AgentVm, _Mapping]] = ..., total: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., downtime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentServiceAbortIncomingVmRequest(_message.Message):
    __slots__ = ("host_id", "vm_id", "op_id", "generation")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    vm_id: str
    op_id: str
    generation: int
    def __init__(self, host_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., op_id: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class AgentServiceAbortIncomingVmResponse(_message.Message):
    __slots__ = ("host_id", "destroyed")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    destroyed: bool
    def __init__(self, host_id: _Optional[str] = ..., destroyed: _Optional[bool] = ...) -> None: ...
