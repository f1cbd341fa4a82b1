"""VolumeService: the gRPC shell over images (`storage/images.py`) and live block jobs
(`storage/livejobs.py`). Every change runs on the image's owner on the ring; reads anywhere.
Request fields are checked here before anything is routed or written: every id that names a
file or directory (image, volume, leaf, block job) is a name (`rpc.check_name`), and the
paths made from them are confined to the image directory on the owner (`paths.confined`)."""

from __future__ import annotations

from typing import TypeVar

import grpc

from controlplane import errors, paging
from controlplane.cluster.routing import Router, route_unary
from controlplane.rpc import check_id, check_name
from controlplane.storage.images import ImageManager, chain_answer
from controlplane.storage.livejobs import LiveJobs
from controlplane.store.cache import PrefixCache
from controlplane.v1 import volume_pb2
from controlplane.v1 import volume_pb2_grpc as pb_grpc

__all__ = ["VolumeServicer"]

A = TypeVar("A")
MAX_PATH = 4096  # Linux's PATH_MAX: no output_path a node could create is longer


class VolumeServicer(pb_grpc.VolumeServiceServicer):
    """VolumeService: every change runs on the image's owner; reads anywhere."""

    def __init__(self, manager: ImageManager, router: Router,
                 images: PrefixCache[volume_pb2.Image], live: LiveJobs) -> None:
        self.manager = manager
        self.router = router
        self.images = images
        self.live = live

    def _on_owner(self, method: str, image_id: str, request: object,
                  context: grpc.ServicerContext, work):  # type: ignore[no-untyped-def]
        """Run ``work`` on the image's owner (its domain errors become the call's status)."""
        return route_unary(self.router, pb_grpc.VolumeServiceStub, method, image_id, request,
                           context, work)

    def _run(self, method: str, image_id: str, request: object,
             context: grpc.ServicerContext, work, answer_type: type[A]) -> A:  # type: ignore[no-untyped-def]
        def answer() -> A:
            result = work()
            if result.revision:  # so a list on this node right after shows the change
                self.images.wait_for_revision(result.revision, 2.0)
            return chain_answer(answer_type, result.image, result.changes)

        return self._on_owner(method, image_id, request, context, answer)

    def CreateImage(self, request: volume_pb2.CreateImageRequest,
                    context: grpc.ServicerContext) -> volume_pb2.CreateImageResponse:
        check_name(request.image_id, "image_id")
        volume_id = request.volume_id or "base"
        check_name(volume_id, "volume_id")
        if request.vm_id:
            check_id(request.vm_id, "vm_id")
        return self._run("CreateImage", request.image_id, request, context,
                         lambda: self.manager.create_image(request.image_id, request.size_bytes,
                                                           request.vm_id, volume_id),
                         volume_pb2.CreateImageResponse)

    def GetVolumeChain(self, request: volume_pb2.GetVolumeChainRequest,
                       context: grpc.ServicerContext
                       ) -> volume_pb2.GetVolumeChainResponse:
        check_name(request.image_id, "image_id")
        image, _ = self.manager.read(request.image_id)
        return chain_answer(volume_pb2.GetVolumeChainResponse, image)

    def ListImages(self, request: volume_pb2.ListImagesRequest, context: grpc.ServicerContext
                   ) -> volume_pb2.ListImagesResponse:
        images = sorted((e.value for e in self.images.entries()), key=lambda i: i.image_id)
        chunk, token = paging.page(images, lambda i: i.image_id, request.page_size,
                                   request.page_token)
        return volume_pb2.ListImagesResponse(images=chunk, next_page_token=token)

    def CreateSnapshot(self, request: volume_pb2.CreateSnapshotRequest,
                       context: grpc.ServicerContext) -> volume_pb2.CreateSnapshotResponse:
        check_name(request.image_id, "image_id")
        check_name(request.volume_id, "volume_id")
        return self._run("CreateSnapshot", request.image_id, request, context,
                         lambda: self.manager.create_snapshot(request.image_id,
                                                              request.volume_id),
                         volume_pb2.CreateSnapshotResponse)

    def MergeSnapshots(self, request: volume_pb2.MergeSnapshotsRequest,
                       context: grpc.ServicerContext) -> volume_pb2.MergeSnapshotsResponse:
        check_name(request.image_id, "image_id")
        check_name(request.volume_id, "volume_id")
        return self._run("MergeSnapshots", request.image_id, request, context,
                         lambda: self.manager.merge(request.image_id, request.volume_id),
                         volume_pb2.MergeSnapshotsResponse)

    def ReconcileVolumeChain(self, request: volume_pb2.ReconcileVolumeChainRequest,
                             context: grpc.ServicerContext
                             ) -> volume_pb2.ReconcileVolumeChainResponse:
        check_name(request.image_id, "image_id")
        if request.leaf_id:
            check_name(request.leaf_id, "leaf_id")
        return self._run("ReconcileVolumeChain", request.image_id, request, context,
                         lambda: self.manager.reconcile(request.image_id, request.leaf_id),
                         volume_pb2.ReconcileVolumeChainResponse)

    # -- live operations (the VM runs; block jobs on its agent) ---------------------------

    def LiveSnapshot(self, request: volume_pb2.LiveSnapshotRequest,
                     context: grpc.ServicerContext) -> volume_pb2.LiveSnapshotResponse:
        """A flat copy of the running VM's disk. ``output_path`` names a file directly in the
        image's own directory (``<image dir>/<image_id>/``), nowhere else: empty for
        ``<job_id>.qcow2``, a file name (the `check_name` rule, e.g. ``backup-1.qcow2``), or
        an absolute path whose directory is, after realpath, the image's own directory. The
        file must not exist, nor be a symlink leading out. INVALID_ARGUMENT naming
        output_path otherwise (`LiveJobs.output_of`)."""
        check_name(request.image_id, "image_id")
        if request.job_id:
            check_name(request.job_id, "job_id")
        if len(request.output_path) > MAX_PATH:
            raise errors.Invalid(f"output_path is {len(request.output_path)} characters; the "
                                 f"limit is {MAX_PATH}")
        if len(request.output_path) > MAX_PATH:
            raise errors.Invalid(f"output_path is {len(request.output_path)} characters; the "
                                 f"limit is {MAX_PATH}")
        return self._on_owner("LiveSnapshot", request.image_id, request, context,
                          lambda: volume_pb2.LiveSnapshotResponse(job=self.live.live_snapshot(
                              request.image_id, request.job_id, request.output_path)))

    def LiveMerge(self, request: volume_pb2.LiveMergeRequest,
                  context: grpc.ServicerContext) -> volume_pb2.LiveMergeResponse:
        check_name(request.image_id, "image_id")
        check_name(request.volume_id, "volume_id")
        if request.job_id:
            check_name(request.job_id, "job_id")
        return self._on_owner("LiveMerge", request.image_id, request, context,
                          lambda: volume_pb2.LiveMergeResponse(job=self.live.live_merge(
                              request.image_id, request.volume_id, request.job_id)))

    def ResumeBlockJob(self, request: volume_pb2.ResumeBlockJobRequest,
                       context: grpc.ServicerContext) -> volume_pb2.ResumeBlockJobResponse:
        check_name(request.job_id, "job_id")
        image_id = self.live.get(request.job_id).image_id
        return self._on_owner("ResumeBlockJob", image_id, request, context,
                          lambda: volume_pb2.ResumeBlockJobResponse(
                              job=self.live.resume(request.job_id)))

    def GetBlockJob(self, request: volume_pb2.GetBlockJobRequest,
                    context: grpc.ServicerContext) -> volume_pb2.GetBlockJobResponse:
        check_name(request.job_id, "job_id")
        return volume_pb2.GetBlockJobResponse(job=self.live.get(request.job_id))
