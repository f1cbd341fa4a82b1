"""libvirt domain XML for a VM, and what the agent reads back from it (pure: no libvirt).

Why here and pure: the libvirt backend defines a domain from the VM record and later
rediscovers it from libvirt alone (after an agent restart nothing else is left), so the
format is one pair of functions with a round-trip property test, not string pasting spread
over the backend.

What the XML holds, and why:

- ``<domain type='kvm'|'qemu'>``: the accelerator (:mod:`controlplane.agent.accel`
  decides; 'qemu' is TCG). No ``<cpu>``: ``host-passthrough``/``max`` abort here.
- machine q35, a direct kernel boot of the project's guest (:mod:`controlplane.agent.guest`)
  with its command line.
- ``<features><acpi/></features>``: without it libvirt passes ``-no-acpi`` and a graceful
  shutdown (the ACPI power button) never reaches the guest.
- the disk: the top of the VM's chain as virtio ``vda`` (qcow2; libvirt follows the backing
  chain recorded in the image).
- one NIC with user-mode networking (``<interface type='user'>``): needs no bridge, no
  network, no host setup.
- the first serial port to a file (:attr:`DomainSpec.console_log`): tests and the backend
  wait on the guest's ready marker there.
- ``<metadata>``: :data:`NAMESPACE` ``vm`` with the VM id, its generation and the op id of
  the operation that defined it. The generation is what survives an agent restart and
  tells a stray older copy from the current one (DESIGN.md section 10). The same element is
  what ``virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT, metadata_xml(...), PREFIX,
  NAMESPACE)`` writes on a live domain and ``virDomainGetMetadata`` returns (both without
  the namespace, which libvirt adds and strips): :func:`parse_metadata` reads either that
  element or a whole domain XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "NAMESPACE",
    "PREFIX",
    "DeviceAddress",
    "DomainSpec",
    "VmMetadata",
    "device_addresses",
    "domain_xml",
    "metadata_xml",
    "parse_domain",
    "parse_metadata",
]

NAMESPACE = "https://controlplane.dev/xml/vm/1"
PREFIX = "controlplane"
ACCEL_TYPES = {"kvm": "kvm", "tcg": "qemu"}  # our accel name -> libvirt's domain type
_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2,
          "m": 1024**2, "mib": 1024**2, "gb": 1000**3, "g": 1024**3, "gib": 1024**3}


@dataclass(frozen=True)
class VmMetadata:
    """The project's part of a domain: whose VM it is, its generation, the op that made it."""

    vm_id: str
    generation: int
    op_id: str = ""


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML is built from. ``disk``: the path of the top image of the
    VM's chain; ``console_log``: the file the guest's first serial port writes to (it must be
    writable by the user the daemon runs QEMUs as); ``uuid``: empty lets libvirt choose."""

    vm_id: str
    cpus: int
    memory_mb: int
    disk: str
    generation: int
    accel: str
    kernel: str
    initrd: str
    cmdline: str
    console_log: str
    op_id: str = ""
    uuid: str = ""
    disk_format: str = "qcow2"

    def __post_init__(self) -> None:
        if self.accel not in ACCEL_TYPES:
            raise ValueError(f"accel {self.accel!r}: expected kvm or tcg (resolve auto first)")
        if self.cpus < 1 or self.memory_mb < 1:
            raise ValueError("cpus and memory_mb must be >= 1")
        if self.generation < 0:
            raise ValueError("generation must be >= 0")
        for name in ("vm_id", "disk", "kernel", "initrd", "console_log"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    @property
    def metadata(self) -> VmMetadata:
        return VmMetadata(self.vm_id, self.generation, self.op_id)


def _text(value: str) -> str:
    return escape(value)


def metadata_xml(meta: VmMetadata, *, declare: bool = False) -> str:
    """The ``vm`` element. As given to ``virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT,
    xml, PREFIX, NAMESPACE)`` it must carry no namespace (libvirt puts the element into
    NAMESPACE itself and refuses one that declares it: "failed to create a new XML
    namespace"); ``declare=True`` gives the ``controlplane:vm`` element with the namespace
    declared, as it stands inside a domain's ``<metadata>``. The children are in no
    namespace either way: that is how libvirt stores an element it was given."""
    tag = f"{PREFIX}:vm" if declare else "vm"
    ns = f" xmlns:{PREFIX}={quoteattr(NAMESPACE)}" if declare else ""
    return (f"<{tag}{ns}>"
            f"<vm-id>{_text(meta.vm_id)}</vm-id>"
            f"<generation>{int(meta.generation)}</generation>"
            f"<op-id>{_text(meta.op_id)}</op-id>"
            f"</{tag}>")


def domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec`` (see the module docstring for what is in it)."""
    uuid = f"  <uuid>{_text(spec.uuid)}</uuid>\n" if spec.uuid else ""
    return f"""<domain type={quoteattr(ACCEL_TYPES[spec.accel])}>
  <name>{_text(spec.vm_id)}</name>
{uuid}  <metadata>
    {metadata_xml(spec.metadata, declare=True)}
  </metadata>
  <memory unit='MiB'>{int(spec.memory_mb)}</memory>
  <vcpu>{int(spec.cpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{_text(spec.kernel)}</kernel>
    <initrd>{_text(spec.initrd)}</initrd>
    <cmdline>{_text(spec.cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type={quoteattr(spec.disk_format)}/>
      <source file={quoteattr(spec.disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _child_text(elem: ET.Element, name: str) -> str | None:
    """A child's text, the child either in our namespace or in none (hand-written XML)."""
    for tag in (f"{{{NAMESPACE}}}{name}", name):
        found = elem.find(tag)
        if found is not None:
            return found.text or ""
    return None


def parse_metadata(xml: str) -> VmMetadata | None:
    """The project's metadata from a whole domain XML or from the bare ``vm`` element
    (with our namespace, or without it as virDomainGetMetadata returns it);
    None when there is none (a domain this project did not define). A present but broken
    element (no id, a generation that is not a number) is a ValueError: guessing a
    generation would defeat the stale-start check."""
    root = ET.fromstring(xml)
    tag = f"{{{NAMESPACE}}}vm"
    # virDomainGetMetadata hands the element back with its namespace stripped (<vm>...):
    # a root named vm is taken as ours, since that call already selected our namespace.
    elem = root if root.tag in (tag, "vm") else root.find(f"./metadata/{tag}")
    if elem is None:
        return None
    vm_id = _child_text(elem, "vm-id")
    generation = _child_text(elem, "generation")
    if not vm_id or generation is None:
        raise ValueError("controlplane metadata without vm-id or generation")
    try:
        gen = int(generation.strip())
    except ValueError:
        raise ValueError(f"controlplane metadata generation {generation!r} is not a number") \
            from None
    if gen < 0:
        raise ValueError(f"controlplane metadata generation {gen} is negative")
    return VmMetadata(vm_id, gen, _child_text(elem, "op-id") or "")


def _memory_mb(elem: ET.Element | None) -> int:
    if elem is None or not (elem.text or "").strip():
        raise ValueError("domain XML without <memory>")
    unit = elem.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown memory unit {unit!r}")
    return int(elem.text.strip()) * _UNITS[unit] // (1024 * 1024)


def parse_domain(xml: str) -> DomainSpec:
    """The spec back from a domain XML: ours as built, or libvirt's live/inactive XML of a
    domain defined from it (libvirt reports memory in KiB and adds devices; both are fine).
    Raises ValueError when the XML lacks the project's metadata or a part we build."""
    root = ET.fromstring(xml)
    meta = parse_metadata(xml)
    if meta is None:
        raise ValueError("domain XML without controlplane metadata")
    accel = {v: k for k, v in ACCEL_TYPES.items()}.get(root.get("type", ""))
    if accel is None:
        raise ValueError(f"domain type {root.get('type')!r} is neither kvm nor qemu")
    disk = root.find("./devices/disk[@device='disk']/target[@dev='vda']/..")
    if disk is None:
        raise ValueError("domain XML without a vda disk")
    source = disk.find("source")
    driver = disk.find("driver")
    serial = root.find("./devices/serial/source")
    vcpu = root.find("vcpu")
    name = root.findtext("name")
    if name != meta.vm_id:
        raise ValueError(f"domain name {name!r} is not the metadata's vm-id {meta.vm_id!r}")
    return DomainSpec(
        vm_id=meta.vm_id,
        cpus=int((vcpu.text or "").strip()) if vcpu is not None else 1,
        memory_mb=_memory_mb(root.find("memory")),
        disk=source.get("file", "") if source is not None else "",
        generation=meta.generation,
        accel=accel,
        kernel=root.findtext("./os/kernel") or "",
        initrd=root.findtext("./os/initrd") or "",
        cmdline=root.findtext("./os/cmdline") or "",
        console_log=serial.get("path", "") if serial is not None else "",
        op_id=meta.op_id,
        uuid=root.findtext("uuid") or "",
        disk_format=driver.get("type", "raw") if driver is not None else "raw",
    )


@dataclass(frozen=True)
class DeviceAddress:
    """Where a disk or NIC sits on the guest's PCI bus, as ZStack's syncVmDeviceInfo reads
    it: ``kind`` 'disk' (``name`` = target dev) or 'nic' (``name`` = MAC), ``pci`` as
    domain:bus:slot.function (``0000:04:00.0``)."""

    kind: str
    name: str
    pci: str


def device_addresses(xml: str) -> list[DeviceAddress]:
    """The PCI addresses of the disks and NICs in a (live) domain XML. Devices without a
    PCI address (libvirt assigns them at define time; ours always have one then) are left
    out."""
    root = ET.fromstring(xml)
    out: list[DeviceAddress] = []
    for kind, path, key in (("disk", "./devices/disk", "target"),
                            ("nic", "./devices/interface", "mac")):
        for dev in root.findall(path):
            addr = dev.find("address[@type='pci']")
            ident = dev.find(key)
            if addr is None or ident is None:
                continue
            name = ident.get("dev" if kind == "disk" else "address", "")
            parts = [int(addr.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function")]
            out.append(DeviceAddress(kind, name, "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)))
    return out
