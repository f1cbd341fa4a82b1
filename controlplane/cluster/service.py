"""ClusterService: membership and ownership questions any node answers."""

from __future__ import annotations

import grpc

from controlplane import errors, wiretime
from controlplane.cluster.registration import Registration
from controlplane.cluster.ring import Ring
from controlplane.cluster.routing import RouteError, Router
from controlplane.cluster.table import MemberInfo
from controlplane.cluster.view import ClusterView
from controlplane.rpc import check_id, remaining
from controlplane.v1 import cluster_pb2 as pb
from controlplane.v1 import cluster_pb2_grpc as pb_grpc


def member_pb(info: MemberInfo) -> pb.Member:
    return pb.Member(node_id=info.node_id, address=info.address, incarnation=info.incarnation,
                     started_at=wiretime.stamp(info.started_at), version=info.version)


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    def __init__(self, node_id: str, view: ClusterView, registration: Registration,
                 router: Router) -> None:
        self.node_id = node_id
        self.view = view
        self.registration = registration
        self.router = router

    def ListMembers(self, request: pb.ListMembersRequest, context: grpc.ServicerContext
                    ) -> pb.ListMembersResponse:
        left = remaining(context, None)
        timeout = self.view.store.timeout if left is None else min(
            self.view.store.timeout * 2, max(left - 0.05, 0.01))
        listing = self.view.read_members(timeout=timeout)
        members = sorted(listing.members.values(), key=lambda m: m.node_id)
        return pb.ListMembersResponse(members=[member_pb(m) for m in members],
                                      revision=listing.revision)

    def GetRing(self, request: pb.GetRingRequest, context: grpc.ServicerContext
                ) -> pb.GetRingResponse:
        table, ring = self.view.table, self.view.ring
        members = [member_pb(table.members[n]) for n in sorted(ring.members)
                   if n in table.members]
        return pb.GetRingResponse(
            epoch=ring.epoch,
            members=members,
            shares=dict(ring.shares()),
            vnodes=ring.vnodes,
            node_id=self.node_id,
            incarnation=self.registration.incarnation,
            lease_ttl=self.registration.ttl,
            fenced=self.registration.fenced,
            suspects=sorted(table.suspects),
        )

    def WhoOwns(self, request: pb.WhoOwnsRequest, context: grpc.ServicerContext
                ) -> pb.WhoOwnsResponse:
        check_id(request.resource_id)
        if self.registration.fenced:
            raise errors.NotServing(f"{self.node_id} is fenced (no fresh etcd lease); ask "
                                    "another node")
        ring = self.view.ring
        if not len(ring):
            raise errors.NotServing("the ring has no members yet")
        owner = ring.owner(request.resource_id)
        info = self.view.table.members.get(owner)
        return pb.WhoOwnsResponse(resource_id=request.resource_id, owner=owner,
                                  owner_address=info.address if info else "",
                                  epoch=ring.epoch, node_id=self.node_id)

    def Locate(self, request: pb.LocateRequest, context: grpc.ServicerContext
               ) -> pb.LocateResponse:
        check_id(request.resource_id)

        def local(ring: Ring, forwarded: bool) -> pb.LocateResponse:
            return pb.LocateResponse(resource_id=request.resource_id, served_by=self.node_id,
                                     epoch=ring.epoch, forwarded=forwarded)

        def remote(channel: grpc.Channel, metadata: tuple, timeout: float) -> pb.LocateResponse:
            stub = pb_grpc.ClusterServiceStub(channel)
            return stub.Locate(request, metadata=metadata, timeout=timeout)

        try:
            response, retries = self.router.route(request.resource_id, context, local, remote)
        except RouteError as exc:
            context.abort(exc.code, exc.details)
        response.retries = retries
        return response
