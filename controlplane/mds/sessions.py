"""Client sessions of the simulated block store: who holds which volume, and who is fenced.

Why it exists (issue 14, seed: ZStack's anti-split-brain volume-client check; Ceph's client
blocklist): HA may restart a VM of an unreachable host elsewhere only with proof that the
old copy is not still running. A distributed block store knows who has a volume open: each
client keeps a session alive, and a session whose keepalives stop for the store's session
timeout *expires* and is *blocklisted*: its further keepalives (and, in a real store, its
I/O) are refused. So "no live session from the old host" means storage itself has fenced
the old copy, and the management plane may restart the VM without a power fence.

Rules:
- A session is (volume, client, session id); the client chooses the id (one per VM start),
  so a retried attach is the same session and attach is idempotent (try-next safe).
- Expiry is decided lazily and by time alone: a session is expired once
  ``now - last_keepalive > timeout``, whoever looks first; the first look marks it
  blocklisted, and from then on nothing revives it (a keepalive arriving late is refused,
  even if nobody had looked yet). A new attach by the same host gets a new session.
- The table is SQLite: ``":memory:"`` for one MDS, or a file shared by every MDS process of
  one simulated store (``controlplane mds --shared-state FILE``): a real MDS cluster shares
  its metadata, and a session opened on one MDS must be seen by a GetVolumeClients on
  another (else try-next would turn one MDS's ignorance into "no client": a restart while
  the VM runs). SQLite's own locking serialises writers across processes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_SESSION_TIMEOUT", "Blocklisted", "Session", "SessionTable"]

DEFAULT_SESSION_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    address TEXT NOT NULL,
    attached_at REAL NOT NULL,
    last_keepalive REAL NOT NULL,
    blocklisted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (volume_id, session_id)
);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class Blocklisted(Exception):
    """The session expired (or belongs to another client): refused (FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class Session:
    session_id: str
    volume_id: str
    client_id: str
    address: str
    attached_at: float
    last_keepalive: float
    blocklisted: bool


class SessionTable:
    """The sessions of one store (thread-safe; process-safe with a shared file)."""

    def __init__(self, path: str = ":memory:", *,
                 clock: Callable[[], float] = time.time,
                 default_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        # isolation_level=None: explicit BEGIN IMMEDIATE per write (a cross-process lock).
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO settings VALUES ('timeout', ?)",
                             (float(default_timeout),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- settings ------------------------------------------------------------------

    def timeout(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name='timeout'").fetchone()
        return float(row[0]) if row else DEFAULT_SESSION_TIMEOUT

    def set_timeout(self, seconds: float) -> float:
        if not 0 < seconds <= 86400:
            raise ValueError(f"session timeout must be in (0, 86400] seconds, got {seconds}")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO settings VALUES ('timeout', ?)",
                             (float(seconds),))
        return float(seconds)

    # -- sessions ------------------------------------------------------------------

    def _write(self, fn: Callable[[float, float], Session | bool]) -> Session | bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT value FROM settings WHERE name='timeout'").fetchone()
                timeout = float(row[0]) if row else DEFAULT_SESSION_TIMEOUT
                result = fn(self._clock(), timeout)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _expire(self, now: float, timeout: float) -> None:
        """Blocklist every session past its timeout (under the write transaction)."""
        self._db.execute("UPDATE sessions SET blocklisted=1 WHERE blocklisted=0 AND ? - "
                         "last_keepalive > ?", (now, timeout))

    def _get(self, volume_id: str, session_id: str) -> Session | None:
        row = self._db.execute(
            "SELECT session_id, volume_id, client_id, address, attached_at, last_keepalive, "
            "blocklisted FROM sessions WHERE volume_id=? AND session_id=?",
            (volume_id, session_id)).fetchone()
        return Session(*row[:6], bool(row[6])) if row else None

    def attach(self, volume_id: str, client_id: str, session_id: str,
               address: str = "") -> Session:
        """Open (or, repeated, refresh) a session; Blocklisted when it has expired."""

        def run(now: float, timeout: float) -> Session:
            self._expire(now, timeout)
            old = self._get(volume_id, session_id)
            if old is not None:
                self._check(old, client_id)
                self._db.execute("UPDATE sessions SET last_keepalive=? WHERE volume_id=? AND "
                                 "session_id=?", (now, volume_id, session_id))
            else:
                self._db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, 0)",
                                 (session_id, volume_id, client_id, address, now, now))
            got = self._get(volume_id, session_id)
            assert got is not None
            return got

        result = self._write(run)
        assert isinstance(result, Session)
        return result

    def keepalive(self, volume_id: str, client_id: str, session_id: str) -> Session:
        """Refresh a live session; Blocklisted when it expired, KeyError when unknown."""

        def run(now: float, timeout: float) -> Session:
            self._expire(now, timeout)
            old = self._get(volume_id, session_id)
            if old is None:
                raise KeyError(session_id)
            self._check(old, client_id)
            self._db.execute("UPDATE sessions SET last_keepalive=? WHERE volume_id=? AND "
                             "session_id=?", (now, volume_id, session_id))
            got = self._get(volume_id, session_id)
            assert got is not None
            return got

        result = self._write(run)
        assert isinstance(result, Session)
        return result

    def detach(self, volume_id: str, client_id: str, session_id: str) -> bool:
        """Close a session (a blocklisted one stays on the blocklist); False: unknown."""

        def run(now: float, timeout: float) -> bool:
            self._expire(now, timeout)
            old = self._get(volume_id, session_id)
            if old is None or old.blocklisted:
                return False
            if old.client_id != client_id:
                raise Blocklisted(f"session {session_id} on volume {volume_id} belongs to "
                                  f"client {old.client_id}, not {client_id}")
            self._db.execute("DELETE FROM sessions WHERE volume_id=? AND session_id=?",
                             (volume_id, session_id))
            return True

        result = self._write(run)
        return bool(result)

    def live(self, volume_id: str) -> list[Session]:
        """The volume's sessions that have not expired (expiring the ones that have)."""

        def run(now: float, timeout: float) -> bool:
            self._expire(now, timeout)
            return True

        self._write(run)
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, volume_id, client_id, address, attached_at, "
                "last_keepalive, blocklisted FROM sessions WHERE volume_id=? AND "
                "blocklisted=0 ORDER BY attached_at, session_id", (volume_id,)).fetchall()
        return [Session(*r[:6], bool(r[6])) for r in rows]

    def all(self) -> list[Session]:
        """Every session, live and blocklisted (for the sim's GetState)."""

        def run(now: float, timeout: float) -> bool:
            self._expire(now, timeout)
            return True

        self._write(run)
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, volume_id, client_id, address, attached_at, "
                "last_keepalive, blocklisted FROM sessions ORDER BY volume_id, attached_at"
            ).fetchall()
        return [Session(*r[:6], bool(r[6])) for r in rows]

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions")

    @staticmethod
    def _check(session: Session, client_id: str) -> None:
        if session.client_id != client_id:
            raise Blocklisted(f"session {session.session_id} on volume {session.volume_id} "
                              f"belongs to client {session.client_id}, not {client_id}")
        if session.blocklisted:
            raise Blocklisted(
                f"client {client_id} session {session.session_id} on volume "
                f"{session.volume_id} is blocklisted: no keepalive since "
                f"{session.last_keepalive:.3f} (the session expired; its I/O is refused). "
                "Attach a new session to use the volume again")
