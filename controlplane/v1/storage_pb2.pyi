from controlplane.v1 import mds_pb2 as _mds_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MdsHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MDS_HEALTH_UNSPECIFIED: _ClassVar[MdsHealth]
    MDS_HEALTHY: _ClassVar[MdsHealth]
    MDS_UNHEALTHY: _ClassVar[MdsHealth]
MDS_HEALTH_UNSPECIFIED: MdsHealth
MDS_HEALTHY: MdsHealth
MDS_UNHEALTHY: MdsHealth

class MdsEndpointStatus(_message.Message):
    __slots__ = ("address", "health", "checked_at", "last_error", "failures")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    address: str
    health: MdsHealth
    checked_at: float
    last_error: str
    failures: int
    def __init__(self, address: _Optional[str] = ..., health: _Optional[_Union[MdsHealth, str]] = ..., checked_at: _Optional[float] = ..., last_error: _Optional[str] = ..., failures: _Optional[int] = ...) -> None: ...

class PrimaryStorage(_message.Message):
    __slots__ = ("storage_id", "mds", "added_at", "owner")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MDS_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    mds: _containers.RepeatedCompositeFieldContainer[MdsEndpointStatus]
    added_at: float
    owner: str
    def __init__(self, storage_id: _Optional[str] = ..., mds: _Optional[_Iterable[_Union[MdsEndpointStatus, _Mapping]]] = ..., added_at: _Optional[float] = ..., owner: _Optional[str] = ...) -> None: ...

class AddPrimaryStorageRequest(_message.Message):
    __slots__ = ("storage_id", "mds_addresses")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MDS_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    mds_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, storage_id: _Optional[str] = ..., mds_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class PrimaryStorageRef(_message.Message):
    __slots__ = ("storage_id",)
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    def __init__(self, storage_id: _Optional[str] = ...) -> None: ...

class ListPrimaryStoragesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPrimaryStoragesResponse(_message.Message):
    __slots__ = ("storages",)
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    storages: _containers.RepeatedCompositeFieldContainer[PrimaryStorage]
    def __init__(self, storages: _Optional[_Iterable[_Union[PrimaryStorage, _Mapping]]] = ...) -> None: ...

class StorageVolumeRef(_message.Message):
    __slots__ = ("storage_id", "volume_id")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    volume_id: str
    def __init__(self, storage_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...
