"""The guest that libvirt domains boot: a Debian kernel and a busybox initramfs, built once.

Why our own guest and not a cloud image: a test needs a guest that boots in about 2 s under
TCG (no working KVM here), handles the ACPI power button (so a graceful stop is real), writes
a known pattern to its disk on request (so a live snapshot can be checked byte by byte) and
says on its serial console when it is ready. A kernel + a 2 MB initramfs does all that, and
needs no disk image from outside: the kernel package ``linux-image-cloud-amd64`` and
``busybox-static`` come from Debian's archive by ``apt-get download`` (nothing is installed
on the host), and the initramfs is written here.

The build is reproducible: the initramfs is a newc cpio written by :func:`newc_archive`
(sorted entries, mtime 0, uid/gid 0, device nodes without root), so the same packages give
the same bytes and the same checksum. The result lives in :func:`cache_dir` with a
``SHA256SUMS`` file and a ``manifest.json``; :func:`ensure_image` builds it only when the
cache is missing or does not verify. The cache is world-readable: each simulated host's
libvirt session daemon runs as its own Unix user and its QEMU reads the kernel and initrd.

The guest's behaviour is steered by its kernel command line (:func:`kernel_cmdline`):

- always: mount proc/sys/devtmpfs, load virtio_ring, virtio, virtio_pci_modern_dev,
  virtio_pci_legacy_dev, virtio_pci, virtio_blk, evdev, button (in that order: the cloud
  kernel has them as modules), run busybox ``acpid`` with ``/etc/acpi/PWRF/00000080`` ->
  ``sync; poweroff -f`` (so ``virsh shutdown`` powers the guest off), then print
  :data:`READY_MARKER` ``uptime=SECONDS`` on the console;
- ``cp.slow_boot=S``: sleep S seconds before the ready marker (a slow start, for tests);
- ``cp.write_blocks=N cp.write_pattern=B``: after the marker, write N blocks of
  :data:`WRITE_BLOCK` bytes of the byte B (default 0xa5) to /dev/vda from offset 0, each
  with fsync, printing :data:`WROTE_MARKER` ``K`` after block K is on the disk: every block
  below the last K printed before a snapshot started must be in the snapshot;
- ``cp.probe=1``: power off right after the ready marker (the accel probe);
- ``cp.debug=1``: list the input devices and run acpid in its debug mode on the console.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MODULES",
    "READY_MARKER",
    "WRITE_BLOCK",
    "WROTE_MARKER",
    "CpioEntry",
    "GuestImage",
    "build_image",
    "cache_dir",
    "cached_image",
    "ensure_image",
    "kernel_cmdline",
    "last_written",
    "newc_archive",
    "recipe",
]

READY_MARKER = "CONTROLPLANE-GUEST-READY"
WROTE_MARKER = "controlplane-guest: wrote"
POWEROFF_MARKER = "controlplane-guest: power button"
WRITE_BLOCK = 65536
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# The order matters: each needs the ones before it (there is no modules.dep in the package,
# and busybox insmod does not resolve dependencies).
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_blk", "evdev", "button")
_RECIPE_VERSION = "1"  # bump when the layout of the initramfs changes
STEP_TIMEOUT = 300.0  # one apt-get download or dpkg-deb step

_INIT = r"""#!/bin/sh
# controlplane guest init (PID 1); see controlplane/agent/guest.py
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "controlplane-guest: $*"; }
arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "cp.$1="*) echo "${w#*=}"; return;; esac
  done
}
for m in @MODULES@; do
  if [ -e /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko || say "insmod $m failed"; fi
done
# acpid opens /dev/input/event0, 1, ... up to the first missing node, once: start it only
# when the power button and every input device's event node are there.
i=0
while [ $i -lt 250 ]; do
  want=$(grep -c 'Handlers=.*event' /proc/bus/input/devices)
  have=$(ls /dev/input 2>/dev/null | grep -c '^event')
  if grep -q 'Power Button' /proc/bus/input/devices && [ "$have" -ge "$want" ]; then break; fi
  sleep 0.02; i=$((i+1))
done
[ $i -lt 250 ] || say "no power button after 5 s: a graceful shutdown will not work"
if [ -n "$(arg debug)" ]; then
  ls -l /dev/input; grep -E '^[NH]:' /proc/bus/input/devices
  acpid -d -c /etc/acpi &
else
  # -l: busybox acpid exits at once when it cannot open its log (/var/log/acpid.log by
  # default, absent here); the console also shows every event it handles.
  acpid -f -c /etc/acpi -l /dev/console &
fi
s=$(arg slow_boot)
if [ -n "$s" ]; then say "slow boot: sleeping $s s"; sleep "$s"; fi
read up rest </proc/uptime
echo "@READY@ uptime=$up"
if [ -n "$(arg probe)" ]; then poweroff -f; fi
n=$(arg write_blocks)
if [ -n "$n" ]; then
  p=$(arg write_pattern)
  o=$(printf '\\%03o' "${p:-165}")
  dd if=/dev/zero bs=@BLOCK@ count=1 2>/dev/null | tr '\000' "$o" >/tmp/block
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.02; i=$((i+1)); done
  (
    k=0
    while [ $k -lt "$n" ]; do
      dd if=/tmp/block of=/dev/vda bs=@BLOCK@ seek=$k count=1 conv=fsync 2>/dev/null \
        || { say "write of block $k failed"; break; }
      k=$((k+1))
      echo "@WROTE@ $k"
    done
    say "writer done at $k"
  ) &
fi
while :; do sleep 3600; done
"""

_POWER_BUTTON = r"""#!/bin/sh
echo "@POWEROFF@: powering off" >/dev/console
sync
poweroff -f
"""


def _render(text: str) -> str:
    return (text.replace("@MODULES@", " ".join(MODULES)).replace("@READY@", READY_MARKER)
            .replace("@WROTE@", WROTE_MARKER).replace("@BLOCK@", str(WRITE_BLOCK))
            .replace("@POWEROFF@", POWEROFF_MARKER))


def recipe() -> str:
    """A digest of what the build puts into the initramfs besides the packages (init,
    power-button handler, module list, layout version): a cache built from another recipe
    is stale, so a change to the init script reaches every machine's cache by itself."""
    text = "\0".join([_RECIPE_VERSION, _render(_INIT), _render(_POWER_BUTTON), *MODULES])
    return hashlib.sha256(text.encode()).hexdigest()


def kernel_cmdline(*, slow_boot: float | None = None, write_blocks: int | None = None,
                   write_pattern: int | None = None, probe: bool = False,
                   quiet: bool = True, debug: bool = False) -> str:
    """The guest's kernel command line: the console on the first serial port (where the
    domain's serial file and the probe read the markers) plus the ``cp.*`` behaviours."""
    words = ["console=ttyS0"]
    if quiet:
        words.append("quiet")
    if slow_boot is not None:
        if slow_boot < 0:
            raise ValueError("slow_boot must be >= 0")
        words.append(f"cp.slow_boot={slow_boot:g}")
    if write_blocks is not None:
        if write_blocks < 0:
            raise ValueError("write_blocks must be >= 0")
        words.append(f"cp.write_blocks={write_blocks}")
    if write_pattern is not None:
        if not 0 <= write_pattern <= 255:
            raise ValueError("write_pattern is one byte (0..255)")
        words.append(f"cp.write_pattern={write_pattern}")
    if probe:
        words.append("cp.probe=1")
    if debug:
        words.append("cp.debug=1")
    return " ".join(words)


_WROTE = re.compile(re.escape(WROTE_MARKER) + r" (\d+)")


def last_written(console: str) -> int:
    """Blocks the guest's writer has on disk according to its console text (0 if none):
    blocks [0, result) of WRITE_BLOCK bytes each hold the pattern."""
    found = _WROTE.findall(console)
    return int(found[-1]) if found else 0


# ---- the newc cpio writer ----------------------------------------------------------------

@dataclass(frozen=True)
class CpioEntry:
    """One initramfs member. ``mode`` carries the type bits (stat.S_IFREG etc.);
    ``data`` is the file's bytes or a symlink's target; ``rdev`` (major, minor) for a
    device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") cpio archive of ``entries``, sorted by name, with mtime 0 and
    owner root: the same entries give the same bytes (a stable checksum), and device nodes
    need no root to create (they are only headers)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * (-n % 4))

    def member(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int],
               nlink: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        out.write(header + raw)
        pad(len(header) + len(raw))
        out.write(data)
        pad(len(data))

    seen: set[str] = set()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.name), start=1):
        if entry.name in seen or entry.name.startswith("/") or not entry.name:
            raise ValueError(f"bad or duplicate cpio member name {entry.name!r}")
        seen.add(entry.name)
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        member(ino, entry.name, entry.mode, entry.data, entry.rdev, nlink)
    member(0, "TRAILER!!!", 0, b"", (0, 0), 1)
    return out.getvalue()


# ---- the cache -------------------------------------------------------------------------

@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel and initrd paths, their checksum (``sha256``: of the
    SHA256SUMS text, so it covers both files) and the package versions it came from."""

    directory: Path
    kernel: Path
    initrd: Path
    sha256: str
    kernel_version: str
    busybox_version: str


def cache_dir() -> Path:
    """Where the guest image lives: ``$CONTROLPLANE_GUEST_DIR``, else
    ``/var/cache/controlplane/guest`` for root (not under /root: each host's libvirt user
    must read the files, and /root is 0700), else ``~/.cache/controlplane/guest``."""
    env = os.environ.get("CONTROLPLANE_GUEST_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/controlplane/guest")
    return Path.home() / ".cache" / "controlplane" / "guest"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sums_text(kernel: Path, initrd: Path) -> str:
    return f"{_sha256(kernel)}  {kernel.name}\n{_sha256(initrd)}  {initrd.name}\n"


def cached_image(directory: Path | None = None) -> GuestImage | None:
    """The image in the cache when it is complete, was built from this :func:`recipe`
    and its files match SHA256SUMS (about 20 ms: both files are hashed), else None."""
    image_dir = (directory or cache_dir()) / "image"
    try:
        manifest = json.loads((image_dir / "manifest.json").read_text())
        sums = (image_dir / "SHA256SUMS").read_text()
        kernel, initrd = image_dir / "vmlinuz", image_dir / "initrd.img"
        if manifest.get("recipe") != recipe() or _sums_text(kernel, initrd) != sums:
            return None
    except (OSError, ValueError):
        return None
    return GuestImage(image_dir, kernel, initrd, hashlib.sha256(sums.encode()).hexdigest(),
                      manifest.get("kernel_version", "?"), manifest.get("busybox_version", "?"))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One builder at a time (two pytest processes, or sysdeps and a test)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_image(directory: Path | None = None) -> GuestImage:
    """The cached image, built first when missing or broken (about 3 s with the network:
    two downloads, ~27 MB, and the cpio)."""
    base = directory or cache_dir()
    image = cached_image(base)
    if image is not None:
        return image
    with _locked(base):
        image = cached_image(base)  # another process may have built it meanwhile
        if image is None:
            image = build_image(base)
    return image


def _run(what: str, argv: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=STEP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"guest image: {what}: no answer after {STEP_TIMEOUT:.0f}s") from exc
    except FileNotFoundError as exc:
        raise RuntimeError(f"guest image: {what}: {argv[0]} not found (Debian: apt, dpkg)") \
            from exc
    if proc.returncode != 0:
        raise RuntimeError(f"guest image: {what} failed (exit {proc.returncode}): "
                           f"{' '.join(argv)}\n{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc.stdout


def _download(package: str, into: Path) -> Path:
    """``apt-get download`` into ``into``; the package lists are refreshed once when the
    first try fails (a fresh machine has none; an old list names a version the mirror
    no longer has)."""
    try:
        _run(f"apt-get download {package}", ["apt-get", "download", "-q", package], into)
    except RuntimeError:
        _run("apt-get update", ["apt-get", "update", "-q"], into)
        _run(f"apt-get download {package}", ["apt-get", "download", "-q", package], into)
    found = sorted(into.glob(f"{package}_*.deb"))
    if not found:
        raise RuntimeError(f"guest image: apt-get download {package} left no .deb in {into}")
    return found[-1]


def _deb_field(deb: Path, field: str) -> str:
    return _run(f"dpkg-deb -f {deb.name} {field}", ["dpkg-deb", "-f", str(deb), field],
                deb.parent).strip()


def _deb_members(deb: Path, wanted: re.Pattern[str]) -> dict[str, bytes]:
    """The regular files of a .deb whose path matches ``wanted``, read from
    ``dpkg-deb --fsys-tarfile`` as a stream (nothing else is written to disk)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if info.isfile() and wanted.search(name):
                    handle = tar.extractfile(info)
                    assert handle is not None
                    found[name] = handle.read()
    finally:
        proc.stdout.close()
        _, err = proc.communicate(timeout=STEP_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"guest image: dpkg-deb --fsys-tarfile {deb.name} failed: "
                           f"{err.decode(errors='replace')[-2000:]}")
    return found


def _kernel_parts(debs: Path) -> tuple[bytes, dict[str, bytes], str]:
    """(vmlinuz bytes, module name -> .ko bytes, kernel package version). The metapackage
    only depends on the versioned package, which holds the files."""
    meta = _download(KERNEL_PACKAGE, debs)
    depends = _deb_field(meta, "Depends")
    real = re.match(r"\s*(linux-image-[^\s,(]+)", depends)
    if real is None:
        raise RuntimeError(f"guest image: {meta.name} depends on {depends!r}, not a kernel")
    deb = _download(real.group(1), debs)
    mods = "|".join(re.escape(m) for m in MODULES)
    files = _deb_members(deb, re.compile(
        rf"^boot/vmlinuz-|/modules\.builtin$|/({mods})\.ko$"))
    kernels = [v for k, v in files.items() if k.startswith("boot/vmlinuz-")]
    if len(kernels) != 1:
        raise RuntimeError(f"guest image: {deb.name} has {len(kernels)} boot/vmlinuz-*")
    builtin = b"".join(v for k, v in files.items() if k.endswith("/modules.builtin")).decode()
    modules: dict[str, bytes] = {}
    for name in MODULES:
        ko = [v for k, v in files.items() if k.endswith(f"/{name}.ko")]
        if ko:
            modules[name] = ko[0]
        elif not re.search(rf"/{re.escape(name)}\.ko$", builtin, re.M):
            raise RuntimeError(f"guest image: {deb.name} has neither {name}.ko nor {name} "
                               "built in: the guest would have no disk or power button")
    return kernels[0], modules, _deb_field(deb, "Package") + " " + _deb_field(deb, "Version")


def _initramfs(busybox: bytes, applets: list[str], modules: dict[str, bytes]) -> bytes:
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in (
        "bin", "dev", "proc", "sys", "tmp", "etc", "etc/acpi", "etc/acpi/PWRF", "lib",
        "lib/modules")]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox),
        CpioEntry("init", stat.S_IFREG | 0o755, _render(_INIT).encode()),
        CpioEntry("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755,
                  _render(_POWER_BUTTON).encode()),
    ]
    entries += [CpioEntry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox")
                for a in sorted(set(applets)) if a and a != "busybox" and "/" not in a]
    entries += [CpioEntry(f"lib/modules/{n}.ko", stat.S_IFREG | 0o644, ko)
                for n, ko in modules.items()]
    return newc_archive(entries)


def build_image(directory: Path | None = None) -> GuestImage:
    """Download the packages, write the initramfs and install both files into
    ``directory/image`` (replaced whole by a rename, so a reader never sees half an image).
    Needs apt-get and dpkg-deb; runs as any user (nothing is installed)."""
    base = directory or cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    with tempfile.TemporaryDirectory(prefix="build-", dir=base) as tmp:
        work = Path(tmp)
        debs = work / "debs"
        debs.mkdir()
        os.chmod(debs, 0o755)  # apt-get download runs as _apt where it can
        kernel, modules, kernel_version = _kernel_parts(debs)
        bb_deb = _download(BUSYBOX_PACKAGE, debs)
        bb_files = _deb_members(bb_deb, re.compile(r"^bin/busybox$"))
        if "bin/busybox" not in bb_files:
            raise RuntimeError(f"guest image: {bb_deb.name} has no bin/busybox")
        busybox = bb_files["bin/busybox"]
        bb_path = work / "busybox"
        bb_path.write_bytes(busybox)
        bb_path.chmod(0o755)
        applets = _run("busybox --list", [str(bb_path), "--list"], work).split()
        for needed in ("sh", "mount", "insmod", "acpid", "poweroff", "dd", "tr", "sleep"):
            if needed not in applets:
                raise RuntimeError(f"guest image: {bb_deb.name}'s busybox lacks {needed}")
        out = work / "image"
        out.mkdir()
        (out / "vmlinuz").write_bytes(kernel)
        (out / "initrd.img").write_bytes(_initramfs(busybox, applets, modules))
        sums = _sums_text(out / "vmlinuz", out / "initrd.img")
        (out / "SHA256SUMS").write_text(sums)
        manifest = {
            "kernel_version": kernel_version,
            "busybox_version": _deb_field(bb_deb, "Version"),
            "modules": list(modules),
            "recipe": recipe(),
            "sha256": hashlib.sha256(sums.encode()).hexdigest(),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        final = base / "image"
        old = work / "old"
        if final.exists():
            final.rename(old)
        out.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    image = cached_image(base)
    if image is None:
        raise RuntimeError(f"guest image: built into {base / 'image'} but it does not verify")
    return image
