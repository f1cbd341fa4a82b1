"""Live migration of a real guest (QEMU TCG, the project's guest image) between two
simulated hosts' libvirt session daemons, through the libvirt backend."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent import guest  # noqa: E402
from controlplane.agent.backend import BadState, VmState  # noqa: E402
from controlplane.agent.libvirt.backend import LibvirtBackend  # noqa: E402
from controlplane.agent.libvirt.migrate import FENCE_FILE  # noqa: E402
from controlplane.testing.libvirt import LibvirtHosts, shared_dir  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402

BOOT_DEADLINE = 30.0


@pytest.fixture(scope="module")
def pair(libvirt_hosts: LibvirtHosts, guest_image):  # type: ignore[no-untyped-def]
    hosts = libvirt_hosts.hosts(2)
    for host in hosts:
        host.cleanup()
    root = libvirt_hosts.shared_dir("migrate")
    (root / "h1" / FENCE_FILE).unlink(missing_ok=True)  # an earlier run's abort fences
    backends = [LibvirtBackend(f"mh{i}", h.uri, state_dir=str(shared_dir(root / f"h{i}")),
                               kernel=str(guest_image.kernel), initrd=str(guest_image.initrd),
                               cmdline=guest.kernel_cmdline()) for i, h in enumerate(hosts)]
    yield backends
    for b in backends:
        b.close()
    for host in hosts:
        host.cleanup()


def listed(b: LibvirtBackend) -> list[tuple[str, VmState, int, bool]]:
    return [(v.vm_id, v.state, v.generation, v.incoming) for v in b.list_vms(b.host_id).vms]


def test_a_running_guest_moves_to_the_other_daemon(pair) -> None:  # type: ignore[no-untyped-def]
    a, b = pair
    a.start_vm("mh0", "lv-m", generation=4, memory_mb=128)
    wait_until(lambda: guest.READY_MARKER in open(a.serial_log("lv-m"), errors="replace")
               .read(), BOOT_DEADLINE, message="the guest booted")
    vm, uri = b.prepare_incoming("mh1", "lv-m", generation=5, source_host_id="mh0")
    assert vm.incoming and uri == b.uri
    done = a.migrate_out("mh0", "lv-m", generation=4, target_generation=5,
                         target_host_id="mh1", target_uri=uri, timeout=60)
    print(f"\nlibvirt live migration, 128 MiB TCG guest: total {done.total:.3f} s, "
          f"downtime {done.downtime * 1000:.1f} ms")
    assert done.vm.generation == 5
    assert listed(b) == [("lv-m", VmState.RUNNING, 5, False)]
    assert listed(a) == []
    with pytest.raises(BadState, match="already switched over"):
        b.abort_incoming("mh1", "lv-m", generation=5)
    # the copy there is ours to stop and destroy like any other
    assert b.stop_vm("mh1", "lv-m", force=True).state == VmState.STOPPED
    b.destroy_vm("mh1", "lv-m")


def test_the_abort_fence_survives_a_target_agent_restart(pair, libvirt_hosts,  # type: ignore[no-untyped-def]
                                                         guest_image) -> None:
    """AbortIncomingVm fences the generation in the target's state dir: a new agent process
    on the same host refuses to prepare it, and destroys an incoming domain of that
    generation (a migration that reached its daemon after the abort) instead of listing
    it; the source keeps running."""
    import threading

    a, b = pair
    a.start_vm("mh0", "lv-f", generation=6, memory_mb=128)
    wait_until(lambda: guest.READY_MARKER in open(a.serial_log("lv-f"), errors="replace")
               .read(), BOOT_DEADLINE, message="the guest booted")
    assert b.abort_incoming("mh1", "lv-f", generation=7) is False  # nothing there yet
    b.close()
    b2 = LibvirtBackend("mh1", b.uri, state_dir=b.state_dir, kernel=b.kernel,
                        initrd=b.initrd, cmdline=b.cmdline)  # the restarted target agent
    try:
        with pytest.raises(BadState, match="aborted"):
            b2.prepare_incoming("mh1", "lv-f", generation=7, source_host_id="mh0")
        # a late migration of the fenced generation straight to the daemon (what a
        # MigrateVm the source got after the abort does): slow, so it is seen incoming
        conn_a = libvirt.open(a.uri)
        conn_a.lookupByName("lv-f").migrateSetMaxSpeed(1, 0)
        failed: list[BaseException] = []

        def late() -> None:
            try:
                a.migrate_out("mh0", "lv-f", generation=6, target_generation=7,
                              target_host_id="mh1", target_uri=b2.uri, timeout=60)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                failed.append(exc)

        thread = threading.Thread(target=late)
        thread.start()
        conn_b = libvirt.open(b2.uri)

        def incoming() -> bool:
            try:
                return conn_b.lookupByName("lv-f").isActive() == 1
            except libvirt.libvirtError:
                return False

        wait_until(incoming, 20, message="the late incoming domain exists")
        assert [v.vm_id for v in b2.list_vms("mh1").vms] == []  # destroyed, not listed
        thread.join(60)
        assert failed and isinstance(failed[0], BadState), failed
        assert listed(a) == [("lv-f", VmState.RUNNING, 6, False)]
        assert listed(b2) == []
        conn_a.close()
        conn_b.close()
        # a newer generation is welcome
        vm, _ = b2.prepare_incoming("mh1", "lv-f", generation=8, source_host_id="mh0")
        assert vm.generation == 8
    finally:
        b2.close()
        a.destroy_vm("mh0", "lv-f")
