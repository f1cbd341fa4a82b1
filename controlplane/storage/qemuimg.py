"""A thin shell over ``qemu-img``: read a backing chain, create, commit, rebase, flatten.

Why a shell and not a library: qemu-img is what QEMU itself uses to read and write qcow2, so
its idea of a chain is the one a VM will see. Every call runs with an argument list (never a
shell), a timeout, and one DEBUG log line with the command and how long it took.

Conventions that make the chain survive moves and crashes:

- Backing names are written relative to the image's directory when the backing file lies in
  the same directory (qcow2 resolves a relative backing name against the image's own
  directory), so an image directory can be moved or mounted elsewhere.
- New files (``create``, ``convert``) are written under a temporary name in the same directory,
  fsynced, then renamed, so a crash never leaves a half-written file under the real name,
  where a reconcile would take it for a volume.
- qemu-img gets absolute paths, so what it reports does not depend on our working directory
  ("full-backing-filename" is relative to the cwd when the image was named relatively).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Layer",
    "QemuImgError",
    "chain_info",
    "check_available",
    "commit",
    "convert",
    "create",
    "rebase",
]

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "qemu-utils"
# Reading metadata is quick; moving data (commit, safe rebase, convert) scales with the disk.
INFO_TIMEOUT = 60.0
DATA_TIMEOUT = 3600.0


class QemuImgError(Exception):
    """A qemu-img command failed, timed out (``returncode`` None) or could not be started.

    Keeps the command and stderr: qemu-img says what is wrong only there (which file could not
    be opened, which backing file is missing)."""

    def __init__(self, cmd: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"{' '.join(self.cmd)} {status}: {stderr.strip()}")


@dataclass(frozen=True)
class Layer:
    """One file of a backing chain as qemu-img reads it.

    ``path`` is absolute with symlinks resolved (os.path.realpath), so callers can map it to a
    volume id by equality; ``backing_path`` likewise, or None for a base."""

    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing_path: str | None


def check_available(binary: str = "qemu-img") -> str | None:
    """None when ``binary`` is on PATH, else a message saying what to install: a missing
    qemu-img should fail with the fix in the message, not with FileNotFoundError."""
    if shutil.which(binary):
        return None
    return (
        f"{binary} not found on PATH: install the Debian package {DEBIAN_PACKAGE} "
        f"(apt-get install {DEBIAN_PACKAGE})"
    )


def _run(args: Sequence[str], timeout: float) -> str:
    cmd = list(args)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise QemuImgError(cmd, None, f"after {timeout}s {stderr}") from exc
    except FileNotFoundError as exc:
        raise QemuImgError(cmd, None, check_available(cmd[0]) or str(exc)) from exc
    finally:
        log.debug("%s took %.1f ms", " ".join(cmd), (time.monotonic() - start) * 1000)
    if proc.returncode != 0:
        raise QemuImgError(cmd, proc.returncode, proc.stderr)
    return proc.stdout


def _backing_name(image: str, backing: str) -> str:
    """The backing name to write into ``image``: relative when in the same directory."""
    backing_abs = os.path.realpath(backing)
    if os.path.dirname(backing_abs) == os.path.dirname(os.path.realpath(image)):
        return os.path.basename(backing_abs)
    return backing_abs


def _fsync_path(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` and rename the result to ``path``; remove it on failure.

    The temporary name is random rather than made by mkstemp so that qemu-img creates the
    file itself, with the usual umask mode (mkstemp's 0600 would stay after the rename). The
    existence check is not atomic with the rename: callers hold the image lock, which is what
    keeps two creators of one volume apart."""
    if os.path.lexists(path):
        raise FileExistsError(f"{path} already exists")
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        _fsync_path(tmp)
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists")
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_path(directory, directory=True)


def chain_info(
    path: str, *, binary: str = "qemu-img", timeout: float = INFO_TIMEOUT
) -> tuple[Layer, ...]:
    """The backing chain of ``path``, base first, from ONE ``qemu-img info -U --backing-chain``.

    One call for the whole chain, not one per layer: reconcile runs under the image lock, so
    its time is everyone's wait (a 10-deep chain is one ~15 ms call). ``-U`` (no lock) lets us
    read the chain of an image a VM has open; reconcile refuses running VMs' images anyway.
    Raises QemuImgError naming the path when any file of the chain cannot be opened."""
    image = os.path.abspath(path)
    out = _run(
        [binary, "info", "-U", "--backing-chain", "--output=json", image], timeout
    )
    try:
        entries = json.loads(out)
    except json.JSONDecodeError as exc:
        raise QemuImgError([binary, "info", image], 0, f"unparsable output: {exc}") from exc
    if isinstance(entries, dict):  # defensive: a single image without --backing-chain
        entries = [entries]
    layers: list[Layer] = []
    current = os.path.realpath(image)
    for entry in entries:  # leaf first
        backing = entry.get("full-backing-filename") or entry.get("backing-filename")
        backing_path = os.path.realpath(backing) if backing else None
        layers.append(
            Layer(
                path=current,
                format=entry["format"],
                virtual_size=int(entry["virtual-size"]),
                actual_size=int(entry.get("actual-size", 0)),
                backing_path=backing_path,
            )
        )
        if backing_path is None:
            break
        current = backing_path
    layers.reverse()
    return tuple(layers)


def create(
    path: str,
    *,
    size: int | None = None,
    backing: str | None = None,
    backing_format: str = "qcow2",
    fmt: str = "qcow2",
    binary: str = "qemu-img",
    timeout: float = INFO_TIMEOUT,
    unsafe_backing: bool = False,
) -> None:
    """Create a new image (a base of ``size`` bytes, or an overlay on ``backing``, whose size
    it takes when ``size`` is None). Refuses an existing path with FileExistsError: a volume
    file is never overwritten."""
    if size is None and backing is None:
        raise ValueError("create needs a size or a backing file")
    image = os.path.abspath(path)

    def write(tmp: str) -> None:
        args = [binary, "create", "-q", "-f", fmt]
        if backing is not None:
            # -u: do not open the backing file (a running QEMU holds its lock); needs size
            args += ["-u"] if unsafe_backing else []
            args += ["-b", _backing_name(image, backing), "-F", backing_format]
        args.append(tmp)
        if size is not None:
            args.append(str(size))
        _run(args, timeout)

    _write_new(image, write)


def commit(
    top: str,
    *,
    base: str | None = None,
    fmt: str = "qcow2",
    binary: str = "qemu-img",
    timeout: float = DATA_TIMEOUT,
) -> None:
    """Commit ``top``'s data into its backing file, or into ``base`` further down the chain.

    ``-d`` keeps ``top`` as it is: deleting it is the caller's step, taken only once the
    metadata says nothing uses it (a merge interrupted here still has every byte in top)."""
    args = [binary, "commit", "-q", "-f", fmt, "-d"]
    if base is not None:
        args += ["-b", os.path.abspath(base)]
    args.append(os.path.abspath(top))
    _run(args, timeout)


def rebase(
    path: str,
    new_backing: str | None,
    *,
    unsafe: bool,
    backing_format: str = "qcow2",
    fmt: str = "qcow2",
    binary: str = "qemu-img",
    timeout: float = DATA_TIMEOUT,
) -> None:
    """Point ``path`` at ``new_backing`` (None: make it standalone).

    ``unsafe`` (-u) only rewrites the backing name: right after a commit, when the new backing
    already holds the data. Without it qemu-img copies into ``path`` whatever differs between
    the old and the new backing, so the guest-visible content stays the same."""
    image = os.path.abspath(path)
    args = [binary, "rebase", "-q", "-f", fmt]
    if unsafe:
        args.append("-u")
    if new_backing is None:
        args += ["-b", ""]
    else:
        args += ["-b", _backing_name(image, new_backing), "-F", backing_format]
    args.append(image)
    _run(args, timeout)


def convert(
    src: str,
    dst: str,
    *,
    fmt: str = "qcow2",
    src_fmt: str = "qcow2",
    binary: str = "qemu-img",
    timeout: float = DATA_TIMEOUT,
    force_share: bool = False,
) -> None:
    """Flatten the chain ending at ``src`` into one new standalone file ``dst`` (format
    ``fmt``), written under a temporary name and renamed. Refuses an existing ``dst``.
    No ``-U``: a chain a VM is writing would give a torn copy, so qemu-img's lock refusal is
    the answer we want (a live snapshot converts its mirror copy, which nothing writes)."""
    source = os.path.abspath(src)

    def write(tmp: str) -> None:
        share = ["-U"] if force_share else []
        _run([binary, "convert", "-q", *share, "-f", src_fmt, "-O", fmt, source, tmp], timeout)

    _write_new(os.path.abspath(dst), write)
