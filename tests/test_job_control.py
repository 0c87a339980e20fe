"""Hard cancel, timeouts and memory limits of running jobs; the registry of live workers.

Each job runs in a child process of its worker; these tests stop jobs that are stuck where no
cooperative check can reach them (one long GEOS union, a numba loop, one long SQL statement)
and check with the operating system and PostgreSQL that nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import numpy as np
import psutil
import psycopg
import pytest
import shapely
from psycopg import sql

from geojobs import queue
from tests.support import as_role, job_row, start_worker, wait_for

pytestmark = pytest.mark.db

STUCK = {
    # one GEOS union_all of 150 overlapping 2,000-vertex stars: 100 of them took 71 s here
    "geos": ("dissolve", {"input_table": "public.stars", "output_table": "results.stars_union"}),
    "numba": ("noop", {"spin_seconds": 600}),
    "sql": ("noop", {"sql_sleep_seconds": 600}),
}


def _make_stars(conn: psycopg.Connection[Any], count: int = 150, vertices: int = 2000) -> None:
    """Overlapping star polygons around one point: their union is slow by construction."""
    rng = np.random.default_rng(7)
    conn.execute("CREATE TABLE public.stars (id serial PRIMARY KEY, geom geometry(Polygon, 3857))")
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    with conn.cursor() as cur:
        for _ in range(count):
            a = angles + rng.random()
            r = np.where(np.arange(vertices) % 2 == 0, 100.0, 100.0 * rng.uniform(0.2, 0.9))
            star = shapely.Polygon(np.c_[r * np.cos(a) + rng.random(), r * np.sin(a) + rng.random()])
            cur.execute("INSERT INTO public.stars (geom) VALUES (ST_GeomFromWKB(%s, 3857))",
                        (shapely.to_wkb(star),))
    conn.execute("GRANT SELECT ON public.stars TO geojobs_worker")


def _insert(conn: psycopg.Connection[Any], job_type: str, params: dict[str, Any],
            **columns: Any) -> int:
    job_id = queue.enqueue(conn, job_type, params, max_attempts=3)
    for name, value in columns.items():  # the tests' own fixed column names
        conn.execute(sql.SQL("UPDATE background_jobs SET {} = %s WHERE id = %s").format(
            sql.Identifier(name)), (value, job_id))
    return job_id


def _children(worker: subprocess.Popen[str]) -> list[psutil.Process]:
    return [c for c in psutil.Process(worker.pid).children() if c.status() != psutil.STATUS_ZOMBIE]


def _busy_backends(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND usename = 'geojobs_worker' "
                       "AND (state <> 'idle' OR xact_start IS NOT NULL)").fetchone()
    return int(row[0]) if row else 0


def _nothing_left(conn: psycopg.Connection[Any], worker: subprocess.Popen[str]) -> bool:
    tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'results'").fetchone()
    return not _children(worker) and _busy_backends(conn) == 0 and tables == (0,)


def _worker(db_url: str, job_type: str) -> subprocess.Popen[str]:
    return start_worker(as_role(db_url), job_type, GEOJOBS_JIT_WARMUP="0",
                        GEOJOBS_GRACE_SECONDS="2")


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    print(err[-6000:])  # the worker's log, shown when the test fails
    assert worker.returncode == 0, err
    return err


@pytest.mark.parametrize("case", list(STUCK))
def test_cancel_stops_a_stuck_job_within_2_s(db_url: str, conn: psycopg.Connection[Any],
                                             case: str) -> None:
    job_type, params = STUCK[case]
    if case == "geos":
        _make_stars(conn)
    job_id = _insert(conn, job_type, params)
    worker = _worker(db_url, job_type)
    try:
        wait_for(lambda: job_row(conn, job_id)["status"] == "running", timeout=60)
        time.sleep(3)  # well inside the long call
        assert _children(worker) and job_row(conn, job_id)["status"] == "running"
        cancelled_at = time.monotonic()
        assert queue.cancel(conn, job_id)
        wait_for(lambda: _nothing_left(conn, worker), timeout=5, interval=0.02)
        stopped_in = time.monotonic() - cancelled_at
        assert stopped_in < 2.0, stopped_in
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("cancelled", 1)
        assert worker.poll() is None  # the worker lives
        nxt = _insert(conn, "noop", {}) if job_type == "noop" else None
        if nxt is not None:
            wait_for(lambda: job_row(conn, nxt)["status"] == "completed", timeout=30)
    finally:
        err = _stop(worker)
    assert f"job {job_id} {job_type} attempt 1/3 stopped" in err and "cancelled" in err


@pytest.mark.parametrize("case", ["numba", "sql"])
def test_timeout_stops_a_stuck_job_and_fails_it(db_url: str, conn: psycopg.Connection[Any],
                                                case: str) -> None:
    job_type, params = STUCK[case]
    job_id = _insert(conn, job_type, params, timeout_seconds=3)
    after = _insert(conn, "noop", {}, priority=-1)
    worker = _worker(db_url, job_type)
    try:
        wait_for(lambda: job_row(conn, after)["status"] == "completed", timeout=60)
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"], row["error"]) == ("failed", 1, "timed out after 3 s")
        ran = (row["finished_at"] - row["started_at"]).total_seconds()
        assert 3.0 <= ran < 5.0, ran
        assert _nothing_left(conn, worker) or _children(worker)  # a fresh child may be idle
        assert _busy_backends(conn) == 0 and worker.poll() is None
    finally:
        _stop(worker)


def test_geos_union_timeout(db_url: str, conn: psycopg.Connection[Any]) -> None:
    _make_stars(conn)
    job_type, params = STUCK["geos"]
    job_id = _insert(conn, job_type, params, timeout_seconds=4)
    worker = _worker(db_url, job_type)
    try:
        wait_for(lambda: job_row(conn, job_id)["status"] == "failed", timeout=60)
        row = job_row(conn, job_id)
        assert row["error"] == "timed out after 4 s" and row["attempts"] == 1
        assert (row["finished_at"] - row["started_at"]).total_seconds() < 6.0
        wait_for(lambda: _nothing_left(conn, worker), timeout=2)
        assert worker.poll() is None
    finally:
        _stop(worker)


def test_job_over_its_memory_limit_fails_alone(db_url: str, conn: psycopg.Connection[Any]) -> None:
    greedy = _insert(conn, "noop", {"allocate_mb": 600, "sleep_seconds": 5, "steps": 5},
                     memory_limit_mb=300, priority=1)
    modest = _insert(conn, "noop", {"allocate_mb": 50}, memory_limit_mb=300)
    worker = _worker(db_url, "noop")
    try:
        wait_for(lambda: job_row(conn, modest)["status"] == "completed", timeout=60)
        row = job_row(conn, greedy)
        assert (row["status"], row["attempts"], row["error"]) == ("failed", 1, "used more than 300 MB")
        assert worker.poll() is None
    finally:
        _stop(worker)


def test_sigkill_of_the_job_process_is_a_failed_attempt(db_url: str,
                                                        conn: psycopg.Connection[Any]) -> None:
    job_id = _insert(conn, "noop", {"sleep_seconds": 60, "steps": 60})
    worker = _worker(db_url, "noop")
    try:
        wait_for(lambda: job_row(conn, job_id)["status"] == "running", timeout=60)
        wait_for(lambda: _children(worker), timeout=10)
        os.kill(_children(worker)[0].pid, signal.SIGKILL)
        wait_for(lambda: job_row(conn, job_id)["status"] == "queued", timeout=5)
        row = job_row(conn, job_id)
        assert row["attempts"] == 1 and row["error"] == "the job process died (killed by SIGKILL)"
        assert row["available_at"] > row["started_at"]  # the retry schedule applies
        later = _insert(conn, "noop", {}, priority=5)
        wait_for(lambda: job_row(conn, later)["status"] == "completed", timeout=30)
    finally:
        _stop(worker)


def test_workers_register_and_leave(db_url: str, conn: psycopg.Connection[Any]) -> None:
    worker = start_worker(db_url, "noop")
    try:
        rows = wait_for(lambda: queue.list_workers(conn), timeout=60)
        (row,) = rows
        assert (row["job_type"], row["pid"]) == ("noop", worker.pid)
        assert row["host"] == os.uname().nodename and row["worker_id"].startswith(row["host"])
        seen = row["last_seen"]
        time.sleep(1.5)  # idle: heartbeats every 0.5 s in the tests
        assert queue.list_workers(conn)[0]["last_seen"] > seen
        assert queue.live_workers(conn, "noop", 5) == 1 and queue.live_workers(conn, "hotspot", 5) == 0
        job_id = queue.enqueue(conn, "noop", {})
        wait_for(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30)
        assert job_row(conn, job_id)["worker_id"] == row["worker_id"]
    finally:
        _stop(worker)
    assert queue.list_workers(conn) == []  # a clean stop removes the row


def test_stale_workers_are_pruned(conn: psycopg.Connection[Any]) -> None:
    queue.register_worker(conn, worker_id="gone:1:x", job_type="noop", host="gone", pid=1,
                          version="0", rss_mb=1.0)
    queue.register_worker(conn, worker_id="here:2:y", job_type="noop", host="here", pid=2,
                          version="0", rss_mb=1.0)
    conn.execute("UPDATE geojobs_workers SET last_seen = now() - interval '2 minutes' "
                 "WHERE worker_id = 'gone:1:x'")
    assert queue.prune_workers(conn, 60) == ["gone:1:x"]
    assert [w["worker_id"] for w in queue.list_workers(conn)] == ["here:2:y"]


@pytest.mark.parametrize(("column", "value"), [
    ("timeout_seconds", -1), ("timeout_seconds", 0), ("timeout_seconds", 10**7),
    ("memory_limit_mb", -5), ("memory_limit_mb", 10**8),
])
def test_bad_limits_are_refused_naming_the_column(conn: psycopg.Connection[Any], column: str,
                                                  value: int) -> None:
    before = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
    with pytest.raises(psycopg.errors.CheckViolation, match=column):
        conn.execute(sql.SQL("INSERT INTO background_jobs (job_type, {}) VALUES ('noop', %s)")
                     .format(sql.Identifier(column)), (value,))
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == before


def test_a_job_claimed_but_not_begun_by_a_killed_job_process_is_given_back(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    """The job process claims its next job in the transaction that completes the one before and
    publishes it to the worker just after the commit; a kill in between leaves a job running in
    the database that the worker never saw. That state is made here by hand (oracle: the row,
    and the worker's log). After the kill the worker reads the database: the job it never saw
    goes back to the queue unspent and then runs exactly once; the one it saw is a failed
    attempt."""
    seen = _insert(conn, "noop", {"sleep_seconds": 60, "steps": 60})
    worker = _worker(db_url, "noop")
    try:
        wait_for(lambda: job_row(conn, seen)["status"] == "running", timeout=60)
        worker_id = job_row(conn, seen)["worker_id"]
        with conn.transaction():  # claimed by the job process, as far as the database knows
            unseen = _insert(conn, "noop", {})
            conn.execute("UPDATE background_jobs SET status = 'running', attempts = 1, "
                         "worker_id = %s, started_at = now(), heartbeat_at = now() "
                         "WHERE id = %s", (worker_id, unseen))
        wait_for(lambda: _children(worker), timeout=10)
        os.kill(_children(worker)[0].pid, signal.SIGKILL)
        wait_for(lambda: job_row(conn, unseen)["status"] == "completed", timeout=30)
        row = job_row(conn, unseen)
        assert (row["attempts"], row["worker_id"], row["error"]) == (1, worker_id, None)
        row = job_row(conn, seen)
        assert (row["status"], row["attempts"]) == ("queued", 1)
        assert row["error"] == "the job process died (killed by SIGKILL)"
    finally:
        err = _stop(worker)
    assert err.count(f"job {unseen} noop attempt 1/3 started") == 1
    assert f"job {unseen} noop: claimed by the stopped job process before it began" in err
