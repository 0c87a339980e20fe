"""The health verdict shared by ``GET /health`` and ``geojobs health`` (Nagios exit codes).

Critical: the database cannot be reached, or a job type has queued jobs and no live worker.
Warning: the oldest ready job has waited longer than ``GEOJOBS_HEALTH_MAX_WAIT_SECONDS``
(default 900), or queued jobs name a type no worker knows.
The verdict names job types and counts only: no job ids, parameters, users or errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg

from geojobs import registry
from geojobs.db import connect
from geojobs.metrics import OTHER_TYPE, Snapshot, snapshot

__all__ = ["OK", "WARNING", "CRITICAL", "Health", "assess", "check", "max_wait_seconds"]

OK, WARNING, CRITICAL = 0, 1, 2
_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL"}


def max_wait_seconds() -> float:
    """Past this wait, a ready job makes the verdict a warning."""
    return float(os.environ.get("GEOJOBS_HEALTH_MAX_WAIT_SECONDS") or 900.0)


@dataclass
class Health:
    """A verdict (0 OK, 1 warning, 2 critical) and the reasons for it."""

    code: int = OK
    reasons: list[str] = field(default_factory=list)
    database: bool = True

    def add(self, code: int, reason: str) -> None:
        self.code = max(self.code, code)
        self.reasons.append(reason)

    @property
    def name(self) -> str:
        return _NAMES[self.code]

    @property
    def http_status(self) -> int:
        """200 unless critical: the database answered and every queued type has a worker."""
        return 503 if self.code == CRITICAL else 200

    def line(self) -> str:
        """One Nagios-style line: ``STATUS - reasons``."""
        detail = "; ".join(self.reasons) or "every job type with queued jobs has a live worker"
        return f"{self.name} - {detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.name.lower(), "database": "reachable" if self.database else
                "unreachable", "reasons": self.reasons}


def assess(snap: Snapshot, *, job_types: list[str] | None = None,
           max_wait: float | None = None) -> Health:
    """The verdict on one snapshot, optionally for some job types only."""
    health = Health()
    wait_limit = max_wait_seconds() if max_wait is None else max_wait
    wanted = job_types or snap.job_types()
    for job_type in wanted:
        queued = snap.live.get((job_type, "queued"), 0)
        if not queued:
            continue
        if job_type == OTHER_TYPE:
            health.add(WARNING, f"{queued} queued job(s) of types no worker knows")
            continue
        if snap.workers is not None and snap.live_workers(job_type) == 0:
            health.add(CRITICAL, f"{job_type}: {queued} queued job(s) and no live worker")
        waited = snap.oldest_ready_seconds.get(job_type, 0.0)
        if waited > wait_limit:
            health.add(WARNING, f"{job_type}: the oldest ready job has waited {waited:.0f} s "
                                f"(limit {wait_limit:.0f} s)")
    return health


def check(url: str | None = None, *, job_types: list[str] | None = None,
          connect_timeout: float = 5.0) -> Health:
    """Connect, read a snapshot and assess it; an unreachable database is critical."""
    for job_type in job_types or []:
        registry.load(job_type)  # unknown types raise InvalidParams naming the field
    try:
        with connect(url, connect_timeout=max(1, int(connect_timeout))) as conn:
            return assess(snapshot(conn, outcomes=False), job_types=job_types)
    except psycopg.Error as exc:
        health = Health(database=False)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        health.add(CRITICAL, f"database unreachable: {first}")
        return health
