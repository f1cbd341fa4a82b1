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

- What it holds is kept on disk (``state_path``: one JSON document, written to a temporary
  file and renamed after every attach, detach and drop, so a kill -9 leaves the old or the
  new one). An agent restart leaves the VMs running (libvirt's domains, the sim with its
  state file); without this file their sessions would be forgotten, their keepalives stop,
  the store blocklist them, and HA read "no client" as "dead" for a host then cut off from
  the nodes: a second copy of a running VM. At start (``restore``) the agent re-opens the
  session of every VM the backend still runs at the saved generation (AttachVolume with the
  same session id refreshes it) and drops the rest (left to expire). A session the store
  already blocklisted (the restart took longer than the session timeout) is logged as an
  error naming VM, volume and host and counted
  (``controlplane_agent_volume_sessions_fenced_total{when="restart"}``): that copy has lost
  its storage, which is the store's fence doing its job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass

from controlplane import errors, metrics, wiretime
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
    generation: int
    storage_id: str
    volume_id: str
    session_id: str
    addresses: tuple[str, ...]
    client: MdsClient
    timeout: float
    last_ok: float
    in_flight: bool = False
    reopen: bool = False  # restored from the state file: re-attach (refresh) before keepalives

    def saved(self) -> dict[str, object]:
        return {"host_id": self.host_id, "vm_id": self.vm_id, "generation": self.generation,
                "storage_id": self.storage_id, "volume_id": self.volume_id,
                "session_id": self.session_id, "mds_addresses": list(self.addresses),
                "timeout": self.timeout}


class VolumeSessions:
    """Sessions of every VM this agent runs (thread-safe)."""

    def __init__(self, tls: Transport, *, holds: Callable[[str, str], bool] = lambda h, v: True,
                 clock: Callable[[], float] = time.monotonic, workers: int = 8,
                 state_path: str | None = None) -> None:
        """``state_path``: where what is held is kept across restarts (None: memory only,
        and a restart forgets every session)."""
        self.tls = tls
        self.holds = holds
        self.state_path = state_path
        self._save_lock = threading.Lock()  # one writer at a time: the rename order is the truth
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

    # -- the state file -------------------------------------------------------------

    def _save(self) -> None:
        """Replace the state file with what is held now (no-op without one). A failed
        write is logged, not raised: the sessions are held either way, only a restart
        would forget them."""
        with self._lock:
            doc = [one.saved() for held in self._held.values() for one in held]
        metrics.AGENT_VOLUME_SESSIONS.set(len(doc))
        if self.state_path is None:
            return
        with self._save_lock:
            with self._lock:  # the newest snapshot, taken under the writer's lock
                doc = [one.saved() for held in self._held.values() for one in held]
            tmp = f"{self.state_path}.tmp"
            try:
                with open(tmp, "w") as f:
                    json.dump({"sessions": doc}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_path)
            except OSError as exc:
                log.error("volume sessions not saved to %s (a restart would forget them): %s",
                          self.state_path, exc)

    def restore(self, runs: Callable[[str, str, int], bool | None]) -> int:
        """Take back the sessions of the state file whose VM still runs here.

        ``runs(host, vm, generation)``: True, the backend runs that VM at that generation;
        False, it does not (its sessions are dropped, left to expire); None, it cannot
        tell now (kept: a session held for a VM that is gone only delays an HA restart to
        the fence path, one dropped for a VM that runs would let HA start a second copy).
        The kept ones are re-attached (same session id: a refresh) by the keepalive thread
        at once; returns how many were kept."""
        if self.state_path is None:
            return 0
        try:
            with open(self.state_path) as f:
                saved = json.load(f).get("sessions", [])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("volume sessions of %s not restored (they expire in the store): %s",
                      self.state_path, exc)
            return 0
        groups: dict[tuple[str, str], list[dict]] = {}
        for entry in saved:
            groups.setdefault((entry["host_id"], entry["vm_id"]), []).append(entry)
        kept = 0
        for (host_id, vm_id), entries in groups.items():
            generation = int(entries[0]["generation"])
            verdict = runs(host_id, vm_id, generation)
            if verdict is False:
                log.info("host %s vm %s generation %d: not run here any more; its volume "
                         "sessions are left to expire", host_id, vm_id, generation)
                continue
            restored = [_Held(host_id, vm_id, int(e["generation"]), e["storage_id"],
                              e["volume_id"], e["session_id"], tuple(e["mds_addresses"]),
                              self._client(list(e["mds_addresses"])),
                              float(e.get("timeout") or 10.0), 0.0, reopen=True)
                        for e in entries]
            with self._lock:
                if (host_id, vm_id) in self._held:
                    continue  # a start since (a new generation): its sessions are the truth
                self._held[(host_id, vm_id)] = restored
            kept += len(restored)
            log.info("host %s vm %s generation %d: re-opening its sessions on volumes %s%s",
                     host_id, vm_id, generation, ", ".join(h.volume_id for h in restored),
                     "" if verdict else " (the backend cannot tell whether it runs: kept)")
        self._save()
        return kept

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
            opened.append(_Held(host_id, vm_id, generation, volume.storage_id,
                                volume.volume_id, session_id, tuple(volume.mds_addresses),
                                client, timeout, self._clock()))
            log.info("host %s vm %s: volume %s attached (session %s, timeout %gs)", host_id,
                     vm_id, volume.volume_id, session_id, timeout)
        with self._lock:
            self._held[(host_id, vm_id)] = opened
        self._save()

    def detach(self, host_id: str, vm_id: str) -> None:
        """Close the VM's sessions (the VM stopped); best effort."""
        with self._lock:
            held = self._held.pop((host_id, vm_id), [])
        if held:
            self._save()
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
                self._save()
                continue
            for one in held:
                if one.in_flight or now - one.last_ok < one.timeout / 4:
                    continue
                one.in_flight = True
                try:
                    self._pool.submit(self._reopen if one.reopen else self._keepalive, one)
                except RuntimeError:  # pool shut down: stopping
                    return

    def _fenced(self, held: _Held, when: str, exc: MdsError) -> None:
        """The store refused the session as blocklisted: drop it, say so, count it."""
        metrics.AGENT_VOLUME_SESSIONS_FENCED.labels(when).inc()
        with self._lock:
            sessions = self._held.get((held.host_id, held.vm_id))
            if sessions is not None and held in sessions:
                sessions.remove(held)
                if not sessions:
                    del self._held[(held.host_id, held.vm_id)]
        self._save()

    def _reopen(self, held: _Held) -> None:
        """Re-attach a session restored from the state file (same id: a refresh of a live
        one). Blocklisted: the restart took longer than the session timeout and the store
        fenced this VM's copy; a store that does not answer: tried again next round."""
        try:
            answer = held.client.attach_volume(held.volume_id, held.host_id, held.session_id,
                                               budget=held.timeout / 2)
            held.timeout = wiretime.span(answer.session_timeout) or held.timeout
            held.last_ok = self._clock()
            held.reopen = False
            log.info("host %s vm %s: volume %s session %s re-opened after the agent restart",
                     held.host_id, held.vm_id, held.volume_id, held.session_id)
        except MdsError as exc:
            if "FAILED_PRECONDITION" in exc.codes:
                log.error("host %s vm %s: volume %s session %s was blocklisted by the store "
                          "while the agent was down (the restart took longer than the "
                          "session timeout): this copy of the VM has lost its storage, its "
                          "I/O is refused (%s)", held.host_id, held.vm_id, held.volume_id,
                          held.session_id, exc)
                self._fenced(held, "restart", exc)
            else:
                log.warning("host %s vm %s: volume %s session %s not re-opened yet: %s",
                            held.host_id, held.vm_id, held.volume_id, held.session_id, exc)
                held.last_ok = self._clock() - held.timeout / 8  # again in a short while
        finally:
            held.in_flight = False

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
                self._fenced(held, "keepalive", exc)
            else:
                log.warning("host %s vm %s: keepalive of volume %s failed: %s", held.host_id,
                            held.vm_id, held.volume_id, exc)
        finally:
            held.in_flight = False
