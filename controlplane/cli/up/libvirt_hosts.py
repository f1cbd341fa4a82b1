"""The hosts of `up --backend libvirt`: real guests, one simulated host per libvirt daemon.

Each host ``host-i`` is a Unix user (``PREFIX<i>``) running its own libvirt session daemon
(controlplane.agent.libvirtd: its own domain namespace, as a separate machine would have)
and one `controlplane agent --backend libvirt` for it on AGENT_PORT+i. The guests are the
project's guest image (built into its cache once), with a small qcow2 disk each in
DATA/hosts/host-i (a directory the host's user can write).

Power: powering a host off destroys every domain of its daemon (the QEMUs die, the
definitions stay, as on a real host losing power) and kills its agent (-9: a powered-off
machine says nothing); powering it on starts its agent again, which finds its shut-off
domains in libvirt. `up` does it on signals, so a demo needs no other tool:
SIGUSR1 powers off the lowest-numbered host that is on, SIGUSR2 powers on the
lowest-numbered host that is off.

At the end every agent is stopped, then every domain of every daemon is destroyed and
undefined (their QEMUs outlive libvirtd) and the daemons this `up` started are stopped.
"""

from __future__ import annotations

import os
import sys
import threading

from controlplane.agent import accel, guest, libvirtd
from controlplane.cli.up.children import CHANNEL_OPTIONS, HOST_PREFIX, tls_args
from controlplane.security.tls import Transport
from controlplane.serving import ServingProcess

__all__ = ["DISK_MB", "VM_MEMORY_MB", "LibvirtAgentChild", "LibvirtHostSet"]

DISK_MB = 16  # each guest's blank qcow2 disk (vda)
VM_MEMORY_MB = 128  # what `up` asks for each VM: the guest needs little
STOP_TIMEOUT = 10.0  # ACPI shutdown, then destroy
BOOT_TIMEOUT = 120.0  # a start answers once the guest has booted (TCG on shared cores)


class LibvirtAgentChild(ServingProcess):
    """`controlplane agent --backend libvirt` for one host, its log DATA/logs/host-i.log."""

    kind = "agent"
    channel_options = CHANNEL_OPTIONS

    def __init__(self, host_id: str, port: int, uri: str, state_dir: str, accel_name: str,
                 data_dir: str, tls: Transport, client_tls: Transport) -> None:
        self.host_id, self.port, self.uri, self.state_dir = host_id, port, uri, state_dir
        self.accel_name = accel_name
        self.tls = tls
        super().__init__(host_id, os.path.join(data_dir, "logs", f"{host_id}.log"),
                         with_parent=True, client_tls=client_tls)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "controlplane", "agent",
            "--listen", self.address,
            "--backend", "libvirt",
            "--host-id", self.host_id,
            "--libvirt-uri", self.uri,
            "--accel", self.accel_name,
            "--state-dir", self.state_dir,
            "--disk-mb", str(DISK_MB),
            "--stop-timeout", repr(STOP_TIMEOUT),
            "--boot-timeout", repr(BOOT_TIMEOUT),
            *tls_args(self.tls),
        ]  # fmt: skip


class LibvirtHostSet:
    """The hosts' users, daemons and agents; power off/on; the clean stop."""

    def __init__(self, hosts: int, agent_port: int, data_dir: str, user_prefix: str,
                 tls: Transport, client_tls: Transport) -> None:
        """`tls`: the agents' server identity (up's one agent certificate); `client_tls`:
        how up itself calls them (its admin identity)."""
        self.tls, self.client_tls = tls, client_tls
        self.count = hosts
        self.agent_port = agent_port
        self.data_dir = data_dir
        self.user_prefix = user_prefix
        self.daemons: list[libvirtd.SessionDaemon] = []
        self.agents: list[LibvirtAgentChild] = []
        self.powered_off: set[int] = set()
        self.exits: dict[int, int] = {}  # host index -> exit code of an agent that died
        self._lock = threading.Lock()

    @property
    def host_ids(self) -> list[str]:
        return [f"{HOST_PREFIX}{i}" for i in range(self.count)]

    def start(self, say) -> None:  # type: ignore[no-untyped-def]
        """Users and daemons (each waited for; leftover domains of an earlier run removed),
        the guest image and the accelerator (probed once), then every agent."""
        image = guest.ensure_image()
        chosen = accel.resolve_accel("auto", image)
        say(f"guest image {image.directory} ({image.kernel_version}), accel {chosen}")
        logs = os.path.join(self.data_dir, "logs")
        for i, host_id in enumerate(self.host_ids):
            user = libvirtd.ensure_host_user(f"{self.user_prefix}{i}",
                                             group=libvirtd.SHARED_GROUP)
            daemon = libvirtd.SessionDaemon(user, os.path.join(logs, f"libvirtd-{host_id}.log"))
            daemon.ensure()
            self.daemons.append(daemon)
            left = libvirtd.destroy_all(daemon.uri, undefine=True)
            say(f"{host_id}: libvirtd as user {user.name} ({daemon.uri}"
                f"{', started' if daemon.owned else ', already running'}"
                f"{f'; removed leftover domains {left}' if left else ''})")
            state = libvirtd.shared_dir(os.path.join(self.data_dir, "hosts", host_id))
            self.agents.append(LibvirtAgentChild(host_id, self.agent_port + i, daemon.uri,
                                                 str(state), chosen, self.data_dir,
                                                 self.tls, self.client_tls))
        for agent in self.agents:
            agent.start()
            say(f"{agent.host_id}: agent starting on {agent.address} (pid {agent.pid}, log "
                f"{agent.log_path})")

    def power_off(self, index: int) -> list[str]:
        """Destroy every domain of host ``index``'s daemon, kill its agent; the domains
        that ran."""
        with self._lock:
            self.powered_off.add(index)
            self.agents[index].kill()
            return libvirtd.destroy_all(self.daemons[index].uri)

    def power_on(self, index: int) -> None:
        """Start host ``index``'s agent again (its domains stay shut off, as after a power
        cycle; the agent finds them in libvirt)."""
        with self._lock:
            self.powered_off.discard(index)
            self.exits.pop(index, None)
            self.agents[index].restart()

    def next_on(self) -> int | None:
        return next((i for i in range(self.count) if i not in self.powered_off), None)

    def next_off(self) -> int | None:
        return min(self.powered_off) if self.powered_off else None

    def poll(self) -> list[tuple[str, int, str]]:
        """Agents that exited without a power-off since the last poll: (host id, exit
        code, log path)."""
        found = []
        with self._lock:
            for i, agent in enumerate(self.agents):
                if i in self.powered_off or i in self.exits or agent.pid is None:
                    continue
                code = agent.returncode
                if code is not None:
                    self.exits[i] = code
                    found.append((agent.host_id, code, agent.log_path))
        return found

    def running(self) -> int:
        return sum(1 for a in self.agents if a.pid is not None and a.is_running())

    def stop_agents(self, reap) -> None:  # type: ignore[no-untyped-def]
        """SIGTERM to every running agent at once, each reaped by ``reap(child)``."""
        running = [a for i, a in enumerate(self.agents)
                   if i not in self.powered_off and a.is_running()]
        for agent in running:
            agent.send_stop()
        for agent in running:
            reap(agent)

    def stop_daemons(self, say) -> None:  # type: ignore[no-untyped-def]
        """Every domain destroyed and undefined, the daemons we started stopped."""
        for host_id, daemon in zip(self.host_ids, self.daemons, strict=False):
            try:
                if daemon.answers():
                    gone = libvirtd.destroy_all(daemon.uri, undefine=True)
                    if gone:
                        say(f"{host_id}: destroyed {len(gone)} domain(s)")
            except Exception as exc:  # noqa: BLE001 - go on with the other hosts
                say(f"{host_id}: could not remove its domains: {exc}")
            daemon.stop()
