"""Metrics, health and ``geojobs top`` against a real database, a real uvicorn and a real tmux.

The figures are checked against the job table itself (plain SQL and Python bucketing in the
test), parsed from the exposition by prometheus-client's own parser.
"""

from __future__ import annotations

import bisect
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from geojobs import cli, health, janitor, metrics, queue
from tests.api_support import start_server, stop
from tests.support import ROOT, start_worker, wait_for, worker_env

pytestmark = pytest.mark.db

CLI = [sys.executable, "-m", "geojobs.cli"]
UNREACHABLE = "postgresql://127.0.0.1:1/nowhere?connect_timeout=2"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def add_finished(conn: psycopg.Connection[Any], job_type: str, status: str, seconds: float | None,
                 ago: float) -> None:
    """A job that finished ``ago`` seconds ago after running ``seconds`` (None: never started)."""
    conn.execute(
        "INSERT INTO background_jobs (job_type, status, attempts, started_at, finished_at) "
        "VALUES (%s, %s, 1, CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval("
        "secs => %s + %s) END, now() - make_interval(secs => %s))",
        (job_type, status, seconds, ago, seconds, ago))


def oracle(conn: psycopg.Connection[Any], buckets: list[float]) -> tuple[Counter[Any], Counter[Any]]:
    """Finished jobs by (type, status) and cumulative bucket counts, straight from the rows."""
    totals: Counter[Any] = Counter()
    cumulative: Counter[Any] = Counter()
    rows = conn.execute("SELECT job_type, status, extract(epoch FROM finished_at - started_at)::float8 "
                        "FROM background_jobs WHERE status IN ('completed', 'failed', 'cancelled')")
    for job_type, status, seconds in rows:
        label = job_type if job_type in ("noop", "dissolve") else "unregistered"
        totals[label, status] += 1
        if status != "cancelled" and seconds is not None:
            index = bisect.bisect_left(buckets, seconds)  # first bound >= seconds: "le"
            for i, bound in enumerate([*buckets, float("inf")]):
                if i >= index:
                    cumulative[label, status, bound] += 1
    return totals, cumulative


def check_against_oracle(conn: psycopg.Connection[Any], text: str, extra: Counter[Any] | None = None,
                         extra_buckets: Counter[Any] | None = None) -> None:
    found = samples(text)
    buckets = list(conn.execute("SELECT buckets FROM geojobs_metrics_state").fetchone()[0])
    totals, cumulative = oracle(conn, buckets)
    totals.update(extra or Counter())
    cumulative.update(extra_buckets or Counter())
    for label in ("noop", "dissolve", "unregistered"):
        for status in ("completed", "failed", "cancelled"):
            assert value(found, "geojobs_jobs_finished_total", job_type=label, status=status) \
                == totals[label, status], (label, status)
        for status in ("completed", "failed"):
            for bound in [*buckets, float("inf")]:
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                assert value(found, "geojobs_job_duration_seconds_bucket", job_type=label,
                             status=status, le=le) == cumulative[label, status, bound], (label, le)


def test_metrics_match_the_table_and_survive_retention(conn: psycopg.Connection[Any]) -> None:
    for ago in (3600.0, 5.0):  # folded ones and ones still settling
        add_finished(conn, "noop", "completed", 1.0, ago)  # exactly on the le="1.0" bound
        add_finished(conn, "noop", "completed", 0.05, ago)
        add_finished(conn, "noop", "failed", 45.0, ago)
        add_finished(conn, "dissolve", "completed", 99999.0, ago)  # past every bound
        add_finished(conn, "dissolve", "cancelled", None, ago)
        add_finished(conn, "not_a_type", "failed", 2.0, ago)
    queue.enqueue(conn, "noop", {})
    conn.execute("INSERT INTO background_jobs (job_type, available_at) "
                 "VALUES ('dissolve', now() - interval '90 seconds'), "
                 "('dissolve', now() + interval '1 hour')")
    conn.execute("INSERT INTO background_jobs (job_type, status, attempts, started_at, heartbeat_at) "
                 "VALUES ('noop', 'running', 1, now(), now())")

    first = metrics.render(conn).decode()
    assert conn.execute("SELECT sum(jobs) FROM geojobs_metrics_finished").fetchone()[0] == 6
    check_against_oracle(conn, first)
    found = samples(first)
    assert value(found, "geojobs_jobs", job_type="noop", status="queued") == 1
    assert value(found, "geojobs_jobs", job_type="noop", status="running") == 1
    assert value(found, "geojobs_jobs", job_type="dissolve", status="queued") == 2
    assert value(found, "geojobs_jobs_ready", job_type="dissolve") == 1
    assert 89 < value(found, "geojobs_queue_oldest_ready_seconds", job_type="dissolve") < 150
    assert value(found, "geojobs_jobs_ready", job_type="hotspot") == 0
    assert value(found, "geojobs_job_duration_seconds_sum", job_type="noop", status="completed") \
        == pytest.approx(2 * 1.05, abs=1e-3)
    assert "not_a_type" not in first  # only registered types become label values

    second = metrics.render(conn, settle_seconds=0).decode()  # folds everything
    assert conn.execute("SELECT sum(jobs) FROM geojobs_metrics_finished").fetchone()[0] == 12
    assert samples(second).items() >= {k: v for k, v in samples(first).items()
                                       if k[0].startswith(("geojobs_jobs_finished", "geojobs_job_dur"))
                                       }.items()
    before, cumulative = oracle(conn, list(
        conn.execute("SELECT buckets FROM geojobs_metrics_state").fetchone()[0]))

    conn.execute("DELETE FROM background_jobs WHERE status IN ('completed', 'failed', 'cancelled')")
    add_finished(conn, "noop", "failed", 3.0, 0.0)  # finished after the last fold
    third = metrics.render(conn, settle_seconds=0).decode()
    check_against_oracle(conn, third, extra=before, extra_buckets=cumulative)  # counters kept


def test_a_backlog_is_folded_in_bounded_steps_and_counted_meanwhile(
        conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        add_finished(conn, "noop", "completed", 0.2 * i, 600.0 - i)
    monkeypatch.setattr(metrics, "FOLD_MAX_ROWS", 2)
    for folded_so_far in (2, 4, 5, 5):
        snap = metrics.snapshot(conn)
        assert conn.execute("SELECT sum(jobs) FROM geojobs_metrics_finished").fetchone()[0] \
            == folded_so_far
        assert sum(n for (t, s, _), (n, _) in snap.finished.items()
                   if (t, s) == ("noop", "completed")) == 5


@pytest.fixture
def registry_table(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The worker registry (migration 0004), emptied of real workers: rows are added by hand."""
    conn.execute("DELETE FROM geojobs_workers")
    return conn


def add_worker(conn: psycopg.Connection[Any], worker_id: str, job_type: str, *, seen_ago: float = 0,
               rss_mb: float = 100.0, current_job: int | None = None) -> None:
    conn.execute("INSERT INTO geojobs_workers (worker_id, job_type, host, pid, version, last_seen, "
                 "rss_mb, current_job) "
                 "VALUES (%s, %s, 'h1', 1, 'test', now() - make_interval(secs => %s), %s, %s)",
                 (worker_id, job_type, seen_ago, rss_mb, current_job))


def test_health_and_worker_metrics(registry_table: psycopg.Connection[Any]) -> None:
    conn = registry_table
    assert health.check().code == health.OK
    queue.enqueue(conn, "noop", {})
    queue.enqueue(conn, "dissolve", {})
    add_worker(conn, "h1:1:a", "noop", rss_mb=123.5)
    add_worker(conn, "h1:2:b", "dissolve", seen_ago=3600)  # gone: not live
    verdict = health.check()
    assert verdict.code == health.CRITICAL and verdict.http_status == 503
    assert verdict.reasons == ["dissolve: 1 queued job(s) and no live worker"]
    assert health.check(job_types=["noop"]).code == health.OK
    found = samples(metrics.render(conn).decode())
    assert value(found, "geojobs_workers", job_type="noop") == 1
    assert value(found, "geojobs_workers", job_type="dissolve") == 0
    assert value(found, "geojobs_worker_resident_memory_bytes", job_type="noop", host="h1",
                 worker_id="h1:1:a") == 123.5 * 2**20
    conn.execute("UPDATE background_jobs SET available_at = now() - interval '2 hours' "
                 "WHERE job_type = 'noop'")
    add_worker(conn, "h1:3:c", "dissolve")
    verdict = health.check()
    assert verdict.code == health.WARNING and "noop: the oldest ready job has waited" in verdict.reasons[0]

    cli = subprocess.run([*CLI, "health"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=worker_env(os.environ["DATABASE_URL"]))
    assert cli.returncode == 1 and cli.stdout.startswith("WARNING - noop: the oldest ready job")
    conn.execute("DELETE FROM geojobs_workers WHERE job_type = 'noop'")
    cli = subprocess.run([*CLI, "health", "--json"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60, env=worker_env(os.environ["DATABASE_URL"]))
    assert cli.returncode == 2 and '"status": "critical"' in cli.stdout


def test_a_real_worker_registers_itself_in_metrics_and_health(
        registry_table: psycopg.Connection[Any], db_url: str) -> None:
    conn = registry_table
    queue.enqueue(conn, "dissolve", {})  # no dissolve worker: critical throughout
    worker = start_worker(db_url, "noop")
    try:
        wait_for(lambda: conn.execute("SELECT count(*) FROM geojobs_workers WHERE job_type = 'noop'")
                 .fetchone()[0] == 1, timeout=30, interval=0.1)
        pid = conn.execute("SELECT pid FROM geojobs_workers WHERE job_type = 'noop'").fetchone()[0]
        assert pid in (worker.pid, *_children(worker.pid))
        found = samples(metrics.render(conn).decode())
        assert value(found, "geojobs_workers", job_type="noop") == 1
        assert value(found, "geojobs_workers", job_type="dissolve") == 0
        queue.enqueue(conn, "noop", {})
        verdict = health.check()
        assert verdict.code == health.CRITICAL
        assert verdict.reasons == ["dissolve: 1 queued job(s) and no live worker"]
        ok = subprocess.run([*CLI, "health", "--type", "noop"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, env=worker_env(db_url))
        assert ok.returncode == 0 and ok.stdout.startswith("OK"), ok.stdout
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    # A worker that stops removes itself from the registry: the noop type has no live worker.
    assert conn.execute("SELECT count(*) FROM geojobs_workers").fetchone()[0] == 0
    queue.enqueue(conn, "noop", {})
    assert "noop: 1 queued job(s) and no live worker" in health.check().reasons


def _children(pid: int) -> list[int]:
    """Process ids of the direct children of ``pid`` (the worker may run jobs in a child)."""
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(p) for p in open(path).read().split()] if os.path.exists(path) else []


def old_job_with_table(conn: psycopg.Connection[Any], table: str, days: float) -> int:
    """A completed noop job that finished ``days`` ago and wrote ``results.<table>``."""
    conn.execute(f"CREATE TABLE results.{table} (id int)")
    row = conn.execute(
        "INSERT INTO background_jobs (job_type, status, attempts, started_at, finished_at, result) "
        "VALUES ('noop', 'completed', 1, now() - make_interval(days => %s), "
        "now() - make_interval(days => %s), jsonb_build_object('output_table', %s::text)) "
        "RETURNING id", (int(days), int(days), f"results.{table}")).fetchone()
    return int(row[0])


def test_janitor_runs_are_recorded_and_scraped(conn: psycopg.Connection[Any], db_url: str) -> None:
    found = samples(metrics.render(conn).decode())
    assert not any(name.startswith("geojobs_janitor_") for name, _ in found)  # never ran
    old_job_with_table(conn, "ops_janitor_a", 40)  # outputs expired, row kept
    old_job_with_table(conn, "ops_janitor_b", 100)  # outputs expired, then the row deleted
    run = subprocess.run([*CLI, "janitor"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=worker_env(db_url))
    assert run.returncode == 0, run.stderr
    rows = conn.execute("SELECT host, extract(epoch FROM finished_at)::float8, jobs_expired, "
                        "tables_dropped, files_removed, jobs_deleted, started_at <= finished_at "
                        "FROM geojobs_janitor_runs").fetchall()
    assert rows == [(socket.gethostname(), rows[0][1], 2, 2, 0, 1, True)]
    assert conn.execute("SELECT to_regclass('results.ops_janitor_a')").fetchone()[0] is None
    found = samples(metrics.render(conn).decode())
    assert value(found, "geojobs_janitor_last_run_timestamp_seconds") == pytest.approx(rows[0][1])
    assert value(found, "geojobs_janitor_last_run_jobs_expired") == 2
    assert value(found, "geojobs_janitor_last_run_tables_dropped") == 2
    assert value(found, "geojobs_janitor_last_run_files_removed") == 0
    assert value(found, "geojobs_janitor_last_run_jobs_deleted") == 1

    again = subprocess.run([*CLI, "janitor"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env=worker_env(db_url))
    assert again.returncode == 0, again.stderr
    last = conn.execute("SELECT extract(epoch FROM max(finished_at))::float8, count(*) "
                        "FROM geojobs_janitor_runs").fetchone()
    assert last[1] == 2 and last[0] > rows[0][1]
    found = samples(metrics.render(conn).decode())
    assert value(found, "geojobs_janitor_last_run_timestamp_seconds") == pytest.approx(last[0])
    assert value(found, "geojobs_janitor_last_run_jobs_expired") == 0  # the last run's counts


def test_health_and_top_bad_input(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = worker_env(UNREACHABLE)
    down = subprocess.run([*CLI, "health"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert down.returncode == 2 and down.stdout.startswith("CRITICAL - database unreachable:")
    top = subprocess.run([*CLI, "top"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert top.returncode == 2 and "geojobs top: cannot reach the database" in top.stderr
    for args, field in ((["health", "--type", "nope"], "--type"), (["top", "--type", "nope"], "--type"),
                        (["top", "--interval", "0"], "--interval")):
        assert cli.main(args) == 2
        assert capsys.readouterr().err.startswith(f"geojobs: error: {field}:")


# -- HTTP ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start the operations app under uvicorn with a given DATABASE_URL; yields a starter."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str) -> str:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "geojobs.opsapi:create_app",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                                cwd=ROOT, env=worker_env(url), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        return base

    yield start
    for proc in procs:
        proc.terminate()
        proc.communicate(timeout=10)


def test_http_metrics_and_health(registry_table: psycopg.Connection[Any], db_url: str, serve: Any) -> None:
    conn = registry_table
    base = serve(db_url)
    add_finished(conn, "noop", "completed", 2.0, 10.0)
    scraped = httpx.get(base + "/metrics", timeout=10)
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert value(samples(scraped.text), "geojobs_jobs_finished_total", job_type="noop",
                 status="completed") == 1
    assert httpx.get(base + "/health", timeout=10).json() == {
        "status": "ok", "database": "reachable", "reasons": []}
    queue.enqueue(conn, "hotspot", {"secret": "param"})
    answer = httpx.get(base + "/health", timeout=10)
    assert answer.status_code == 503
    assert answer.json()["reasons"] == ["hotspot: 1 queued job(s) and no live worker"]
    assert "secret" not in answer.text and "secret" not in httpx.get(base + "/metrics").text

    # The database drops the API's connection (as in a restart): no crash, then it recovers.
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    codes = [httpx.get(base + "/metrics", timeout=10).status_code for _ in range(3)]
    assert codes[0] in (200, 503) and codes[1:] == [200, 200]

    down = serve(UNREACHABLE)
    scraped = httpx.get(down + "/metrics", timeout=20)
    assert scraped.status_code == 503
    assert scraped.headers["content-type"] == "application/problem+json"
    assert scraped.json()["detail"].startswith("database unreachable")
    verdict = httpx.get(down + "/health", timeout=20)
    assert verdict.status_code == 503 and verdict.json()["database"] == "unreachable"


# -- geojobs top -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by make install")
def test_top_under_tmux_shows_every_state_and_quits_on_q(
        registry_table: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> None:
    conn = registry_table
    done = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET status = 'completed', finished_at = now() WHERE id = %s",
                 (done,))
    failed = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET status = 'failed', attempts = 4, finished_at = now(), "
                 "error = 'RuntimeError: the input layer is on fire' WHERE id = %s", (failed,))
    cancelled = queue.enqueue(conn, "noop", {})
    queue.cancel(conn, cancelled)
    for _ in range(3):
        queue.enqueue(conn, "dissolve", {"input_table": "public.us_states"})
    slow = queue.enqueue(conn, "noop", {"sleep_seconds": 20, "steps": 40})
    # A busy worker prunes registry rows older than its lease (5 s in the tests) while it runs
    # jobs; the hand-made "h1:1:live" row must outlive the screen's first draw on a slow host.
    worker = start_worker(db_url, "noop", GEOJOBS_GRACE_SECONDS="0.2", GEOJOBS_LEASE_SECONDS="600")
    session = f"top{os.getpid()}"
    tmux = ["tmux", "-L", session]  # a server of our own: nobody else's kill-server reaches it
    env = worker_env(db_url)
    try:
        wait_for(lambda: (queue.get(conn, slow) or {}).get("progress") or 0 > 0.05, timeout=30)
        add_worker(conn, "h1:1:live", "noop", rss_mb=321, current_job=slow)
        status_file = tmp_path / "top.exit"  # the exit status, whatever tmux keeps of the pane
        command = (f"sh -c '{sys.executable} -m geojobs.cli top; "
                   f"echo $? > {status_file}'")
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "150", "-y", "50",
                        "-e", f"DATABASE_URL={db_url}", "-e", f"PYTHONPATH={ROOT}",
                        "-e", "GEOJOBS_LEASE_SECONDS=600", "-c", str(ROOT),
                        command], check=True, env=env)
        subprocess.run([*tmux, "set-option", "-t", session, "remain-on-exit", "on"], check=True)

        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True, check=True).stdout

        first = wait_for(lambda: (s := screen()) and "last failures" in s and s, timeout=30)
        assert "h1:1:live" in first and "321" in first  # the workers panel
        assert f"{slow}" in first and "%" in first  # the running job with its progress
        dissolve = next(line for line in first.splitlines() if "dissolve" in line and "│" in line)
        assert dissolve.split()[1:4] == ["dissolve", "3", "3"]  # queue depth, ready
        assert f"{failed}" in first and "the input layer is on fire" in first
        ids = {line.split()[1] for line in first.splitlines() if len(line.split()) > 2}
        assert {str(slow), str(failed)} <= ids and not {str(cancelled), str(done)} & ids

        def percent(text: str) -> int:
            line = next(line for line in text.splitlines() if line.split()[1:2] == [str(slow)])
            return int(next(word for word in line.split() if word.endswith("%"))[:-1])

        start = percent(first)
        wait_for(lambda: percent(screen()) > start, timeout=10)  # redraws as the job moves on
        queue.enqueue(conn, "hotspot", {})
        wait_for(lambda: "hotspot" in screen(), timeout=3)  # a NOTIFY-driven redraw (or the 1 s poll)

        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True)

        def exited() -> str:
            return status_file.read_text().strip() if status_file.exists() else ""

        deadline = time.monotonic() + 10
        while not exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exited() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        worker.terminate()
        worker.communicate(timeout=30)


def test_metrics_scrape_time_is_reported(conn: psycopg.Connection[Any]) -> None:
    started = time.perf_counter()
    found = samples(metrics.render(conn).decode())
    assert 0 < value(found, "geojobs_metrics_scrape_seconds") <= time.perf_counter() - started
    assert value(found, "geojobs_database_up") == 1


def test_the_api_app_serves_metrics_and_health_without_a_key(
        registry_table: psycopg.Connection[Any], db_url: str, tmp_path: Any) -> None:
    """``geojobs serve``, logged in as geojobs_api: both routes work with that role's grants."""
    conn = registry_table
    add_finished(conn, "noop", "failed", 1.5, 120.0)
    add_worker(conn, "h1:1:a", "noop")
    queue.enqueue(conn, "noop", {})
    old_job_with_table(conn, "ops_janitor_api", 40)
    janitor.run_janitor(conn)
    (tmp_path / "out").mkdir()
    process = start_server(db_url, tmp_path / "out")
    try:
        base = f"http://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
        scraped = httpx.get(base + "/metrics", timeout=10, trust_env=False)
        assert scraped.status_code == 200, scraped.text
        found = samples(scraped.text)
        assert value(found, "geojobs_jobs_finished_total", job_type="noop", status="failed") == 1
        assert value(found, "geojobs_workers", job_type="noop") == 1
        assert value(found, "geojobs_janitor_last_run_tables_dropped") == 1
        assert value(found, "geojobs_janitor_last_run_timestamp_seconds") == pytest.approx(
            conn.execute("SELECT extract(epoch FROM finished_at)::float8 "
                         "FROM geojobs_janitor_runs").fetchone()[0])
        verdict = httpx.get(base + "/health", timeout=10, trust_env=False)
        assert verdict.status_code == 200 and verdict.json()["status"] == "ok"
    finally:
        stop(process)


def test_metrics_benchmark_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import metrics as metrics_bench

    assert metrics_bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "(10,000 finished jobs" in out or "scrape of 10,000 finished jobs" in out
    assert "steady scrape" in out
