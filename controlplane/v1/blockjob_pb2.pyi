from controlplane.v1.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpenDiskRequest(_message.Message):
    __slots__ = ("vm_id", "path")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    path: str
    def __init__(self, vm_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class StartMirrorRequest(_message.Message):
    __slots__ = ("vm_id", "job_id", "target_path", "sync")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    target_path: str
    sync: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., target_path: _Optional[str] = ..., sync: _Optional[str] = ...) -> None: ...

class StartCommitRequest(_message.Message):
    __slots__ = ("vm_id", "job_id", "top", "base")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    top: str
    base: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., top: _Optional[str] = ..., base: _Optional[str] = ...) -> None: ...

class AgentJobStatus(_message.Message):
    __slots__ = ("type", "status", "offset", "length", "ready")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    offset: int
    length: int
    ready: bool
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., ready: _Optional[bool] = ...) -> None: ...

class AgentJobEvent(_message.Message):
    __slots__ = ("kind", "offset", "length", "error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    offset: int
    length: int
    error: str
    def __init__(self, kind: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class GuestWriteRequest(_message.Message):
    __slots__ = ("vm_id", "offset", "length", "pattern")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    offset: int
    length: int
    pattern: int
    def __init__(self, vm_id: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., pattern: _Optional[int] = ...) -> None: ...

class OpenDiskResponse(_message.Message):
    __slots__ = ("vm_id", "paths")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseDiskRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class CloseDiskResponse(_message.Message):
    __slots__ = ("vm_id", "paths")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDiskChainRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class GetDiskChainResponse(_message.Message):
    __slots__ = ("vm_id", "paths")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class StartMirrorResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class StartCommitResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("vm_id", "job_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class CompleteJobRequest(_message.Message):
    __slots__ = ("vm_id", "job_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CompleteJobResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("vm_id", "job_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class ReleaseJobRequest(_message.Message):
    __slots__ = ("vm_id", "job_id")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class ReleaseJobResponse(_message.Message):
    __slots__ = ("vm_id", "job_id", "listed", "status", "events", "active")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LISTED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    job_id: str
    listed: bool
    status: AgentJobStatus
    events: _containers.RepeatedCompositeFieldContainer[AgentJobEvent]
    active: bool
    def __init__(self, vm_id: _Optional[str] = ..., job_id: _Optional[str] = ..., listed: _Optional[bool] = ..., status: _Optional[_Union[AgentJobStatus, _Mapping]] = ..., events: _Optional[_Iterable[_Union[AgentJobEvent, _Mapping]]] = ..., active: _Optional[bool] = ...) -> None: ...

class GuestWriteResponse(_message.Message):
    __slots__ = ("vm_id", "paths")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("vm_id",)
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    def __init__(self, vm_id: _Optional[str] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("vm_id", "paths")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...
