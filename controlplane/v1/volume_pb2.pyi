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

class VolumeLegality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_LEGALITY_UNSPECIFIED: _ClassVar[VolumeLegality]
    VOLUME_LEGALITY_LEGAL: _ClassVar[VolumeLegality]
    VOLUME_LEGALITY_ILLEGAL: _ClassVar[VolumeLegality]
VOLUME_LEGALITY_UNSPECIFIED: VolumeLegality
VOLUME_LEGALITY_LEGAL: VolumeLegality
VOLUME_LEGALITY_ILLEGAL: VolumeLegality

class Volume(_message.Message):
    __slots__ = ("volume_id", "parent_id", "format", "path", "legality", "virtual_size", "actual_size", "created_at")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LEGALITY_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    parent_id: str
    format: str
    path: str
    legality: VolumeLegality
    virtual_size: int
    actual_size: int
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, volume_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., legality: _Optional[_Union[VolumeLegality, str]] = ..., virtual_size: _Optional[int] = ..., actual_size: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("image_id", "vm_id", "leaf_id", "volumes", "directory", "created_at")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    vm_id: str
    leaf_id: str
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    directory: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, image_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., directory: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateImageRequest(_message.Message):
    __slots__ = ("image_id", "size_bytes", "vm_id", "volume_id")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    size_bytes: int
    vm_id: str
    volume_id: str
    def __init__(self, image_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., vm_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class GetVolumeChainRequest(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "next_page_token")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    next_page_token: str
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("image_id", "volume_id")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    volume_id: str
    def __init__(self, image_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class MergeSnapshotsRequest(_message.Message):
    __slots__ = ("image_id", "volume_id")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    volume_id: str
    def __init__(self, image_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class ReconcileVolumeChainRequest(_message.Message):
    __slots__ = ("image_id", "leaf_id")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ...) -> None: ...

class LiveSnapshotRequest(_message.Message):
    __slots__ = ("image_id", "job_id", "output_path")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    job_id: str
    output_path: str
    def __init__(self, image_id: _Optional[str] = ..., job_id: _Optional[str] = ..., output_path: _Optional[str] = ...) -> None: ...

class LiveMergeRequest(_message.Message):
    __slots__ = ("image_id", "job_id", "volume_id")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    job_id: str
    volume_id: str
    def __init__(self, image_id: _Optional[str] = ..., job_id: _Optional[str] = ..., volume_id: _Optional[str] = ...) -> None: ...

class BlockJob(_message.Message):
    __slots__ = ("job_id", "kind", "image_id", "vm_id", "host_id", "phase", "top", "base", "target", "output", "offset", "length", "bytes_copied", "error", "started_at", "finished_at", "volume_id", "node_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    BYTES_COPIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    image_id: str
    vm_id: str
    host_id: str
    phase: str
    top: str
    base: str
    target: str
    output: str
    offset: int
    length: int
    bytes_copied: int
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    volume_id: str
    node_id: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., image_id: _Optional[str] = ..., vm_id: _Optional[str] = ..., host_id: _Optional[str] = ..., phase: _Optional[str] = ..., top: _Optional[str] = ..., base: _Optional[str] = ..., target: _Optional[str] = ..., output: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., bytes_copied: _Optional[int] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., volume_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class CreateImageResponse(_message.Message):
    __slots__ = ("image_id", "leaf_id", "chain", "changes", "outside", "image")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    chain: _containers.RepeatedCompositeFieldContainer[Volume]
    changes: _containers.RepeatedScalarFieldContainer[str]
    outside: _containers.RepeatedCompositeFieldContainer[Volume]
    image: Image
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., chain: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., changes: _Optional[_Iterable[str]] = ..., outside: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class GetVolumeChainResponse(_message.Message):
    __slots__ = ("image_id", "leaf_id", "chain", "changes", "outside", "image")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    chain: _containers.RepeatedCompositeFieldContainer[Volume]
    changes: _containers.RepeatedScalarFieldContainer[str]
    outside: _containers.RepeatedCompositeFieldContainer[Volume]
    image: Image
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., chain: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., changes: _Optional[_Iterable[str]] = ..., outside: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("image_id", "leaf_id", "chain", "changes", "outside", "image")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    chain: _containers.RepeatedCompositeFieldContainer[Volume]
    changes: _containers.RepeatedScalarFieldContainer[str]
    outside: _containers.RepeatedCompositeFieldContainer[Volume]
    image: Image
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., chain: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., changes: _Optional[_Iterable[str]] = ..., outside: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class MergeSnapshotsResponse(_message.Message):
    __slots__ = ("image_id", "leaf_id", "chain", "changes", "outside", "image")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    chain: _containers.RepeatedCompositeFieldContainer[Volume]
    changes: _containers.RepeatedScalarFieldContainer[str]
    outside: _containers.RepeatedCompositeFieldContainer[Volume]
    image: Image
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., chain: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., changes: _Optional[_Iterable[str]] = ..., outside: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class ReconcileVolumeChainResponse(_message.Message):
    __slots__ = ("image_id", "leaf_id", "chain", "changes", "outside", "image")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    leaf_id: str
    chain: _containers.RepeatedCompositeFieldContainer[Volume]
    changes: _containers.RepeatedScalarFieldContainer[str]
    outside: _containers.RepeatedCompositeFieldContainer[Volume]
    image: Image
    def __init__(self, image_id: _Optional[str] = ..., leaf_id: _Optional[str] = ..., chain: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., changes: _Optional[_Iterable[str]] = ..., outside: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class LiveSnapshotResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BlockJob
    def __init__(self, job: _Optional[_Union[BlockJob, _Mapping]] = ...) -> None: ...

class LiveMergeResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BlockJob
    def __init__(self, job: _Optional[_Union[BlockJob, _Mapping]] = ...) -> None: ...

class GetBlockJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetBlockJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BlockJob
    def __init__(self, job: _Optional[_Union[BlockJob, _Mapping]] = ...) -> None: ...

class ResumeBlockJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeBlockJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: BlockJob
    def __init__(self, job: _Optional[_Union[BlockJob, _Mapping]] = ...) -> None: ...
