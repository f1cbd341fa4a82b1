"""Certificate rotation on running processes, for tests and the rotation bench: identities
whose files the caller rewrites (a kubelet-style Secret swap or plain file replacement) and
client threads that call a node without a pause and keep every failure.

Why a harness piece: the rotation test (tests/integration/test_tls_rotation.py) and the
bench (`python3 -m controlplane.devtools.bench.tls_rotation`) drive the same fleet the same
way; one of them asserts, the other prints figures.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from controlplane.channels import ChannelPool
from controlplane.security import pki as pki_files
from controlplane.security import x509 as cx509
from controlplane.security.peercert import server_certificate
from controlplane.security.tls import TlsFiles
from controlplane.testing.pki import SecretDir
from controlplane.v1 import cluster_pb2, cluster_pb2_grpc, vm_pb2, vm_pb2_grpc

__all__ = ["LAYOUTS", "Callers", "RotatingIdentity", "pool_reloads_logged",
           "presented_serial"]

LAYOUTS = ("secret", "files")
CALL_TIMEOUT = 15.0


class RotatingIdentity:
    """One process's certificate directory, rewritten in one layout: "secret" (the kubelet's
    `..data` symlink swap, `testing.pki.SecretDir`) or "files" (ca.crt, tls.key, tls.crt
    renamed into place one after another, `security.pki.write_identity`)."""

    def __init__(self, path: Path, layout: str, kind: str, name: str,
                 role: str | None = None, hosts: tuple[str, ...] = ()) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: one of {', '.join(LAYOUTS)}")
        self.path, self.layout = Path(path), layout
        self.kind, self.name, self.role, self.hosts = kind, name, role, hosts
        self.secret = SecretDir(path) if layout == "secret" else None
        self.issued: cx509.Issued | None = None

    @property
    def files(self) -> TlsFiles:
        return TlsFiles.from_dir(self.path)

    @property
    def serial(self) -> int:
        assert self.issued is not None
        return self.issued.cert.serial_number

    def issue(self, ca: cx509.Issued, bundle: bytes) -> None:
        """A new key and certificate from `ca`, published with `bundle` as ca.crt."""
        self.issued = cx509.issue(ca, self.kind, self.name, dt.datetime.now(dt.UTC),
                                  role=self.role, hosts=self.hosts)
        self.publish(bundle)

    def publish(self, bundle: bytes) -> None:
        """The current key and certificate again, with `bundle` as ca.crt."""
        assert self.issued is not None
        if self.secret is not None:
            self.secret.write(bundle, self.issued)
        else:
            pki_files.write_identity(self.path, bundle, self.issued)


@dataclass
class Callers:
    """Threads calling the node at `address` through `pool` without a pause: two readers
    (GetRing, ListVms, GetVm) and one per VM stopping and starting it (through the node to
    its agent). Every failure is kept with its time; every success's time too."""

    pool: ChannelPool
    address: str
    vm_ids: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)
    ok: dict[str, list[float]] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _vms(self) -> vm_pb2_grpc.VmServiceStub:
        return self.pool.stub(vm_pb2_grpc.VmServiceStub, self.address)

    def _loop(self, name: str, calls: list[Callable[[], object]]) -> None:
        done = self.ok[name]
        i = 0
        while not self.stop.is_set():
            call = calls[i % len(calls)]
            i += 1
            try:
                call()
            except grpc.RpcError as exc:
                with self.lock:
                    self.failures.append(f"{name} at {time.monotonic():.3f}: {exc.code()} "
                                         f"{exc.details()}")
            except Exception as exc:  # noqa: BLE001 - a RuntimeError from the pool fails too
                with self.lock:
                    self.failures.append(f"{name}: {exc!r}")
            else:
                done.append(time.monotonic())

    def names(self) -> list[str]:
        return ["reader-0", "reader-1", *(f"vm-{v}" for v in self.vm_ids)]

    def start(self) -> Callers:
        def ring() -> object:
            return self.pool.stub(cluster_pb2_grpc.ClusterServiceStub, self.address).GetRing(
                cluster_pb2.GetRingRequest(), timeout=CALL_TIMEOUT)

        def vms() -> object:
            return self._vms().ListVms(vm_pb2.ListVmsRequest(), timeout=CALL_TIMEOUT)

        def get() -> object:
            return self._vms().GetVm(vm_pb2.GetVmRequest(vm_id=self.vm_ids[0]),
                                     timeout=CALL_TIMEOUT)

        def cycle(vm_id: str) -> list[Callable[[], object]]:
            def stop() -> object:
                return self._vms().StopVm(vm_pb2.StopVmRequest(vm_id=vm_id, wait=True,
                                                               force=True),
                                          timeout=CALL_TIMEOUT)

            def start() -> object:
                return self._vms().StartVm(vm_pb2.StartVmRequest(vm_id=vm_id, wait=True),
                                           timeout=CALL_TIMEOUT)
            return [stop, start]

        plans: dict[str, list[Callable[[], object]]] = {
            "reader-0": [ring, vms, get], "reader-1": [get, ring, vms]}
        plans.update({f"vm-{vm_id}": cycle(vm_id) for vm_id in self.vm_ids})
        for name, calls in plans.items():
            self.ok[name] = []
            thread = threading.Thread(target=self._loop, args=(name, calls), name=name,
                                      daemon=True)
            self.threads.append(thread)
            thread.start()
        return self

    def successes_since(self, name: str, since: float) -> int:
        return sum(1 for t in self.ok.get(name, []) if t >= since)

    def calls_between(self, start: float, end: float) -> int:
        return sum(1 for times in self.ok.values() for t in times if start <= t < end)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CALL_TIMEOUT + 5)


def presented_serial(address: str, files: TlsFiles) -> int:
    """The serial of the certificate the server at `address` presents to a new handshake
    (made with `files`)."""
    return server_certificate(address, files, 3.0).serial_number


def pool_reloads_logged(log_text: str, files: TlsFiles) -> list[str]:
    """The serials a process's client pools took for `files`, in order, from its log."""
    return re.findall(rf"client certificate files {re.escape(files.cert)} reloaded: "
                      r"serial (\w+)", log_text)
