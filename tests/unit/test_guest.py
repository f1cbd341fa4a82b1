"""The guest image's pure parts: the newc cpio writer, the command line, the console."""

from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.agent import guest


def _read_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """A minimal newc reader (the format the kernel unpacks), independent of the writer."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        assert data[name_start + namesize - 1] == 0
        body = name_start + namesize + (-(110 + namesize) % 4)
        content = data[body:body + filesize]
        pos = body + filesize + (-filesize % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        assert fields[5] == 0 and fields[2] == fields[3] == 0  # mtime, uid, gid
        out.append((name, fields[1], content, (fields[9], fields[10])))


_names = st.lists(st.from_regex(r"\A[a-z]{1,8}(/[a-z]{1,8}){0,2}\Z"), unique=True, max_size=8)


@given(_names, st.data())
def test_newc_archives_read_back_sorted_and_are_reproducible(names: list[str],
                                                             data: st.DataObject) -> None:
    entries = [guest.CpioEntry(n, stat.S_IFREG | 0o644, data.draw(st.binary(max_size=70)))
               for n in names]
    archive = guest.newc_archive(entries)
    assert guest.newc_archive(reversed(entries)) == archive  # order does not matter
    assert len(archive) % 4 == 0
    assert [(n, m, c) for n, m, c, _ in _read_newc(archive)] == \
        sorted((e.name, e.mode, e.data) for e in entries)


def test_device_nodes_and_links_are_plain_headers() -> None:
    archive = guest.newc_archive([
        guest.CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        guest.CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
    ])
    assert _read_newc(archive) == [
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
    ]
    with pytest.raises(ValueError):
        guest.newc_archive([guest.CpioEntry("/abs", stat.S_IFREG)])


def test_the_command_line_carries_the_behaviours() -> None:
    assert guest.kernel_cmdline() == "console=ttyS0 quiet"
    line = guest.kernel_cmdline(slow_boot=2.5, write_blocks=8, write_pattern=0x5a, probe=True,
                                quiet=False, debug=True)
    assert line.split() == ["console=ttyS0", "cp.slow_boot=2.5", "cp.write_blocks=8",
                            "cp.write_pattern=90", "cp.probe=1", "cp.debug=1"]
    for bad in ({"slow_boot": -1}, {"write_blocks": -1}, {"write_pattern": 256}):
        with pytest.raises(ValueError):
            guest.kernel_cmdline(**bad)


def test_last_written_reads_the_writer_progress() -> None:
    assert guest.last_written("boot noise\n") == 0
    text = f"{guest.READY_MARKER}\n{guest.WROTE_MARKER} 1\nnoise\n{guest.WROTE_MARKER} 12\n"
    assert guest.last_written(text) == 12


def test_the_init_script_loads_the_modules_in_the_order_the_kernel_needs() -> None:
    init = guest._render(guest._INIT)
    assert " ".join(guest.MODULES) in init
    assert guest.MODULES.index("virtio_ring") < guest.MODULES.index("virtio_blk")
    assert guest.MODULES.index("evdev") < guest.MODULES.index("button")
    assert "acpid" in init and guest.READY_MARKER in init
    assert len(guest.recipe()) == 64
