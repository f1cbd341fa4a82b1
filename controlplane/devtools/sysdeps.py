"""Install the system programs, libraries and bindings the project runs, when they are missing.

Why a module and not a line in a README: CI and every new machine start without QEMU or
libvirt, and nothing installed by hand may be needed. The storage code runs real programs
(``qemu-img``/``qemu-io`` from qemu-utils, ``qemu-system-x86_64`` from qemu-system-x86); the
libvirt backend needs libvirtd and virtlogd (libvirt-daemon + its QEMU driver), virsh
(libvirt-clients), the Python binding ``libvirt-python`` and a
guest image (a Debian kernel + busybox initramfs, see
:mod:`controlplane.agent.guest`). So the test command runs
``python3 -m controlplane.devtools.sysdeps`` first. It installs only what is missing and says
what it did; on a machine that has everything it is a fast no-op (no apt, no pip, no network).

    python3 -m controlplane.devtools.sysdeps            # install what is missing (as root)
    python3 -m controlplane.devtools.sysdeps --check    # exit 1 and name what is missing

Order matters, and is why the binding is installed here and not by ``pip install .[test]``:
``libvirt-python`` ships no wheel, pip builds it against the C library, and that needs the
Debian packages libvirt-dev and pkg-config, which CI only has after this runs. So the Debian
packages come first, then ``pip install libvirt-python`` (the same requirement as the
``libvirt`` extra of pyproject.toml), then the guest image is built into its cache.
Every step runs with a timeout and fails with a message that names the step.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

__all__ = ["FILES", "PROGRAMS", "PYTHON", "install", "main", "missing"]

log = logging.getLogger(__name__)

# program on PATH -> the Debian package that ships it
PROGRAMS: Mapping[str, str] = {
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "libvirtd": "libvirt-daemon",
    # Debian 12 ships virtlogd in libvirt-daemon (libvirt-daemon-log is Debian 13's split)
    "virtlogd": "libvirt-daemon",
    "virsh": "libvirt-clients",
    "pkg-config": "pkg-config",
    # apt-get download + dpkg-deb -x build the guest image (no host install of the kernel)
    "dpkg-deb": "dpkg",
}

# file (a glob: the multiarch directory differs) -> the Debian package that ships it. For what
# ships no program: libvirtd without its QEMU driver answers "no connection driver available".
FILES: Mapping[str, str] = {
    "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so":
        "libvirt-daemon-driver-qemu",
    "/usr/include/libvirt/libvirt.h": "libvirt-dev",
}

# importable module -> pip requirement (kept equal to the `libvirt` extra in pyproject.toml)
PYTHON: Mapping[str, str] = {
    "libvirt": "libvirt-python>=9.0",
}

APT_TIMEOUT = 900.0  # a fresh machine installs ~20 packages; a hung mirror must not hang CI
PIP_TIMEOUT = 600.0


def _absent_file(pattern: str) -> bool:
    return not glob.glob(pattern)


def missing(
    programs: Mapping[str, str] = PROGRAMS,
    files: Mapping[str, str] | None = None,
    modules: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """What is not there, each with what installs it: programs not on PATH and files that
    do not exist (Debian package), Python modules that cannot be imported (pip requirement,
    shown as ``python module NAME``). ``files``/``modules`` default to FILES/PYTHON when
    ``programs`` is the default too, and to nothing otherwise (a caller asking about its
    own programs gets an answer about those only)."""
    default = programs is PROGRAMS
    files = (FILES if default else {}) if files is None else files
    modules = (PYTHON if default else {}) if modules is None else modules
    gone = {prog: pkg for prog, pkg in programs.items() if shutil.which(prog) is None}
    gone.update({path: pkg for path, pkg in files.items() if _absent_file(path)})
    gone.update({f"python module {mod}": req for mod, req in modules.items()
                 if importlib.util.find_spec(mod) is None})
    return gone


def _run(what: str, argv: Sequence[str], timeout: float,
         env: Mapping[str, str] | None = None) -> None:
    """Run one setup step; a failure or a timeout is a RuntimeError that names the step and
    quotes the end of its output."""
    try:
        proc = subprocess.run(list(argv), env=dict(env) if env is not None else None,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what}: no answer after {timeout:.0f}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise RuntimeError(f"{what}: {argv[0]} not found") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")


def _root_prefix(what: str) -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is None:
        raise RuntimeError(f"{what} needs root (or sudo)")
    return ["sudo", "-n"]


def _apt(args: Sequence[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get " + args[0], [*_root_prefix("installing packages"), "apt-get", *args],
         APT_TIMEOUT, env)


def _install_debian(packages: Sequence[str]) -> None:
    """``--no-install-recommends`` keeps it to what is named (libvirt-daemon would otherwise
    pull in a system service setup this sandbox cannot run). The package lists are refreshed
    only when the first try fails (a fresh image has none, or old ones)."""
    if shutil.which("apt-get") is None:
        raise RuntimeError("missing Debian packages " + ", ".join(packages) + " and no "
                           "apt-get to install them: install them with the system's "
                           "package manager")
    args = ["install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        _apt(args)
    except RuntimeError:
        _apt(["update", "-q"])
        _apt(args)


def _install_python(requirements: Sequence[str]) -> None:
    _run("pip install " + " ".join(requirements),
         [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
          *requirements], PIP_TIMEOUT)
    importlib.invalidate_caches()


def install(
    programs: Mapping[str, str] = PROGRAMS,
    files: Mapping[str, str] | None = None,
    modules: Mapping[str, str] | None = None,
) -> list[str]:
    """Install what :func:`missing` names: Debian packages first (the binding builds
    against them), then the pip requirements. Returns what was installed (packages and
    requirements); raises RuntimeError naming what is still missing afterwards."""
    gone = missing(programs, files, modules)
    if not gone:
        return []
    python = sorted({req for what, req in gone.items() if what.startswith("python module ")})
    debian = sorted({pkg for what, pkg in gone.items()
                     if not what.startswith("python module ")})
    if debian:
        _install_debian(debian)
    if python:
        _install_python(python)
    still = missing(programs, files, modules)
    if still:
        raise RuntimeError("installed " + ", ".join(debian + python) + " but still missing: "
                           + ", ".join(sorted(still)))
    return debian + python


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m controlplane.devtools.sysdeps",
        description="Install what the project runs when it is missing: Debian packages ("
                    + ", ".join(sorted(set(PROGRAMS.values()) | set(FILES.values()))) + "), "
                    "the Python binding " + ", ".join(PYTHON.values()) + ", and the libvirt "
                    "guest image (built once into its cache).")
    parser.add_argument("--check", action="store_true",
                        help="only check: exit 1 and name what is missing")
    parser.add_argument("--no-guest", action="store_true",
                        help="do not build (or check) the guest image")
    args = parser.parse_args(argv)
    started = time.monotonic()
    gone = missing()
    guest_missing = False
    if not args.no_guest:
        from controlplane.agent import guest  # after the packages: it needs none

        guest_missing = guest.cached_image() is None
    if args.check:
        for what, pkg in sorted(gone.items()):
            kind = "pip requirement" if what.startswith("python module ") else "Debian package"
            print(f"missing: {what} ({kind} {pkg})")
        if guest_missing:
            print(f"missing: guest image (built into {guest.cache_dir()})")
        return 1 if gone or guest_missing else 0
    try:
        installed = install()
        if guest_missing:
            image = guest.ensure_image()
            installed.append(f"guest image {image.directory}")
    except (RuntimeError, OSError) as exc:
        print(f"sysdeps: {exc}", file=sys.stderr)
        return 1
    if installed:
        print(f"sysdeps: installed {', '.join(installed)} "
              f"in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
