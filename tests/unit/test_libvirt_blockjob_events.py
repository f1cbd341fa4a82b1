"""The libvirt block driver's pure parts: the disk chain from a live domain XML, and the
per-job event bookkeeping (attribution by disk, the CANCELED translation)."""

from __future__ import annotations

import pytest

libvirt = pytest.importorskip("libvirt")

from controlplane.agent.drivers.libvirt import BlockJobEvents, _Job, disk_chain  # noqa: E402
from controlplane.storage.blockjobs import BlockJobError, Verdict, judge  # noqa: E402

XML = """<domain><devices>
<disk type='file' device='disk'><source file='/i/top.qcow2'/>
  <backingStore type='file'><source file='/i/mid.qcow2'/>
    <backingStore type='file'><source file='/i/base.qcow2'/><backingStore/></backingStore>
  </backingStore><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><source file='/i/other.qcow2'/><target dev='vdb'/></disk>
</devices></domain>"""


class Dom:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


def test_disk_chain_follows_backing_stores_of_the_named_disk() -> None:
    assert disk_chain(XML) == ["/i/top.qcow2", "/i/mid.qcow2", "/i/base.qcow2"]
    assert disk_chain(XML, "vdb") == ["/i/other.qcow2"]
    with pytest.raises(BlockJobError):
        disk_chain(XML, "vdc")


def fire(hub: BlockJobEvents, dom: str, status: int, disk: str = "vda") -> None:
    hub._callback(None, Dom(dom), disk, 2, status, None)


def test_cancel_of_a_ready_copy_by_us_is_the_consistent_copy_and_nothing_else_is() -> None:
    hub = BlockJobEvents()
    ours = _Job("snap", "vm", "vda", "mirror")
    hub.begin(ours)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_READY)
    fire(hub, "other-vm", libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED)  # not ours: dropped
    hub.mark_aborted(ours)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED)
    assert hub.raw_kinds(ours) == ["READY", "CANCELLED"]
    assert judge(None, hub.events(ours)) is Verdict.COMPLETED

    # Cancelled before READY (or by someone else): not a consistent copy.
    early = _Job("snap2", "vm", "vda", "mirror")
    hub.begin(early)
    hub.mark_aborted(early)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED)
    assert judge(None, hub.events(early)) is Verdict.CANCELLED
    other = _Job("snap3", "vm", "vda", "mirror")
    hub.begin(other)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_READY)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED)  # no abort of ours
    assert judge(None, hub.events(other)) is Verdict.CANCELLED


def test_one_job_per_disk_and_events_end_at_the_terminal_one() -> None:
    hub = BlockJobEvents()
    job = _Job("m", "vm", "vda", "commit")
    hub.begin(job)
    with pytest.raises(BlockJobError):
        hub.begin(_Job("m2", "vm", "vda", "commit"))
    hub.begin(_Job("x", "vm", "vdb", "commit"))  # another disk is fine
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED)
    fire(hub, "vm", libvirt.VIR_DOMAIN_BLOCK_JOB_READY)  # after the end: no job, dropped
    assert [e.kind for e in hub.events(job)] == ["ERROR"]
    assert judge(None, hub.events(job)) is Verdict.FAILED
    hub.begin(_Job("m3", "vm", "vda", "commit"))  # the disk is free again
