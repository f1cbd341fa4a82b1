import datetime

from controlplane.v1.buf.validate import validate_pb2 as _validate_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
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
    MDS_HEALTH_HEALTHY: _ClassVar[MdsHealth]
    MDS_HEALTH_UNHEALTHY: _ClassVar[MdsHealth]
MDS_HEALTH_UNSPECIFIED: MdsHealth
MDS_HEALTH_HEALTHY: MdsHealth
MDS_HEALTH_UNHEALTHY: MdsHealth

class MdsEndpointStatus(_message.Message):
    __slots__ = ("address", "health", "checked_at", "last_error", "failures")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    address: str
    health: MdsHealth
    checked_at: _timestamp_pb2.Timestamp
    last_error: str
    failures: int
    def __init__(self, address: _Optional[str] = ..., health: _Optional[_Union[MdsHealth, str]] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., failures: _Optional[int] = ...) -> None: ...

class PrimaryStorage(_message.Message):
    __slots__ = ("storage_id", "mds", "added_at", "owner")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MDS_FIELD_NUMBER: _ClassVar[int]
    ADDED_AT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    mds: _containers.RepeatedCompositeFieldContainer[MdsEndpointStatus]
    added_at: _timestamp_pb2.Timestamp
    owner: str
    def __init__(self, storage_id: _Optional[str] = ..., mds: _Optional[_Iterable[_Union[MdsEndpointStatus, _Mapping]]] = ..., added_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner: _Optional[str] = ...) -> None: ...

class AddPrimaryStorageRequest(_message.Message):
    __slots__ = ("storage_id", "mds_addresses")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MDS_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    mds_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, storage_id: _Optional[str] = ..., mds_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class ListPrimaryStoragesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPrimaryStoragesResponse(_message.Message):
    __slots__ = ("storages", "next_page_token")
    STORAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    storages: _containers.RepeatedCompositeFieldContainer[PrimaryStorage]
    next_page_token: str
    def __init__(self, storages: _Optional[_Iterable[_Union[PrimaryStorage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetVolumeClientsRequest(_message.Message):
    __slots__ = ("storage_id", "volume_id")
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    volume_id: str
    def __init__(self, storage_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class AddPrimaryStorageResponse(_message.Message):
    __slots__ = ("storage",)
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    storage: PrimaryStorage
    def __init__(self, storage: _Optional[_Union[PrimaryStorage, _Mapping]] = ...) -> None: ...

class GetPrimaryStorageRequest(_message.Message):
    __slots__ = ("storage_id",)
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    def __init__(self, storage_id: _Optional[str] = ...) -> None: ...

class GetPrimaryStorageResponse(_message.Message):
    __slots__ = ("storage",)
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    storage: PrimaryStorage
    def __init__(self, storage: _Optional[_Union[PrimaryStorage, _Mapping]] = ...) -> None: ...

class RemovePrimaryStorageRequest(_message.Message):
    __slots__ = ("storage_id",)
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    def __init__(self, storage_id: _Optional[str] = ...) -> None: ...

class RemovePrimaryStorageResponse(_message.Message):
    __slots__ = ("storage",)
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    storage: PrimaryStorage
    def __init__(self, storage: _Optional[_Union[PrimaryStorage, _Mapping]] = ...) -> None: ...

class CheckPrimaryStorageRequest(_message.Message):
    __slots__ = ("storage_id",)
    STORAGE_ID_FIELD_NUMBER: _ClassVar[int]
    storage_id: str
    def __init__(self, storage_id: _Optional[str] = ...) -> None: ...

class CheckPrimaryStorageResponse(_message.Message):
    __slots__ = ("storage",)
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    storage: PrimaryStorage
    def __init__(self, storage: _Optional[_Union[PrimaryStorage, _Mapping]] = ...) -> None: ...

class GetVolumeClientsResponse(_message.Message):
    __slots__ = ("volume_id", "clients")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    clients: _containers.RepeatedCompositeFieldContainer[_mds_pb2.MdsVolumeClient]
    def __init__(self, volume_id: _Optional[str] = ..., clients: _Optional[_Iterable[_Union[_mds_pb2.MdsVolumeClient, _Mapping]]] = ...) -> None: ...
