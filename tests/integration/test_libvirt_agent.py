"""The libvirt backend on real libvirtd and real guests (QEMU TCG, the project's guest image).

Two simulated hosts, each with its own per-host libvirt *session* daemon run as its own
Unix user (so each has its own domain namespace), shared by every test of the module: guest
boots cost ~2 s of CPU here, so the module boots few.

INTERIM: the daemons come from ``_SessionDaemon`` below until lv1's
controlplane/testing/libvirt.py fixtures land; then this module uses those.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent import guest  # noqa: E402
from controlplane.agent.backend import StaleGeneration, VmState  # noqa: E402
from controlplane.agent.libvirt.backend import LibvirtBackend  # noqa: E402
from controlplane.agent.libvirt.domain import VmMeta, build_domain  # noqa: E402
from controlplane.testing import cluster as c  # noqa: E402
from controlplane.testing.agents import AgentProcess, vm_copies  # noqa: E402
from controlplane.testing.pki import harness_pki, server_args  # noqa: E402
from controlplane.testing.ports import free_port  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402
from controlplane.v1 import config_pb2, host_pb2, vm_pb2  # noqa: E402

BOOT_DEADLINE = 30.0  # a TCG boot is ~2 s alone; two cores shared with other work
EVENT_DEADLINE = 5.0  # crash -> event / HA begun; the sync interval is 120 s, so only an
# event explains it. Measured 1.6-2.2 s here, most of it libvirtd noticing QEMU died (see README)


class _SessionDaemon:
    """libvirtd --daemon as Unix user ``user`` (created if missing), its socket in
    /run/user/UID/libvirt; stopped (by its pid) at teardown."""

    def __init__(self, user: str) -> None:
        self.user = user
        if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
        self.uid = pwd.getpwnam(user).pw_uid
        self.runtime = Path(f"/run/user/{self.uid}")
        self.runtime.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.runtime, user)
        self.runtime.chmod(0o700)
        self.uri = f"qemu+unix:///session?socket={self.runtime}/libvirt/libvirt-sock"

    def start(self) -> _SessionDaemon:
        if not self.alive():
            subprocess.run(["runuser", "-u", self.user, "--", "env",
                            f"XDG_RUNTIME_DIR={self.runtime}", f"HOME=/home/{self.user}",
                            "libvirtd", "--daemon"], check=True, timeout=30)
        wait_until(self.alive, 20, message=f"libvirtd of {self.user}")
        return self

    def pid(self) -> int | None:
        try:
            return int((self.runtime / "libvirt" / "libvirtd.pid").read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        try:
            libvirt.open(self.uri).close()
            return True
        except libvirt.libvirtError:
            return False

    def qemu_pid(self, vm_id: str) -> int:
        return int((self.runtime / "libvirt" / "qemu" / "run" / f"{vm_id}.pid").read_text())

    def clean(self) -> None:
        conn = libvirt.open(self.uri)
        for dom in conn.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()

    def stop(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def image():  # type: ignore[no-untyped-def]
    return guest.ensure_image()


@pytest.fixture(scope="module")
def daemons():  # type: ignore[no-untyped-def]
    hosts = [_SessionDaemon(f"cp-lv2-h{i}").start() for i in range(2)]
    for d in hosts:
        d.clean()
    yield hosts
    for d in hosts:
        d.clean()
        d.stop()


@pytest.fixture(scope="module")
def state_root():  # type: ignore[no-untyped-def]
    """Per-VM disks and serial logs. Not under pytest's tmp dir: its parent is 0700 and
    every pytest process on the machine resets it, and each host's user must reach here."""
    root = Path(tempfile.mkdtemp(prefix="cp-libvirt-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def state_dir(root: Path, name: str) -> str:
    path = root / name
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return str(path)


def backend(daemon, image, root, name="b0", **kwargs):  # type: ignore[no-untyped-def]
    return LibvirtBackend("h0", daemon.uri, state_dir=state_dir(root, name), disk_mb=16,
                          kernel=str(image.kernel), initrd=str(image.initrd),
                          cmdline=guest.kernel_cmdline(), **kwargs)


def console(b: LibvirtBackend, vm_id: str) -> str:
    try:
        return Path(b.serial_log(vm_id)).read_text(errors="replace")
    except OSError:
        return ""


def test_lifecycle_device_info_pause_resume_and_graceful_stop(daemons, image,
                                                             state_root) -> None:
    b = backend(daemons[0], image, state_root, stop_timeout=10.0)
    try:
        vm = b.start_vm("h0", "lv-a", generation=3, op_id="op-1", cpus=1, memory_mb=192)
        assert (vm.state, vm.generation) == (VmState.RUNNING, 3)
        wait_until(lambda: guest.READY_MARKER in console(b, "lv-a"), BOOT_DEADLINE,
                   message="the guest's ready marker")
        assert [(v.vm_id, v.state, v.generation) for v in b.list_vms("h0").vms] == [
            ("lv-a", VmState.RUNNING, 3)]
        devices = {d.name: d for d in b.device_info("h0", "lv-a")}
        assert set(devices) == {"disk0", "nic0"}
        assert devices["disk0"].address.startswith("0000:") and devices["nic0"].mac
        assert devices["nic0"].address.startswith("0000:")
        with pytest.raises(StaleGeneration):
            b.start_vm("h0", "lv-a", generation=2)
        assert b.pause_vm("h0", "lv-a").state == VmState.PAUSED
        assert b.list_vms("h0").vms[0].state == VmState.PAUSED
        assert b.resume_vm("h0", "lv-a").state == VmState.RUNNING
        assert b.reboot_vm("h0", "lv-a").state == VmState.RUNNING
        assert b.stop_vm("h0", "lv-a").state == VmState.STOPPED  # ACPI, destroy after 10 s
        assert b.list_vms("h0").vms == ()
        assert not libvirt.open(daemons[0].uri).lookupByName("lv-a").isActive()
        b.destroy_vm("h0", "lv-a")
        with pytest.raises(libvirt.libvirtError):
            libvirt.open(daemons[0].uri).lookupByName("lv-a")  # undefined
    finally:
        b.close()


def test_graceful_stop_is_the_guest_powering_itself_off(daemons, image, state_root) -> None:
    b = backend(daemons[0], image, state_root, name="bg", stop_timeout=8.0)
    try:
        b.start_vm("h0", "lv-g", generation=1, memory_mb=128)
        wait_until(lambda: guest.READY_MARKER in console(b, "lv-g"), BOOT_DEADLINE,
                   message="the guest's ready marker")
        b.stop_vm("h0", "lv-g")
        assert guest.POWEROFF_MARKER in console(b, "lv-g")  # not the destroy after 8 s
    finally:
        b.destroy_vm("h0", "lv-g")
        b.close()


def test_a_start_the_dead_agent_left_half_done_is_completed_by_the_next(daemons, image,
                                                                        state_root) -> None:
    """The agent died between define and boot: the domain is defined with the start op in
    its metadata. The next agent process boots it (a start once begun completes), once."""
    daemon = daemons[0]
    conn = libvirt.open(daemon.uri)
    meta = VmMeta(5).with_op("op-half", "start", time.time())
    conn.defineXML(build_domain("lv-half", cpus=1, memory_mb=128, meta=meta,
                                kernel=str(image.kernel), initrd=str(image.initrd),
                                cmdline=guest.kernel_cmdline()))
    conn.close()
    b = backend(daemon, image, state_root, name="b1")
    try:
        listed = {v.vm_id: (v.state, v.generation) for v in b.list_vms("h0").vms}
        assert listed == {"lv-half": (VmState.RUNNING, 5)}
        assert b.list_vms("h0").ops == ()
        again = backend(daemon, image, state_root, name="b1")  # and a third agent: no-op
        assert again.list_vms("h0").vms == b.list_vms("h0").vms
        again.close()
    finally:
        b.destroy_vm("h0", "lv-half")
        b.close()


def test_kill_9_of_qemu_is_seen_through_the_event(daemons, image, state_root) -> None:
    b = backend(daemons[0], image, state_root, name="b2")
    try:
        b.start_vm("h0", "lv-k", generation=1, memory_mb=128)
        sub = b.events.subscribe()
        sub.get(0)  # the initial resync
        killed = time.monotonic()
        os.kill(daemons[0].qemu_pid("lv-k"), signal.SIGKILL)
        seen: list = []

        def crash_event() -> bool:
            seen.extend(sub.get(0.1)[0])
            return any(e.vm_id == "lv-k" and e.state == VmState.CRASHED for e in seen)

        wait_until(crash_event, EVENT_DEADLINE, message="the crash event")
        print(f"kill -9 -> crash event: {time.monotonic() - killed:.3f}s")
        assert [(v.vm_id, v.state) for v in b.list_vms("h0").vms] == [
            ("lv-k", VmState.CRASHED)]
        b.stop_vm("h0", "lv-k")  # a stop acknowledges the crash: no longer listed
        assert b.list_vms("h0").vms == ()
        b.destroy_vm("h0", "lv-k")
    finally:
        b.close()


# -- through the cluster: node + one libvirt agent process per host ------------------------


class LibvirtAgent(AgentProcess):
    """``controlplane agent --backend libvirt`` for one host."""

    def __init__(self, name: str, port: int, base_dir: str, host_id: str, uri: str,
                 state: str) -> None:
        self.host_id, self.uri, self.state = host_id, uri, state
        # one certificate per host, CN agent:<host-id>: the libvirt way (NodeRestriction)
        super().__init__(name, port, base_dir, tls=harness_pki().agent(host_id))

    @property
    def host_ids(self) -> list[str]:
        return [self.host_id]

    def argv(self) -> list[str]:
        import sys
        return [sys.executable, "-m", "controlplane", "agent", "--listen", self.address,
                "--backend", "libvirt", "--host-id", self.host_id, "--libvirt-uri",
                self.uri, "--accel", "tcg", "--state-dir", self.state, "--disk-mb", "16",
                "--stop-timeout", "10", *server_args(self.tls)]


@pytest.fixture
def lv_cluster(etcd, nodes, daemons, state_root, tmp_path):  # type: ignore[no-untyped-def]
    for d in daemons:
        d.clean()
    node = nodes.start("mn-0", etcd.endpoints)
    agents = []
    for i, d in enumerate(daemons):
        agent = LibvirtAgent(f"lv{i}", free_port(), str(tmp_path), f"lvh-{i}", d.uri,
                             state_dir(state_root, f"agent{i}"))
        agents.append(agent.start())
    for agent in agents:
        agent.wait_ready(30)
    for key, value in {"vm.syncInterval": "120", "host.pingTimeout": "5",
                       "host.pingFailures": "2"}.items():
        c.config(node).UpdateConfig(config_pb2.UpdateConfigRequest(key=key, value=value),
                                    timeout=5)
    for agent in agents:
        c.hosts(node).AddHost(host_pb2.AddHostRequest(host_id=agent.host_id,
                                                      address=agent.address), timeout=10)
    wait_until(lambda: all(h.status == host_pb2.HOST_STATUS_CONNECTED for h in
                           c.hosts(node).ListHosts(host_pb2.ListHostsRequest(),
                                                   timeout=5).hosts), 20)
    yield node, agents
    for agent in agents:
        agent.kill()


def get_vm(node, vm_id: str) -> vm_pb2.Vm:
    return c.vms(node).GetVm(vm_pb2.GetVmRequest(vm_id=vm_id), timeout=5).vm


def test_qemu_killed_ha_restarts_on_the_other_host_once_and_agent_restart_loses_nothing(
        lv_cluster, daemons) -> None:
    node, (a0, a1) = lv_cluster
    started = time.monotonic()
    c.vms(node).CreateVm(vm_pb2.CreateVmRequest(
        vm_id="lv-ha", image=vm_pb2.ImageInfo(image_id="img", virtual_size=1 << 30,
                                              actual_size=1 << 28),
        ha=vm_pb2.HA_LEVEL_NEVER_STOP, host_id=a0.host_id, cpus=1, memory_mb=128, start=True,
        wait=True), timeout=60)
    print(f"CreateVm(start, wait) -> Running through the cluster: "
          f"{time.monotonic() - started:.3f}s")
    vm = get_vm(node, "lv-ha")
    assert (vm.state, vm.host_id, vm.generation) == ("Running", a0.host_id, 1)
    assert {d.name for d in vm.devices.devices} == {"disk0", "nic0"}

    # the agent dies (kill -9) and comes back while the VM runs: nothing lost, one copy
    a0.kill()
    a0.restart().wait_ready(30)
    wait_until(lambda: vm_copies([a0, a1], running_only=True) == {
        "lv-ha": [(a0.host_id, 1)]}, 10, message="the VM still runs once, on its host")
    vm = get_vm(node, "lv-ha")
    assert (vm.state, vm.host_id, vm.generation) == ("Running", a0.host_id, 1)

    # QEMU killed -9: the event makes the owner pull at once (sync interval 120 s)
    killed = time.monotonic()
    os.kill(daemons[0].qemu_pid("lv-ha"), signal.SIGKILL)
    wait_until(lambda: get_vm(node, "lv-ha").host_id == a1.host_id, EVENT_DEADLINE,
               message="HA begun on the other host after the crash event")
    moved = wait_until(lambda: (v := get_vm(node, "lv-ha")).state == "Running" and v,
                       BOOT_DEADLINE, message="HA restart Running")
    print(f"kill -9 of QEMU -> HA Running on the other host: {time.monotonic() - killed:.3f}s")
    assert (moved.host_id, moved.generation, moved.last_host_id) == (a1.host_id, 2, a0.host_id)
    assert vm_copies([a0, a1], running_only=True) == {"lv-ha": [(a1.host_id, 2)]}
    # the crashed generation-1 domain left on the first host is a stray, found and stopped
    # by the next pull of that host (the pull's business, not the events'): pull it now
    c.hosts(node).ReconnectHost(host_pb2.ReconnectHostRequest(host_id=a0.host_id), timeout=10)
    wait_until(lambda: vm_copies([a0, a1]) == {"lv-ha": [(a1.host_id, 2)]}, 15,
               message="exactly one copy, generation 2, on the second host")
