"""Staging tables: where the Dask tasks of a partitioned job write their parts.

A part is ``geojobs_staging.j<job>_a<attempt>_p<partition>`` (migration 0011). A task writes
its part in its own transaction, holding a shared advisory lock of the job and only if the job
is still running with the task's attempt (:func:`guarded_write`). Whoever drops a job's parts
(:func:`drop_parts`: the job itself when it publishes, its worker when the attempt ends any
other way) takes that lock exclusively first. So once an attempt is cancelled, timed out or
failed and its parts dropped, no task of it, still running on a Dask worker, can leave a table
behind. This module needs only psycopg: the worker's supervisor imports it, not Dask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from geojobs import staging_sql as q

__all__ = ["SCHEMA", "part_name", "part_table", "guarded_write", "drop_parts", "job_parts",
           "all_parts", "drop_orphans"]

SCHEMA = q.SCHEMA
T = TypeVar("T")


def part_name(job_id: int, attempt: int, partition: int) -> str:
    """The staging table's name (without schema) of one partition of one attempt."""
    return f"j{job_id}_a{attempt}_p{partition:05d}"


def part_table(job_id: int, attempt: int, partition: int) -> str:
    """``geojobs_staging.<part_name>``."""
    return f"{SCHEMA}.{part_name(job_id, attempt, partition)}"


def guarded_write(conn: psycopg.Connection[Any], job_id: int, attempt: int,
                  write: Callable[[psycopg.Connection[Any]], T]) -> T | None:
    """Run ``write`` in one transaction if this attempt of the job still runs; else None."""
    with conn.transaction():
        conn.execute(q.LOCK_SHARED, {"job_id": job_id})
        if conn.execute(q.ATTEMPT_RUNNING, {"job_id": job_id, "attempt": attempt}).fetchone() is None:
            return None
        return write(conn)


def _attempt_of(name: str) -> int:
    return int(name.split("_")[1][1:])


def job_parts(conn: psycopg.Connection[Any], job_id: int, *, attempt: int | None = None,
              before: int | None = None) -> list[str]:
    """The names of the job's staging tables: of every attempt, of ``attempt`` only, or of the
    attempts before ``before``."""
    names = [r[0] for r in conn.execute(q.JOB_PARTS, {"job_id": job_id}).fetchall()]
    if attempt is not None:
        names = [n for n in names if _attempt_of(n) == attempt]
    if before is not None:
        names = [n for n in names if _attempt_of(n) < before]
    return names


def all_parts(conn: psycopg.Connection[Any]) -> list[str]:
    """Every staging table's name."""
    return [r[0] for r in conn.execute(q.ALL_PARTS).fetchall()]


def drop_parts(conn: psycopg.Connection[Any], job_id: int, *, attempt: int | None = None,
               before: int | None = None) -> int:
    """Drop the job's staging tables (all, of ``attempt``, or of the attempts before
    ``before``) once the writes in flight are done; returns how many.

    Runs in a transaction of its own (or a savepoint of the caller's)."""
    with conn.transaction():
        conn.execute(q.LOCK_EXCLUSIVE, {"job_id": job_id})
        names = job_parts(conn, job_id, attempt=attempt, before=before)
        for name in names:
            conn.execute(q.DROP_TABLE.format(table=sql.Identifier(SCHEMA, name)))
    return len(names)


def drop_orphans(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop the parts of every attempt that is not running any more (``geojobs janitor``):
    those of a job whose last attempt died with its worker and was failed by the lease."""
    attempts: dict[int, set[int]] = {}
    for name in all_parts(conn):
        job_id = int(name.split("_")[0][1:])
        attempts.setdefault(job_id, set()).add(_attempt_of(name))
    if not attempts:
        return []
    running = dict(conn.execute(q.RUNNING_ATTEMPTS, {"ids": list(attempts)}).fetchall())
    dropped = []
    for job_id, tried in sorted(attempts.items()):
        for attempt in sorted(tried):
            if running.get(job_id) != attempt:
                names = job_parts(conn, job_id, attempt=attempt)
                drop_parts(conn, job_id, attempt=attempt)
                dropped.extend(names)
    return dropped
