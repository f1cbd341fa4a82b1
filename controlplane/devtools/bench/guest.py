"""Guest figures: boot time to the ready marker and graceful (ACPI) shutdown time.

Why both ways: ``direct`` boots the guest under ``qemu-system-x86_64`` alone (what the accel
probe does) and ``libvirt`` defines and starts the domain XML of
:mod:`controlplane.agent.domainxml` on a per-host session daemon (what the libvirt backend
will do), so the difference is libvirt's own cost. Boot = define + start until the ready
marker is on the serial console; shutdown = ``virDomainShutdown`` (the ACPI power button)
until the domain is shut off. Medians of ``--runs``; the accelerator is TCG unless
``--accel`` says otherwise (``auto`` probes).

    controlplane bench guest --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from typing import Any

from controlplane.agent import accel

__all__ = ["add_guest_parser", "measure", "run_guest_bench"]


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def measure(runs: int = 5, accel_name: str = "tcg") -> dict[str, Any]:
    """Boot and shut down the guest ``runs`` times each way; return the figures."""
    import libvirt

    from controlplane.agent import domainxml, guest
    from controlplane.testing.libvirt import LibvirtHosts, share
    from controlplane.testing.waiting import wait_until

    image = guest.ensure_image()
    chosen = accel.resolve_accel(accel_name, image)
    direct = []
    for _ in range(runs):
        result = accel.boot_direct(image, chosen, timeout=60)
        if not result.ready:
            raise RuntimeError(f"direct {chosen} boot did not reach the marker:\n"
                               f"{result.console[-2000:]}")
        direct.append(result.seconds)
    boots, shutdowns, uptimes = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-guest-") as tmp:
        pool = LibvirtHosts(tmp, prefix="cp-bench-")
        try:
            host = pool.host(0)
            work = pool.shared_dir("guests")
            disk = work / "disk.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"],
                           check=True, timeout=30)
            share(disk)
            for i in range(runs):
                spec = domainxml.DomainSpec(
                    vm_id=f"bench-{i}", cpus=1, memory_mb=256, disk=str(disk), generation=1,
                    accel=chosen, kernel=str(image.kernel), initrd=str(image.initrd),
                    cmdline=guest.kernel_cmdline(), console_log=str(work / f"{i}.console"))
                start = time.monotonic()
                dom = host.boot(spec, timeout=60)
                boots.append(time.monotonic() - start)
                text = (work / f"{i}.console").read_text(errors="replace")
                uptimes.append(float(text.split("uptime=")[1].split()[0]))
                start = time.monotonic()
                dom.shutdown()
                wait_until(lambda d=dom: not d.isActive(), timeout=60, interval=0.01,
                           message="no shut off 60 s after an ACPI shutdown")
                shutdowns.append(time.monotonic() - start)
                if dom.state()[1] != libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN:
                    raise RuntimeError(f"shut off for reason {dom.state()[1]}, not a shutdown")
                dom.undefine()
        finally:
            pool.stop()
    return {
        "accel": chosen,
        "runs": runs,
        "direct_boot_to_marker_s": _stats(direct),
        "libvirt_define_start_to_marker_s": _stats(boots),
        "libvirt_guest_uptime_at_marker_s": _stats(uptimes),
        "libvirt_acpi_shutdown_to_shutoff_s": _stats(shutdowns),
    }


def add_guest_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "guest", help="guest boot time to the ready marker, ACPI shutdown time",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="boots each way (default 5)")
    p.add_argument("--accel", choices=accel.ACCELS, default="tcg",
                   help="accelerator (default tcg; auto probes KVM)")
    p.add_argument("--json", action="store_true")
    return p


def run_guest_bench(args: argparse.Namespace) -> int:
    figures = measure(max(1, args.runs), args.accel)
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"guest ({figures['accel']}, {figures['runs']} runs; median [min-max] seconds)")
    for key, value in figures.items():
        if isinstance(value, dict):
            print(f"  {key:<38} {value['median']:6.2f}  [{value['min']:.2f}-{value['max']:.2f}]")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python3 -m controlplane.devtools.bench.guest")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_guest_parser(sub)
    sys.exit(run_guest_bench(parser.parse_args(["guest", *sys.argv[1:]])))
