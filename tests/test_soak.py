"""The chaos soak, short version (the full one is ``make soak``; figures in docs/reliability.md).

Workers of two job types under SIGKILL, SIGTERM, a memory cap, cancels and timeouts of running
jobs and every worker connection terminated midway, on this test's own database only (never a
server restart here).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.soak import SHORT, SoakReport, _check, _Proc, run_soak

pytestmark = pytest.mark.db


def test_short_soak_loses_nothing(db_url: str, tmp_path: Path) -> None:
    config = dataclasses.replace(SHORT)
    assert config.outage == "terminate"  # never restart the shared server in make test
    started = time.monotonic()
    report = run_soak(db_url, config, tmp_path)
    assert report.ok, report.summary()
    assert report.jobs == config.jobs and sum(report.by_status.values()) == config.jobs
    assert report.sigkills >= 3 and report.sigterms >= 1  # the chaos did happen
    assert report.reconnect_warnings >= 1  # the workers saw the database go away
    assert report.by_kind["raises"] == {"failed": report.by_kind["raises"]["failed"]}
    assert report.by_kind["dissolve"].get("completed", 0) >= 0.9 * sum(report.by_kind["dissolve"].values())
    assert report.cancels >= 3 and report.by_kind["cancel"] == {"cancelled": report.cancels}
    assert report.cancel_stop_max_seconds < 2.0  # every cancelled job's work stopped in time
    assert report.by_kind["timeout"] == {"failed": sum(report.by_kind["timeout"].values())}
    assert time.monotonic() - started < 90


class _FakePopen:
    def poll(self) -> int:
        return 0


def test_soak_check_finds_double_runs_and_lost_jobs(conn: psycopg.Connection[Any],
                                                    tmp_path: Path) -> None:
    """The checks can fail: two overlapping runs of one job, a job never finished."""
    done = conn.execute("INSERT INTO background_jobs (job_type, status, attempts) "
                        "VALUES ('noop', 'completed', 2) RETURNING id").fetchone()[0]  # type: ignore[index]
    lost = conn.execute("INSERT INTO background_jobs (job_type, status, attempts) "
                        "VALUES ('noop', 'running', 1) RETURNING id").fetchone()[0]  # type: ignore[index]
    conn.execute("CREATE TABLE results.orphan (a int)")
    logs = []
    for name, lines in {
        "a.log": [f"2026-01-01 10:00:00,000 INFO geojobs.worker: job {done} noop attempt 1/4 started",
                  f"2026-01-01 10:00:05,000 INFO geojobs.worker: job {done} noop attempt 1/4 "
                  "completed in 5.00 s: {}"],
        "b.log": [f"2026-01-01 10:00:04,000 INFO geojobs.worker: job {done} noop attempt 2/4 started",
                  "2026-01-01 10:00:04,500 WARNING geojobs.worker: database unavailable (x); "
                  "reconnecting in 1.0 s"],
    }.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        logs.append(_Proc("noop", 0, _FakePopen(), tmp_path / name, 0.0, 1.0, 0, "SIGTERM"))  # type: ignore[arg-type]
    report = SoakReport(config={})
    _check(conn.info.dsn, report, {done: "quick", lost: "quick"}, logs)
    assert report.lost == [lost]
    assert len(report.double_runs) == 1 and f"job {done}" in report.double_runs[0]
    assert report.orphan_tables == ["results.orphan"]
    assert report.runs == 2 and not report.ok
