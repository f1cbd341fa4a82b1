"""The agent's gRPC server: AgentService over any Backend; SimControl over the sim, on a
port of its own (``--sim-control-listen``) or not at all.

The servicers are thin: they turn requests into backend calls and backend exceptions into
status codes (one table, ``STATUS_OF``), and build responses straight from the backend's
immutable snapshots. The thread pool is large because a start blocks its worker for the
whole start delay, and a management plane restarting a fleet sends many at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from controlplane import errors, wiretime
from controlplane.agent.backend import (
    Backend,
    BackendError,
    VmInfo,
    VmState,
)
from controlplane.agent.blockjobs import AgentBlockJobsServiceServicer
from controlplane.agent.sim import DURATION_SETTINGS, SETTING_NAMES, SimBackend, SimSettings
from controlplane.agent.volumes import VolumeSessions
from controlplane.rpc import RpcServer, status_of
from controlplane.security.tls import Transport
from controlplane.v1 import agent_pb2, agent_pb2_grpc, blockjob_pb2, blockjob_pb2_grpc

__all__ = [
    "AGENT_SERVICE",
    "SIM_CONTROL",
    "AgentServer",
    "AgentServicer",
    "SimControlServiceServicer",
    "build_backend",
    "serve_agent",
]

log = logging.getLogger(__name__)

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
SIM_CONTROL_WORKERS = 4
SIM_CONTROL = agent_pb2.DESCRIPTOR.services_by_name["SimControlService"].full_name
BLOCK_JOBS = blockjob_pb2.DESCRIPTOR.services_by_name["AgentBlockJobsService"].full_name
MAX_WORKERS = 256
HEARTBEAT = 5.0  # seconds between WatchHostEvents messages when nothing happens

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def _mapped(quiet: bool = False) -> Callable[[F], F]:
    """Log a BackendError refusal of a call that changes things (every backend error is a
    `controlplane.errors` kind: the interceptor answers it with its `rpc.STATUS` code)
    (``quiet`` for the read-only calls a partitioned host fails all the time)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(self, request, context)
            except BackendError as exc:
                if not quiet:
                    code = status_of(exc) or grpc.StatusCode.INTERNAL
                    log.info("%s refused: %s: %s", fn.__name__, code.name, exc)
                raise  # a controlplane.errors kind: the server's interceptor answers it

        return wrapper  # type: ignore[return-value]

    return decorate


def _vm(vm: VmInfo) -> agent_pb2.AgentVm:
    return agent_pb2.AgentVm(vm_id=vm.vm_id, state=int(vm.state), generation=vm.generation,
                             incoming=vm.incoming)


def _migrating(backend: Backend, method: str) -> Callable[..., Any]:
    """The backend's live-migration method; Unsupported (UNIMPLEMENTED) when it has none."""
    fn = getattr(backend, method, None)
    if fn is None:
        raise errors.Unsupported(f"the {backend.name} backend does not live-migrate")
    return fn


def _vm_response(response: type[R], host_id: str, vm: VmInfo) -> R:
    """The answer of a VM operation: every operation has its own type, all of this shape."""
    return response(host_id=host_id, vm=_vm(vm))


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """AgentService over a Backend (no backend-specific code here). ``volumes``: the
    block-store client sessions of the VMs started with volumes (None: a start with
    volumes is refused, as this agent could not hold them)."""

    def __init__(self, backend: Backend, volumes: VolumeSessions | None = None) -> None:
        self.backend = backend
        self.volumes = volumes

    @_mapped(quiet=True)
    def ListHosts(self, request: agent_pb2.AgentServiceListHostsRequest,
                  context: grpc.ServicerContext) -> agent_pb2.AgentServiceListHostsResponse:
        return agent_pb2.AgentServiceListHostsResponse(host_ids=self.backend.host_ids(),
                                                backend=self.backend.name)

    @_mapped(quiet=True)
    def Ping(self, request: agent_pb2.PingRequest,
             context: grpc.ServicerContext) -> agent_pb2.PingResponse:
        info = self.backend.ping(request.host_id)
        return agent_pb2.PingResponse(host_id=request.host_id, cpus=info.cpus,
                                      memory_mb=info.memory_mb, vm_count=info.vm_count,
                                      backend=self.backend.name)

    @_mapped(quiet=True)
    def ListVms(self, request: agent_pb2.AgentServiceListVmsRequest,
                context: grpc.ServicerContext) -> agent_pb2.AgentServiceListVmsResponse:
        listing = self.backend.list_vms(request.host_id)
        resp = agent_pb2.AgentServiceListVmsResponse(host_id=request.host_id,
                                         reports_ops=listing.reports_ops)
        add_vm = resp.vms.add
        for vm_id, state, generation, incoming in listing.vms:
            add_vm(vm_id=vm_id, state=state, generation=generation, incoming=incoming)
        add_op = resp.ops.add
        for op in listing.ops:
            add_op(op_id=op.op_id, vm_id=op.vm_id, kind=op.kind, generation=op.generation,
                   started_at=wiretime.stamp(op.started_at))
        return resp

    @_mapped()
    def StartVm(self, request: agent_pb2.AgentServiceStartVmRequest,
                context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceStartVmResponse:
        if request.volumes:
            # Volumes first, as a block client opens them before qemu runs: a VM that runs
            # always holds its volumes, and one whose volumes are refused never starts.
            if self.volumes is None:
                raise errors.Refused("this agent holds no volume sessions")
            self.backend.ping(request.host_id)  # a host that is down opens nothing
            self.volumes.attach(request.host_id, request.vm_id, request.generation,
                                request.volumes)
        try:
            vm = self.backend.start_vm(
                request.host_id, request.vm_id, generation=request.generation,
                op_id=request.op_id, cpus=request.cpus, memory_mb=request.memory_mb,
                disk=request.disk_path, caller_active=context.is_active)
        except (BackendError, errors.DomainError) as exc:
            if request.volumes and self.volumes is not None and \
                    not isinstance(exc, errors.Unreachable):
                # Not started (a partitioned host's start may have run: keep those).
                self.volumes.detach(request.host_id, request.vm_id)
            raise
        return _vm_response(agent_pb2.AgentServiceStartVmResponse, request.host_id, vm)

    @_mapped()
    def StopVm(self, request: agent_pb2.AgentServiceStopVmRequest,
               context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceStopVmResponse:
        vm = self.backend.stop_vm(request.host_id, request.vm_id, op_id=request.op_id,
                                  force=request.force)
        self._detach(request.host_id, request.vm_id)
        return _vm_response(agent_pb2.AgentServiceStopVmResponse, request.host_id, vm)

    def _detach(self, host_id: str, vm_id: str) -> None:
        """The VM is stopped: close its volume sessions."""
        if self.volumes is not None:
            self.volumes.detach(host_id, vm_id)

    @_mapped()
    def DestroyVm(self, request: agent_pb2.AgentServiceDestroyVmRequest,
                  context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceDestroyVmResponse:
        vm = self.backend.destroy_vm(request.host_id, request.vm_id, op_id=request.op_id)
        self._detach(request.host_id, request.vm_id)
        return _vm_response(agent_pb2.AgentServiceDestroyVmResponse, request.host_id, vm)

    @_mapped()
    def RebootVm(self, request: agent_pb2.AgentServiceRebootVmRequest,
                 context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceRebootVmResponse:
        vm = self.backend.reboot_vm(request.host_id, request.vm_id, op_id=request.op_id)
        return _vm_response(agent_pb2.AgentServiceRebootVmResponse, request.host_id, vm)

    @_mapped()
    def PauseVm(self, request: agent_pb2.AgentServicePauseVmRequest,
                context: grpc.ServicerContext
    ) -> agent_pb2.AgentServicePauseVmResponse:
        vm = self.backend.pause_vm(request.host_id, request.vm_id, op_id=request.op_id)
        return _vm_response(agent_pb2.AgentServicePauseVmResponse, request.host_id, vm)

    @_mapped()
    def ResumeVm(self, request: agent_pb2.AgentServiceResumeVmRequest,
                 context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceResumeVmResponse:
        vm = self.backend.resume_vm(request.host_id, request.vm_id, op_id=request.op_id)
        return _vm_response(agent_pb2.AgentServiceResumeVmResponse, request.host_id, vm)

    @_mapped()
    def PrepareIncomingVm(self, request: agent_pb2.AgentServicePrepareIncomingVmRequest,
                          context: grpc.ServicerContext
    ) -> agent_pb2.AgentServicePrepareIncomingVmResponse:
        if request.volumes:  # as a start: the copy holds its volumes before it exists
            if self.volumes is None:
                raise errors.Refused("this agent holds no volume sessions")
            self.backend.ping(request.host_id)
            self.volumes.attach(request.host_id, request.vm_id, request.generation,
                                request.volumes)
        try:
            vm, uri = _migrating(self.backend, "prepare_incoming")(
                request.host_id, request.vm_id, generation=request.generation,
                op_id=request.op_id, cpus=request.cpus, memory_mb=request.memory_mb,
                disk=request.disk_path, source_host_id=request.source_host_id)
        except (BackendError, errors.DomainError) as exc:
            if request.volumes and not isinstance(exc, errors.Unreachable):
                self._detach(request.host_id, request.vm_id)
            raise
        return agent_pb2.AgentServicePrepareIncomingVmResponse(host_id=request.host_id,
                                                               vm=_vm(vm), uri=uri)

    @_mapped()
    def MigrateVm(self, request: agent_pb2.AgentServiceMigrateVmRequest,
                  context: grpc.ServicerContext) -> agent_pb2.AgentServiceMigrateVmResponse:
        done = _migrating(self.backend, "migrate_out")(
            request.host_id, request.vm_id, generation=request.generation,
            target_generation=request.target_generation, target_host_id=request.target_host_id,
            target_uri=request.target_uri, op_id=request.op_id,
            timeout=wiretime.span(request.timeout) if request.HasField("timeout") else 0.0)
        self._detach(request.host_id, request.vm_id)  # the target runs it, with its sessions
        return agent_pb2.AgentServiceMigrateVmResponse(
            host_id=request.host_id, vm=_vm(done.vm), total=wiretime.duration(done.total),
            downtime=wiretime.duration(done.downtime))

    @_mapped()
    def AbortIncomingVm(self, request: agent_pb2.AgentServiceAbortIncomingVmRequest,
                        context: grpc.ServicerContext
    ) -> agent_pb2.AgentServiceAbortIncomingVmResponse:
        destroyed = _migrating(self.backend, "abort_incoming")(
            request.host_id, request.vm_id, generation=request.generation, op_id=request.op_id)
        self._detach(request.host_id, request.vm_id)  # the incoming copy is gone
        return agent_pb2.AgentServiceAbortIncomingVmResponse(host_id=request.host_id,
                                                             destroyed=destroyed)

    @_mapped(quiet=True)
    def SyncVmDeviceInfo(self, request: agent_pb2.SyncVmDeviceInfoRequest,
                         context: grpc.ServicerContext) -> agent_pb2.SyncVmDeviceInfoResponse:
        devices = self.backend.device_info(request.host_id, request.vm_id)
        return agent_pb2.SyncVmDeviceInfoResponse(devices=[
            agent_pb2.Device(name=d.name, address=d.address, mac=d.mac) for d in devices])

    @_mapped()
    def Fence(self, request: agent_pb2.FenceRequest,
              context: grpc.ServicerContext) -> agent_pb2.FenceResponse:
        killed = self.backend.fence(request.host_id)
        return agent_pb2.FenceResponse(host_id=request.host_id, vms_killed=killed)

    def WatchHostEvents(self, request: agent_pb2.AgentServiceWatchHostEventsRequest,
                        context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.AgentServiceWatchHostEventsResponse]:
        """Stream the backend's events (batched) with a heartbeat every HEARTBEAT seconds;
        ends when the caller leaves or the agent stops (the hub closes every subscription).
        The stream holds one of the server's stream permits (rpc.py's stream budget), one
        per watching node."""
        sub = self.backend.events.subscribe()
        context.add_callback(sub.close)  # the caller left: wake the wait below at once
        try:
            while context.is_active() and not sub.closed:
                events, resync = sub.get(HEARTBEAT)
                if sub.closed:
                    return
                yield agent_pb2.AgentServiceWatchHostEventsResponse(resync=resync, events=[
                    agent_pb2.AgentHostEvent(host_id=e.host_id, vm_id=e.vm_id, state=e.state,
                                             reason=e.reason, at=wiretime.stamp(e.at))
                    for e in events])
        finally:
            sub.close()


class SimControlServiceServicer(agent_pb2_grpc.SimControlServiceServicer):
    """Fault injection on a SimBackend (served only when the backend is the sim)."""

    def __init__(self, sim: SimBackend) -> None:
        self.sim = sim

    @_mapped()
    def Configure(self, request: agent_pb2.ConfigureRequest,
                  context: grpc.ServicerContext) -> agent_pb2.ConfigureResponse:
        changes = {name: _setting(request, name) for name in SETTING_NAMES
                   if request.HasField(name)}
        return settings_to_proto(self.sim.configure(**changes))

    @_mapped()
    def SetHostCondition(self, request: agent_pb2.SetHostConditionRequest,
                         context: grpc.ServicerContext) -> agent_pb2.SetHostConditionResponse:
        condition = self.sim.set_condition(request.host_id, request.condition)
        return agent_pb2.SetHostConditionResponse(host_id=request.host_id,
                                                  condition=int(condition))

    @_mapped()
    def CrashVm(self, request: agent_pb2.CrashVmRequest,
                context: grpc.ServicerContext) -> agent_pb2.CrashVmResponse:
        return _vm_response(agent_pb2.CrashVmResponse, request.host_id,
                            self.sim.crash_vm(request.host_id, request.vm_id))

    @_mapped()
    def SeedVms(self, request: agent_pb2.SeedVmsRequest,
                context: grpc.ServicerContext) -> agent_pb2.SeedVmsResponse:
        seeded = self.sim.seed_vms(
            request.host_id, [VmInfo(v.vm_id, v.state, v.generation) for v in request.vms])
        return agent_pb2.SeedVmsResponse(seeded=seeded)


def _setting(request: agent_pb2.ConfigureRequest, name: str) -> object:
    value = getattr(request, name)
    return wiretime.span(value) if name in DURATION_SETTINGS else value


def settings_to_proto(settings: SimSettings) -> agent_pb2.ConfigureResponse:
    """The sim's settings as the API shows them (delays as Durations)."""
    return agent_pb2.ConfigureResponse(**{
        name: wiretime.duration(value) if name in DURATION_SETTINGS else value
        for name, value in dataclasses.asdict(settings).items()})


class AgentServer:
    """One agent: a gRPC server with AgentService (+ SimControl for the sim), health and
    reflection, over one backend."""

    def __init__(self, backend: Backend, listen: str, max_workers: int = MAX_WORKERS,
                 block_backend: str = "sim", *, tls: Transport,
                 sim_control_listen: str | None = None,
                 volume_state_file: str | None = None) -> None:
        """``block_backend`` is for the sim backend; a backend with its own block driver
        (libvirt: ``block_driver()``) uses it for its VMs' disks whatever is asked.

        ``sim_control_listen``: where the sim's fault injection (SimControl) is served, on a
        server of its own (same transport, policy admin); never on ``listen``, so what a
        node reaches (AgentService, node certificates only) offers no fault injection.
        None: not served.

        ``volume_state_file``: where the VMs' volume sessions are kept across agent
        restarts (`agent/volumes.py`); None: memory only."""
        if sim_control_listen and not isinstance(backend, SimBackend):
            raise ValueError("--sim-control-listen is for the sim backend only")
        self.sim_rpc = (RpcServer(sim_control_listen, tls=tls, max_workers=SIM_CONTROL_WORKERS)
                        if sim_control_listen else None)
        self.sim_port = 0
        self.backend = backend
        self.listen = listen
        block_driver = getattr(backend, "block_driver", None)
        self.block_jobs = (AgentBlockJobsServiceServicer("libvirt", block_driver())
                           if block_driver is not None
                           else AgentBlockJobsServiceServicer(block_backend))
        self.rpc = RpcServer(listen, tls=tls, max_workers=max_workers)
        self.port = 0
        self._stopped = False
        holds = getattr(backend, "has_vm", None)
        self.volumes = VolumeSessions(tls, **({"holds": holds} if holds else {}),
                                      state_path=volume_state_file)

    def _runs(self) -> Callable[[str, str, int], bool | None]:
        """Whether the backend still runs a VM at a generation (for restoring its volume
        sessions): listed and not stopped; None when the host cannot be listed now."""
        listed: dict[str, dict[str, VmInfo] | None] = {}

        def runs(host_id: str, vm_id: str, generation: int) -> bool | None:
            if host_id not in listed:
                try:
                    listed[host_id] = {v.vm_id: v for v in self.backend.list_vms(host_id).vms}
                except (BackendError, errors.DomainError) as exc:
                    log.warning("host %s: VMs not listed, its volume sessions are kept: %s",
                                host_id, exc)
                    listed[host_id] = None
            vms = listed[host_id]
            if vms is None:
                return None
            vm = vms.get(vm_id)
            return vm is not None and vm.generation == generation and \
                vm.state != VmState.STOPPED

        return runs

    def start(self) -> AgentServer:
        """Bind and serve; raises RuntimeError when the address cannot be bound. The volume
        sessions of the VMs still running from before a restart are taken back first (the
        re-attach itself runs on the keepalive thread)."""
        self.volumes.restore(self._runs())
        self.rpc.add(agent_pb2_grpc.add_AgentServiceServicer_to_server,
                     AgentServicer(self.backend, self.volumes), AGENT_SERVICE)
        self.rpc.add(blockjob_pb2_grpc.add_AgentBlockJobsServiceServicer_to_server, self.block_jobs,
                     BLOCK_JOBS)
        self.port = self.rpc.start()
        if self.sim_rpc is not None:
            assert isinstance(self.backend, SimBackend)  # __init__ refused anything else
            self.sim_rpc.add(agent_pb2_grpc.add_SimControlServiceServicer_to_server,
                             SimControlServiceServicer(self.backend), SIM_CONTROL)
            try:
                self.sim_port = self.sim_rpc.start()
            except RuntimeError:
                self.rpc.stop(0)
                raise
            log.info("sim control (fault injection) on %s (port %d)",
                     self.sim_rpc.listen, self.sim_port)
        hosts = self.backend.host_ids()
        log.info("agent (%s backend) listening on %s (port %d), serving %d hosts: %s",
                 self.backend.name, self.listen, self.port, len(hosts),
                 ", ".join(hosts[:5]) + (", ..." if len(hosts) > 5 else ""))
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Health NOT_SERVING, abort the operations in progress (their workers would
        otherwise keep the process alive for a whole start delay), then stop serving."""
        if self._stopped:
            return
        self._stopped = True
        self.rpc.health.enter_graceful_shutdown()
        self.backend.close()
        self.volumes.close()
        self.block_jobs.close()
        if self.sim_rpc is not None:
            self.sim_rpc.stop(0)
        self.rpc.stop(grace)
        log.info("agent stopped")

    def wait(self, timeout: float | None = None) -> bool:
        return self.rpc.wait(timeout)


def build_backend(args: argparse.Namespace) -> Backend:
    """The backend the agent command asked for (``sim`` or ``libvirt``)."""
    if args.backend == "libvirt":
        return build_libvirt_backend(args)
    if args.backend != "sim":  # argparse choices make this unreachable from the command
        raise ValueError(f"unknown backend {args.backend!r}")
    settings = SimSettings(start_delay=args.start_delay, stop_delay=args.stop_delay,
                           reboot_delay=args.reboot_delay, pause_delay=args.pause_delay,
                           report_ops=args.report_ops)
    host_ids = [f"{args.host_prefix}{i}" for i in range(args.hosts)]
    return SimBackend(host_ids, settings, cpus=args.cpus, memory_mb=args.memory_mb,
                      seed=args.seed, state_file=getattr(args, "sim_state_file", None))


def build_libvirt_backend(args: argparse.Namespace) -> Backend:
    """A LibvirtBackend for ``--host-id`` (imported here: the sim needs no libvirt)."""
    if not args.host_id:
        raise ValueError("--backend libvirt needs --host-id")
    from controlplane.agent import accel, guest  # noqa: PLC0415
    from controlplane.agent.libvirt.backend import LibvirtBackend  # noqa: PLC0415

    kernel, initrd = args.guest_kernel, args.guest_initrd
    image = None
    if kernel == "":  # the project's guest (built into its cache once, checksummed)
        image = guest.ensure_image()
        kernel, initrd = str(image.kernel), str(image.initrd)
    elif kernel == "none":
        kernel = initrd = ""
    return LibvirtBackend(
        args.host_id, args.libvirt_uri, accel=accel.resolve_accel(args.accel, image),
        stop_timeout=args.stop_timeout, boot_timeout=getattr(args, "boot_timeout", 0.0),
        state_dir=args.state_dir or "", image_dir=args.image_dir or "",
        disk_mb=args.disk_mb, kernel=kernel, initrd=initrd,
        cmdline=args.guest_cmdline or guest.kernel_cmdline())


def serve_agent(args: argparse.Namespace, tls: Transport) -> AgentServer:
    """Build the backend from the parsed ``agent`` command line and start serving."""
    return AgentServer(build_backend(args), args.listen,
                       block_backend=getattr(args, "block_backend", "sim"), tls=tls,
                       sim_control_listen=getattr(args, "sim_control_listen", None),
                       volume_state_file=volume_state_path(args)).start()


def volume_state_path(args: argparse.Namespace) -> str | None:
    """Where the agent keeps its volume sessions: ``--volume-state-file``, else next to what
    already outlives the process (libvirt: ``--state-dir``; the sim: ``--sim-state-file``);
    None: nowhere (the VMs die with the process too, so nothing is lost)."""
    explicit = getattr(args, "volume_state_file", None)
    if explicit:
        return str(explicit)
    if args.backend == "libvirt" and getattr(args, "state_dir", None):
        return os.path.join(args.state_dir, "volume-sessions.json")
    sim_state = getattr(args, "sim_state_file", None)
    return f"{sim_state}.volumes.json" if sim_state else None
