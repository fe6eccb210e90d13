"""Leases on fingerprints: two processes never work on the same job at once.

Before a job works it claims its fingerprint in ``<tracking.dir>/leases.sqlite`` (one row per
fingerprint, written in one SQLite transaction, so of two processes exactly one gets it), with
its host, pid and an expiry. Another process that wants the same job waits until the claim
ends, then finds the job FINISHED (or claims it itself if the holder failed). A claim holds
while its process runs (same host: the pid is checked) or, from another host, until it
expires; a running job renews it every ``LEASE_S / 4`` seconds, so a dead holder's claim
lapses within ``LEASE_S``. Processes see each other's claims where they share
``tracking.dir`` (one machine, or a shared file system next to a tracking server).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

LEASE_S = 120.0


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def live(host: str, pid: int, until: float, now: float) -> bool:
    """Whether a claim still holds."""
    if host == socket.gethostname():
        return alive(pid)
    return until > now


class Leases:
    """The claims of one store's jobs."""

    def __init__(self, folder: str):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(Path(folder) / "leases.sqlite", timeout=60,
                                  isolation_level=None, check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS leases (fingerprint TEXT PRIMARY KEY, "
                        "host TEXT, pid INTEGER, until REAL)")
        self.me = (socket.gethostname(), os.getpid())
        self.lock = threading.Lock()  # the heartbeat thread shares the connection

    def claim(self, fingerprint: str) -> tuple[str, int] | None:
        """Take the fingerprint's claim: None when this process holds it now, else the live
        holder's (host, pid)."""
        now = time.time()
        with self.lock:
            return self._claim(fingerprint, now)

    def _claim(self, fingerprint: str, now: float) -> tuple[str, int] | None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT host, pid, until FROM leases WHERE fingerprint = ?",
                                  (fingerprint,)).fetchone()
            if row and (row[0], row[1]) != self.me and live(*row, now):
                return row[0], row[1]
            self.db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                            (fingerprint, *self.me, now + LEASE_S))
            return None
        finally:
            self.db.execute("COMMIT")

    def holder(self, fingerprint: str) -> tuple[str, int] | None:
        """The live holder of a claim, or None."""
        with self.lock:
            row = self.db.execute("SELECT host, pid, until FROM leases WHERE fingerprint = ?",
                                  (fingerprint,)).fetchone()
        return (row[0], row[1]) if row and live(*row, time.time()) else None

    def renew(self, fingerprint: str) -> None:
        with self.lock:
            self.db.execute("UPDATE leases SET until = ? WHERE fingerprint = ? AND host = ? "
                            "AND pid = ?", (time.time() + LEASE_S, fingerprint, *self.me))

    def release(self, fingerprint: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM leases WHERE fingerprint = ? AND host = ? AND "
                            "pid = ?", (fingerprint, *self.me))


class Held:
    """A claim held while a job works: renewed in the background, released at the end."""

    def __init__(self, leases: Leases, fingerprint: str):
        self.leases, self.fingerprint, self.stop = leases, fingerprint, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(LEASE_S / 4):
            try:
                self.leases.renew(self.fingerprint)
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.leases.release(self.fingerprint)
