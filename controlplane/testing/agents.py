"""Host agents (``python -m controlplane agent --backend sim``) as child processes for tests.

Real processes, like the management nodes: what the tests exercise is a management plane
talking gRPC to agents that can be slow, crash (kill -9), be cut off or fenced. The sim's
fault injection is reached through :meth:`AgentProcess.sim` (the SimControl service, on a
port of its own: `--sim-control-listen`, never the agent's port).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import grpc

from controlplane.channels import open_channel
from controlplane.security.tls import Transport
from controlplane.serving import ServingProcess
from controlplane.testing.pki import client_transport, harness_pki, server_args
from controlplane.testing.ports import free_port
from controlplane.v1 import agent_pb2, agent_pb2_grpc

__all__ = ["AgentProcess", "vm_copies"]


class AgentProcess(ServingProcess):
    """One agent process serving ``hosts`` sim hosts (``host_prefix`` + index), its log file
    kept across restarts. A restarted sim agent starts with no VMs (its state is memory),
    unless ``persistent`` (the VMs, and their volume sessions next to them, are kept)."""

    kind = "agent"

    def __init__(
        self,
        name: str,
        port: int,
        base_dir: str,
        *,
        hosts: int = 1,
        host_prefix: str = "host-",
        start_delay: float = 0.0,
        stop_delay: float = 0.0,
        reboot_delay: float = 0.0,
        pause_delay: float = 0.0,
        report_ops: bool = True,
        cpus: int | None = None,
        memory_mb: int | None = None,
        seed: int | None = None,
        log_level: str = "INFO",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        tls: Transport | None = None,
        sim_port: int | None = None,
        persistent: bool = False,
    ) -> None:
        self.port = port
        self.sim_port = sim_port if sim_port is not None else free_port()
        self._sim_channel: grpc.Channel | None = None
        self.base_dir = str(base_dir)
        self.hosts = hosts
        self.host_prefix = host_prefix
        self.start_delay = start_delay
        self.stop_delay = stop_delay
        self.reboot_delay = reboot_delay
        self.pause_delay = pause_delay
        self.report_ops = report_ops
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.seed = seed
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        # persistent: the sim keeps its VMs in a state file, so a restart() is an agent
        # restart (the VMs still run) rather than a power cycle of its hosts
        self.state_file = os.path.join(self.base_dir, f"{name}.state.json") if persistent else None
        self.extra_env = dict(env or {})
        # None: this agent's own certificate from the harness PKI; PLAINTEXT: --insecure
        # (its certificate names its hosts: host_prefix*, so nodes accept its reports)
        self.tls = tls if tls is not None else harness_pki().agent(name, (f"{host_prefix}*",))
        super().__init__(name, os.path.join(self.base_dir, f"{name}.log"),
                         client_tls=client_transport(self.tls, as_node=True))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sim_address(self) -> str:
        return f"127.0.0.1:{self.sim_port}"

    @property
    def host_ids(self) -> list[str]:
        """The host ids this agent serves, in order."""
        return [f"{self.host_prefix}{i}" for i in range(self.hosts)]

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", self.address,
            "--backend", "sim",
            "--hosts", str(self.hosts),
            "--host-prefix", self.host_prefix,
            "--start-delay", repr(float(self.start_delay)),
            "--stop-delay", repr(float(self.stop_delay)),
            "--reboot-delay", repr(float(self.reboot_delay)),
            "--pause-delay", repr(float(self.pause_delay)),
            "--log-level", self.log_level,
            "--sim-control-listen", self.sim_address,
        ]  # fmt: skip
        if not self.report_ops:
            argv.append("--no-report-ops")
        if self.state_file:
            argv += ["--sim-state-file", self.state_file]
        if self.cpus is not None:
            argv += ["--cpus", str(self.cpus)]
        if self.memory_mb is not None:
            argv += ["--memory-mb", str(self.memory_mb)]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        return argv + server_args(self.tls) + list(self.extra_args)

    def stub(self) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel())

    def sim_channel(self) -> grpc.Channel:
        """The shared channel to SimControl's own port, as admin (its policy level)."""
        if self._sim_channel is None:
            self._sim_channel = open_channel(self.sim_address, self.channel_options,
                                             tls=client_transport(self.tls))
        return self._sim_channel

    def sim(self) -> agent_pb2_grpc.SimControlServiceStub:
        return agent_pb2_grpc.SimControlServiceStub(self.sim_channel())

    def close_channel(self) -> None:
        super().close_channel()
        if self._sim_channel is not None:
            self._sim_channel.close()
            self._sim_channel = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited({self.returncode})"
        return (f"<AgentProcess {self.name} {self.address} hosts={self.hosts} {state} "
                f"pid={self.pid}>")


def vm_copies(agents: Sequence[AgentProcess], running_only: bool = False
              ) -> dict[str, list[tuple[str, int]]]:
    """vm id -> (host, generation) of every copy any of the agents runs: the "exactly one
    copy" question HA tests ask every agent."""
    out: dict[str, list[tuple[str, int]]] = {}
    for agent in agents:
        for host_id in agent.host_ids:
            reply = agent.stub().ListVms(agent_pb2.AgentServiceListVmsRequest(host_id=host_id),
                                         timeout=2)
            for vm in reply.vms:
                if not running_only or vm.state == agent_pb2.AGENT_VM_STATE_RUNNING:
                    out.setdefault(vm.vm_id, []).append((host_id, vm.generation))
    return out
