"""The simulated MDS: StorageMds over in-memory volumes, with faults injected per method.

Why it exists: the MDS client's try-next policy is about how metadata servers fail (one hangs,
one refuses, one answers an operation error), and a real block store cannot be made to do
that on demand. Each sim process is one MDS; SimMdsControl (same port) sets a fault per
StorageMds method (or for all of them):

- OK: answer normally;
- SLOW(delay): wait, then apply and answer, even if the caller gave up meanwhile (a slow
  create still creates: that is why a non-idempotent call must not go on after a timeout);
- HANG: never answer, never apply; the handler returns when the caller's deadline passes;
- REFUSE: answer UNAVAILABLE at once (an MDS that is not serving; a dead one gives
  connection refused, which tests get from an address nobody listens on);
- FAIL(code): answer an operation error (INTERNAL by default) without applying.

Volume ids are names (`controlplane.rpc.check_name`), as a real store that names a file
after each volume needs them: INVALID_ARGUMENT otherwise, before any fault applies.

Client sessions (AttachVolume, KeepAliveVolume, DetachVolume; `mds/sessions.py`): a host's
agent holds a session per volume of each VM it runs; one whose keepalives stop for the
store's session timeout is blocklisted (FAILED_PRECONDITION from then on), and
GetVolumeClients answers the live ones (next to any set by SetVolumeClients). An agent may
open, keep and close sessions only for the hosts its certificate names (NodeRestriction).
Sessions, unlike volumes, can be shared by several sim processes (`--shared-state FILE`),
as one store's MDS share their metadata.

Limits: every sim process has its own volumes (a real MDS cluster shares its metadata), so a
test seeds each MDS it wants to answer. State is memory only: a restarted sim is empty (but
sessions in a shared-state file survive it).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from cryptography import x509 as cx509

from controlplane import errors, names, wiretime
from controlplane.mds.sessions import Blocklisted, Session, SessionTable
from controlplane.rpc import RpcServer, check_name
from controlplane.security.tls import Transport
from controlplane.security.x509 import speaks_for, subject_of
from controlplane.v1 import mds_pb2, mds_pb2_grpc

__all__ = [
    "SIM_MDS_CONTROL",
    "STORAGE_MDS",
    "Fault",
    "MdsServer",
    "SimMds",
    "SimMdsControlServiceServicer",
    "StorageMdsServiceServicer",
]

log = logging.getLogger(__name__)
S = TypeVar("S")

STORAGE_MDS = mds_pb2.DESCRIPTOR.services_by_name["StorageMdsService"].full_name
SIM_MDS_CONTROL = mds_pb2.DESCRIPTOR.services_by_name["SimMdsControlService"].full_name
METHODS = tuple(m.name for m in mds_pb2.DESCRIPTOR.services_by_name["StorageMdsService"].methods)
MAX_WORKERS = 64
_HANG_POLL = 0.05  # how often a hanging handler checks whether its caller is still there

OK = mds_pb2.SIM_MDS_FAULT_MODE_OK
SLOW = mds_pb2.SIM_MDS_FAULT_MODE_SLOW
HANG = mds_pb2.SIM_MDS_FAULT_MODE_HANG
REFUSE = mds_pb2.SIM_MDS_FAULT_MODE_REFUSE
FAIL = mds_pb2.SIM_MDS_FAULT_MODE_FAIL

T = TypeVar("T")


@dataclass(frozen=True)
class Fault:
    """One method's fault (immutable; the table of them is swapped whole)."""

    mode: int = OK
    delay: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    details: str = ""

    @classmethod
    def from_proto(cls, msg: mds_pb2.SimMdsFault | mds_pb2.SetFaultRequest) -> Fault:
        if msg.mode not in (OK, SLOW, HANG, REFUSE, FAIL, mds_pb2.SIM_MDS_FAULT_MODE_UNSPECIFIED):
            raise ValueError(f"unknown fault mode {msg.mode}")
        delay = wiretime.span(msg.delay_seconds)
        if not delay >= 0:
            raise ValueError(f"delay_seconds must be >= 0, got {delay}")
        code = grpc.StatusCode.INTERNAL
        if msg.code:
            by_value = {c.value[0]: c for c in grpc.StatusCode}
            if msg.code not in by_value or msg.code == grpc.StatusCode.OK.value[0]:
                raise ValueError(f"code {msg.code} is not a gRPC error code")
            code = by_value[msg.code]
        return cls(msg.mode or OK, delay, code, msg.details)

    def to_proto(self, method: str) -> mds_pb2.SimMdsFault:
        return mds_pb2.SimMdsFault(method=method, mode=self.mode,
                                   delay_seconds=wiretime.duration(self.delay),
                                   code=self.code.value[0], details=self.details)


class SimMds:
    """The sim MDS's state: volumes, their clients, faults and call counts, under one lock
    (held only for dict updates, never across a delay)."""

    def __init__(self, sessions: SessionTable | None = None) -> None:
        self.sessions = sessions if sessions is not None else SessionTable()
        self._lock = threading.Lock()
        self._volumes: dict[str, mds_pb2.MdsVolume] = {}
        self._clients: dict[str, tuple[mds_pb2.MdsVolumeClient, ...]] = {}
        self._faults: dict[str, Fault] = {}
        self._calls: Counter[str] = Counter()
        self.stopping = threading.Event()  # wakes hanging and slow handlers on shutdown

    # -- fault injection ------------------------------------------------------------------

    def set_fault(self, method: str, fault: Fault) -> None:
        if method and method not in METHODS:
            raise ValueError(f"StorageMds has no method {method!r} (has: {', '.join(METHODS)})")
        with self._lock:
            if fault.mode == OK:
                self._faults.pop(method, None)
            else:
                self._faults[method] = fault

    def fault_of(self, method: str) -> Fault:
        """The method's own fault, else the one for every method, else OK; counts the call."""
        with self._lock:
            self._calls[method] += 1
            return self._faults.get(method) or self._faults.get("") or Fault()

    def reset(self, volumes: bool) -> None:
        with self._lock:
            self._faults.clear()
            self._calls.clear()
            if volumes:
                self._volumes.clear()
                self._clients.clear()
        if volumes:
            self.sessions.clear()

    def state(self, answer: type[S]) -> S:
        """Faults, call counts and volume ids, as `answer` (every control call answers them,
        each in its own type)."""
        with self._lock:
            return answer(
                faults=[f.to_proto(m) for m, f in sorted(self._faults.items())],
                calls=dict(self._calls), volume_ids=sorted(self._volumes))

    def set_clients(self, volume_id: str, clients: Sequence[mds_pb2.MdsVolumeClient]) -> None:
        check_name(volume_id, "volume_id")
        with self._lock:
            if volume_id not in self._volumes:
                raise KeyError(volume_id)
            self._clients[volume_id] = tuple(clients)

    # -- the metadata ---------------------------------------------------------------------

    def create(self, volume_id: str, size_bytes: int) -> mds_pb2.MdsVolume:
        check_name(volume_id, "volume_id")
        if size_bytes <= 0:
            raise ValueError(f"size_bytes must be > 0, got {size_bytes}")
        volume = mds_pb2.MdsVolume(volume_id=volume_id, size_bytes=size_bytes,
                                   created_at=wiretime.now())
        with self._lock:
            if volume_id in self._volumes:
                raise FileExistsError(volume_id)
            self._volumes[volume_id] = volume
        log.info("volume %s created (%d bytes)", volume_id, size_bytes)
        return volume

    def get(self, volume_id: str) -> mds_pb2.MdsVolume:
        check_name(volume_id, "volume_id")
        with self._lock:
            return self._volumes[volume_id]  # KeyError: NOT_FOUND

    def clients(self, volume_id: str) -> tuple[mds_pb2.MdsVolumeClient, ...]:
        """The clients set by SetVolumeClients, then every live session's."""
        check_name(volume_id, "volume_id")
        with self._lock:
            if volume_id not in self._volumes:
                raise KeyError(volume_id)
            static = self._clients.get(volume_id, ())
        live = tuple(mds_pb2.MdsVolumeClient(client_id=s.client_id, address=s.address,
                                             session_id=s.session_id)
                     for s in self.sessions.live(volume_id))
        return static + live

    def attach(self, volume_id: str, client_id: str, session_id: str,
               address: str) -> Session:
        self.get(volume_id)  # KeyError: NOT_FOUND (a session on no volume means nothing)
        check_name(session_id, "session_id")
        session = self.sessions.attach(volume_id, client_id, session_id, address)
        log.info("volume %s: client %s session %s attached", volume_id, client_id, session_id)
        return session

    def delete(self, volume_id: str) -> None:
        check_name(volume_id, "volume_id")
        with self._lock:
            del self._volumes[volume_id]
            self._clients.pop(volume_id, None)
        log.info("volume %s deleted", volume_id)


def _faulted(method: str, sim: SimMds, context: grpc.ServicerContext,
             apply: Callable[[], T], volume_id: str | None = None) -> T:
    """Run ``apply`` as the method's fault says; map the sim's exceptions to status codes.
    ``volume_id`` (the request's) is checked first: a bad name is the caller's error,
    whatever fault is set."""
    fault = sim.fault_of(method)
    if volume_id is not None:
        try:
            check_name(volume_id, "volume_id")
        except errors.Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if fault.mode == HANG:
        while context.is_active() and not sim.stopping.wait(_HANG_POLL):
            pass
        log.info("%s: hung until the caller left", method)
        context.abort(grpc.StatusCode.UNAVAILABLE, "sim MDS: hung (the caller should be gone)")
    if fault.mode == REFUSE:
        context.abort(grpc.StatusCode.UNAVAILABLE, fault.details or "sim MDS: refusing")
    if fault.mode == FAIL:
        context.abort(fault.code, fault.details or f"sim MDS: injected {fault.code.name}")
    if fault.mode == SLOW:
        sim.stopping.wait(fault.delay)
    try:
        return apply()
    except KeyError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND,
                      f"volume {errors.shown(str(exc.args[0]))} not found")
    except FileExistsError as exc:
        context.abort(grpc.StatusCode.ALREADY_EXISTS,
                      f"volume {errors.shown(str(exc.args[0]))} already exists")
    except ValueError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    raise AssertionError("unreachable: context.abort raises")


class StorageMdsServiceServicer(mds_pb2_grpc.StorageMdsServiceServicer):
    """StorageMds over a SimMds, every call through its fault."""

    def __init__(self, sim: SimMds) -> None:
        self.sim = sim

    def GetVolumeClients(self, request: mds_pb2.StorageMdsServiceGetVolumeClientsRequest,
                         context: grpc.ServicerContext
                         ) -> mds_pb2.StorageMdsServiceGetVolumeClientsResponse:
        clients = _faulted("GetVolumeClients", self.sim, context,
                           lambda: self.sim.clients(request.volume_id), request.volume_id)
        return mds_pb2.StorageMdsServiceGetVolumeClientsResponse(volume_id=request.volume_id,
                                                                 clients=clients)

    def GetVolume(self, request: mds_pb2.GetVolumeRequest,
                  context: grpc.ServicerContext) -> mds_pb2.GetVolumeResponse:
        return mds_pb2.GetVolumeResponse(volume=_faulted(
            "GetVolume", self.sim, context, lambda: self.sim.get(request.volume_id),
            request.volume_id))

    def CreateVolume(self, request: mds_pb2.CreateVolumeRequest,
                     context: grpc.ServicerContext) -> mds_pb2.CreateVolumeResponse:
        return mds_pb2.CreateVolumeResponse(volume=_faulted(
            "CreateVolume", self.sim, context,
            lambda: self.sim.create(request.volume_id, request.size_bytes), request.volume_id))

    def DeleteVolume(self, request: mds_pb2.DeleteVolumeRequest,
                     context: grpc.ServicerContext) -> mds_pb2.DeleteVolumeResponse:
        _faulted("DeleteVolume", self.sim, context, lambda: self.sim.delete(request.volume_id),
                 request.volume_id)
        return mds_pb2.DeleteVolumeResponse(volume_id=request.volume_id)

    def AttachVolume(self, request: mds_pb2.AttachVolumeRequest,
                     context: grpc.ServicerContext) -> mds_pb2.AttachVolumeResponse:
        session = _session_call("AttachVolume", self.sim, context, lambda: self.sim.attach(
            request.volume_id, request.client_id, request.session_id, request.address),
            request.volume_id, request.client_id)
        return mds_pb2.AttachVolumeResponse(
            session=session_proto(session),
            session_timeout=wiretime.duration(self.sim.sessions.timeout()))

    def KeepAliveVolume(self, request: mds_pb2.KeepAliveVolumeRequest,
                        context: grpc.ServicerContext) -> mds_pb2.KeepAliveVolumeResponse:
        session = _session_call("KeepAliveVolume", self.sim, context,
                                lambda: self.sim.sessions.keepalive(
                                    request.volume_id, request.client_id, request.session_id),
                                request.volume_id, request.client_id)
        return mds_pb2.KeepAliveVolumeResponse(
            session=session_proto(session),
            session_timeout=wiretime.duration(self.sim.sessions.timeout()))

    def DetachVolume(self, request: mds_pb2.DetachVolumeRequest,
                     context: grpc.ServicerContext) -> mds_pb2.DetachVolumeResponse:
        detached = _session_call("DetachVolume", self.sim, context,
                                 lambda: self.sim.sessions.detach(
                                     request.volume_id, request.client_id, request.session_id),
                                 request.volume_id, request.client_id)
        if detached:
            log.info("volume %s: client %s session %s detached", request.volume_id,
                     request.client_id, request.session_id)
        return mds_pb2.DetachVolumeResponse(detached=detached)


def session_proto(session: Session) -> mds_pb2.MdsSession:
    return mds_pb2.MdsSession(
        session_id=session.session_id, volume_id=session.volume_id,
        client_id=session.client_id, address=session.address,
        attached_at=wiretime.stamp(session.attached_at),
        last_keepalive=wiretime.stamp(session.last_keepalive), blocklisted=session.blocklisted)


def _check_client(context: grpc.ServicerContext, client_id: str) -> None:
    """NodeRestriction for sessions: an agent certificate may hold sessions only for the
    hosts it names (a node certificate, or plaintext --insecure, may for any)."""
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    if not pems:
        return
    try:
        cert = cx509.load_pem_x509_certificate(pems[0])
    except ValueError:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "unreadable client certificate")
    if subject_of(cert)[1] == "agent" and not speaks_for(cert, client_id):
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"{subject_of(cert)[0]} may not hold sessions for client "
                      f"{errors.shown(client_id)}: its certificate does not name that host")


def _session_call(method: str, sim: SimMds, context: grpc.ServicerContext,
                  apply: Callable[[], T], volume_id: str, client_id: str) -> T:
    """A session call through its fault; a blocklisted session (or one of another client) is
    FAILED_PRECONDITION: the store refuses it in its current state, whichever MDS is asked."""
    _check_client(context, client_id)

    def guarded() -> T:
        try:
            return apply()
        except Blocklisted as exc:
            log.warning("%s refused: %s", method, exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise AssertionError("unreachable: context.abort raises")

    return _faulted(method, sim, context, guarded, volume_id)


class SimMdsControlServiceServicer(mds_pb2_grpc.SimMdsControlServiceServicer):
    """Fault injection and inspection (never faulted itself)."""

    def __init__(self, sim: SimMds) -> None:
        self.sim = sim

    def SetFault(self, request: mds_pb2.SetFaultRequest,
                 context: grpc.ServicerContext) -> mds_pb2.SetFaultResponse:
        try:
            self.sim.set_fault(request.method, Fault.from_proto(request))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("fault of %s: %s", request.method or "every method",
                 names.short(mds_pb2.SimMdsFaultMode, request.mode))
        return self.sim.state(mds_pb2.SetFaultResponse)

    def SetVolumeClients(self, request: mds_pb2.SetVolumeClientsRequest,
                         context: grpc.ServicerContext) -> mds_pb2.SetVolumeClientsResponse:
        try:
            self.sim.set_clients(request.volume_id, request.clients)
        except errors.Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except KeyError:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"volume {errors.shown(request.volume_id)} not found")
        return self.sim.state(mds_pb2.SetVolumeClientsResponse)

    def GetState(self, request: mds_pb2.GetStateRequest,
                 context: grpc.ServicerContext) -> mds_pb2.GetStateResponse:
        state = self.sim.state(mds_pb2.GetStateResponse)
        state.sessions.extend(session_proto(s) for s in self.sim.sessions.all())
        state.session_timeout.CopyFrom(wiretime.duration(self.sim.sessions.timeout()))
        return state

    def SetSessionTimeout(self, request: mds_pb2.SetSessionTimeoutRequest,
                          context: grpc.ServicerContext) -> mds_pb2.SetSessionTimeoutResponse:
        try:
            seconds = self.sim.sessions.set_timeout(wiretime.span(request.session_timeout))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("session timeout: %gs", seconds)
        return mds_pb2.SetSessionTimeoutResponse(session_timeout=wiretime.duration(seconds))

    def Reset(self, request: mds_pb2.ResetRequest,
              context: grpc.ServicerContext) -> mds_pb2.ResetResponse:
        self.sim.reset(volumes=request.volumes)
        return self.sim.state(mds_pb2.ResetResponse)


class MdsServer:
    """One sim MDS: StorageMds + SimMdsControl, health and reflection on one port."""

    def __init__(self, listen: str, sim: SimMds | None = None,
                 max_workers: int = MAX_WORKERS, *, tls: Transport,
                 shared_state: str = "", session_timeout: float | None = None) -> None:
        """``shared_state``: the SQLite file of the store's sessions, shared by every MDS of
        the store ("": this process's own, in memory). ``session_timeout``: set it at
        start (None: keep the stored one, 10 s by default)."""
        self.listen = listen
        if sim is None:
            sim = SimMds(SessionTable(shared_state or ":memory:"))
        if session_timeout is not None:
            sim.sessions.set_timeout(session_timeout)
        self.sim = sim
        self.rpc = RpcServer(listen, tls=tls, max_workers=max_workers)
        self.port = 0
        self._stopped = False

    def start(self) -> MdsServer:
        """Bind and serve; raises RuntimeError when the address cannot be bound."""
        self.rpc.add(mds_pb2_grpc.add_StorageMdsServiceServicer_to_server,
                     StorageMdsServiceServicer(self.sim), STORAGE_MDS)
        self.rpc.add(mds_pb2_grpc.add_SimMdsControlServiceServicer_to_server,
                     SimMdsControlServiceServicer(self.sim), SIM_MDS_CONTROL)
        self.port = self.rpc.start()
        log.info("sim MDS listening on %s (port %d)", self.listen, self.port)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """Health NOT_SERVING, wake hanging and slow handlers, stop serving."""
        if self._stopped:
            return
        self._stopped = True
        self.rpc.health.enter_graceful_shutdown()
        self.sim.stopping.set()
        self.rpc.stop(grace)
        log.info("sim MDS stopped")
