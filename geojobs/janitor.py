"""Retention: drop the outputs of expired jobs, then delete old job rows.

A result table, view or file of a finished job is dropped ``GEOJOBS_RESULT_TTL_DAYS`` (30)
after the job finished, or at its ``expires_at`` when a front end set one, unless the job is
pinned. Finished job rows are deleted ``GEOJOBS_JOB_TTL_DAYS`` (90) after they finished, their
outputs first. Nothing an unfinished job reads (by name in its params, or as a dependency) is
touched. Each job is handled in its own transaction holding its row lock, taken with SKIP
LOCKED, so several janitors (several hosts) can run at once without doing anything twice.
Each run is recorded in ``geojobs_janitor_runs`` (migration 0007c) for monitoring.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from geojobs import queue, staging
from geojobs.config import SCRATCH_PREFIX, output_dir

__all__ = ["JanitorReport", "run_janitor", "result_ttl_days", "job_ttl_days"]

log = logging.getLogger("geojobs.janitor")
_BATCH = 100


def _env_days(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = float(raw)
    if not 0 <= value <= 36500:
        raise ValueError(f"{name}: {raw!r} is not a number of days between 0 and 36500")
    return value


def result_ttl_days() -> float:
    """``GEOJOBS_RESULT_TTL_DAYS``, default 30."""
    return _env_days("GEOJOBS_RESULT_TTL_DAYS", 30.0)


def job_ttl_days() -> float:
    """``GEOJOBS_JOB_TTL_DAYS``, default 90."""
    return _env_days("GEOJOBS_JOB_TTL_DAYS", 90.0)


@dataclass
class JanitorReport:
    """What one janitor run did."""

    dropped: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    jobs_expired: list[int] = field(default_factory=list)
    jobs_deleted: list[int] = field(default_factory=list)
    staging_dropped: list[str] = field(default_factory=list)
    scratch_removed: list[str] = field(default_factory=list)


def _qualified(name: str) -> sql.Composed:
    schema, _, table = name.rpartition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema or "public"), sql.Identifier(table))


def _drop_outputs(conn: psycopg.Connection[Any], result: dict[str, Any],
                  report: JanitorReport) -> None:
    """Drop a job's result table or view and remove its file (only inside the output directory)."""
    kinds = {"output_table": "TABLE", "output_view": "VIEW"}
    for key, kind in kinds.items():
        name = result.get(key)
        if not name:
            continue
        if kind == "VIEW":
            row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                               (name,)).fetchone()
            kind = "MATERIALIZED VIEW" if row and row[0] == "m" else "VIEW"
        conn.execute(sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(kind), _qualified(name)))
        report.dropped.append(name)
    raster = result.get("output_raster")
    if raster:
        path = Path(raster).resolve()
        root = output_dir().resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink()
            report.files_removed.append(str(path))


def remove_orphan_scratch(conn: psycopg.Connection[Any]) -> list[str]:
    """Remove the scratch directories (``<output dir>/.partial-<job id>``) of jobs not running:
    those a worker killed with SIGKILL left behind, since its own clean-up died with it. The
    jobs' rows stay locked while their directories go, so no worker starts one meanwhile."""
    root = output_dir()
    dirs: dict[int, Path] = {}
    if root.is_dir():
        for path in root.glob(f"{SCRATCH_PREFIX}*"):
            suffix = path.name.removeprefix(SCRATCH_PREFIX)
            if suffix.isdigit() and path.is_dir() and not path.is_symlink():
                dirs[int(suffix)] = path
    if not dirs:
        return []
    removed = []
    with conn.transaction():
        for job_id in sorted(queue.janitor_idle_jobs(conn, sorted(dirs))):
            shutil.rmtree(dirs[job_id], ignore_errors=True)
            removed.append(str(dirs[job_id]))
    return removed


def run_janitor(conn: psycopg.Connection[Any], *, result_ttl: float | None = None,
                job_ttl: float | None = None) -> JanitorReport:
    """One pass over the job table; ``conn`` is in autocommit mode."""
    params = {"result_ttl_days": result_ttl_days() if result_ttl is None else result_ttl,
              "job_ttl_days": job_ttl_days() if job_ttl is None else job_ttl, "limit": 1}
    report = JanitorReport()
    started_at = datetime.now(UTC)
    while True:
        with conn.transaction():
            row = queue.janitor_next_expired(conn, params)
            if row is None:
                break
            job_id, result = row
            _drop_outputs(conn, result, report)
            queue.janitor_mark_expired(conn, job_id)
            report.jobs_expired.append(job_id)
            log.info("job %s: outputs expired and dropped", job_id)
    while True:
        deleted = queue.janitor_delete_jobs(conn, {**params, "limit": _BATCH})
        report.jobs_deleted.extend(deleted)
        if len(deleted) < _BATCH:
            break
    if report.jobs_deleted:
        log.info("deleted %d finished job rows", len(report.jobs_deleted))
    report.staging_dropped = staging.drop_orphans(conn)
    if report.staging_dropped:
        log.info("dropped %d staging tables of attempts no longer running",
                 len(report.staging_dropped))
    report.scratch_removed = remove_orphan_scratch(conn)
    if report.scratch_removed:
        log.info("removed %d scratch directories of jobs no longer running",
                 len(report.scratch_removed))
    queue.janitor_record_run(conn, {
        "host": socket.gethostname(), "started_at": started_at,
        "jobs_expired": len(report.jobs_expired), "tables_dropped": len(report.dropped),
        "files_removed": len(report.files_removed) + len(report.scratch_removed),
        "jobs_deleted": len(report.jobs_deleted)})
    return report
