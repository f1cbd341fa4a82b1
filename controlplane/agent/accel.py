"""Which accelerator guests get: ``--accel auto`` probes KVM with a real boot, it does not
trust ``/dev/kvm``.

Why a probe: on these machines ``/dev/kvm`` exists (nested virtualisation) but a KVM guest
hangs, and ``-cpu host``/``max`` abort with an MSR error; TCG works. So ``auto`` boots the
project's own guest (:mod:`controlplane.agent.guest`) directly under
``qemu-system-x86_64 -machine q35,accel=kvm`` with ``cp.probe=1`` (the guest prints its
ready marker and powers off) and a short deadline; KVM is chosen only if the marker came.
Anything else (no /dev/kvm, no access, an error, a hang) falls back to TCG. The verdict is
cached in the guest cache directory, keyed by the QEMU version, the host kernel and the
image checksum, so the probe's few seconds are paid once per machine.

:func:`boot_direct` is also what a bench uses to time a boot without libvirt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from controlplane.agent import guest

__all__ = ["ACCELS", "BootResult", "boot_direct", "probe_kvm", "resolve_accel"]

ACCELS = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 5.0  # TCG reaches the marker in ~2 s wall here; a working KVM in well under that
_VERDICT_FILE = "accel.json"


@dataclass(frozen=True)
class BootResult:
    """One direct boot: whether the ready marker came, after how many seconds of wall
    time, and the console text (for the error message when it did not)."""

    ready: bool
    seconds: float
    console: str


def boot_direct(image: guest.GuestImage, accel: str, timeout: float = PROBE_TIMEOUT,
                memory_mb: int = 256) -> BootResult:
    """Boot ``image`` under QEMU (no libvirt) with ``accel`` ('kvm' or 'tcg') and the probe
    command line; wait up to ``timeout`` for the ready marker, then kill it. The guest
    powers itself off right after the marker, so a good boot costs no idle time."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel {accel!r}: boot_direct takes 'kvm' or 'tcg'")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 not found: install the Debian package "
                           "qemu-system-x86 (python3 -m controlplane.devtools.sysdeps)")
    with tempfile.TemporaryDirectory(prefix="cp-boot-") as tmp:
        console = Path(tmp) / "console"
        console.touch()
        argv = [qemu, "-machine", f"q35,accel={accel}", "-m", str(memory_mb),
                "-nodefaults", "-no-user-config", "-nographic", "-display", "none",
                "-no-reboot", "-serial", f"file:{console}",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", guest.kernel_cmdline(probe=True) + " panic=-1"]
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        ready = False
        try:
            while time.monotonic() - start < timeout:
                if guest.READY_MARKER in console.read_text(errors="replace"):
                    ready = True
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            seconds = time.monotonic() - start
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=10)
        text = console.read_text(errors="replace")
        if not ready and err:
            text += "\n[qemu stderr] " + err.decode(errors="replace")[-2000:]
        return BootResult(ready, seconds, text)


def _qemu_version() -> str:
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True,
                             timeout=10, check=False, stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0] if out else "?"


def probe_kvm(image: guest.GuestImage, timeout: float = PROBE_TIMEOUT,
              cache: bool = True) -> bool:
    """Whether a KVM guest really boots here (see the module docstring). The verdict is
    read from / written to ``accel.json`` next to the image when ``cache``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    key = {"qemu": _qemu_version(), "host_kernel": os.uname().release,
           "image": image.sha256}
    verdict_file = image.directory.parent / _VERDICT_FILE
    if cache:
        try:
            saved = json.loads(verdict_file.read_text())
            if saved.get("key") == key:
                return bool(saved["kvm"])
        except (OSError, ValueError, KeyError):
            pass
    result = boot_direct(image, "kvm", timeout)
    if cache:
        tmp = verdict_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"key": key, "kvm": result.ready,
                                       "seconds": round(result.seconds, 3),
                                       "probed_at": time.time()}) + "\n")
            tmp.chmod(0o644)
            tmp.replace(verdict_file)
        except OSError:
            pass  # a read-only cache only costs a probe next time
    return result.ready


def resolve_accel(requested: str, image: guest.GuestImage | None = None) -> str:
    """'kvm' or 'tcg' for ``--accel requested``: kvm and tcg are taken as said; auto
    probes (building the guest image first if needed)."""
    if requested not in ACCELS:
        raise ValueError(f"accel {requested!r}: expected one of {', '.join(ACCELS)}")
    if requested != "auto":
        return requested
    return "kvm" if probe_kvm(image or guest.ensure_image()) else "tcg"
