"""The sim's state file: what a simulated hypervisor keeps running across an agent restart.

A real agent restart leaves the guests running (they are qemu processes, libvirt knows their
generation); a sim agent's guests live in its memory. With a state file the sim saves each
host's VMs, generation high-water marks and incoming fences after every change (one JSON
document, written to a temporary file and renamed, so a kill -9 leaves the old or the new
one) and loads them at start: a restart of the process is then an agent restart, not a power
cycle of its hosts. Operations in progress are not saved: they die with the process, as a
live migration's transfer dies with the qemu connection.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any


class StateFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # one writer at a time: the rename order is the truth

    def save(self, hosts: Mapping[str, Any]) -> None:
        """Snapshot every host (each under its own lock) and replace the file."""
        doc: dict[str, Any] = {}
        with self._lock:
            for host_id, host in hosts.items():
                with host.lock:
                    doc[host_id] = {
                        "vms": [[v.vm_id, int(v.state), v.generation, v.incoming]
                                for v in host.vms.values()],
                        "hwm": dict(host.hwm), "fenced_in": dict(host.fenced_in)}
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def load(self, hosts: Mapping[str, Any], vm_info: type, vm_state: type) -> int:
        """Fill the hosts this agent serves from the file (absent: nothing); the VM count."""
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return 0
        count = 0
        for host_id, saved in doc.items():
            host = hosts.get(host_id)
            if host is None:
                continue
            for vm_id, state, generation, incoming in saved["vms"]:
                host.vms[vm_id] = vm_info(vm_id, vm_state(state), generation, incoming)
                count += 1
            host.hwm.update(saved["hwm"])
            host.fenced_in.update(saved["fenced_in"])
        return count
