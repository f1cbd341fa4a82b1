"""The libvirt environment on real parts: the guest image, per-host session daemons, a real
guest booted from the domain XML builder, a real ACPI shutdown.

One guest is booted for the module (a boot costs ~2 s of CPU under TCG) and the tests that
read it run before the one that shuts it down (file order).
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.agent import accel, domainxml, guest, libvirtd
from controlplane.testing.libvirt import LibvirtHosts, share, wait_console
from controlplane.testing.qemu import pattern_matches
from controlplane.testing.waiting import wait_until

libvirt = pytest.importorskip("libvirt", reason="python3 -m controlplane.devtools.sysdeps "
                                                "installs libvirt-python")

WRITE_BLOCKS = 16
PATTERN = 0xA5


def _disk(directory: Path, name: str, size: str = "64M") -> Path:
    path = directory / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size],
                   check=True, timeout=30)
    return share(path)


def _spec(image: guest.GuestImage, directory: Path, vm_id: str, generation: int = 1,
          **cmdline: Any) -> domainxml.DomainSpec:
    console = directory / f"{vm_id}.console"
    return domainxml.DomainSpec(
        vm_id=vm_id, cpus=1, memory_mb=256, disk=str(_disk(directory, f"{vm_id}.qcow2")),
        generation=generation, accel="tcg", kernel=str(image.kernel),
        initrd=str(image.initrd), cmdline=guest.kernel_cmdline(**cmdline),
        console_log=str(console), op_id=f"op-{vm_id}")


@dataclasses.dataclass
class Booted:
    dom: Any
    spec: domainxml.DomainSpec
    seconds: float


@pytest.fixture(scope="module")
def booted(libvirt_hosts: LibvirtHosts, guest_image: guest.GuestImage) -> Iterator[Booted]:
    """One guest on host 0, booted from the builder's XML; it writes WRITE_BLOCKS blocks
    of PATTERN to its disk after the ready marker."""
    host = libvirt_hosts.host(0)
    directory = libvirt_hosts.shared_dir("env")
    spec = _spec(guest_image, directory, "env-guest", generation=3,
                 write_blocks=WRITE_BLOCKS, write_pattern=PATTERN)
    start = time.monotonic()
    dom = host.boot(spec, timeout=60)
    booted = Booted(dom, spec, time.monotonic() - start)
    yield booted
    host.cleanup()


def test_the_guest_image_is_cached_and_its_checksum_is_stable(
        guest_image: guest.GuestImage, tmp_path: Path) -> None:
    again = guest.ensure_image()
    assert again == guest_image  # from the cache, not rebuilt
    rebuilt = guest.build_image(tmp_path / "guest")  # the same packages, built anew
    assert rebuilt.sha256 == guest_image.sha256
    assert rebuilt.kernel.read_bytes() == guest_image.kernel.read_bytes()
    assert (rebuilt.directory / "SHA256SUMS").read_text() == \
        (guest_image.directory / "SHA256SUMS").read_text()
    # Each host's user must read the kernel and initrd.
    for path in (guest_image.kernel, guest_image.initrd):
        assert path.stat().st_mode & 0o004


def test_a_guest_boots_under_a_session_daemon_and_prints_the_ready_marker(
        booted: Booted, libvirt_hosts: LibvirtHosts) -> None:
    host = libvirt_hosts.host(0)
    assert host.uri == libvirtd.session_uri(host.user.uid)
    state, _ = booted.dom.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING
    console = Path(booted.spec.console_log).read_text(errors="replace")
    assert guest.READY_MARKER in console
    # Its QEMU runs as the host's user, not root.
    pidfile = Path(host.user.runtime_dir) / "libvirt" / "qemu" / "run" / \
        f"{booted.spec.vm_id}.pid"
    pid = int(pidfile.read_text().strip())
    assert Path(f"/proc/{pid}").stat().st_uid == host.user.uid
    print(f"\nguest boot (define + start -> ready marker) under libvirt: "
          f"{booted.seconds:.2f}s")


def test_the_live_domain_keeps_the_generation_and_reads_back_as_the_spec(
        booted: Booted) -> None:
    live = booted.dom.XMLDesc(0)
    assert domainxml.parse_domain(live) == dataclasses.replace(
        booted.spec, uuid=booted.dom.UUIDString())
    element = booted.dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domainxml.NAMESPACE)
    assert domainxml.parse_metadata(element) == domainxml.VmMetadata(
        "env-guest", 3, "op-env-guest")
    # A new generation written on the live domain is what a later read sees.
    booted.dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                           domainxml.metadata_xml(domainxml.VmMetadata("env-guest", 4, "op2")),
                           domainxml.PREFIX, domainxml.NAMESPACE,
                           libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert domainxml.parse_metadata(booted.dom.XMLDesc(0)).generation == 4
    assert domainxml.parse_metadata(
        booted.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).generation == 4
    kinds = {(a.kind, a.name) for a in domainxml.device_addresses(live)}
    assert ("disk", "vda") in kinds and any(k == "nic" for k, _ in kinds)


def test_acpi_shutdown_powers_the_guest_off_after_its_writes_reached_the_disk(
        booted: Booted) -> None:
    wait_console(booted.spec.console_log, f"writer done at {WRITE_BLOCKS}", timeout=60)
    start = time.monotonic()
    booted.dom.shutdown()  # ACPI power button (the default method for QEMU)
    wait_until(lambda: not booted.dom.isActive(), timeout=30, interval=0.02,
               message="guest still running 30 s after an ACPI shutdown")
    seconds = time.monotonic() - start
    state, reason = booted.dom.state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN)
    assert guest.POWEROFF_MARKER in Path(booted.spec.console_log).read_text(errors="replace")
    console = Path(booted.spec.console_log).read_text(errors="replace")
    assert guest.last_written(console) == WRITE_BLOCKS
    disk = booted.spec.disk
    assert pattern_matches(disk, 0, WRITE_BLOCKS * guest.WRITE_BLOCK, PATTERN)
    assert not pattern_matches(disk, WRITE_BLOCKS * guest.WRITE_BLOCK, guest.WRITE_BLOCK,
                               PATTERN)
    print(f"\ngraceful (ACPI) shutdown -> shut off: {seconds:.2f}s")


def test_two_host_daemons_run_side_by_side_with_their_own_domains(
        libvirt_hosts: LibvirtHosts, guest_image: guest.GuestImage) -> None:
    h0, h1 = libvirt_hosts.hosts(2)
    assert h0.uri != h1.uri and h0.user.uid != h1.user.uid
    assert h0.daemon.pid != h1.daemon.pid
    directory = libvirt_hosts.shared_dir("side-by-side")
    for host, gen in ((h0, 7), (h1, 8)):
        own = directory / host.name
        own.mkdir(exist_ok=True)
        share(own)
        spec = _spec(guest_image, own, "same-name", generation=gen)
        host.connect().defineXML(domainxml.domain_xml(spec))  # defined, not started: cheap
    gens = {h.name: domainxml.parse_metadata(h.domains()["same-name"].XMLDesc(0)).generation
            for h in (h0, h1)}
    assert gens == {h0.name: 7, h1.name: 8}
    assert h1.cleanup() == 1
    assert "same-name" not in h1.domains()
    assert "same-name" in h0.domains()  # the other host's namespace is untouched
    h0.cleanup()


def test_the_system_daemon_answers(libvirt_system: str) -> None:
    conn = libvirt.open(libvirt_system)
    try:
        assert conn.getLibVersion() >= 9_000_000
        assert "<domain type='qemu'" in conn.getCapabilities() or \
            "type='qemu'" in conn.getCapabilities()
    finally:
        conn.close()


def test_accel_auto_probes_and_falls_back_to_tcg_where_kvm_does_not_boot(
        guest_image: guest.GuestImage) -> None:
    assert accel.resolve_accel("tcg", guest_image) == "tcg"
    chosen = accel.resolve_accel("auto", guest_image)
    assert chosen in ("kvm", "tcg")
    if chosen == "kvm":  # only after a real KVM boot reached the marker
        assert accel.boot_direct(guest_image, "kvm").ready
    assert accel.boot_direct(guest_image, "tcg", timeout=30).ready
