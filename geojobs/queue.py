"""The job queue: the only module that runs queue SQL (named queries in ``geojobs/sql/queries.sql``).

Knows jobs, workers and attempts; knows nothing of geography.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from geojobs.config import SQL_DIR
from geojobs.db import pooled
from geojobs.errors import GeojobsError

__all__ = ["ClaimedJob", "queries", "claim", "complete", "begin", "complete_and_commit", "rollback",
           "LEASE_LOST", "fail", "release", "heartbeat",
           "requeue_stale", "enqueue", "get", "list_jobs", "cancel", "retry", "listen",
           "NOTIFY_CHANNEL", "JOB_EVENTS_CHANNEL", "listen_job_events", "job_events",
           "claim_quiet", "cancel_own",
           "insert_pipeline", "insert_pipeline_step", "get_pipeline", "pipeline_steps",
           "cancel_pipeline",
           "CANCEL_CHANNEL", "job_state", "terminate_backend",
           "register_worker", "touch_worker", "unregister_worker", "prune_workers",
           "list_workers", "live_workers", "enqueue_controlled", "pin", "insert_rerun",
           "named_queries", "worker_of_job",
           "janitor_next_expired", "running_of_worker", "janitor_mark_expired", "janitor_delete_jobs"]

# The migrations' triggers name both channels too, as SQL cannot import these constants.
NOTIFY_CHANNEL = "geojobs"
"""Channel waking the workers when a job becomes ready to claim: payload the job type."""
JOB_EVENTS_CHANNEL = "geojobs_jobs"
"""Channel announcing each change of a job's status or progress: JSON {id, status, progress, submitted_by}."""
CANCEL_CHANNEL = "geojobs_cancel"
"""A running job was cancelled: payload the job id (trigger of migration 0004)."""
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def named_queries(filename: str) -> dict[str, str]:
    """Parse ``geojobs/sql/<filename>`` (``-- name: <name>`` sections) into ``{name: sql}``, once."""
    text = (SQL_DIR / filename).read_text()
    parts = _NAME_LINE.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def queries() -> dict[str, str]:
    """The queue's named queries, ``geojobs/sql/queries.sql``."""
    return named_queries("queries.sql")


def _run(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> psycopg.Cursor[Any]:
    # Prepared once per session on a direct connection; never through a transaction pooler,
    # where the next transaction may run on a server connection that has not prepared it.
    return conn.execute(queries()[name], params, prepare=not pooled(conn))


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds: (id, worker_id, attempt) is its lease."""

    id: int
    job_type: str
    params: Any
    attempt: int
    max_attempts: int
    worker_id: str
    timeout_seconds: int | None = None
    memory_limit_mb: int | None = None
    rerun_of: int | None = None


def claim(conn: psycopg.Connection, job_type: str, worker_id: str) -> ClaimedJob | None:
    """Claim the next ready job of ``job_type``, or return None."""
    return _claimed(_run(conn, "claim_job", {"job_type": job_type, "worker_id": worker_id}
                         ).fetchone(), worker_id)


def _claimed(row: Any, worker_id: str) -> ClaimedJob | None:
    if row is None:
        return None
    job_id, jtype, params, attempts, max_attempts, timeout_seconds, memory_limit_mb, rerun_of = row
    return ClaimedJob(job_id, jtype, params, attempts, max_attempts, worker_id, timeout_seconds,
                      memory_limit_mb, rerun_of)


def _lease(job: ClaimedJob) -> dict[str, Any]:
    return {"id": job.id, "worker_id": job.worker_id, "attempt": job.attempt}


def complete(conn: psycopg.Connection, job: ClaimedJob, result: dict[str, Any]) -> bool:
    """Mark the job completed; False when this worker no longer holds it."""
    cur = _run(conn, "complete_job", {**_lease(job), "result": Jsonb(result)})
    return cur.fetchone() is not None


LEASE_LOST = "GJ409"
"""SQLSTATE of ``complete_job_or_raise`` when the job is no longer this worker's (migration 0012)."""


def begin(conn: psycopg.Connection) -> None:
    """Open the job's transaction on an autocommit connection (closed by
    :func:`complete_and_commit` or :func:`rollback`). Blocks the handler opens inside it with
    ``conn.transaction()`` are savepoints."""
    conn.execute("BEGIN")


def complete_and_commit(conn: psycopg.Connection, job: ClaimedJob, result: dict[str, Any], *,
                        claim_next: str | None = None) -> tuple[bool, ClaimedJob | None]:
    """Mark the job completed and COMMIT the transaction :func:`begin` opened, in one round trip
    (pipelined); returns once the commit is durable. With ``claim_next`` (a job type), the same
    transaction also claims the next ready job of that type and, after the COMMIT, a
    transaction is begun for it: (True, next job or None; then the connection is inside an
    empty transaction to roll back). (False, None) when this worker no longer holds the job:
    the statement raises, and the whole transaction (the job's writes, and no claim) is rolled
    back."""
    claimed: psycopg.Cursor[Any] | None = None
    try:
        with conn.pipeline():
            _run(conn, "complete_job_or_raise", {**_lease(job), "result": Jsonb(result)})
            if claim_next is not None:
                claimed = _run(conn, "claim_job", {"job_type": claim_next,
                                                   "worker_id": job.worker_id})
            conn.execute("COMMIT")
            if claim_next is not None:
                conn.execute("BEGIN")
    except psycopg.Error as exc:
        if exc.sqlstate != LEASE_LOST:
            raise
        rollback(conn)
        return False, None
    return True, (_claimed(claimed.fetchone(), job.worker_id) if claimed is not None else None)


def running_of_worker(conn: psycopg.Connection, worker_id: str) -> list[ClaimedJob]:
    """The jobs the database says ``worker_id`` is running (params not read)."""
    return [ClaimedJob(r[0], r[1], None, r[2], r[3], worker_id)
            for r in _run(conn, "running_of_worker", {"worker_id": worker_id})]


def rollback(conn: psycopg.Connection) -> None:
    """Roll back an open transaction (none open: nothing to do)."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


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
    conn: psycopg.Connection, job_type: str, params: Any, *, priority: int = 0, max_attempts: int = 4,
    depends_on: list[int] | None = None, rerun_of: int | None = None,
) -> int:
    """Insert a job and return its id; with ``depends_on`` it waits for those jobs;
    ``rerun_of`` names the job it re-runs."""
    row = _run(conn, "enqueue_job", {"job_type": job_type, "params": Jsonb(params),
                                     "priority": priority, "max_attempts": max_attempts,
                                     "depends_on": depends_on or None,
                                     "rerun_of": rerun_of}).fetchone()
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
    """Cancel a waiting, queued or running job (its waiting dependents fail with it)."""
    return _run(conn, "cancel_job", {"id": job_id}).fetchone() is not None


def retry(conn: psycopg.Connection, job_id: int) -> bool:
    """Queue a failed or cancelled job again now (waiting, if its dependencies have not
    completed); the dependents it had failed wait again. A job whose dependency failed is
    refused: retry that dependency."""
    try:
        return _run(conn, "retry_job", {"id": job_id}).fetchone() is not None
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        raise GeojobsError(str(exc.diag.message_primary or exc)) from None


def listen(conn: psycopg.Connection, channel: str = NOTIFY_CHANNEL) -> None:
    """Subscribe ``conn`` to ``channel``: by default the wake-ups sent when a job becomes ready."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def cancel_own(conn: psycopg.Connection, job_id: int) -> bool:
    """Cancel a queued or running job submitted by this login role (allowed to geojobs_frontend)."""
    row = _run(conn, "cancel_own_job", {"id": job_id}).fetchone()
    return bool(row and row[0])


def listen_job_events(conn: psycopg.Connection) -> None:
    """Subscribe ``conn`` (autocommit) to :data:`JOB_EVENTS_CHANNEL`."""
    listen(conn, JOB_EVENTS_CHANNEL)


def job_events(conn: psycopg.Connection, timeout: float | None) -> set[int]:
    """Ids of the jobs announced on ``conn`` within ``timeout`` seconds (None: no limit).

    Returns as soon as one notification arrives, with any others already received; an empty
    set when the time ran out.
    """
    ids: set[int] = set()
    limit = None if timeout is None or math.isinf(timeout) else max(timeout, 0.0)
    for note in conn.notifies(timeout=limit, stop_after=1):
        if note.channel == JOB_EVENTS_CHANNEL:
            ids.add(int(json.loads(note.payload)["id"]))
    return ids


def claim_quiet(conn: psycopg.Connection, job_id: int) -> tuple[float, float | None] | None:
    """(seconds the job has been queued, seconds since a worker of its type last claimed a job or
    sent a heartbeat for one since then; None when none did)."""
    row = _run(conn, "claim_quiet", {"id": job_id}).fetchone()
    return (float(row[0]), None if row[1] is None else float(row[1])) if row else None


def job_state(conn: psycopg.Connection, job_id: int) -> tuple[str, str | None, int] | None:
    """(status, worker_id, attempts) of a job, or None when it no longer exists."""
    row = _run(conn, "job_state", {"id": job_id}).fetchone()
    return (row[0], row[1], row[2]) if row else None


def pin_transaction(conn: psycopg.Connection, settings: dict[str, str]) -> int:
    """Set ``settings`` for the open transaction only; the pid of the server process running it."""
    row = _run(conn, "pin_transaction",
               {"names": list(settings), "values": list(settings.values())}).fetchone()
    assert row is not None
    return int(row[0])


def terminate_backend(conn: psycopg.Connection, pid: int, tag: str | None = None) -> bool:
    """End one database session (a killed job process's) now; True when it is gone.

    With ``tag``, only while that session's ``application_name`` is ``tag``: behind PgBouncer a
    server connection serves other clients once the job's transaction is over, and the job
    process tags its transaction (``SET LOCAL``) so that only the job's own work is ended.
    """
    row = _run(conn, "terminate_backend", {"pid": pid, "tag": tag}).fetchone()
    return bool(row and row[0])


def register_worker(conn: psycopg.Connection, *, worker_id: str, job_type: str, host: str,
                    pid: int, version: str, rss_mb: float) -> None:
    """Add (or refresh) this worker's row in ``geojobs_workers``."""
    _run(conn, "register_worker", {"worker_id": worker_id, "job_type": job_type, "host": host,
                                   "pid": pid, "version": version, "rss_mb": rss_mb})


def touch_worker(conn: psycopg.Connection, worker_id: str, *, current_job: int | None,
                 jobs_run: int, rss_mb: float) -> bool:
    """Refresh this worker's row; False when it was pruned meanwhile (register again)."""
    cur = _run(conn, "touch_worker", {"worker_id": worker_id, "current_job": current_job,
                                      "jobs_run": jobs_run, "rss_mb": rss_mb})
    return cur.fetchone() is not None


def unregister_worker(conn: psycopg.Connection, worker_id: str) -> None:
    """Remove this worker's row (it is stopping)."""
    _run(conn, "unregister_worker", {"worker_id": worker_id})


def prune_workers(conn: psycopg.Connection, lease_seconds: float) -> list[str]:
    """Delete the rows of workers not seen for longer than the lease."""
    return [r[0] for r in _run(conn, "prune_workers", {"lease_seconds": lease_seconds})]


def list_workers(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every registered worker, with ``seen_seconds_ago``."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries()["list_workers"], {}).fetchall()


def live_workers(conn: psycopg.Connection, job_type: str, seconds: float) -> int:
    """Workers of ``job_type`` seen within the last ``seconds``."""
    row = _run(conn, "live_workers", {"job_type": job_type, "seconds": seconds}).fetchone()
    return int(row[0]) if row else 0


def insert_pipeline(
    conn: psycopg.Connection, name: str, spec: Any, *, replaces: int | None = None,
    rerun_from: str | None = None,
) -> int:
    """Record a pipeline run and return its id (call inside the transaction inserting its jobs)."""
    row = _run(conn, "insert_pipeline", {"name": name, "spec": Jsonb(spec), "replaces": replaces,
                                         "rerun_from": rerun_from}).fetchone()
    assert row is not None
    return int(row[0])


def insert_pipeline_step(
    conn: psycopg.Connection, pipeline_id: int, step: str, position: int, job_id: int, *,
    reused: bool = False,
) -> None:
    """Link one step of a pipeline run to its job."""
    _run(conn, "insert_pipeline_step", {"pipeline_id": pipeline_id, "step": step,
                                        "position": position, "job_id": job_id, "reused": reused})


def get_pipeline(conn: psycopg.Connection, pipeline_id: int) -> dict[str, Any] | None:
    """One pipeline run as a dict, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries()["get_pipeline"], {"id": pipeline_id}).fetchone()


def pipeline_steps(conn: psycopg.Connection, pipeline_id: int) -> list[dict[str, Any]]:
    """The steps of a pipeline run, in spec order, with their jobs' state."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries()["pipeline_steps"], {"id": pipeline_id}).fetchall()


def cancel_pipeline(conn: psycopg.Connection, pipeline_id: int) -> list[int]:
    """Cancel every unfinished step of a pipeline run; return the ids cancelled."""
    return [int(r[0]) for r in _run(conn, "cancel_pipeline", {"id": pipeline_id})]


def enqueue_controlled(
    conn: psycopg.Connection, job_type: str, params: Any, *, priority: int = 0,
    max_attempts: int = 4, timeout_seconds: int | None = None, memory_limit_mb: int | None = None,
    idempotency_key: str | None = None,
) -> tuple[int, bool]:
    """Insert a job with limits and an idempotency key: (id, True), or the id of the job this
    submitter already queued with that key and False."""
    values = {"job_type": job_type, "params": Jsonb(params), "priority": priority,
              "max_attempts": max_attempts, "timeout_seconds": timeout_seconds,
              "memory_limit_mb": memory_limit_mb, "idempotency_key": idempotency_key}
    for _ in range(3):  # a concurrent insert of the same key may be invisible to the first try
        row = _run(conn, "enqueue_job_controlled", values).fetchone()
        if row is not None:
            return int(row[0]), bool(row[1])
    raise GeojobsError("idempotency_key: the job with this key could not be read back")


def insert_rerun(conn: psycopg.Connection, job: dict[str, Any], params: Any) -> int:
    """Queue a copy of ``job`` (a row from :func:`get`) with ``params``; ``rerun_of`` names it."""
    row = _run(conn, "insert_rerun", {"id": job["id"], "params": Jsonb(params)}).fetchone()
    assert row is not None
    return int(row[0])


def pin(conn: psycopg.Connection, job_id: int, pinned: bool) -> bool:
    """Keep (or stop keeping) a job's outputs past their expiry; False when there is no such job."""
    return _run(conn, "pin_job", {"id": job_id, "pinned": pinned}).fetchone() is not None


def worker_of_job(conn: psycopg.Connection, job_id: int) -> dict[str, Any] | None:
    """The registry row of the worker that holds or last held the job, while it is registered."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries()["worker_of_job"], {"id": job_id}).fetchone()


def janitor_next_expired(conn: psycopg.Connection,
                         params: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """Lock the next finished job whose outputs are expired: (id, result), or None."""
    row = _run(conn, "janitor_expired_outputs", params).fetchone()
    return (int(row[0]), row[1]) if row else None


def janitor_mark_expired(conn: psycopg.Connection, job_id: int) -> None:
    """Record on the job that its outputs were dropped (``result.expired_at``)."""
    _run(conn, "janitor_mark_expired", {"id": job_id})


def janitor_delete_jobs(conn: psycopg.Connection, params: dict[str, Any]) -> list[int]:
    """Delete a batch of finished job rows past the job TTL; their ids."""
    return [int(r[0]) for r in _run(conn, "janitor_delete_jobs", params)]


def janitor_idle_jobs(conn: psycopg.Connection, ids: list[int]) -> set[int]:
    """Of ``ids``, the jobs not running now, row-locked until the transaction ends (so no worker
    claims one meanwhile), plus those with no row at all."""
    locked = {int(r[0]) for r in _run(conn, "janitor_lock_idle_jobs", {"ids": ids})}
    return locked | {int(r[0]) for r in _run(conn, "janitor_missing_jobs", {"ids": ids})}


def janitor_record_run(conn: psycopg.Connection, params: dict[str, Any]) -> None:
    """Insert one row into ``geojobs_janitor_runs`` for a finished janitor run."""
    _run(conn, "janitor_record_run", params)
