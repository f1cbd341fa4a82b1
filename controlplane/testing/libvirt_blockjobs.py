"""A real guest on a qcow2 chain, for block-job tests and benches over libvirt.

Why a helper: a live snapshot or merge needs a running domain whose vda is a chain of files
the test can read back with qemu-io, a guest that writes a known pattern while the job runs,
and a way to put a fresh top layer on the live disk between jobs. Booting costs ~2 s of CPU
under TCG here, so one :class:`ChainGuest` serves a whole test module (or a bench run).

Files live in a directory made by :func:`disk_dir`: outside pytest's tmp tree (every pytest
process on the machine resets its parent to 0700, which would lock the host's user out of a
running guest's disk) and shared with the host users' group (``testing/libvirt.py``).

The guest is the project's (``agent/guest.py``) with ``cp.write_blocks``: after its ready
marker it writes ``write_blocks`` blocks of :data:`~controlplane.agent.guest.WRITE_BLOCK`
bytes of ``pattern`` to /dev/vda from offset 0, each with fsync, and prints the count on its
console; :meth:`ChainGuest.written` reads it: every block below it is on the disk.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from controlplane.agent import guest
from controlplane.agent.libvirt.backend import LibvirtBackend
from controlplane.storage import qemuimg
from controlplane.testing.libvirt import LibvirtHost, share, shared_dir, wait_console

__all__ = ["ChainGuest", "disk_dir"]

MIB = 1 << 20


def disk_dir(prefix: str = "cp-blockjobs-") -> Path:
    """A fresh directory for guest disks that every simulated host's user can use."""
    return shared_dir(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class ChainGuest:
    """A domain ``vm_id`` on ``host`` (a LibvirtBackend of its own, as the agent runs it),
    booted on ``top.qcow2`` over ``base.qcow2`` (``size_mib`` each) in ``directory``."""

    def __init__(self, host: LibvirtHost, directory: Path, *, vm_id: str = "bj-guest",
                 size_mib: int = 64, write_blocks: int = 0, pattern: int = 0xA5,
                 boot_timeout: float = 60.0) -> None:
        image = guest.ensure_image()
        self.host = host
        self.directory = directory
        self.vm_id = vm_id
        self.pattern = pattern
        self.write_blocks = write_blocks
        self.base = str(directory / "base.qcow2")
        self.top = str(directory / "top.qcow2")
        qemuimg.create(self.base, size=size_mib * MIB)
        qemuimg.create(self.top, backing=self.base)
        for path in (self.base, self.top):
            share(path)
        state = shared_dir(directory / "state")
        cmdline = guest.kernel_cmdline(write_blocks=write_blocks or None,
                                       write_pattern=pattern)
        self.backend = LibvirtBackend("bj-host", host.uri, state_dir=str(state),
                                      image_dir=str(directory), kernel=str(image.kernel),
                                      initrd=str(image.initrd), cmdline=cmdline)
        self.driver = self.backend.block_driver()
        try:
            self.backend.start_vm("bj-host", vm_id, generation=1, memory_mb=192,
                                  disk=self.top)
            wait_console(self.backend.serial_log(vm_id), guest.READY_MARKER, boot_timeout)
        except BaseException:
            self.close()
            raise
        self._tops = 0

    def console(self) -> str:
        try:
            return Path(self.backend.serial_log(self.vm_id)).read_text(errors="replace")
        except OSError:
            return ""

    def written(self) -> int:
        """Blocks the guest's writer has on the disk (fsync'ed) by its console."""
        return guest.last_written(self.console())

    def new_top(self) -> str:
        """A fresh empty top layer on the live disk (an external disk-only snapshot into an
        overlay made here, no snapshot metadata), as a host would before a merge."""
        import libvirt

        self._tops += 1
        chain = self.driver.chain(self.vm_id)
        path = str(self.directory / f"top{self._tops}.qcow2")
        size = qemuimg.chain_info(chain[0])[-1].virtual_size  # info -U: QEMU holds it
        qemuimg.create(path, size=size, backing=chain[0], unsafe_backing=True)
        share(path)
        dom = self.host.connect().lookupByName(self.vm_id)
        dom.snapshotCreateXML(
            "<domainsnapshot><disks><disk name='vda' snapshot='external'>"
            f"<source file='{path}'/></disk></disks></domainsnapshot>",
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)
        return path

    def close(self) -> None:
        try:
            self.backend.destroy_vm("bj-host", self.vm_id)
        except Exception:  # noqa: BLE001 - tearing down anyway
            pass
        self.backend.close()
        shutil.rmtree(self.directory, ignore_errors=True)
