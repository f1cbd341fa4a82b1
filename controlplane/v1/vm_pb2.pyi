import datetime

from controlplane.v1.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from controlplane.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HaLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HA_LEVEL_UNSPECIFIED: _ClassVar[HaLevel]
    HA_LEVEL_NEVER_STOP: _ClassVar[HaLevel]
HA_LEVEL_UNSPECIFIED: HaLevel
HA_LEVEL_NEVER_STOP: HaLevel

class ImageInfo(_message.Message):
    __slots__ = ("image_id", "virtual_size", "actual_size")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    virtual_size: int
    actual_size: int
    def __init__(self, image_id: _Optional[str] = ..., virtual_size: _Optional[int] = ..., actual_size: _Optional[int] = ...) -> None: ...

class LastOp(_message.Message):
    __slots__ = ("op_id", "kind", "outcome", "node_id", "finished_at", "detail", "request_id")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    kind: str
    outcome: str
    node_id: str
    finished_at: _timestamp_pb2.Timestamp
    detail: str
    request_id: str
    def __init__(self, op_id: _Optional[str] = ..., kind: _Optional[str] = ..., outcome: _Optional[str] = ..., node_id: _Optional[str] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class Vm(_message.Message):
    __slots__ = ("vm_id", "name", "state", "host_id", "last_host_id", "generation", "ha", "cpus", "memory_mb", "image", "root_disk_offering_size", "root_disk_size", "devices", "created_at", "state_changed_at", "last_op", "op", "issued_generation", "create_request_id", "disks")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_HOST_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HA_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ROOT_DISK_OFFERING_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_DISK_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_OP_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    ISSUED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATE_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    name: str
    state: str
    host_id: str
    last_host_id: str
    generation: int
    ha: HaLevel
    cpus: int
    memory_mb: int
    image: ImageInfo
    root_disk_offering_size: int
    root_disk_size: int
    devices: _agent_pb2.DeviceInfo
    created_at: _timestamp_pb2.Timestamp
    state_changed_at: _timestamp_pb2.Timestamp
    last_op: LastOp
    op: Op
    issued_generation: int
    create_request_id: str
    disks: _containers.RepeatedCompositeFieldContainer[VmDisk]
    def __init__(self, vm_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., host_id: _Optional[str] = ..., last_host_id: _Optional[str] = ..., generation: _Optional[int] = ..., ha: _Optional[_Union[HaLevel, str]] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., image: _Optional[_Union[ImageInfo, _Mapping]] = ..., root_disk_offering_size: _Optional[int] = ..., root_disk_size: _Optional[int] = ..., devices: _Optional[_Union[_agent_pb2.DeviceInfo, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_op: _Optional[_Union[LastOp, _Mapping]] = ..., op: _Optional[_Union[Op, _Mapping]] = ..., issued_generation: _Optional[int] = ..., create_request_id: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[VmDisk, _Mapping]]] = ...) -> None: ...

class VmDisk(_message.Message):
    __slots__ = ("primary_storage_id", "volume_id", "device", "root")
    PRIMARY_STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    primary_storage_id: str
    volume_id: str
    device: str
    root: bool
    def __init__(self, primary_storage_id: _Optional[str] = ..., volume_id: _Optional[str] = ..., device: _Optional[str] = ..., root: _Optional[bool] = ...) -> None: ...

class Op(_message.Message):
    __slots__ = ("op_id", "vm_id", "kind", "node_id", "incarnation", "started_at", "deadline", "host_id", "generation", "orphaned_at", "target_host_id", "target_generation", "phase", "request_id")
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ORPHANED_AT_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_GENERATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    op_id: str
    vm_id: str
    kind: str
    node_id: str
    incarnation: int
    started_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    host_id: str
    generation: int
    orphaned_at: _timestamp_pb2.Timestamp
    target_host_id: str
    target_generation: int
    phase: str
    request_id: str
    def __init__(self, op_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., kind: _Optional[str] = ..., node_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., host_id: _Optional[str] = ..., generation: _Optional[int] = ..., orphaned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target_host_id: _Optional[str] = ..., target_generation: _Optional[int] = ..., phase: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class HaAudit(_message.Message):
    __slots__ = ("vm_id", "decided_at", "node_id", "action", "from_host", "to_host", "generation", "reason", "evidence", "op_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FROM_HOST_FIELD_NUMBER: _ClassVar[int]
    TO_HOST_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    OP_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    decided_at: _timestamp_pb2.Timestamp
    node_id: str
    action: str
    from_host: str
    to_host: str
    generation: int
    reason: str
    evidence: _containers.RepeatedScalarFieldContainer[str]
    op_id: str
    def __init__(self, vm_id: _Optional[str] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node_id: _Optional[str] = ..., action: _Optional[str] = ..., from_host: _Optional[str] = ..., to_host: _Optional[str] = ..., generation: _Optional[int] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Iterable[str]] = ..., op_id: _Optional[str] = ...) -> None: ...

class CreateVmRequest(_message.Message):
    __slots__ = ("vm_id", "name", "ha", "cpus", "memory_mb", "image", "root_disk_offering_size", "host_id", "start", "wait", "request_id", "disks")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HA_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ROOT_DISK_OFFERING_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    name: str
    ha: HaLevel
    cpus: int
    memory_mb: int
    image: ImageInfo
    root_disk_offering_size: int
    host_id: str
    start: bool
    wait: bool
    request_id: str
    disks: _containers.RepeatedCompositeFieldContainer[VmDisk]
    def __init__(self, vm_id: _Optional[str] = ..., name: _Optional[str] = ..., ha: _Optional[_Union[HaLevel, str]] = ..., cpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., image: _Optional[_Union[ImageInfo, _Mapping]] = ..., root_disk_offering_size: _Optional[int] = ..., host_id: _Optional[str] = ..., start: _Optional[bool] = ..., wait: _Optional[bool] = ..., request_id: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[VmDisk, _Mapping]]] = ...) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ("host_id", "state", "page_size", "page_token")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    state: str
    page_size: int
    page_token: str
    def __init__(self, host_id: _Optional[str] = ..., state: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms", "revision", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[Vm]
    revision: int
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[Vm, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchVmsRequest(_message.Message):
    __slots__ = ("vm_id", "host_id", "initial")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    host_id: str
    initial: bool
    def __init__(self, vm_id: _Optional[str] = ..., host_id: _Optional[str] = ..., initial: _Optional[bool] = ...) -> None: ...

class WatchVmsResponse(_message.Message):
    __slots__ = ("kind", "vm", "revision")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchVmsResponse.Kind]
        KIND_PUT: _ClassVar[WatchVmsResponse.Kind]
        KIND_DELETE: _ClassVar[WatchVmsResponse.Kind]
        KIND_SYNCED: _ClassVar[WatchVmsResponse.Kind]
    KIND_UNSPECIFIED: WatchVmsResponse.Kind
    KIND_PUT: WatchVmsResponse.Kind
    KIND_DELETE: WatchVmsResponse.Kind
    KIND_SYNCED: WatchVmsResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    kind: WatchVmsResponse.Kind
    vm: Vm
    revision: int
    def __init__(self, kind: _Optional[_Union[WatchVmsResponse.Kind, str]] = ..., vm: _Optional[_Union[Vm, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListHaAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[HaAudit]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[HaAudit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class StartVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "host_id", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    host_id: str
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., host_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class StopVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "force", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    force: bool
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class StopVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class RebootVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RebootVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class PauseVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class PauseVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class ResumeVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class ResumeVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class DestroyVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "force", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    force: bool
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., force: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class DestroyVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class GetVmRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class GetVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...

class ListHaAuditRequest(_message.Message):
    __slots__ = ("vm_id", "page_size", "page_token")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    page_size: int
    page_token: str
    def __init__(self, vm_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class MigrateVmRequest(_message.Message):
    __slots__ = ("vm_id", "wait", "host_id", "request_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    wait: bool
    host_id: str
    request_id: str
    def __init__(self, vm_id: _Optional[str] = ..., wait: _Optional[bool] = ..., host_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class MigrateVmResponse(_message.Message):
    __slots__ = ("vm",)
    VM_FIELD_NUMBER: _ClassVar[int]
    vm: Vm
    def __init__(self, vm: _Optional[_Union[Vm, _Mapping]] = ...) -> None: ...
