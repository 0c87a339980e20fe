"""Helpers for tests that run worker processes against a test database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parents[1]


WORKER_ROLE = "geojobs_worker"
FRONTEND_ROLE = "geojobs_frontend"


def as_role(db_url: str, role: str = WORKER_ROLE) -> str:
    """The same database, logged in as ``role`` (the roles of geojobs/sql/migrations/0002_roles.sql)."""
    return make_conninfo(db_url, user=role)


def worker_env(db_url: str, **settings: str) -> dict[str, str]:
    """Environment for a worker process: the test database and quick timings."""
    env = dict(os.environ, DATABASE_URL=db_url, GEOJOBS_POLL_INTERVAL="0.5",
               GEOJOBS_HEARTBEAT_SECONDS="0.5", GEOJOBS_LEASE_SECONDS="5",
               PYTHONPATH=str(ROOT))
    env.update(settings)
    return env


def start_worker(db_url: str, job_type: str, *args: str, **settings: str) -> subprocess.Popen[str]:
    """Start ``python -m workers.<job_type>`` as its own process."""
    return subprocess.Popen([sys.executable, "-m", f"workers.{job_type}", *args],
                            env=worker_env(db_url, **settings), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_worker(db_url: str, job_type: str, *args: str, timeout: float = 120,
               **settings: str) -> subprocess.CompletedProcess[str]:
    """Run a worker with ``--drain`` until its queue is empty."""
    return subprocess.run([sys.executable, "-m", f"workers.{job_type}", "--drain", *args],
                          env=worker_env(db_url, **settings), cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def job_row(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    """The job's row as a dict."""
    from geojobs import queue

    row = queue.get(conn, job_id)
    assert row is not None
    return row
