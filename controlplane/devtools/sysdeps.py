"""Install the system programs the storage code runs, when they are missing.

Why a module and not a line in a README: CI and every new machine start without QEMU, and
nothing installed by hand may be needed. The storage code runs real programs (``qemu-img``
and ``qemu-io`` from Debian's qemu-utils, ``qemu-system-x86_64`` from qemu-system-x86), so
the test command runs ``python3 -m controlplane.devtools.sysdeps`` first. It installs only what is
missing (a no-op, ~10 ms, on a machine that has them) and says what it did.

    python3 -m controlplane.devtools.sysdeps            # install what is missing (apt-get, as root)
    python3 -m controlplane.devtools.sysdeps --check    # exit 1 and name what is missing
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["PROGRAMS", "install", "main", "missing"]

log = logging.getLogger(__name__)

# program -> the Debian package that ships it
PROGRAMS: Mapping[str, str] = {
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
}


def missing(programs: Mapping[str, str] = PROGRAMS) -> dict[str, str]:
    """The programs not on PATH, each with its package."""
    return {prog: pkg for prog, pkg in programs.items() if shutil.which(prog) is None}


def _apt(args: Sequence[str]) -> None:
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise RuntimeError("installing packages needs root (or sudo): "
                               + " ".join(args))
        prefix = ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, "apt-get", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def install(programs: Mapping[str, str] = PROGRAMS) -> list[str]:
    """Install the packages of the missing programs; return the packages installed.

    ``--no-install-recommends`` keeps it to the programs (about 11 s here). The package
    lists are refreshed only when the first try fails (a fresh image has none).
    """
    gone = missing(programs)
    if not gone:
        return []
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            "missing " + ", ".join(sorted(gone)) + " and no apt-get to install "
            + ", ".join(sorted(set(gone.values()))) + ": install them with the system's "
            "package manager")
    packages = sorted(set(gone.values()))
    args = ["install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        _apt(args)
    except subprocess.CalledProcessError:
        _apt(["update", "-q"])
        _apt(args)
    still = missing(programs)
    if still:
        raise RuntimeError("installed " + ", ".join(packages) + " but still missing: "
                           + ", ".join(sorted(still)))
    return packages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m controlplane.devtools.sysdeps",
        description="Install the Debian packages of the programs the storage code runs "
                    "(" + ", ".join(f"{p} from {k}" for p, k in PROGRAMS.items()) + ") "
                    "when they are missing.")
    parser.add_argument("--check", action="store_true",
                        help="only check: exit 1 and name what is missing")
    args = parser.parse_args(argv)
    gone = missing()
    if args.check:
        for prog, pkg in sorted(gone.items()):
            print(f"missing: {prog} (Debian package {pkg})")
        return 1 if gone else 0
    try:
        installed = install()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"sysdeps: {exc}", file=sys.stderr)
        return 1
    if installed:
        print("sysdeps: installed " + ", ".join(installed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
