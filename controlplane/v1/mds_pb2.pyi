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

class SimMdsFaultMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIM_MDS_FAULT_MODE_UNSPECIFIED: _ClassVar[SimMdsFaultMode]
    SIM_MDS_FAULT_MODE_OK: _ClassVar[SimMdsFaultMode]
    SIM_MDS_FAULT_MODE_SLOW: _ClassVar[SimMdsFaultMode]
    SIM_MDS_FAULT_MODE_HANG: _ClassVar[SimMdsFaultMode]
    SIM_MDS_FAULT_MODE_REFUSE: _ClassVar[SimMdsFaultMode]
    SIM_MDS_FAULT_MODE_FAIL: _ClassVar[SimMdsFaultMode]
SIM_MDS_FAULT_MODE_UNSPECIFIED: SimMdsFaultMode
SIM_MDS_FAULT_MODE_OK: SimMdsFaultMode
SIM_MDS_FAULT_MODE_SLOW: SimMdsFaultMode
SIM_MDS_FAULT_MODE_HANG: SimMdsFaultMode
SIM_MDS_FAULT_MODE_REFUSE: SimMdsFaultMode
SIM_MDS_FAULT_MODE_FAIL: SimMdsFaultMode

class MdsVolumeClient(_message.Message):
    __slots__ = ("client_id", "address", "session_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    address: str
    session_id: str
    def __init__(self, client_id: _Optional[str] = ..., address: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class MdsSession(_message.Message):
    __slots__ = ("session_id", "volume_id", "client_id", "address", "attached_at", "last_keepalive", "blocklisted")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    BLOCKLISTED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    volume_id: str
    client_id: str
    address: str
    attached_at: _timestamp_pb2.Timestamp
    last_keepalive: _timestamp_pb2.Timestamp
    blocklisted: bool
    def __init__(self, session_id: _Optional[str] = ..., volume_id: _Optional[str] = ..., client_id: _Optional[str] = ..., address: _Optional[str] = ..., attached_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_keepalive: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., blocklisted: _Optional[bool] = ...) -> None: ...

class AttachVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "client_id", "session_id", "address")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    client_id: str
    session_id: str
    address: str
    def __init__(self, volume_id: _Optional[str] = ..., client_id: _Optional[str] = ..., session_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class AttachVolumeResponse(_message.Message):
    __slots__ = ("session", "session_timeout")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    session: MdsSession
    session_timeout: _duration_pb2.Duration
    def __init__(self, session: _Optional[_Union[MdsSession, _Mapping]] = ..., session_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class KeepAliveVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "client_id", "session_id")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    client_id: str
    session_id: str
    def __init__(self, volume_id: _Optional[str] = ..., client_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class KeepAliveVolumeResponse(_message.Message):
    __slots__ = ("session", "session_timeout")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    session: MdsSession
    session_timeout: _duration_pb2.Duration
    def __init__(self, session: _Optional[_Union[MdsSession, _Mapping]] = ..., session_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DetachVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "client_id", "session_id")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    client_id: str
    session_id: str
    def __init__(self, volume_id: _Optional[str] = ..., client_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class DetachVolumeResponse(_message.Message):
    __slots__ = ("detached",)
    DETACHED_FIELD_NUMBER: _ClassVar[int]
    detached: bool
    def __init__(self, detached: _Optional[bool] = ...) -> None: ...

class SetSessionTimeoutRequest(_message.Message):
    __slots__ = ("session_timeout",)
    SESSION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    session_timeout: _duration_pb2.Duration
    def __init__(self, session_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetSessionTimeoutResponse(_message.Message):
    __slots__ = ("session_timeout",)
    SESSION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    session_timeout: _duration_pb2.Duration
    def __init__(self, session_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MdsVolume(_message.Message):
    __slots__ = ("volume_id", "size_bytes", "created_at")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, volume_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StorageMdsServiceGetVolumeClientsRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class GetVolumeRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class CreateVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "size_bytes")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    size_bytes: int
    def __init__(self, volume_id: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class DeleteVolumeRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class DeleteVolumeResponse(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class SimMdsFault(_message.Message):
    __slots__ = ("method", "mode", "delay_seconds", "code", "details")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    method: str
    mode: SimMdsFaultMode
    delay_seconds: _duration_pb2.Duration
    code: int
    details: str
    def __init__(self, method: _Optional[str] = ..., mode: _Optional[_Union[SimMdsFaultMode, str]] = ..., delay_seconds: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class SetVolumeClientsRequest(_message.Message):
    __slots__ = ("volume_id", "clients")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    clients: _containers.RepeatedCompositeFieldContainer[MdsVolumeClient]
    def __init__(self, volume_id: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[MdsVolumeClient, _Mapping]]] = ...) -> None: ...

class StorageMdsServiceGetVolumeClientsResponse(_message.Message):
    __slots__ = ("volume_id", "clients")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    clients: _containers.RepeatedCompositeFieldContainer[MdsVolumeClient]
    def __init__(self, volume_id: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[MdsVolumeClient, _Mapping]]] = ...) -> None: ...

class GetVolumeResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: MdsVolume
    def __init__(self, volume: _Optional[_Union[MdsVolume, _Mapping]] = ...) -> None: ...

class CreateVolumeResponse(_message.Message):
    __slots__ = ("volume",)
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    volume: MdsVolume
    def __init__(self, volume: _Optional[_Union[MdsVolume, _Mapping]] = ...) -> None: ...

class SetFaultRequest(_message.Message):
    __slots__ = ("method", "mode", "delay_seconds", "code", "details")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DELAY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    method: str
    mode: SimMdsFaultMode
    delay_seconds: _duration_pb2.Duration
    code: int
    details: str
    def __init__(self, method: _Optional[str] = ..., mode: _Optional[_Union[SimMdsFaultMode, str]] = ..., delay_seconds: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...

class SetFaultResponse(_message.Message):
    __slots__ = ("faults", "calls", "volume_ids")
    class CallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[SimMdsFault]
    calls: _containers.ScalarMap[str, int]
    volume_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, faults: _Optional[_Iterable[_Union[SimMdsFault, _Mapping]]] = ..., calls: _Optional[_Mapping[str, int]] = ..., volume_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SetVolumeClientsResponse(_message.Message):
    __slots__ = ("faults", "calls", "volume_ids")
    class CallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[SimMdsFault]
    calls: _containers.ScalarMap[str, int]
    volume_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, faults: _Optional[_Iterable[_Union[SimMdsFault, _Mapping]]] = ..., calls: _Optional[_Mapping[str, int]] = ..., volume_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: bool
    def __init__(self, volumes: _Optional[bool] = ...) -> None: ...

class GetStateResponse(_message.Message):
    __slots__ = ("faults", "calls", "volume_ids", "sessions", "session_timeout")
    class CallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[SimMdsFault]
    calls: _containers.ScalarMap[str, int]
    volume_ids: _containers.RepeatedScalarFieldContainer[str]
    sessions: _containers.RepeatedCompositeFieldContainer[MdsSession]
    session_timeout: _duration_pb2.Duration
    def __init__(self, faults: _Optional[_Iterable[_Union[SimMdsFault, _Mapping]]] = ..., calls: _Optional[_Mapping[str, int]] = ..., volume_ids: _Optional[_Iterable[str]] = ..., sessions: _Optional[_Iterable[_Union[MdsSession, _Mapping]]] = ..., session_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: bool
    def __init__(self, volumes: _Optional[bool] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("faults", "calls", "volume_ids")
    class CallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_IDS_FIELD_NUMBER: _ClassVar[int]
    faults: _containers.RepeatedCompositeFieldContainer[SimMdsFault]
    calls: _containers.ScalarMap[str, int]
    volume_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, faults: _Optional[_Iterable[_Union[SimMdsFault, _Mapping]]] = ..., calls: _Optional[_Mapping[str, int]] = ..., volume_ids: _Optional[_Iterable[str]] = ...) -> None: ...
