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
  chain recorded in the image); none when :attr:`DomainSpec.disk` is empty.
- one NIC with user-mode networking (``<interface type='user'>``): needs no bridge, no
  network, no host setup. Its MAC is derived from the VM id (:func:`mac_for`), so a VM
  keeps it on every host and after every restart.
- the first serial port to a file (:attr:`DomainSpec.console_log`): tests and the backend
  wait on the guest's ready marker there (a pty when it is empty).
- no kernel (firmware boot) when :attr:`DomainSpec.kernel` is empty.
- ``<metadata>``: :data:`NAMESPACE` ``vm`` with the VM id, its generation, the operation in
  progress (id, kind, start time) and whether a crash was acknowledged by a stop. The
  generation is what survives an agent restart and tells a stray older copy from the
  current one (DESIGN.md section 10); the op is written before the libvirt call that
  carries it out, so the next agent process can finish it (``agent/libvirt/states.py``).
  The same element is what ``virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT,
  metadata_xml(...), PREFIX, NAMESPACE)`` writes on a live domain and
  ``virDomainGetMetadata`` returns (both without the namespace, which libvirt adds and
  strips): :func:`parse_metadata` reads either that element or a whole domain XML.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape, quoteattr

from controlplane.agent.backend import Device

__all__ = [
    "NAMESPACE",
    "PREFIX",
    "migration_xml",
    "DeviceAddress",
    "DomainSpec",
    "VmMetadata",
    "agent_devices",
    "device_addresses",
    "domain_xml",
    "mac_for",
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
    """The project's part of a domain: whose VM it is, its generation, the operation in
    progress on it (``op_id``/``op_kind``/``op_started``, empty when none) and ``stopped``:
    the agent stopped it (so a domain shut off with reason "crashed" is no longer CRASHED)."""

    vm_id: str
    generation: int
    op_id: str = ""
    op_kind: str = ""
    op_started: float = 0.0
    stopped: bool = False

    def with_op(self, op_id: str, kind: str, started: float) -> VmMetadata:
        """This metadata with an operation in progress (written before carrying it out)."""
        return replace(self, op_id=op_id, op_kind=kind, op_started=started)

    def cleared(self, stopped: bool | None = None) -> VmMetadata:
        """This metadata with the operation over (``stopped`` set when given)."""
        return replace(self, op_id="", op_kind="", op_started=0.0,
                       stopped=self.stopped if stopped is None else stopped)


def mac_for(vm_id: str) -> str:
    """A locally administered MAC derived from the VM id: the same on every host and after
    every restart (libvirt would pick a random one at each define)."""
    digest = hashlib.blake2b(vm_id.encode(), digest_size=3).hexdigest()
    return "52:54:00:" + ":".join(digest[i:i + 2] for i in range(0, 6, 2))


@dataclass(frozen=True)
class DomainSpec:
    """Everything the domain XML is built from. ``disk``: the path of the top image of the
    VM's chain (empty: no disk); ``console_log``: the file the guest's first serial port
    writes to (it must be writable by the user the daemon runs QEMUs as; empty: a pty);
    ``kernel`` empty: a firmware boot; ``uuid``: empty lets libvirt choose."""

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
    op_kind: str = ""
    op_started: float = 0.0

    def __post_init__(self) -> None:
        if self.accel not in ACCEL_TYPES:
            raise ValueError(f"accel {self.accel!r}: expected kvm or tcg (resolve auto first)")
        if self.cpus < 1 or self.memory_mb < 1:
            raise ValueError("cpus and memory_mb must be >= 1")
        if self.generation < 0:
            raise ValueError("generation must be >= 0")
        if not self.vm_id:
            raise ValueError("vm_id must not be empty")
        if self.initrd and not self.kernel:
            raise ValueError("an initrd needs a kernel")

    @property
    def metadata(self) -> VmMetadata:
        return VmMetadata(self.vm_id, self.generation, self.op_id, self.op_kind,
                          self.op_started)


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
            f"<op-kind>{_text(meta.op_kind)}</op-kind>"
            f"<op-started>{float(meta.op_started)!r}</op-started>"
            f"<stopped>{'1' if meta.stopped else '0'}</stopped>"
            f"</{tag}>")


def domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec`` (see the module docstring for what is in it)."""
    uuid = f"  <uuid>{_text(spec.uuid)}</uuid>\n" if spec.uuid else ""
    boot = "".join(f"\n    <{tag}>{_text(value)}</{tag}>" for tag, value in (
        ("kernel", spec.kernel), ("initrd", spec.initrd), ("cmdline", spec.cmdline))
        if spec.kernel and (value or tag == "kernel"))
    disk = f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type={quoteattr(spec.disk_format)}/>
      <source file={quoteattr(spec.disk)}/>
      <target dev='vda' bus='virtio'/>
    </disk>""" if spec.disk else ""
    serial = f"""<serial type='file'>
      <source path={quoteattr(spec.console_log)}/>
      <target port='0'/>
    </serial>""" if spec.console_log else "<serial type='pty'><target port='0'/></serial>"
    return f"""<domain type={quoteattr(ACCEL_TYPES[spec.accel])}>
  <name>{_text(spec.vm_id)}</name>
{uuid}  <metadata>
    {metadata_xml(spec.metadata, declare=True)}
  </metadata>
  <memory unit='MiB'>{int(spec.memory_mb)}</memory>
  <vcpu>{int(spec.cpus)}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>{boot}
  </os>
  <features>
    <acpi/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{disk}
    <interface type='user'>
      <mac address={quoteattr(mac_for(spec.vm_id))}/>
      <model type='virtio'/>
    </interface>
    {serial}
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
    started = (_child_text(elem, "op-started") or "0").strip() or "0"
    try:
        op_started = float(started)
    except ValueError:
        raise ValueError(f"controlplane metadata op-started {started!r} is not a number") \
            from None
    return VmMetadata(vm_id, gen, _child_text(elem, "op-id") or "",
                      _child_text(elem, "op-kind") or "", op_started,
                      (_child_text(elem, "stopped") or "0").strip() == "1")


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
    source = disk.find("source") if disk is not None else None
    driver = disk.find("driver") if disk is not None else None
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
        disk_format=(driver.get("type", "raw") if driver is not None
                     else "raw" if disk is not None else "qcow2"),
        op_kind=meta.op_kind,
        op_started=meta.op_started,
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


def agent_devices(xml: str) -> list[Device]:
    """The agent's device list (SyncVmDeviceInfo) from a live domain XML: disk0.. in target
    order, nic0.. (with the MAC) in XML order, each with its PCI address."""
    addresses = device_addresses(xml)
    disks = [a for a in addresses if a.kind == "disk"]
    nics = [a for a in addresses if a.kind == "nic"]
    return [*(Device(f"disk{i}", a.pci) for i, a in enumerate(disks)),
            *(Device(f"nic{i}", a.pci, a.name) for i, a in enumerate(nics))]


def migration_xml(xml: str, meta: VmMetadata) -> str:
    """The destination XML of a live migration: the source's migratable XML with the
    metadata of the target copy (its generation) and the serial console on a pty.

    Why the console changes: a file-backed serial port blocks the migration (the destination
    cannot take the source host's file over); the guest sees the same serial device, only
    the host side of it differs, so the guest ABI is unchanged."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415 - only migrations parse XML here

    ET.register_namespace(PREFIX, NAMESPACE)
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in metadata.findall(f"{{{NAMESPACE}}}vm"):
        metadata.remove(old)
    metadata.append(ET.fromstring(metadata_xml(meta, declare=True)))
    devices = root.find("devices")
    for tag in ("serial", "console"):
        for dev in devices.findall(tag) if devices is not None else []:
            if dev.get("type") == "file":
                dev.set("type", "pty")
                for source in dev.findall("source"):
                    dev.remove(source)
                for log_el in dev.findall("log"):
                    dev.remove(log_el)
    return ET.tostring(root, encoding="unicode")
