"""Workers survive the database going away and stop cleanly on SIGTERM (no server restart here:
the backends of this test's own database are terminated instead)."""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
import pytest

from geojobs import queue
from tests.support import as_role, job_row, start_worker, wait_for

pytestmark = pytest.mark.db

_TERMINATE = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
              "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def test_numpy_worker_stops_gracefully_on_sigterm(db_url: str) -> None:
    """dissolve imports numpy, whose BLAS threads do not block signals; SIGTERM must still be
    handled by the worker (exit 0, 'stopping'), not kill it (exit -15)."""
    worker = start_worker(as_role(db_url), "dissolve", GEOJOBS_POLL_INTERVAL="30")
    try:
        wait_for(lambda: worker.poll() is not None or _connected(db_url) >= 1, timeout=60)
        time.sleep(0.5)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "stopping (no job running)" in err


def _connected(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND usename = 'geojobs_worker'").fetchone()
        return int(row[0]) if row else 0


def test_worker_survives_its_connections_being_killed(db_url: str,
                                                      conn: psycopg.Connection[Any]) -> None:
    """Mid-job and idle: every connection of the worker terminated; it reconnects with backoff,
    the held job comes back by its lease and completes, a new job is picked up too."""
    held = queue.enqueue(conn, "noop", {"sleep_seconds": 2, "steps": 20})
    worker = start_worker(as_role(db_url), "noop", GEOJOBS_LEASE_SECONDS="2")
    try:
        wait_for(lambda: job_row(conn, held)["status"] == "running", timeout=60)
        time.sleep(0.3)
        assert conn.execute(_TERMINATE).fetchone()[0] >= 2  # type: ignore[index]
        wait_for(lambda: job_row(conn, held)["status"] == "completed", timeout=60)
        assert conn.execute(_TERMINATE).fetchone()[0] >= 1  # type: ignore[index]  # idle now
        later = queue.enqueue(conn, "noop", {})
        wait_for(lambda: job_row(conn, later)["status"] == "completed", timeout=60)
        assert worker.poll() is None  # never exited
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert err.count("database unavailable") >= 2, err
    row = job_row(conn, held)
    assert row["attempts"] <= 2 and row["error"] is None
