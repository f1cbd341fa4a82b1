"""Clients of the host agents: one channel per agent address, reused by every caller."""

from __future__ import annotations

from controlplane.channels import ChannelPool
from controlplane.security.tls import Transport
from controlplane.v1 import agent_pb2_grpc, blockjob_pb2_grpc


class AgentClients:
    """Stubs of the agents' services on one ChannelPool (channels and stubs cached there:
    sync asks every owned host each interval), presenting the node's own certificate;
    an agent is dialed at its registered address, which its certificate's SANs name."""

    def __init__(self, *, tls: Transport) -> None:
        self._pool = ChannelPool(tls=tls)

    def stub(self, address: str) -> agent_pb2_grpc.AgentServiceStub:
        return self._pool.stub(agent_pb2_grpc.AgentServiceStub, address)

    def block_jobs(self, address: str) -> blockjob_pb2_grpc.AgentBlockJobsServiceStub:
        """The agent's block-job service, on the same channel."""
        return self._pool.stub(blockjob_pb2_grpc.AgentBlockJobsServiceStub, address)

    def close(self) -> None:
        self._pool.close()
