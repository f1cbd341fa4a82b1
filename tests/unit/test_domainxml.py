"""The domain XML builder and its parsers (pure): round trip, metadata shapes, refusals."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent import domainxml as dx

_VM_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,40}\Z")
# Paths and command lines with characters XML must escape (&, <, quotes), no control chars.
_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
                min_size=1, max_size=40).filter(lambda s: s.strip() == s)
_PATH = _TEXT.map(lambda s: "/" + s.replace("/", "_"))

specs = st.builds(
    dx.DomainSpec,
    vm_id=_VM_ID,
    cpus=st.integers(1, 64),
    memory_mb=st.integers(1, 1 << 20),
    disk=st.one_of(st.just(""), _PATH),
    generation=st.integers(0, 2**63 - 1),
    accel=st.sampled_from(["kvm", "tcg"]),
    kernel=_PATH,
    initrd=_PATH,
    cmdline=_TEXT,
    console_log=_PATH,
    op_id=st.one_of(st.just(""), _TEXT),
    uuid=st.one_of(st.just(""), st.uuids().map(str)),
    disk_format=st.sampled_from(["qcow2", "raw"]),
    op_kind=st.sampled_from(["", "start", "stop", "destroy"]),
    op_started=st.floats(0, 4e9, allow_nan=False),
).filter(lambda spec: spec.disk or spec.disk_format == "qcow2")  # no disk: no format


@given(specs)
def test_the_spec_round_trips_through_the_xml(spec: dx.DomainSpec) -> None:
    xml = dx.domain_xml(spec)
    assert dx.parse_domain(xml) == spec
    assert dx.parse_metadata(xml) == spec.metadata


@given(st.builds(dx.VmMetadata, _VM_ID, st.integers(0, 2**63 - 1),
                 st.one_of(st.just(""), _TEXT), st.sampled_from(["", "start", "stop"]),
                 st.floats(0, 4e9, allow_nan=False), st.booleans()))
def test_the_metadata_element_round_trips_in_both_shapes(meta: dx.VmMetadata) -> None:
    assert dx.parse_metadata(dx.metadata_xml(meta)) == meta  # as virDomainGetMetadata
    assert dx.parse_metadata(dx.metadata_xml(meta, declare=True)) == meta


def test_the_xml_has_what_a_real_guest_needs() -> None:
    spec = dx.DomainSpec("vm-1", 2, 512, "/img/vm-1.qcow2", 3, "tcg", "/g/vmlinuz",
                         "/g/initrd.img", "console=ttyS0", "/img/vm-1.console", op_id="op-9")
    root = ET.fromstring(dx.domain_xml(spec))
    assert root.get("type") == "qemu"  # TCG
    assert root.find("./os/type").get("machine") == "q35"
    assert root.find("./features/acpi") is not None  # else libvirt passes -no-acpi
    assert root.find("./devices/disk/target").attrib == {"dev": "vda", "bus": "virtio"}
    assert root.find("./devices/disk/driver").get("type") == "qcow2"
    assert root.find("./devices/interface").get("type") == "user"
    assert root.find("./devices/serial/source").get("path") == "/img/vm-1.console"
    assert root.find("./cpu") is None  # host-passthrough/max abort here
    meta = root.find(f"./metadata/{{{dx.NAMESPACE}}}vm")
    assert meta is not None and meta.findtext("generation") == "3"
    assert dx.parse_domain(dx.domain_xml(dataclasses.replace(spec, accel="kvm"))).accel == "kvm"


def test_libvirt_shapes_parse_too() -> None:
    """libvirt reports memory in KiB and adds devices and addresses."""
    xml = f"""<domain type='kvm' id='4'><name>vm-2</name><uuid>u-1</uuid>
      <metadata><cp:vm xmlns:cp="{dx.NAMESPACE}"><vm-id>vm-2</vm-id>
        <generation> 12 </generation></cp:vm></metadata>
      <memory unit='KiB'>262144</memory><vcpu placement='static'>1</vcpu>
      <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><kernel>/k</kernel>
        <initrd>/i</initrd><cmdline>c</cmdline></os>
      <devices>
        <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
          <source file='/d.qcow2' index='1'/><target dev='vda' bus='virtio'/>
          <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></disk>
        <interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/>
          <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
        </interface>
        <serial type='file'><source path='/c.log'/><target port='0'/></serial>
      </devices></domain>"""
    spec = dx.parse_domain(xml)
    assert (spec.memory_mb, spec.generation, spec.op_id, spec.accel, spec.uuid) == \
        (256, 12, "", "kvm", "u-1")
    assert dx.device_addresses(xml) == [
        dx.DeviceAddress("disk", "vda", "0000:02:00.0"),
        dx.DeviceAddress("nic", "52:54:00:aa:bb:cc", "0000:01:00.0"),
    ]


def test_a_domain_of_someone_else_has_no_metadata() -> None:
    assert dx.parse_metadata("<domain type='kvm'><name>x</name><metadata/></domain>") is None
    assert dx.parse_metadata("<domain type='kvm'><name>x</name></domain>") is None
    with pytest.raises(ValueError, match="without controlplane metadata"):
        dx.parse_domain("<domain type='kvm'><name>x</name></domain>")


@pytest.mark.parametrize("body", [
    "<vm><generation>1</generation></vm>",  # no vm-id
    "<vm><vm-id>a</vm-id></vm>",  # no generation
    "<vm><vm-id>a</vm-id><generation>three</generation></vm>",
    "<vm><vm-id>a</vm-id><generation>-1</generation></vm>",
])
def test_broken_metadata_is_an_error_not_a_guess(body: str) -> None:
    with pytest.raises(ValueError):
        dx.parse_metadata(body)


def test_the_spec_refuses_what_cannot_be_a_domain() -> None:
    base = dict(vm_id="v", cpus=1, memory_mb=1, disk="/d", generation=0, accel="tcg",
                kernel="/k", initrd="/i", cmdline="", console_log="/c")
    with pytest.raises(ValueError, match="resolve auto"):
        dx.DomainSpec(**{**base, "accel": "auto"})
    for field, value in (("cpus", 0), ("memory_mb", 0), ("generation", -1), ("vm_id", "")):
        with pytest.raises(ValueError):
            dx.DomainSpec(**{**base, field: value})
    with pytest.raises(ValueError, match="needs a kernel"):
        dx.DomainSpec(**{**base, "kernel": ""})


def test_what_may_be_left_out_is_left_out_of_the_xml() -> None:
    """No disk, no kernel (a firmware boot), no console file (a pty): the backend's options
    without --disk-mb, with --guest-kernel none, without --state-dir."""
    spec = dx.DomainSpec("v", 1, 64, "", 0, "tcg", "", "", "", "")
    root = ET.fromstring(dx.domain_xml(spec))
    assert root.find("./devices/disk") is None and root.find("./os/kernel") is None
    assert root.find("./devices/serial").get("type") == "pty"
    assert dx.parse_domain(dx.domain_xml(spec)) == spec


def test_the_mac_is_the_vm_s_own_on_every_host() -> None:
    xml = dx.domain_xml(dx.DomainSpec("vm-1", 1, 64, "", 0, "tcg", "", "", "", ""))
    mac = ET.fromstring(xml).find("./devices/interface/mac").get("address")
    assert mac == dx.mac_for("vm-1") != dx.mac_for("vm-2")
    assert mac.startswith("52:54:00:")


def test_an_op_and_a_stop_survive_in_the_metadata() -> None:
    meta = dx.VmMetadata("v", 3).with_op("op-1", "start", 12.5)
    assert dx.parse_metadata(dx.metadata_xml(meta)) == meta
    done = meta.cleared(stopped=True)
    assert (done.op_id, done.op_kind, done.op_started, done.stopped) == ("", "", 0.0, True)
    assert dx.parse_metadata(dx.metadata_xml(done, declare=True)) == done
    # what lv1's first version wrote (no op kind, start, stopped) still reads
    old = "<vm><vm-id>v</vm-id><generation>2</generation><op-id>x</op-id></vm>"
    assert dx.parse_metadata(old) == dx.VmMetadata("v", 2, "x")
