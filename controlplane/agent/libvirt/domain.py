"""Domain XML for the libvirt backend: build it from a VM, read back the agent's metadata
and the devices (pure: strings in, values out).

INTERIM: branch lv1 builds the project's domain-XML builder and metadata parser (issue 13);
this module is the narrow interface the backend needs from it (``build_domain``,
``VmMeta``/``read_meta``/``meta_xml``) and is to be replaced by it on merge. The device
reader (``devices_of``) is the backend's own.

The metadata element (namespace ``META_NS``) holds what must survive an agent restart: the
generation the VM was started with (the per-VM high-water mark of stale starts), the op in
progress (id, kind, start time) and whether a crash was acknowledged by a stop.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape, quoteattr

from controlplane.agent.backend import Device

__all__ = ["META_KEY", "META_NS", "VmMeta", "build_domain", "devices_of", "mac_of",
           "meta_xml", "read_meta"]

META_NS = "urn:controlplane:vm:1"
META_KEY = "cp"


@dataclass(frozen=True)
class VmMeta:
    generation: int
    op_id: str = ""
    op_kind: str = ""
    op_started: float = 0.0
    stopped: bool = False

    def with_op(self, op_id: str, kind: str, started: float) -> VmMeta:
        return replace(self, op_id=op_id, op_kind=kind, op_started=started)

    def cleared(self, stopped: bool | None = None) -> VmMeta:
        return replace(self, op_id="", op_kind="", op_started=0.0,
                       stopped=self.stopped if stopped is None else stopped)


def meta_xml(meta: VmMeta) -> str:
    """The metadata element as virDomainSetMetadata takes it (no namespace prefix: libvirt
    adds META_KEY)."""
    return (f"<vm generation={quoteattr(str(meta.generation))} op-id={quoteattr(meta.op_id)} "
            f"op-kind={quoteattr(meta.op_kind)} op-started={quoteattr(repr(meta.op_started))} "
            f"stopped={quoteattr('1' if meta.stopped else '0')}/>")


def read_meta(xml: str) -> VmMeta | None:
    """The agent's metadata from a domain's XML (the whole domain, or only the element as
    virDomainGetMetadata answers); None when there is none (not a domain of ours)."""
    root = ET.fromstring(xml)
    # virDomainGetMetadata answers the element without its namespace (it asked by URI)
    node = root if _local(root.tag) == "vm" and _ns(root.tag) in ("", META_NS) else \
        root.find(f".//{{{META_NS}}}vm")
    if node is None:
        return None
    try:
        return VmMeta(generation=int(node.get("generation", "0")),
                      op_id=node.get("op-id", ""), op_kind=node.get("op-kind", ""),
                      op_started=float(node.get("op-started", "0") or 0),
                      stopped=node.get("stopped", "0") == "1")
    except ValueError:
        return None


def mac_of(vm_id: str) -> str:
    """A MAC derived from the VM id: the same on every host and after every restart."""
    digest = hashlib.blake2b(vm_id.encode(), digest_size=3).hexdigest()
    return "52:54:00:" + ":".join(digest[i:i + 2] for i in range(0, 6, 2))


def build_domain(name: str, *, cpus: int, memory_mb: int, meta: VmMeta, accel: str = "tcg",
                 disks: tuple[str, ...] = (), kernel: str = "", initrd: str = "",
                 cmdline: str = "", serial_log: str = "", uuid: str = "",
                 emulator: str = "/usr/bin/qemu-system-x86_64") -> str:
    """A q35 domain: ``cpus`` vCPUs, ``memory_mb`` MiB, the qcow2 ``disks`` as virtio (vda,
    vdb, ...), one virtio NIC on user-mode networking (needs no host setup), ACPI on (so a
    graceful shutdown reaches the guest), the serial console to ``serial_log``; a direct
    kernel boot when ``kernel`` is given. ``accel`` tcg or kvm. ``uuid``: the existing
    domain's, when redefining it (libvirt refuses a second UUID for a name)."""
    dom_type = "kvm" if accel == "kvm" else "qemu"
    boot = ""
    if kernel:
        boot = f"<kernel>{escape(kernel)}</kernel>"
        if initrd:
            boot += f"<initrd>{escape(initrd)}</initrd>"
        if cmdline:
            boot += f"<cmdline>{escape(cmdline)}</cmdline>"
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file={quoteattr(path)}/><target dev='vd{chr(ord('a') + i)}' bus='virtio'/>"
        f"</disk>" for i, path in enumerate(disks))
    serial = (f"<serial type='file'><source path={quoteattr(serial_log)}/></serial>"
              if serial_log else "<serial type='pty'/>")
    return (
        f"<domain type='{dom_type}'><name>{escape(name)}</name>"
        + (f"<uuid>{escape(uuid)}</uuid>" if uuid else "") +
        f"<memory unit='MiB'>{int(memory_mb)}</memory><vcpu>{int(cpus)}</vcpu>"
        f"<metadata><{META_KEY}:{meta_xml(meta)[1:-2]} xmlns:{META_KEY}={quoteattr(META_NS)}/>"
        f"</metadata>"
        f"<os><type arch='x86_64' machine='q35'>hvm</type>{boot}</os>"
        f"<features><acpi/></features>"
        f"<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
        f"<on_crash>destroy</on_crash>"
        f"<devices><emulator>{escape(emulator)}</emulator>{disk_xml}"
        f"<interface type='user'><mac address='{mac_of(name)}'/><model type='virtio'/>"
        f"</interface>{serial}</devices></domain>")


def devices_of(xml: str) -> list[Device]:
    """Disks and NICs of a live domain with their PCI addresses (as ZStack's
    syncVmDeviceInfo reads them): disk0.. in target order, nic0.. in XML order."""
    root = ET.fromstring(xml)
    out: list[Device] = []
    disks = [d for d in root.iterfind("./devices/disk") if d.get("device", "disk") == "disk"]
    for i, disk in enumerate(disks):
        out.append(Device(f"disk{i}", _pci(disk)))
    for i, nic in enumerate(root.iterfind("./devices/interface")):
        mac = nic.find("mac")
        out.append(Device(f"nic{i}", _pci(nic), mac.get("address", "") if mac is not None
                          else ""))
    return out


def _pci(element: ET.Element) -> str:
    address = element.find("address")
    if address is None or address.get("type") != "pci":
        return ""
    try:
        parts = [int(address.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")]
    except ValueError:
        return ""
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _ns(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""
