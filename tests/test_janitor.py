"""Retention (the janitor), pin/unpin, idempotency keys and the CLI of job control."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from geojobs import janitor, queue
from tests.support import ROOT, worker_env

pytestmark = pytest.mark.db


def _finished_job(conn: psycopg.Connection[Any], table: str | None, days_ago: float, *,
                  pinned: bool = False, status: str = "completed") -> int:
    """A finished job whose result table (created here) is ``results.<table>``."""
    result = None
    if table is not None:
        conn.execute(sql.SQL("CREATE TABLE results.{} (fid int)").format(sql.Identifier(table)))
        result = {"output_table": f"results.{table}", "rows": 0, "warnings": []}
    row = conn.execute(
        "INSERT INTO background_jobs (job_type, status, attempts, finished_at, result, pinned) "
        "VALUES ('noop', %s, 1, now() - make_interval(secs => %s * 86400), %s, %s) RETURNING id",
        (status, days_ago, Jsonb(result) if result else None, pinned)).fetchone()
    assert row is not None
    return int(row[0])


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def test_janitor_drops_expired_keeps_pinned_fresh_and_read(conn: psycopg.Connection[Any]) -> None:
    old = _finished_job(conn, "old", 40)
    pinned = _finished_job(conn, "kept", 40, pinned=True)
    fresh = _finished_job(conn, "fresh", 1)
    read = _finished_job(conn, "still_read", 40)
    ancient = _finished_job(conn, "ancient", 100)
    ancient_failed = _finished_job(conn, None, 100, status="failed")
    reader = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET params = %s WHERE id = %s",
                 (Jsonb({"input_table": "results.still_read"}), reader))
    conn.execute("UPDATE background_jobs SET expires_at = now() - interval '1 minute' "
                 "WHERE id = %s", (fresh,))  # set by a front end: expires now
    _finished_job(conn, "fresher", 1)

    report = janitor.run_janitor(conn)

    assert sorted(report.jobs_expired) == sorted([old, fresh, ancient])
    assert sorted(report.dropped) == ["results.ancient", "results.fresh", "results.old"]
    assert not _exists(conn, "results.old") and not _exists(conn, "results.ancient")
    for kept in ("results.kept", "results.still_read", "results.fresher"):
        assert _exists(conn, kept), kept
    assert sorted(report.jobs_deleted) == sorted([ancient, ancient_failed])
    ids = {r[0] for r in conn.execute("SELECT id FROM background_jobs")}
    assert {old, pinned, fresh, read, reader} <= ids and ancient not in ids
    assert "expired_at" in (queue.get(conn, old) or {})["result"]
    assert janitor.run_janitor(conn).jobs_expired == []  # nothing left to do


def test_two_janitors_at_once_do_each_job_once(db_url: str, conn: psycopg.Connection[Any]) -> None:
    ids = [_finished_job(conn, f"t{i}", 40) for i in range(40)]
    reports: list[janitor.JanitorReport] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as own:
                reports.append(janitor.run_janitor(own))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    done = [job for r in reports for job in r.jobs_expired]
    assert sorted(done) == sorted(ids)  # every job once, none twice
    left = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'results'").fetchone()
    assert left == (0,)


def test_idempotency_key_returns_the_first_job(conn: psycopg.Connection[Any]) -> None:
    first, new = queue.enqueue_controlled(conn, "noop", {}, idempotency_key="k-1")
    again, new_again = queue.enqueue_controlled(conn, "noop", {"sleep_seconds": 1},
                                                idempotency_key="k-1")
    other, _ = queue.enqueue_controlled(conn, "noop", {}, idempotency_key="k-2")
    assert (new, new_again) == (True, False) and again == first and other != first
    count = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
    assert count == (2,)


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geojobs.cli", *args], env=worker_env(db_url),
                          cwd=ROOT, text=True, capture_output=True, timeout=60)


def test_cli_pin_show_workers_and_bad_input(db_url: str, conn: psycopg.Connection[Any]) -> None:
    job = _finished_job(conn, "pin_me", 40)
    assert _cli(db_url, "jobs", "pin", str(job)).returncode == 0
    assert queue.get(conn, job)["pinned"] is True  # type: ignore[index]
    assert janitor.run_janitor(conn).jobs_expired == []
    assert _cli(db_url, "jobs", "unpin", str(job)).returncode == 0
    missing = _cli(db_url, "jobs", "pin", "999999")
    assert missing.returncode == 2 and "no job 999999" in missing.stderr
    conn.execute("UPDATE background_jobs SET worker_id = 'somehost:12:abc' WHERE id = %s", (job,))
    shown = _cli(db_url, "jobs", "show", str(job))
    assert '"host": "somehost"' in shown.stdout
    assert _cli(db_url, "workers").returncode == 0
    before = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
    for flag, value in (("--timeout-seconds", "-1"), ("--timeout-seconds", "99999999"),
                        ("--memory-limit-mb", "0"), ("--memory-limit-mb", "10000000")):
        bad = _cli(db_url, "enqueue", "noop", flag, value)
        assert bad.returncode == 2 and flag in bad.stderr, bad.stderr
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == before


def test_enqueue_wait_says_at_once_that_no_worker_runs(db_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "geojobs.cli", "enqueue", "noop", "--wait"],
                            env=worker_env(db_url), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "no noop worker is running: start noop_worker" in line
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def _step_job(conn: psycopg.Connection[Any], pipeline: int, step: str, table: str | None,
              days_ago: float, *, depends_on: list[int] | None = None, pinned: bool = False,
              reuse: int | None = None, create: bool = True) -> int:
    """A finished step of pipeline run ``pipeline`` (or ``reuse``, an existing job, linked)."""
    if reuse is not None:
        job = reuse
    else:
        if table is not None and create:
            conn.execute(sql.SQL("CREATE TABLE results.{} (fid int)").format(sql.Identifier(table)))
        result = {"output_table": f"results.{table}", "rows": 0, "warnings": []} if table else None
        row = conn.execute(
            "INSERT INTO background_jobs (job_type, params, depends_on) VALUES ('noop', '{}', %s) "
            "RETURNING id", (depends_on,)).fetchone()
        assert row is not None
        job = int(row[0])
        conn.execute(
            "UPDATE background_jobs SET status = 'completed', attempts = 1, result = %s, "
            "pinned = %s, finished_at = now() - make_interval(secs => %s * 86400) WHERE id = %s",
            (Jsonb(result) if result else None, pinned, days_ago, job))
    position = conn.execute("SELECT count(*) FROM pipeline_steps WHERE pipeline_id = %s",
                            (pipeline,)).fetchone()
    assert position is not None
    conn.execute("INSERT INTO pipeline_steps (pipeline_id, step, position, job_id, reused) "
                 "VALUES (%s, %s, %s, %s, %s)", (pipeline, step, position[0], job,
                                                  reuse is not None))
    return job


def _pipeline(conn: psycopg.Connection[Any], replaces: int | None = None) -> int:
    row = conn.execute("INSERT INTO pipelines (name, spec, replaces) VALUES ('p', '{}', %s) "
                       "RETURNING id", (replaces,)).fetchone()
    assert row is not None
    return int(row[0])


def test_intermediate_tables_expire_with_the_pipelines_final_result(
        conn: psycopg.Connection[Any]) -> None:
    """Worked by hand: an intermediate step's table outlives its own TTL while the run's final
    step has not expired, and goes with it; a pinned intermediate, an intermediate of a run
    whose final step is pinned, one read by a queued job, and one reused by a newer run stay;
    a table a newer run wrote again is not dropped with the old run."""
    run = _pipeline(conn)
    cut = _step_job(conn, run, "cut", "cut", 40)
    spots = _step_job(conn, run, "spots", "spots", 35, depends_on=[cut])
    hot = _step_job(conn, run, "hot", "hot", 1, depends_on=[spots])

    kept_run = _pipeline(conn)  # its intermediate is pinned
    pinned_cut = _step_job(conn, kept_run, "cut", "pinned_cut", 40, pinned=True)
    _step_job(conn, kept_run, "hot", "kept_hot", 40, depends_on=[pinned_cut])

    final_pinned = _pipeline(conn)  # its final step is pinned: the whole run stays
    held_cut = _step_job(conn, final_pinned, "cut", "held_cut", 40)
    _step_job(conn, final_pinned, "hot", "pinned_hot", 40, depends_on=[held_cut], pinned=True)

    read_run = _pipeline(conn)  # expired, but a queued job reads its intermediate table
    read_cut = _step_job(conn, read_run, "cut", "read_cut", 40)
    _step_job(conn, read_run, "hot", "read_hot", 40, depends_on=[read_cut])
    reader = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET params = %s WHERE id = %s",
                 (Jsonb({"input_table": "results.read_cut"}), reader))

    old_run = _pipeline(conn)  # re-run from "hot": the new run reuses "cut", writes "hot" again
    old_cut = _step_job(conn, old_run, "cut", "rr_cut", 40)
    _step_job(conn, old_run, "hot", "rr_hot", 40, depends_on=[old_cut])
    new_run = _pipeline(conn, replaces=old_run)
    _step_job(conn, new_run, "cut", None, 0, reuse=old_cut)
    _step_job(conn, new_run, "hot", "rr_hot", 1, depends_on=[old_cut], create=False)

    report = janitor.run_janitor(conn)
    # expired: the final steps of kept_run and read_run; old_run's hot is held by the newer
    # writer of results.rr_hot, old_cut by the live new run
    assert sorted(report.dropped) == ["results.kept_hot", "results.read_hot"]
    for table in ("cut", "spots", "hot", "pinned_cut", "held_cut", "pinned_hot", "read_cut",
                  "rr_cut", "rr_hot"):
        assert _exists(conn, f"results.{table}"), table

    conn.execute("UPDATE background_jobs SET expires_at = now() - interval '1 minute' "
                 "WHERE id = %s", (hot,))  # the run's final result expires: the run goes
    report = janitor.run_janitor(conn)
    assert sorted(report.jobs_expired) == sorted([cut, spots, hot])
    assert not any(_exists(conn, f"results.{t}") for t in ("cut", "spots", "hot"))
    assert _exists(conn, "results.read_cut") and _exists(conn, "results.rr_hot")
    ids = {r[0] for r in conn.execute("SELECT id FROM background_jobs")}
    assert {cut, spots, hot} <= ids  # pipeline steps' rows stay (pipeline_steps names them)


def test_janitor_removes_scratch_dirs_of_jobs_not_running(
        db_url: str, conn: psycopg.Connection[Any], tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed with SIGKILL leaves its job's ``.partial-<id>`` directory behind. The
    janitor removes those of jobs not running (failed by the lease, queued again, or deleted),
    keeps those of running jobs and of a job whose row another transaction holds (a claim in
    flight), and touches nothing else in the output directory."""
    monkeypatch.setenv("GEOJOBS_OUTPUT_DIR", str(tmp_path))
    statuses = {}
    for status in ("running", "queued", "failed", "completed"):
        statuses[status] = int(conn.execute(
            "INSERT INTO background_jobs (job_type, status, attempts) VALUES ('noop', %s, 1) "
            "RETURNING id", (status,)).fetchone()[0])
    held = int(conn.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                            "RETURNING id").fetchone()[0])
    gone = max([*statuses.values(), held]) + 1000
    for job_id in [*statuses.values(), held, gone]:
        scratch = tmp_path / f".partial-{job_id}"
        scratch.mkdir()
        (scratch / "tiles.tmp").write_bytes(b"x")
    (tmp_path / ".partial-notes").mkdir()
    (tmp_path / "result.tif").write_bytes(b"x")

    with psycopg.connect(db_url) as other:
        other.execute("SELECT 1 FROM background_jobs WHERE id = %s FOR UPDATE", (held,))
        report = janitor.run_janitor(conn)
        left = sorted(p.name for p in tmp_path.iterdir())
    removed = {statuses["queued"], statuses["failed"], statuses["completed"], gone}
    assert sorted(report.scratch_removed) == sorted(str(tmp_path / f".partial-{i}") for i in removed)
    assert left == sorted([f".partial-{statuses['running']}", f".partial-{held}", ".partial-notes",
                           "result.tif"])
    assert janitor.run_janitor(conn).scratch_removed == [str(tmp_path / f".partial-{held}")]


def test_a_new_attempt_starts_with_an_empty_scratch_dir(
        conn: psycopg.Connection[Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a killed attempt left in the scratch directory is gone when the next attempt of the
    same job first asks for the directory; later calls in one attempt keep its files."""
    from geojobs.context import JobContext

    monkeypatch.setenv("GEOJOBS_OUTPUT_DIR", str(tmp_path))
    stale = tmp_path / ".partial-7"
    stale.mkdir()
    (stale / "old.tmp").write_bytes(b"x")
    ctx = JobContext(job_id=7, job_type="raster_clip", attempt=2, worker_id="w", conn=conn,
                     report=lambda fraction: None)
    scratch = ctx.scratch_dir()
    assert scratch == stale and list(scratch.iterdir()) == []
    (scratch / "new.tmp").write_bytes(b"y")
    assert [p.name for p in ctx.scratch_dir().iterdir()] == ["new.tmp"]
