"""Clients of the host agents: one channel per agent address, reused by every caller.

Agents speak only for their hosts (NodeRestriction, issue 12): `stub(address, host_id)`
first checks that the certificate the agent at `address` presents names `host_id`
(`controlplane.security.x509.speaks_for`; read by `security.peercert`, cached per address
while the node's channel to it stays connected: any reconnect reads it again). An agent
that may not speak for the host gets no call: the caller sees
`NotThisHostsAgent`, a grpc.RpcError with PERMISSION_DENIED, on the same path as any failed
call to the agent, so a pull, an operation or a fence through it fails like an unreachable
agent (its reports are never applied, and HA gets no proof from it). Without TLS
(`--insecure`) there is no certificate and no check.
"""

from __future__ import annotations

import logging
import ssl
import threading

import grpc

from controlplane.channels import ChannelPool
from controlplane.security.peercert import PeerCertificates, refused_certificate
from controlplane.security.tls import TlsFiles, Transport
from controlplane.security.x509 import speaks_for, subject_of
from controlplane.v1 import agent_pb2_grpc, blockjob_pb2_grpc

__all__ = ["CHECK_TIMEOUT", "AgentClients", "NotThisHostsAgent"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0


class NotThisHostsAgent(grpc.RpcError):
    """The agent at an address may not speak for the host asked about (or its certificate
    could not be read): raised instead of making the call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()

    def initial_metadata(self) -> tuple:
        return ()


class AgentClients:
    """Stubs of the agents' services on one ChannelPool (channels and stubs cached there:
    sync asks every owned host each interval), presenting the node's own certificate;
    an agent is dialed at its registered address, which its certificate's SANs name."""

    def __init__(self, *, tls: Transport) -> None:
        self._pool = ChannelPool(tls=tls)
        self._certs = PeerCertificates(tls) if isinstance(tls, TlsFiles) else None
        self._logged: set[tuple[str, str]] = set()
        self._refusals_logged: set[tuple[str, str]] = set()  # (address, verify reason)
        self._watched: dict[int, grpc.Channel] = {}  # channels whose state clears the cache
        self._lock = threading.Lock()

    def check(self, address: str, host_id: str) -> None:
        """NotThisHostsAgent unless the agent at `address` may speak for `host_id`."""
        if self._certs is None:
            return
        self._watch(address)
        try:
            cert = self._certs.get(address, CHECK_TIMEOUT)
        except ssl.SSLCertVerificationError as exc:
            self._log_refused(address, host_id, exc)
            raise NotThisHostsAgent(grpc.StatusCode.UNAVAILABLE,
                                    f"agent at {address}: its certificate does not verify: "
                                    f"{exc.verify_message}") from exc
        except (OSError, ValueError) as exc:
            raise NotThisHostsAgent(grpc.StatusCode.UNAVAILABLE,
                                    f"agent at {address}: cannot read its certificate: {exc}"
                                    ) from exc
        if speaks_for(cert, host_id):
            return
        cn, o = subject_of(cert)
        if o != "agent":
            reason = (f"{address} is not a host agent (it presents {cn!r}, not an agent "
                      "certificate)")
        else:
            reason = (f"the agent at {address} presents {cn!r}, which may not speak for "
                      f"host {host_id!r}: its reports and calls for that host are refused")
        with self._lock:
            first = (address, host_id) not in self._logged
            self._logged.add((address, host_id))
        if first:
            log.error("%s", reason, extra={"host_id": host_id})
        raise NotThisHostsAgent(grpc.StatusCode.PERMISSION_DENIED, reason)

    def _log_refused(self, address: str, host_id: str,
                     exc: ssl.SSLCertVerificationError) -> None:
        """One error line per (address, reason) saying which certificate the agent presents
        and why it is refused (expired, not yet valid, another CA), with its subject and
        dates as fields: gRPC's own failed handshake names neither."""
        reason = str(exc.verify_message)
        with self._lock:
            first = (address, reason) not in self._refusals_logged
            self._refusals_logged.add((address, reason))
        if not first:
            return
        assert self._certs is not None
        seen = refused_certificate(address, self._certs.tls, CHECK_TIMEOUT) or {}
        log.error("the agent at %s presents a certificate that does not verify (%s): %s, "
                  "valid %s .. %s", address, reason, seen.get("subject", "?"),
                  seen.get("not_before", "?"), seen.get("not_after", "?"),
                  extra={"host_id": host_id, "peer": address, "reason": reason,
                         **{k: v for k, v in seen.items() if k != "peer"}})

    def _watch(self, address: str) -> None:
        """Forget the address's certificate whenever its channel leaves READY: a reconnect
        may reach another process (an impostor on a dead agent's port), so the next call
        reads the certificate again rather than trusting the one of the old connection."""
        channel = self._pool.get(address)
        with self._lock:
            if id(channel) in self._watched:
                return
            self._watched[id(channel)] = channel
        certs = self._certs
        assert certs is not None

        def on_state(state: grpc.ChannelConnectivity) -> None:
            if state is not grpc.ChannelConnectivity.READY:
                certs.forget(address)
        channel.subscribe(on_state, try_to_connect=False)

    def stub(self, address: str, host_id: str | None = None
             ) -> agent_pb2_grpc.AgentServiceStub:
        """The agent's stub; with `host_id`, only once its certificate names that host."""
        if host_id is not None:
            self.check(address, host_id)
        return self._pool.stub(agent_pb2_grpc.AgentServiceStub, address)

    def block_jobs(self, address: str) -> blockjob_pb2_grpc.AgentBlockJobsServiceStub:
        """The agent's block-job service, on the same channel."""
        return self._pool.stub(blockjob_pb2_grpc.AgentBlockJobsServiceStub, address)

    def close(self) -> None:
        self._pool.close()
