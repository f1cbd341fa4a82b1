"""Live migration of a real guest (QEMU TCG, the project's guest image) between two
simulated hosts' libvirt session daemons, through the libvirt backend."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent import guest  # noqa: E402
from controlplane.agent.backend import BadState, VmState  # noqa: E402
from controlplane.agent.libvirt.backend import LibvirtBackend  # noqa: E402
from controlplane.testing.libvirt import LibvirtHosts, shared_dir  # noqa: E402
from controlplane.testing.waiting import wait_until  # noqa: E402

BOOT_DEADLINE = 30.0


@pytest.fixture(scope="module")
def pair(libvirt_hosts: LibvirtHosts, guest_image):  # type: ignore[no-untyped-def]
    hosts = libvirt_hosts.hosts(2)
    for host in hosts:
        host.cleanup()
    root = libvirt_hosts.shared_dir("migrate")
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
