"""The job queue: the only module that runs queue SQL (named queries in ``geojobs/sql/queries.sql``).

Knows jobs, workers and attempts; knows nothing of geography.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from geojobs.config import SQL_DIR

__all__ = ["ClaimedJob", "queries", "claim", "complete", "fail", "release", "heartbeat",
           "requeue_stale", "enqueue", "get", "list_jobs", "cancel", "retry", "count_ready",
           "NOTIFY_CHANNEL"]

NOTIFY_CHANNEL = "geojobs"
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """Parse ``geojobs/sql/queries.sql`` into ``{name: sql}``, once."""
    text = (SQL_DIR / "queries.sql").read_text()
    parts = _NAME_LINE.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _run(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> psycopg.Cursor[Any]:
    return conn.execute(queries()[name], params, prepare=True)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds: (id, worker_id, attempt) is its lease."""

    id: int
    job_type: str
    params: Any
    attempt: int
    max_attempts: int
    worker_id: str


def claim(conn: psycopg.Connection, job_type: str, worker_id: str) -> ClaimedJob | None:
    """Claim the next ready job of ``job_type``, or return None."""
    row = _run(conn, "claim_job", {"job_type": job_type, "worker_id": worker_id}).fetchone()
    if row is None:
        return None
    job_id, jtype, params, attempts, max_attempts = row
    return ClaimedJob(job_id, jtype, params, attempts, max_attempts, worker_id)


def _lease(job: ClaimedJob) -> dict[str, Any]:
    return {"id": job.id, "worker_id": job.worker_id, "attempt": job.attempt}


def complete(conn: psycopg.Connection, job: ClaimedJob, result: dict[str, Any]) -> bool:
    """Mark the job completed; False when this worker no longer holds it."""
    cur = _run(conn, "complete_job", {**_lease(job), "result": Jsonb(result)})
    return cur.fetchone() is not None


def fail(
    conn: psycopg.Connection, job: ClaimedJob, error: str, *, retry: bool, delay_seconds: float
) -> tuple[str, datetime] | None:
    """Record a failure; returns (new status, available_at), or None if the lease was lost."""
    params = {**_lease(job), "error": error, "retry": retry, "delay_seconds": delay_seconds}
    row = _run(conn, "fail_job", params).fetchone()
    return (row[0], row[1]) if row else None


def release(conn: psycopg.Connection, job: ClaimedJob) -> bool:
    """Put the job back in the queue without spending its attempt."""
    return _run(conn, "release_job", _lease(job)).fetchone() is not None


def heartbeat(conn: psycopg.Connection, job: ClaimedJob, progress: float | None = None) -> bool:
    """Renew the lease (and record progress); False when the lease is lost or the job cancelled."""
    return _run(conn, "heartbeat", {**_lease(job), "progress": progress}).fetchone() is not None


def requeue_stale(conn: psycopg.Connection, lease_seconds: float) -> list[tuple[int, str]]:
    """Take back running jobs whose worker stopped sending heartbeats."""
    return [tuple(r) for r in _run(conn, "requeue_stale", {"lease_seconds": lease_seconds})]


def enqueue(
    conn: psycopg.Connection, job_type: str, params: Any, *, priority: int = 0, max_attempts: int = 4
) -> int:
    """Insert a job and return its id."""
    row = _run(conn, "enqueue_job", {"job_type": job_type, "params": Jsonb(params),
                                     "priority": priority, "max_attempts": max_attempts}).fetchone()
    assert row is not None
    return int(row[0])


def get(conn: psycopg.Connection, job_id: int) -> dict[str, Any] | None:
    """One job row as a dict."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries()["get_job"], {"id": job_id}).fetchone()


def list_jobs(
    conn: psycopg.Connection, *, status: str | None = None, job_type: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Recent jobs, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        params = {"status": status, "job_type": job_type, "limit": limit}
        return cur.execute(queries()["list_jobs"], params).fetchall()


def cancel(conn: psycopg.Connection, job_id: int) -> bool:
    """Cancel a queued or running job."""
    return _run(conn, "cancel_job", {"id": job_id}).fetchone() is not None


def retry(conn: psycopg.Connection, job_id: int) -> bool:
    """Queue a failed or cancelled job again now."""
    return _run(conn, "retry_job", {"id": job_id}).fetchone() is not None


def count_ready(conn: psycopg.Connection, job_type: str) -> int:
    """Jobs of ``job_type`` ready to run now."""
    row = _run(conn, "count_ready", {"job_type": job_type}).fetchone()
    return int(row[0]) if row else 0
