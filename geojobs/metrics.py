"""Prometheus metrics computed from the database at scrape time, and the health verdict.

Everything comes from the tables, so one scrape covers the workers of every host and the
figures survive restarts of whoever serves them: queued and running jobs from their partial
indexes; job outcomes (counters and duration histograms) from ``geojobs_metrics_finished``,
into which each scrape first folds the jobs finished since the previous one (migration 0007);
live workers and their memory from the worker registry ``geojobs_workers`` (migration 0004);
the last janitor run from ``geojobs_janitor_runs`` (migration 0007c). Labels carry job types
(registered ones only), statuses, hosts and worker ids: never parameters, user names or errors.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from psycopg.rows import dict_row

from geojobs import registry
from geojobs.config import SQL_DIR
from geojobs.db import pooled

__all__ = ["Snapshot", "snapshot", "render", "metric_families", "metrics_queries",
           "CONTENT_TYPE", "FINAL_STATUSES", "LIVE_STATUSES", "OTHER_TYPE", "lease_seconds"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LIVE_STATUSES = ("queued", "running")
FINAL_STATUSES = ("completed", "failed", "cancelled")
OTHER_TYPE = "unregistered"
"""The label of rows whose job type no worker knows (kept out of the label values)."""

FOLD_MAX_ROWS = 200_000
"""At most this many finished jobs are folded by one scrape (a backlog drains over several)."""

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def metrics_queries() -> dict[str, str]:
    """``geojobs/sql/metrics.sql`` as ``{name: sql}``, parsed once."""
    parts = _NAME_LINE.split((SQL_DIR / "metrics.sql").read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def lease_seconds() -> float:
    """A worker unseen for longer than its lease (``GEOJOBS_LEASE_SECONDS``) is not live."""
    return float(os.environ.get("GEOJOBS_LEASE_SECONDS") or 60.0)


def _type_label(job_type: str) -> str:
    return job_type if job_type in registry.JOB_TYPES else OTHER_TYPE


@dataclass
class Snapshot:
    """What one scrape read, in one database snapshot."""

    taken_at: float
    live: dict[tuple[str, str], int] = field(default_factory=dict)
    ready: dict[str, int] = field(default_factory=dict)
    oldest_ready_seconds: dict[str, float] = field(default_factory=dict)
    finished: dict[tuple[str, str, int], tuple[int, float]] = field(default_factory=dict)
    buckets: list[float] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    janitor: dict[str, Any] | None = None
    """The last janitor run, None when none has run yet."""
    folded: int = 0
    seconds: float = 0.0

    def job_types(self) -> list[str]:
        """Registered types, then any other label seen."""
        seen = {t for t, _ in self.live} | {t for t, _, _ in self.finished}
        seen |= {w["job_type"] for w in self.workers}
        names = registry.names()
        return names + sorted(seen - set(names))

    def live_workers(self, job_type: str) -> int:
        return sum(1 for w in self.workers if w["job_type"] == job_type)


def snapshot(conn: psycopg.Connection[Any], *, settle_seconds: float = 60.0,
             outcomes: bool = True) -> Snapshot:
    """Fold finished jobs, then read every figure in one REPEATABLE READ snapshot.

    ``outcomes=False`` skips the finished jobs (health checks and ``geojobs top`` need only
    the hot rows and the workers).
    """
    started = time.perf_counter()
    q = metrics_queries()
    snap = Snapshot(taken_at=time.time())
    if outcomes:
        with conn.transaction():
            # A fold lost in a crash is simply done again: no need to wait for the WAL flush.
            conn.execute("SET LOCAL synchronous_commit = off")
            row = conn.execute(q["fold_finished"], {"settle_seconds": settle_seconds,
                                                    "max_rows": FOLD_MAX_ROWS}).fetchone()
            snap.folded = int(row[0]) if row else 0
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL jit = off")  # compiling would cost more than these queries take
        for job_type, status, jobs, ready, oldest in conn.execute(q["live_jobs"],
                                                                   prepare=not pooled(conn)):
            label = _type_label(job_type)
            snap.live[label, status] = snap.live.get((label, status), 0) + jobs
            if status == "queued":
                snap.ready[label] = snap.ready.get(label, 0) + ready
                snap.oldest_ready_seconds[label] = max(snap.oldest_ready_seconds.get(label, 0.0),
                                                       oldest)
        if outcomes:
            row = conn.execute(q["finished_state"]).fetchone()
            folded_until, snap.buckets = (row[0], list(row[1])) if row else (None, [])
            for job_type, status, bucket, jobs, seconds in conn.execute(
                    q["finished_jobs"], {"folded_until": folded_until, "buckets": snap.buckets}):
                key = (_type_label(job_type), status, bucket)
                old_jobs, old_seconds = snap.finished.get(key, (0, 0.0))
                snap.finished[key] = (old_jobs + jobs, old_seconds + seconds)
        with conn.cursor(row_factory=dict_row) as cur:
            snap.workers = cur.execute(q["live_workers"],
                                       {"lease_seconds": lease_seconds()}).fetchall()
            snap.janitor = cur.execute(q["last_janitor_run"]).fetchone()
    snap.seconds = time.perf_counter() - started
    return snap


def metric_families(snap: Snapshot) -> Iterator[Metric]:
    """The snapshot as Prometheus metric families."""
    types = snap.job_types()
    jobs = GaugeMetricFamily("geojobs_jobs", "Jobs queued or running now, by type and status.",
                             labels=["job_type", "status"])
    ready = GaugeMetricFamily("geojobs_jobs_ready", "Queued jobs whose available_at has passed.",
                              labels=["job_type"])
    oldest = GaugeMetricFamily("geojobs_queue_oldest_ready_seconds",
                               "How long the oldest ready queued job has waited (0: none).",
                               labels=["job_type"])
    for job_type in types:
        for status in LIVE_STATUSES:
            jobs.add_metric([job_type, status], snap.live.get((job_type, status), 0))
        ready.add_metric([job_type], snap.ready.get(job_type, 0))
        oldest.add_metric([job_type], snap.oldest_ready_seconds.get(job_type, 0.0))
    yield from (jobs, ready, oldest)

    finished = CounterMetricFamily(
        "geojobs_jobs_finished", "Jobs that reached a final status, by type and status (kept in "
        "the database: survives retention and restarts).", labels=["job_type", "status"])
    totals: dict[tuple[str, str], int] = defaultdict(int)
    per_bucket: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for (job_type, status, bucket), (count, seconds) in snap.finished.items():
        totals[job_type, status] += count
        if bucket >= 0 and status != "cancelled":
            per_bucket[job_type, status][bucket] = count
            sums[job_type, status] += seconds
    for job_type in types:
        for status in FINAL_STATUSES:
            finished.add_metric([job_type, status], totals.get((job_type, status), 0))
    yield finished

    duration = HistogramMetricFamily(
        "geojobs_job_duration_seconds", "From started_at to finished_at of completed and failed "
        "jobs (the last attempt).", labels=["job_type", "status"])
    bounds = [*(repr(float(b)) for b in snap.buckets), "+Inf"]
    for job_type in types:
        for status in ("completed", "failed"):
            counts = per_bucket.get((job_type, status), {})
            cumulative, running = [], 0
            for index, bound in enumerate(bounds):
                running += counts.get(index, 0)
                cumulative.append((bound, running))
            duration.add_metric([job_type, status], cumulative, sums.get((job_type, status), 0.0))
    yield duration

    live = GaugeMetricFamily("geojobs_workers", "Live workers (seen within the lease), by type.",
                             labels=["job_type"])
    busy = GaugeMetricFamily("geojobs_workers_busy", "Live workers running a job, by type.",
                             labels=["job_type"])
    for job_type in types:
        mine = [w for w in snap.workers if _type_label(w["job_type"]) == job_type]
        live.add_metric([job_type], len(mine))
        busy.add_metric([job_type], sum(1 for w in mine if w["current_job"] is not None))
    rss = GaugeMetricFamily("geojobs_worker_resident_memory_bytes",
                            "Resident memory of each live worker, as it last reported.",
                            labels=["job_type", "host", "worker_id"])
    start = GaugeMetricFamily("geojobs_worker_start_time_seconds",
                              "When each live worker process started (Unix time).",
                              labels=["job_type", "host", "worker_id"])
    for w in snap.workers:
        labels = [_type_label(w["job_type"]), w["host"], w["worker_id"]]
        if w["rss_mb"] is not None:
            rss.add_metric(labels, float(w["rss_mb"]) * 2**20)
        start.add_metric(labels, w["started_at"])
    yield from (live, busy, rss, start)

    if snap.janitor is not None:
        run = snap.janitor
        yield GaugeMetricFamily("geojobs_janitor_last_run_timestamp_seconds",
                                "When the last janitor run finished (Unix time).",
                                value=run["finished_at"])
        yield GaugeMetricFamily("geojobs_janitor_last_run_duration_seconds",
                                "How long the last janitor run took.", value=run["seconds"])
        for name, column, what in (
                ("geojobs_janitor_last_run_jobs_expired", "jobs_expired",
                 "Jobs whose outputs the last janitor run dropped."),
                ("geojobs_janitor_last_run_tables_dropped", "tables_dropped",
                 "Result tables and views the last janitor run dropped."),
                ("geojobs_janitor_last_run_files_removed", "files_removed",
                 "Result files the last janitor run removed."),
                ("geojobs_janitor_last_run_jobs_deleted", "jobs_deleted",
                 "Finished job rows the last janitor run deleted.")):
            yield GaugeMetricFamily(name, what, value=run[column])

    yield GaugeMetricFamily("geojobs_metrics_scrape_seconds",
                            "Time this scrape spent reading the database.", value=snap.seconds)
    yield GaugeMetricFamily("geojobs_database_up", "1: the database answered this scrape.", value=1)


class _SnapshotCollector(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterable[Metric]:
        return metric_families(self._snap)


def render(conn: psycopg.Connection[Any], *, settle_seconds: float = 60.0) -> bytes:
    """The Prometheus text exposition of one scrape."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_SnapshotCollector(snapshot(conn, settle_seconds=settle_seconds)))
    return generate_latest(reg)
