"""The queue and the worker runtime, with real worker processes against a real PostgreSQL."""

from __future__ import annotations

import collections
import dataclasses
import re
import signal
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from geojobs import queue
from geojobs.runner import Worker, WorkerSettings
from tests.support import job_row, run_worker, start_worker, wait_for

pytestmark = pytest.mark.db


def _started_jobs(stderr: str) -> list[int]:
    return [int(m) for m in re.findall(r"job (\d+) noop attempt \d+/\d+ started", stderr)]


def test_claim_order_and_lease(conn: psycopg.Connection[Any]) -> None:
    low = queue.enqueue(conn, "noop", {}, priority=0)
    high = queue.enqueue(conn, "noop", {}, priority=5)
    later = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET available_at = now() + interval '1 hour' "
                 "WHERE id = %s", (later,))
    first = queue.claim(conn, "noop", "w1")
    second = queue.claim(conn, "noop", "w2")
    assert (first and first.id, second and second.id) == (high, low)
    assert queue.claim(conn, "noop", "w3") is None  # the third is not available yet
    assert queue.claim(conn, "dissolve", "w3") is None  # another type's worker sees nothing
    row = job_row(conn, high)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("running", 1, "w1")
    assert row["started_at"] is not None and row["heartbeat_at"] is not None


def test_lost_lease_cannot_complete(conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {})
    stale = queue.claim(conn, "noop", "w1")
    assert stale is not None
    conn.execute("UPDATE background_jobs SET heartbeat_at = now() - interval '2 minutes' "
                 "WHERE id = %s", (job_id,))
    assert queue.requeue_stale(conn, 60) == [(job_id, "queued")]
    fresh = queue.claim(conn, "noop", "w2")
    assert fresh is not None and fresh.attempt == 2
    assert not queue.heartbeat(conn, stale)
    assert not queue.complete(conn, stale, {"by": "w1"})
    assert queue.fail(conn, stale, "late", retry=True, delay_seconds=1) is None
    assert queue.complete(conn, fresh, {"by": "w2"})
    row = job_row(conn, job_id)
    assert (row["status"], row["worker_id"], row["result"]) == ("completed", "w2", {"by": "w2"})


def test_completion_commits_the_jobs_writes_only_while_it_holds_the_lease(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    """complete_and_commit pipelines the completion and the COMMIT; a lost lease must still roll
    the job's writes back (oracle: the catalog and the row, read on another connection)."""
    kept, lost = queue.enqueue(conn, "noop", {}), queue.enqueue(conn, "noop", {})
    with psycopg.connect(db_url, autocommit=True) as job_conn:
        for job_id, table in ((kept, "public.perf_kept"), (lost, "public.perf_lost")):
            job = queue.claim(conn, "noop", "w1")
            assert job is not None and job.id == job_id
            queue.begin(job_conn)
            job_conn.execute(f"CREATE TABLE {table} AS SELECT 1 AS x")
            if job_id == lost:  # taken over meanwhile, as if this worker had been presumed dead
                conn.execute("UPDATE background_jobs SET worker_id = 'w2', attempts = attempts + 1 "
                             "WHERE id = %s", (job_id,))
            done, nxt = queue.complete_and_commit(job_conn, job, {"output_table": table})
            assert done is (job_id == kept) and nxt is None
            assert job_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    exists = conn.execute("SELECT to_regclass('public.perf_kept') IS NOT NULL, "
                          "to_regclass('public.perf_lost') IS NOT NULL").fetchone()
    assert exists == (True, False)
    assert job_row(conn, kept)["status"] == "completed"
    row = job_row(conn, lost)
    assert (row["status"], row["worker_id"], row["result"]) == ("running", "w2", None)


def test_completion_claims_the_next_job_in_the_same_transaction(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    """complete_and_commit(claim_next=...) completes a job and claims the next one, a dependent
    made ready by that very completion included, with one COMMIT; a lost lease claims nothing
    (oracle: the rows, read on another connection)."""
    first = queue.enqueue(conn, "noop", {})
    dependent = queue.enqueue(conn, "noop", {}, depends_on=[first])
    job = queue.claim(conn, "noop", "w1")
    assert job is not None and job.id == first
    with psycopg.connect(db_url, autocommit=True) as job_conn:
        queue.begin(job_conn)
        done, nxt = queue.complete_and_commit(job_conn, job, {}, claim_next="noop")
        assert done and nxt is not None and (nxt.id, nxt.worker_id, nxt.attempt) == (dependent, "w1", 1)
        assert job_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        a, b = job_row(conn, first), job_row(conn, dependent)
        assert (a["status"], b["status"], b["worker_id"]) == ("completed", "running", "w1")
        assert b["started_at"] >= a["finished_at"]
        later = queue.enqueue(conn, "noop", {})
        conn.execute("UPDATE background_jobs SET worker_id = 'w2' WHERE id = %s", (dependent,))
        assert queue.complete_and_commit(job_conn, nxt, {}, claim_next="noop") == (False, None)
        assert job_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert job_row(conn, dependent)["status"] == "running"
    assert job_row(conn, later)["status"] == "queued"


def test_stale_job_with_spent_attempts_fails(conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {}, max_attempts=1)
    assert queue.claim(conn, "noop", "w1") is not None
    conn.execute("UPDATE background_jobs SET heartbeat_at = now() - interval '2 minutes' "
                 "WHERE id = %s", (job_id,))
    assert queue.requeue_stale(conn, 60) == [(job_id, "failed")]
    assert "stopped sending heartbeats" in job_row(conn, job_id)["error"]


def test_three_workers_run_every_job_exactly_once(db_url: str, conn: psycopg.Connection[Any]) -> None:
    ids = [queue.enqueue(conn, "noop", {"sleep_seconds": 0.002}) for _ in range(300)]
    workers = [start_worker(db_url, "noop", "--drain") for _ in range(3)]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs
    started = [job for _, err in outputs for job in _started_jobs(err)]
    counts = collections.Counter(started)
    assert sorted(counts) == ids and set(counts.values()) == {1}
    rows = conn.execute("SELECT status, attempts, count(*) FROM background_jobs "
                        "GROUP BY 1, 2").fetchall()
    assert rows == [("completed", 1, 300)]
    per_worker = conn.execute("SELECT count(DISTINCT worker_id) FROM background_jobs").fetchone()
    assert per_worker is not None and per_worker[0] >= 2  # the work was shared


def test_retry_schedule_then_failed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {"raise_error": "boom"})
    expected = [timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1)]
    for attempt, delay in enumerate(expected, start=1):
        before = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        result = run_worker(db_url, "noop")
        assert result.returncode == 0, result.stderr
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("queued", attempt)
        assert row["error"] == "RuntimeError: boom"
        assert abs((row["available_at"] - before) - delay) < timedelta(seconds=10)
        conn.execute("UPDATE background_jobs SET available_at = now() WHERE id = %s", (job_id,))
    assert run_worker(db_url, "noop").returncode == 0
    row = job_row(conn, job_id)
    assert (row["status"], row["attempts"], row["finished_at"] is not None) == ("failed", 4, True)


def test_failing_job_does_not_stop_the_worker(db_url: str, conn: psycopg.Connection[Any]) -> None:
    bad = queue.enqueue(conn, "noop", {"raise_error": "first job breaks"}, priority=1)
    good = queue.enqueue(conn, "noop", {})
    result = run_worker(db_url, "noop")
    assert result.returncode == 0
    assert "Traceback" in result.stderr and "first job breaks" in result.stderr
    assert job_row(conn, bad)["status"] == "queued"
    assert job_row(conn, good)["status"] == "completed"


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), MemoryError(), ValueError("x")])
def test_any_handler_exception_is_recorded(db_url: str, conn: psycopg.Connection[Any],
                                           exc: BaseException) -> None:
    job_id = queue.enqueue(conn, "noop", {})
    worker = Worker(WorkerSettings(job_type="noop", database_url=db_url))

    def explode(ctx: Any, params: Any) -> dict[str, Any]:
        raise exc

    worker.jobtype = dataclasses.replace(worker.jobtype, run=explode)
    assert worker.run(drain=True) == 0
    row = job_row(conn, job_id)
    assert row["status"] == "queued" and row["attempts"] == 1
    assert row["error"].startswith(type(exc).__name__)


def test_sigkilled_worker_job_is_reclaimed(db_url: str, conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {"sleep_seconds": 2, "steps": 20})
    victim = start_worker(db_url, "noop", GEOJOBS_LEASE_SECONDS="2")
    wait_for(lambda: job_row(conn, job_id)["status"] == "running")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    assert job_row(conn, job_id)["status"] == "running"  # nobody has noticed yet
    rescuer = start_worker(db_url, "noop", GEOJOBS_LEASE_SECONDS="2")
    try:
        wait_for(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30)
    finally:
        rescuer.terminate()
        rescuer.communicate(timeout=30)
    row = job_row(conn, job_id)
    assert row["attempts"] == 2 and row["worker_id"] != "" and rescuer.returncode == 0


def test_worker_that_lost_its_lease_does_not_complete(db_url: str,
                                                      conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {"sleep_seconds": 1.5, "steps": 30})
    worker = start_worker(db_url, "noop", "--once")
    wait_for(lambda: job_row(conn, job_id)["status"] == "running")
    # Another worker takes the job over, as if this one had been presumed dead.
    conn.execute("UPDATE background_jobs SET worker_id = 'other', attempts = attempts + 1 "
                 "WHERE id = %s", (job_id,))
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0
    row = job_row(conn, job_id)
    assert (row["status"], row["worker_id"], row["result"]) == ("running", "other", None)
    assert "lease was lost" in err


def test_memory_cap_exits_cleanly(db_url: str, conn: psycopg.Connection[Any]) -> None:
    big = queue.enqueue(conn, "noop", {"allocate_mb": 300}, priority=1)
    small = queue.enqueue(conn, "noop", {})
    # the job's own limit (default: the worker's cap) is raised, so the job completes and the
    # worker's rule, not the job's, is what this test sees
    worker = start_worker(db_url, "noop", "--memory-cap-mb", "200", GEOJOBS_JOB_MEMORY_MB="1000")
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0
    assert "over the cap" in err
    assert job_row(conn, big)["status"] == "completed"
    assert job_row(conn, small)["status"] == "queued"  # left for the restarted worker


def test_sigterm_requeues_without_spending_an_attempt(db_url: str,
                                                      conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {"sleep_seconds": 60, "steps": 600})
    worker = start_worker(db_url, "noop", GEOJOBS_GRACE_SECONDS="1")
    wait_for(lambda: job_row(conn, job_id)["status"] == "running")
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=20)
    assert worker.returncode == 0 and time.monotonic() - started < 10
    row = job_row(conn, job_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)


def test_sigterm_lets_a_short_job_finish(db_url: str, conn: psycopg.Connection[Any]) -> None:
    job_id = queue.enqueue(conn, "noop", {"sleep_seconds": 1, "steps": 10})
    worker = start_worker(db_url, "noop", GEOJOBS_GRACE_SECONDS="20")
    wait_for(lambda: job_row(conn, job_id)["status"] == "running")
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=20)
    assert worker.returncode == 0
    assert job_row(conn, job_id)["status"] == "completed"


def test_idle_worker_exits_on_sigterm(db_url: str) -> None:
    worker = start_worker(db_url, "noop", GEOJOBS_POLL_INTERVAL="30")
    time.sleep(1.5)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=10)
    assert worker.returncode == 0


def test_notify_wakes_an_idle_worker(db_url: str, conn: psycopg.Connection[Any]) -> None:
    worker = start_worker(db_url, "noop", GEOJOBS_POLL_INTERVAL="60")
    try:
        time.sleep(1.5)  # let it fall asleep on LISTEN
        job_id = queue.enqueue(conn, "noop", {})
        wait_for(lambda: job_row(conn, job_id)["status"] == "completed", timeout=3)
        row = job_row(conn, job_id)
        assert row["started_at"] - row["created_at"] < timedelta(seconds=0.5)
    finally:
        worker.terminate()
        worker.communicate(timeout=10)


def test_cancel_queued_and_running(db_url: str, conn: psycopg.Connection[Any]) -> None:
    queued = queue.enqueue(conn, "noop", {})
    assert queue.cancel(conn, queued)
    running = queue.enqueue(conn, "noop", {"sleep_seconds": 30, "steps": 300})
    worker = start_worker(db_url, "noop", "--once")
    wait_for(lambda: job_row(conn, running)["status"] == "running")
    assert queue.cancel(conn, running)
    worker.communicate(timeout=20)
    assert worker.returncode == 0
    assert job_row(conn, queued)["status"] == "cancelled"
    row = job_row(conn, running)
    assert row["status"] == "cancelled" and row["progress"] < 1
    assert queue.retry(conn, running) and job_row(conn, running)["status"] == "queued"
