"""The agent's block-store client sessions: one per volume of each VM it runs.

Why (issue 14, seed: ZStack's anti-split-brain check): a host's block client holds a session
on every volume its VMs use and keeps it alive; the store expires a session whose keepalives
stop and blocklists it (`mds/sessions.py`). The management plane then asks the store who
holds a VM's volumes before it restarts the VM of an unreachable host: a live session from
the old host means the VM may still run there.

- A session is opened *before* the VM starts (a block client opens its volume before qemu
  runs): a start whose sessions cannot be opened is refused, and a started VM always holds
  its volumes. Its id is derived from (host, VM, generation, volume), so a retried start of
  the same generation re-opens the same session (AttachVolume is then idempotent and safe
  to try on the next MDS after a timeout), and a new generation gets a new one.
- Keepalives run on a background thread (and a small pool, so one hung MDS delays one
  session's keepalive by one short attempt deadline, not all of them), every quarter of the
  store's session timeout, trying the store's MDS in turn (`storage/mds.py`'s client, the
  one way to call an MDS).
- A host that is powered off keeps nothing alive: ``holds(host, vm)`` (the backend's answer)
  turning False drops the session without a goodbye, as a dead client's would be; it then
  expires in the store. A host cut off from the management nodes still runs its VMs and
  keeps their sessions (it is not cut off from its storage).
- A keepalive refused as blocklisted (FAILED_PRECONDITION) means the store has fenced the
  session: it is dropped and logged; the VM's I/O would fail in a real store.
- Stop and destroy detach (best effort: a failed detach leaves a session that expires).

Limit: sessions live in this process's memory; an agent restart (libvirt backend, whose VMs
survive it) loses them and they expire, which HA would read as "no client". A restarted
libvirt agent should re-open them from its domains' metadata: not done yet.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

from controlplane import errors, wiretime
from controlplane.security.tls import Transport
from controlplane.storage.mds import MdsClient, MdsEndpoint, MdsError
from controlplane.v1 import agent_pb2

__all__ = ["VolumeSessions", "session_id_of"]

log = logging.getLogger(__name__)

# An attach (before the VM starts) gets at most this long per MDS.
ATTACH_ATTEMPT_TIMEOUT = 5.0
TICK = 0.2


def session_id_of(host_id: str, vm_id: str, generation: int, volume_id: str) -> str:
    """The session id of one VM start on one volume (stable across retries of the start)."""
    text = f"{host_id}\0{vm_id}\0{generation}\0{volume_id}".encode()
    return "s" + hashlib.blake2b(text, digest_size=16).hexdigest()


@dataclass
class _Held:
    host_id: str
    vm_id: str
    storage_id: str
    volume_id: str
    session_id: str
    client: MdsClient
    timeout: float
    last_ok: float
    in_flight: bool = False


class VolumeSessions:
    """Sessions of every VM this agent runs (thread-safe)."""

    def __init__(self, tls: Transport, *, holds: Callable[[str, str], bool] = lambda h, v: True,
                 clock: Callable[[], float] = time.monotonic, workers: int = 8) -> None:
        self.tls = tls
        self.holds = holds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], list[_Held]] = {}  # (host, vm) -> sessions
        self._clients: dict[tuple[str, ...], MdsClient] = {}
        self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix="volume-keepalive")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="volume-sessions", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def _client(self, addresses: Sequence[str]) -> MdsClient:
        key = tuple(addresses)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = MdsClient(
                    [MdsEndpoint(a) for a in addresses], ATTACH_ATTEMPT_TIMEOUT, tls=self.tls)
            return client

    def sessions(self, host_id: str, vm_id: str) -> list[str]:
        """The session ids held for a VM (for tests and logs)."""
        with self._lock:
            return [h.session_id for h in self._held.get((host_id, vm_id), [])]

    # -- attach / detach ------------------------------------------------------------

    def attach(self, host_id: str, vm_id: str, generation: int,
               volumes: Sequence[agent_pb2.AgentVolume], address: str = "") -> None:
        """Open a session on each volume before the VM starts; on any failure close the
        ones opened and raise errors.Refused (the VM is not started)."""
        if not volumes:
            return
        opened: list[_Held] = []
        for volume in volumes:
            client = self._client(list(volume.mds_addresses))
            session_id = session_id_of(host_id, vm_id, generation, volume.volume_id)
            try:
                answer = client.attach_volume(volume.volume_id, host_id, session_id, address)
            except MdsError as exc:
                for held in opened:
                    self._detach_one(held)
                # Refused (FAILED_PRECONDITION) whatever the store said: the VM certainly
                # did not start, so the caller may count it a failed start (not "unknown").
                raise errors.Refused(f"vm {vm_id}: volume {volume.volume_id} of storage "
                                     f"{volume.storage_id} not attached, the VM is not "
                                     f"started: {exc}") from exc
            timeout = wiretime.span(answer.session_timeout) or 10.0
            opened.append(_Held(host_id, vm_id, volume.storage_id, volume.volume_id, session_id,
                                client, timeout, self._clock()))
            log.info("host %s vm %s: volume %s attached (session %s, timeout %gs)", host_id,
                     vm_id, volume.volume_id, session_id, timeout)
        with self._lock:
            self._held[(host_id, vm_id)] = opened

    def detach(self, host_id: str, vm_id: str) -> None:
        """Close the VM's sessions (the VM stopped); best effort."""
        with self._lock:
            held = self._held.pop((host_id, vm_id), [])
        for one in held:
            self._detach_one(one)

    def _detach_one(self, held: _Held) -> None:
        try:
            held.client.detach_volume(held.volume_id, held.host_id, held.session_id)
            log.info("host %s vm %s: volume %s detached (session %s)", held.host_id,
                     held.vm_id, held.volume_id, held.session_id)
        except MdsError as exc:
            log.warning("host %s vm %s: volume %s not detached (it expires): %s",
                        held.host_id, held.vm_id, held.volume_id, exc)

    # -- keepalives -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.wait(TICK):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("volume keepalive round failed")

    def _tick(self) -> None:
        now = self._clock()
        with self._lock:
            items = list(self._held.items())
        for (host_id, vm_id), held in items:
            if not self.holds(host_id, vm_id):
                # Powered off (or the VM died with its host): a dead client says no goodbye.
                with self._lock:
                    if self._held.get((host_id, vm_id)) is held:
                        del self._held[(host_id, vm_id)]
                log.info("host %s vm %s: gone; its volume sessions are left to expire",
                         host_id, vm_id)
                continue
            for one in held:
                if one.in_flight or now - one.last_ok < one.timeout / 4:
                    continue
                one.in_flight = True
                try:
                    self._pool.submit(self._keepalive, one)
                except RuntimeError:  # pool shut down: stopping
                    return

    def _keepalive(self, held: _Held) -> None:
        try:
            # A hung MDS costs a quarter of the timeout, and the next MDS still answers in
            # time: the session never expires for one hung MDS.
            answer = held.client.keepalive_volume(
                held.volume_id, held.host_id, held.session_id, budget=held.timeout / 2,
                attempt_timeout=max(0.1, held.timeout / 4))
            held.last_ok = self._clock()
            held.timeout = wiretime.span(answer.session_timeout) or held.timeout
        except MdsError as exc:
            if any(code in ("FAILED_PRECONDITION", "NOT_FOUND") for code in exc.codes):
                log.error("host %s vm %s: volume %s session %s fenced by the store (%s): "
                          "its I/O is refused", held.host_id, held.vm_id, held.volume_id,
                          held.session_id, exc)
                with self._lock:
                    sessions = self._held.get((held.host_id, held.vm_id))
                    if sessions is not None and held in sessions:
                        sessions.remove(held)
            else:
                log.warning("host %s vm %s: keepalive of volume %s failed: %s", held.host_id,
                            held.vm_id, held.volume_id, exc)
        finally:
            held.in_flight = False
