"""Leases on fingerprints: two processes never work on the same job at once.

A job claims its fingerprint by starting its run (RUNNING, tagged with the fingerprint, its
host, pid and ``lease_until``); of the live claims the oldest wins, and the others drop their
run and wait for it. A claim is live while its process runs (same host: the pid is checked) or,
from another host, until its lease lapses; a running job renews its lease every
``LEASE_S / 4`` seconds, so a dead holder's claim lapses within ``LEASE_S``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

LEASE_S = 120.0


def lease_tag(now: float | None = None) -> dict[str, str]:
    return {"lease_until": f"{(now or time.time()) + LEASE_S:.0f}"}


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


def live(record, now: float, host: str | None = None) -> bool:
    """Whether a RUNNING run's claim still holds."""
    tags = record.tags
    if tags.get("host") == (host or socket.gethostname()) and tags.get("pid"):
        return alive(int(tags["pid"]))
    return float(tags.get("lease_until", "0") or 0) > now


def winner(records: list, now: float, host: str | None = None):
    """The claim that holds among RUNNING runs of one fingerprint: the oldest live one."""
    claims = [r for r in records if live(r, now, host)]
    return min(claims, key=lambda r: (r.start_time, r.run_id)) if claims else None


class Heartbeat:
    """Renews a run's lease while the job works."""

    def __init__(self, run):
        self.run, self.stop = run, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(LEASE_S / 4):
            try:
                self.run.tag("lease_until", lease_tag()["lease_until"])
            except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
