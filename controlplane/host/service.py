"""HostService: add, inspect, remove and reconnect hosts, enable and disable them and put
them into maintenance; changes run on the host's owner."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from controlplane import errors, paging, wiretime
from controlplane.cluster.routing import Router, route_unary
from controlplane.host.maintenance import POLICY_ENUM, MaintenanceLoop
from controlplane.owner import OwnerContext
from controlplane.rpc import check_address, check_id, remaining
from controlplane.store import txn as t
from controlplane.v1 import agent_pb2, host_pb2
from controlplane.v1 import host_pb2_grpc as pb_grpc
from controlplane.vm.allocations import Allocations, holds
from controlplane.vm.sync import UNTRACKED
from controlplane.vm.tracker import HostTracker

_S = host_pb2
ENABLED_STATES = (_S.HOST_SCHEDULING_STATE_UNSPECIFIED, _S.HOST_SCHEDULING_STATE_ENABLED)
IN_MAINTENANCE = (_S.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE,
                  _S.HOST_SCHEDULING_STATE_MAINTENANCE)


class HostServicer(pb_grpc.HostServiceServicer):
    def __init__(self, ctx: OwnerContext, router: Router, tracker: HostTracker,
                 allocations: Allocations, maintenance: MaintenanceLoop) -> None:
        self.ctx = ctx
        self.router = router
        self.tracker = tracker
        self.allocations = allocations
        self.maintenance = maintenance

    def _answer(self, host: host_pb2.Host) -> host_pb2.Host:
        out = self.allocations.describe(host)  # with used/total cpus and memory
        out.owner = self.ctx.owner_of(host.host_id)
        if not out.scheduling:
            out.scheduling = host_pb2.HOST_SCHEDULING_STATE_ENABLED
        return out

    def _read(self, host_id: str, context: grpc.ServicerContext) -> tuple[host_pb2.Host, int]:
        kv = self.ctx.store.get(self.ctx.keys.host(host_id))
        if kv is None:
            raise errors.NotFound(f"no host {host_id!r}")
        return host_pb2.Host.FromString(kv.value), kv.mod_revision

    def AddHost(self, request: host_pb2.AddHostRequest, context: grpc.ServicerContext
                ) -> host_pb2.AddHostResponse:
        check_id(request.host_id, "host_id")
        check_address(request.address, "agent address")

        def local() -> host_pb2.AddHostResponse:
            try:
                ping = self.ctx.agents.stub(request.address, request.host_id).Ping(
                    agent_pb2.PingRequest(host_id=request.host_id),
                    timeout=min(self.ctx.config.get("host.pingTimeout"),
                                remaining(context)))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                    raise errors.Refused(err.details() or "refused") from err
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    raise errors.Refused(f"the agent at {request.address} does not serve host "
                                         f"{request.host_id!r}") from err
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # Something answers there, but not as an agent (an MDS, a node): not
                    # a reachability problem that a retry could solve.
                    raise errors.Refused(f"{request.address} is not a host agent (it does not "
                                         "serve AgentService)") from err
                raise errors.Unreachable(
                    f"agent at {request.address} unreachable: {err.details()}") from err
            host = host_pb2.Host(host_id=request.host_id, address=request.address,
                                 status=host_pb2.HOST_STATUS_CONNECTED, added_at=wiretime.now(),
                                 cpus=ping.cpus, memory_mb=ping.memory_mb)
            key = self.ctx.keys.host(request.host_id)
            result = self.ctx.write(
                [t.absent(key)], [t.put(key, host.SerializeToString())],
                errors.Exists(f"host {request.host_id!r} already exists"))
            self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            return host_pb2.AddHostResponse(host=self._answer(host))

        return route_unary(self.router, pb_grpc.HostServiceStub, "AddHost", request.host_id,
                           request, context, local)

    def GetHost(self, request: host_pb2.GetHostRequest, context: grpc.ServicerContext
                ) -> host_pb2.GetHostResponse:
        check_id(request.host_id, "host_id")
        return host_pb2.GetHostResponse(host=self._answer(self._read(request.host_id, context)[0]))

    def ListHosts(self, request: host_pb2.ListHostsRequest, context: grpc.ServicerContext
                  ) -> host_pb2.ListHostsResponse:
        hosts = sorted((e.value for e in self.ctx.hosts.entries()), key=lambda h: h.host_id)
        chunk, token = paging.page(hosts, lambda h: h.host_id, request.page_size,
                                   request.page_token)
        return host_pb2.ListHostsResponse(hosts=[self._answer(h) for h in chunk],
                                          next_page_token=token)

    def RemoveHost(self, request: host_pb2.RemoveHostRequest, context: grpc.ServicerContext
                   ) -> host_pb2.RemoveHostResponse:
        check_id(request.host_id, "host_id")

        def local() -> host_pb2.RemoveHostResponse:
            host, revision = self._read(request.host_id, context)
            placed = [e.value.vm_id for e in self.ctx.vms.by_index(request.host_id)
                      if e.value.state not in UNTRACKED]
            if placed and not request.force:
                raise errors.Refused(f"host {request.host_id} has {len(placed)} VMs placed on it "
                                     f"({', '.join(sorted(placed)[:5])}); move them or use force")
            key = self.ctx.keys.host(request.host_id)
            result = self.ctx.write(
                [t.mod_revision_is(key, revision)], [t.delete(key)],
                errors.Busy("host changed meanwhile; retry"))
            self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            return host_pb2.RemoveHostResponse(host=self._answer(host))

        return route_unary(self.router, pb_grpc.HostServiceStub, "RemoveHost", request.host_id,
                           request, context, local)

    def ReconnectHost(self, request: host_pb2.ReconnectHostRequest, context: grpc.ServicerContext
                      ) -> host_pb2.ReconnectHostResponse:
        check_id(request.host_id, "host_id")

        def local() -> host_pb2.ReconnectHostResponse:
            host, revision = self._read(request.host_id, context)
            if host.status == host_pb2.HOST_STATUS_FENCED:
                # An operator brought a fenced host back: ping it like a new one.
                host.status = host_pb2.HOST_STATUS_DISCONNECTED
                key = self.ctx.keys.host(request.host_id)
                result = self.ctx.write(
                    [t.mod_revision_is(key, revision)],
                    [t.put(key, host.SerializeToString())],
                    errors.Busy("host changed meanwhile; retry"))
                self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            outcome = self.tracker.sync_now(request.host_id)
            if outcome is not None and not outcome.reachable:
                raise errors.Unreachable(
                    f"host {request.host_id} at {host.address} is still unreachable")
            return host_pb2.ReconnectHostResponse(host=self._answer(self._read(request.host_id,
                                                                               context)[0]))

        return route_unary(self.router, pb_grpc.HostServiceStub, "ReconnectHost",
                           request.host_id, request, context, local)

    # -- scheduling: enable, disable, maintenance -------------------------------------

    def _set_scheduling(self, host_id: str, context: grpc.ServicerContext,
                        change: Callable[[host_pb2.Host], bool]) -> host_pb2.Host:
        """Read the host from etcd, let `change` edit it (False: nothing to write), write it
        by CAS; the host as it is afterwards."""
        for _ in range(5):
            host, revision = self._read(host_id, context)
            if not change(host):
                return host
            key = self.ctx.keys.host(host_id)
            try:
                result = self.ctx.write([t.mod_revision_is(key, revision)],
                                        [t.put(key, host.SerializeToString())],
                                        errors.Busy("host changed meanwhile; retry"))
            except errors.Busy:
                continue
            self.ctx.hosts.wait_for_revision(result.revision, 2.0)
            return host
        raise errors.Busy(f"host {host_id} kept changing; retry")

    def EnableHost(self, request: host_pb2.EnableHostRequest, context: grpc.ServicerContext
                   ) -> host_pb2.EnableHostResponse:
        check_id(request.host_id, "host_id")

        def change(host: host_pb2.Host) -> bool:
            if host.scheduling == _S.HOST_SCHEDULING_STATE_ENABLED:
                return False
            host.scheduling = _S.HOST_SCHEDULING_STATE_ENABLED
            host.ClearField("maintenance")  # ends a maintenance, finished or not
            return True

        def local() -> host_pb2.EnableHostResponse:
            return host_pb2.EnableHostResponse(
                host=self._answer(self._set_scheduling(request.host_id, context, change)))

        return route_unary(self.router, pb_grpc.HostServiceStub, "EnableHost",
                           request.host_id, request, context, local)

    def DisableHost(self, request: host_pb2.DisableHostRequest, context: grpc.ServicerContext
                    ) -> host_pb2.DisableHostResponse:
        check_id(request.host_id, "host_id")

        def change(host: host_pb2.Host) -> bool:
            if host.scheduling in IN_MAINTENANCE:
                raise errors.Refused(f"host {host.host_id} is in maintenance; EnableHost ends it")
            if host.scheduling == _S.HOST_SCHEDULING_STATE_DISABLED:
                return False
            host.scheduling = _S.HOST_SCHEDULING_STATE_DISABLED
            return True

        def local() -> host_pb2.DisableHostResponse:
            return host_pb2.DisableHostResponse(
                host=self._answer(self._set_scheduling(request.host_id, context, change)))

        return route_unary(self.router, pb_grpc.HostServiceStub, "DisableHost",
                           request.host_id, request, context, local)

    def StartHostMaintenance(self, request: host_pb2.StartHostMaintenanceRequest,
                             context: grpc.ServicerContext
                             ) -> host_pb2.StartHostMaintenanceResponse:
        check_id(request.host_id, "host_id")
        policy = request.policy or POLICY_ENUM[str(self.ctx.config.get("host.maintenancePolicy"))]

        def change(host: host_pb2.Host) -> bool:
            if host.scheduling == _S.HOST_SCHEDULING_STATE_MAINTENANCE:
                return False  # already empty
            if host.scheduling == _S.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE:
                if host.maintenance.policy == policy:
                    return False
                host.maintenance.policy = policy  # the rounds to come use the new policy
                return True
            vms = sum(1 for e in self.ctx.vms.by_index(host.host_id) if holds(e.value))
            host.scheduling = _S.HOST_SCHEDULING_STATE_PREPARING_MAINTENANCE
            host.maintenance.CopyFrom(host_pb2.HostMaintenance(
                policy=policy, started_at=wiretime.now(), vms_at_start=vms))
            return True

        def local() -> host_pb2.StartHostMaintenanceResponse:
            host = self._set_scheduling(request.host_id, context, change)
            self.maintenance.poke(request.host_id)
            return host_pb2.StartHostMaintenanceResponse(host=self._answer(host))

        return route_unary(self.router, pb_grpc.HostServiceStub, "StartHostMaintenance",
                           request.host_id, request, context, local)
