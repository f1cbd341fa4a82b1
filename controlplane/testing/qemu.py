"""qemu-io helpers for tests: write a byte pattern into an image and check it reads back.

Why tests check data and not just the chain: a moved backing pointer does not prove the data
reached the base (DESIGN.md section 7), so every storage test that merges or snapshots reads
the bytes back through the chain with ``qemu-io read -P``.

qemu-io is unforgiving in an unhelpful way: older releases exit 0 after a failed read, write or
pattern check, printing the failure to stdout. So :func:`qemu_io` fails on the exit status AND
on those lines. A missing binary is an error naming the Debian package, never a skip: a test
that skips for want of qemu proves nothing while looking green.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

__all__ = [
    "QemuIoError",
    "pattern_matches",
    "qemu_io",
    "require",
    "write_pattern",
]

_PACKAGES = {
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}
_FAILURES = ("Pattern verification failed", "read failed", "write failed")
_PATTERN_FAILED = "Pattern verification failed"


class QemuIoError(Exception):
    """A qemu-io run that failed: non-zero exit or a failure line in its output."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, output: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.output = output
        super().__init__(f"{' '.join(self.cmd)} exited {returncode}: {output.strip()}")


def require(binary: str) -> None:
    """Raise RuntimeError naming the Debian package to install when ``binary`` is not on PATH."""
    if shutil.which(binary) is None:
        package = _PACKAGES.get(binary, "the package that provides it")
        raise RuntimeError(
            f"{binary} not found on PATH: the storage tests need it; install the Debian "
            f"package {package} (apt-get install {package})"
        )


def qemu_io(
    path: str,
    *commands: str,
    fmt: str = "qcow2",
    image_opts: bool = False,
    timeout: float = 60.0,
    force_share: bool = False,
) -> str:
    """Run ``qemu-io -f fmt -c CMD ... path`` and return its output (stdout and stderr).

    With ``image_opts`` ``path`` is an option string (``driver=qcow2,file.filename=...``)
    passed with ``--image-opts`` instead of ``-f``. ``force_share`` (``-U``) reads an image a
    running QEMU holds open (its write lock): what is on the file, so flush first. Raises
    :class:`QemuIoError` on a non-zero exit or when the output reports a failed read, write
    or pattern check."""
    if not commands:
        raise ValueError("qemu_io needs at least one command")
    cmd = ["qemu-io"]
    cmd += ["--image-opts"] if image_opts else ["-f", fmt]
    if force_share:
        cmd += ["-r", "-U"]  # force-share needs a read-only open
    for command in commands:
        cmd += ["-c", command]
    cmd.append(path)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        require("qemu-io")
        raise
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or any(failure in output for failure in _FAILURES):
        raise QemuIoError(cmd, proc.returncode, output)
    return output


def write_pattern(
    path: str, offset: int, length: int, pattern: int, *, fmt: str = "qcow2"
) -> None:
    """Write ``length`` bytes of the byte ``pattern`` at ``offset`` into the image (its top
    layer, like a guest would)."""
    qemu_io(path, f"write -P {pattern:#x} {offset} {length}", fmt=fmt)


def pattern_matches(
    path: str, offset: int, length: int, pattern: int, *, fmt: str = "qcow2",
    force_share: bool = False,
) -> bool:
    """Whether the image reads ``length`` bytes of ``pattern`` at ``offset`` through its whole
    chain. False when the pattern check fails; other failures (a missing backing file, a read
    error) raise, since they say nothing about the data."""
    try:
        qemu_io(path, f"read -P {pattern:#x} {offset} {length}", fmt=fmt,
                force_share=force_share)
    except QemuIoError as exc:
        other = [f for f in _FAILURES if f != _PATTERN_FAILED and f in exc.output]
        if _PATTERN_FAILED in exc.output and not other:
            return False
        raise
    return True
