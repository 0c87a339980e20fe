"""Workers, the client, the CLI and the API through a real PgBouncer in transaction pooling mode.

Each test starts its own ``pgbouncer`` (Debian's, ``make tools``) on a free 127.0.0.1 port in
front of its throwaway database (:mod:`bench.pgbouncer`). Session features do not survive
transaction pooling: LISTEN goes over a direct ``GEOJOBS_LISTEN_URL`` connection or is replaced
by polling, and nothing is prepared across transactions. The oracle is PostgreSQL itself, read
directly: job rows, ``pg_stat_activity``, and the workers' own log lines.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bench.pgbouncer import PgBouncer, running_as_root
from bench.soak import SHORT, run_soak_via_pgbouncer
from geojobs import db, queue
from geojobs.api.keys import create_key
from geojobs.client import Jobs
from tests.api_support import API_ROLE, start_server, stop
from tests.support import FRONTEND_ROLE, ROOT, WORKER_ROLE, as_role, wait_for, worker_env

pytestmark = [pytest.mark.db,
              pytest.mark.skipif(not running_as_root(), reason="pgbouncer is started as root "
                                 "and switches to the postgres user")]

# Long enough that only a NOTIFY (or the pooled polling) can wake an idle worker in time.
SLOW_POLL = {"GEOJOBS_POLL_INTERVAL": "30", "GEOJOBS_HEARTBEAT_SECONDS": "0.5",
             "GEOJOBS_LEASE_SECONDS": "5", "GEOJOBS_POOLED_POLL_INTERVAL": "0.2",
             "GEOJOBS_RETRY_DELAYS": "0.2"}


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own, in transaction pooling mode."""
    pgb = PgBouncer()
    pgb.start()
    try:
        yield pgb
    finally:
        pgb.close()


def _workers(n: int, url: str, log_dir: Path, **settings: str) -> list[subprocess.Popen[str]]:
    """``n`` noop workers (not draining: they wait for jobs), their stderr in files."""
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "w")  # noqa: SIM115 - kept for the process
        procs.append(subprocess.Popen([sys.executable, "-m", "workers.noop"], cwd=ROOT, text=True,
                                      env=worker_env(url, **{**SLOW_POLL, **settings}),
                                      stdout=subprocess.DEVNULL, stderr=log))
    return procs


def _logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("worker-*.log")))


def _registered(conn: psycopg.Connection[Any], n: int) -> bool:
    return len(queue.list_workers(conn)) == n


def _statuses(conn: psycopg.Connection[Any], ids: list[int]) -> collections.Counter[str]:
    rows = conn.execute("SELECT status FROM background_jobs WHERE id = ANY(%s)", (ids,))
    return collections.Counter(r[0] for r in rows)


def _listening_sessions(conn: psycopg.Connection[Any], role: str = WORKER_ROLE) -> int:
    """Sessions of this database whose last statement was a LISTEN (the direct ones)."""
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND usename = %s AND (query LIKE 'LISTEN %%' OR query LIKE "
                       "'%%pg_listening_channels%%')", (role,)).fetchone()
    return int(row[0]) if row else 0


def _transactions_through(bouncer: PgBouncer, dbname: str) -> int:
    """Transactions PgBouncer has relayed to ``dbname`` (its SHOW STATS)."""
    with psycopg.connect(f"host=127.0.0.1 port={bouncer.port} dbname=pgbouncer user=root",
                         autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute("SHOW STATS")
        names = [c.name for c in cur.description or []]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return sum(int(r["total_xact_count"]) for r in rows if r["database"] == dbname)


def _wake_latencies(conn: psycopg.Connection[Any], front: psycopg.Connection[Any],
                    n: int) -> list[float]:
    """Queue ``n`` jobs one at a time to idle workers: seconds from insert to claim, each."""
    latencies = []
    for _ in range(n):
        job_id = queue.enqueue(front, "noop", {})
        wait_for(lambda job_id=job_id: _statuses(conn, [job_id])["completed"] == 1, timeout=20)
        row = conn.execute("SELECT extract(epoch FROM started_at - created_at) FROM "
                           "background_jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None
        latencies.append(float(row[0]))
        time.sleep(0.3)  # let every worker go idle again
    return latencies


def _drain(conn: psycopg.Connection[Any], front: psycopg.Connection[Any],
           log_dir: Path, jobs: int) -> list[int]:
    """Queue ``jobs`` short jobs through PgBouncer; check each ran exactly once."""
    ids = [queue.enqueue(front, "noop", {"sleep_seconds": 0.02}) for _ in range(jobs)]
    wait_for(lambda: _statuses(conn, ids)["completed"] == jobs, timeout=90, interval=0.2)
    rows = conn.execute("SELECT attempts, worker_id FROM background_jobs WHERE id = ANY(%s)",
                        (ids,)).fetchall()
    assert {r[0] for r in rows} == {1}
    text = _logs(log_dir)
    started = collections.Counter(int(m) for m in re.findall(r"job (\d+) noop attempt \d+/\d+ started", text))
    done = collections.Counter(int(m) for m in re.findall(r"job (\d+) noop attempt \d+/\d+ completed", text))
    assert {i: started[i] for i in ids} == dict.fromkeys(ids, 1)
    assert {i: done[i] for i in ids} == dict.fromkeys(ids, 1)
    assert len({r[1] for r in rows}) >= 2  # the workers shared the queue
    return ids


@pytest.mark.parametrize("listen", [True, False], ids=["listen-direct", "polling"])
def test_workers_drain_through_pgbouncer(db_url: str, conn: psycopg.Connection[Any],
                                         bouncer: PgBouncer, tmp_path: Path, listen: bool) -> None:
    """Claims, heartbeats and completions through PgBouncer; wake-ups over GEOJOBS_LISTEN_URL
    (one direct LISTEN connection per worker), or with no direct connection at all by polling
    every GEOJOBS_POOLED_POLL_INTERVAL (0.2 s here)."""
    extra = {"GEOJOBS_LISTEN_URL": as_role(db_url, WORKER_ROLE)} if listen else {}
    procs = _workers(3, bouncer.url(as_role(db_url, WORKER_ROLE)), tmp_path, **extra)
    try:
        with db.connect(bouncer.url(as_role(db_url, FRONTEND_ROLE))) as front:
            assert db.pooled(front)
            wait_for(lambda: _registered(conn, 3), timeout=60)
            # LISTEN only on the direct connections, never through the pooler
            assert _listening_sessions(conn) == (3 if listen else 0)
            before = _transactions_through(bouncer, conn.info.dbname)
            _drain(conn, front, tmp_path, 60)
            # 60 jobs are at least 60 completing transactions (each also claims the job
            # process's next job), all relayed by PgBouncer
            assert _transactions_through(bouncer, conn.info.dbname) - before >= 60
            latencies = _wake_latencies(conn, front, 5)
        # the poll interval is 30 s: only the NOTIFY on the direct connection, or the 0.2 s
        # polling, wakes them this fast (a loose bound for the worst one: the shared test machine
        # runs at load 20 at times)
        assert statistics.median(latencies) < 1.0 and max(latencies) < 2.5, latencies
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop(p)
    text = _logs(tmp_path)
    assert ("no GEOJOBS_LISTEN_URL: polling every 0.20 s" in text) is not listen
    assert "prepared statement" not in text and "Traceback" not in text


def _backend_of_sleep(conn: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'SELECT pg_sleep%%' AND pid <> pg_backend_pid()")]


@pytest.mark.parametrize("listen", [True, False], ids=["listen-direct", "polling"])
def test_cancel_of_a_running_job_through_pgbouncer(
        db_url: str, conn: psycopg.Connection[Any], bouncer: PgBouncer, tmp_path: Path,
        listen: bool) -> None:
    """A job busy in one SQL statement, on a server connection PgBouncer lent it, stops at once:
    the worker ends that server process (found by its transaction's tag), the job is cancelled,
    and the worker goes on to the next job."""
    extra = {"GEOJOBS_LISTEN_URL": as_role(db_url, WORKER_ROLE)} if listen else {}
    procs = _workers(1, bouncer.url(as_role(db_url, WORKER_ROLE)), tmp_path, **extra)
    try:
        with db.connect(bouncer.url(as_role(db_url, FRONTEND_ROLE))) as front:
            wait_for(lambda: _registered(conn, 1), timeout=60)
            job_id = queue.enqueue(front, "noop", {"sql_sleep_seconds": 60})
            wait_for(lambda: _backend_of_sleep(conn), timeout=20)
            [sleeper] = _backend_of_sleep(conn)
            tag = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                               (sleeper,)).fetchone()
            assert tag is not None and tag[0].startswith(f"geojobs job {job_id}.1 ")
            cancelled_at = time.monotonic()
            assert queue.cancel_own(front, job_id)
            wait_for(lambda: not _backend_of_sleep(conn), timeout=5, interval=0.02)
            gone_after = time.monotonic() - cancelled_at
            assert gone_after < 2.0, gone_after
            wait_for(lambda: "the job was cancelled" in _logs(tmp_path), timeout=5)
            row = queue.get(conn, job_id)
            assert row is not None and row["status"] == "cancelled"
            # the worker lives on and runs the next job through PgBouncer
            next_id = queue.enqueue(front, "noop", {"sleep_seconds": 0.01})
            wait_for(lambda: _statuses(conn, [next_id])["completed"] == 1, timeout=20)
        assert procs[0].poll() is None
    finally:
        for p in procs:
            stop(p)


def test_pgbouncer_down_then_back_workers_reconnect(
        db_url: str, conn: psycopg.Connection[Any], bouncer: PgBouncer, tmp_path: Path) -> None:
    """PgBouncer stopped (every client connection dropped, new ones refused): the workers back
    off and retry as they do for PostgreSQL; jobs wait; PgBouncer back, the jobs complete, and
    no worker process died. Then PAUSE/RESUME: queries wait, then go on."""
    procs = _workers(2, bouncer.url(as_role(db_url, WORKER_ROLE)), tmp_path)
    try:
        wait_for(lambda: _registered(conn, 2), timeout=60)
        pids = sorted(p.pid for p in procs)
        worker_ids = sorted(w["worker_id"] for w in queue.list_workers(conn))
        bouncer.stop()
        with psycopg.connect(as_role(db_url, FRONTEND_ROLE), autocommit=True) as direct:
            ids = [queue.enqueue(direct, "noop", {"sleep_seconds": 0.01}) for _ in range(10)]
        wait_for(lambda: _logs(tmp_path).count("database unavailable") >= 4, timeout=20)
        time.sleep(1.0)
        assert _statuses(conn, ids) == {"queued": 10}  # nothing can claim them
        bouncer.start()
        wait_for(lambda: _statuses(conn, ids)["completed"] == 10, timeout=60, interval=0.2)
        assert all(p.poll() is None for p in procs)
        assert sorted(p.pid for p in procs) == pids
        assert sorted(w["worker_id"] for w in queue.list_workers(conn)) == worker_ids

        bouncer.admin("PAUSE")
        try:
            with psycopg.connect(as_role(db_url, FRONTEND_ROLE), autocommit=True) as direct:
                paused_ids = [queue.enqueue(direct, "noop", {}) for _ in range(4)]
            time.sleep(1.5)
            assert _statuses(conn, paused_ids) == {"queued": 4}
        finally:
            bouncer.admin("RESUME")
        wait_for(lambda: _statuses(conn, paused_ids)["completed"] == 4, timeout=60, interval=0.2)
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            stop(p)
    text = _logs(tmp_path)
    assert re.search(r"database unavailable \(.*\); reconnecting in [\d.]+ s", text)
    assert "Traceback" not in text


@pytest.mark.parametrize("listen", [True, False], ids=["listen-direct", "polling"])
def test_client_submits_and_waits_through_pgbouncer(
        db_url: str, conn: psycopg.Connection[Any], bouncer: PgBouncer, tmp_path: Path,
        listen: bool) -> None:
    """``geojobs.client``: submit, wait (woken over the direct connection, or polling), result,
    the frame of a result table, cancel; the CLI too."""
    procs = _workers(1, bouncer.url(as_role(db_url, WORKER_ROLE)), tmp_path)
    dissolve_log = open(tmp_path / "dissolve.log", "w")  # noqa: SIM115 - kept for the process
    procs.append(subprocess.Popen([sys.executable, "-m", "workers.dissolve"], cwd=ROOT, text=True,
                                  env=worker_env(bouncer.url(as_role(db_url, WORKER_ROLE)),
                                                 **SLOW_POLL),
                                  stdout=subprocess.DEVNULL, stderr=dissolve_log))
    front_url = bouncer.url(as_role(db_url, FRONTEND_ROLE))
    listen_url = as_role(db_url, FRONTEND_ROLE) if listen else None
    try:
        wait_for(lambda: _registered(conn, 2), timeout=60)
        with Jobs(front_url, listen_url=listen_url) as jobs:
            assert db.pooled(jobs.conn)
            assert (jobs.listener() is not None) == listen
            for _ in range(8):  # more than psycopg's prepare threshold (5) on one connection
                job = jobs.submit("noop", {"sleep_seconds": 0.05, "steps": 3})
                started = time.monotonic()
                job.wait(timeout=30)
                assert time.monotonic() - started < 5
                assert job.result["slept"] == 0.05 and job.status == "completed"
            # a result table written through PgBouncer (binary COPY in the job's transaction),
            # read back through it with the client's SQLAlchemy engine
            dissolve = jobs.submit("dissolve", {"input_table": "public.us_states",
                                                "by": ["sub_region"]}).wait(timeout=60)
            # (a reader of results.*: the front-end role may not; root through PgBouncer)
            with Jobs(bouncer.url(db_url)) as reader:
                frame = reader.get(dissolve.id).frame()
            regions = conn.execute("SELECT count(DISTINCT sub_region) FROM public.us_states"
                                   ).fetchone()
            assert regions is not None and len(frame) == regions[0] == dissolve.result["rows"]
            assert set(frame["sub_region"]) == {r[0] for r in conn.execute(
                "SELECT DISTINCT sub_region FROM public.us_states")}
            slow = jobs.submit("noop", {"sleep_seconds": 30, "steps": 300})
            wait_for(lambda: slow.status == "running", timeout=20)
            assert slow.cancel()
            with pytest.raises(Exception, match="cancel"):
                slow.wait(timeout=10)
        # the CLI through PgBouncer: enqueue, wait, show
        env = worker_env(front_url)
        env.pop("GEOJOBS_LISTEN_URL", None)
        out = subprocess.run([sys.executable, "-m", "geojobs.cli", "enqueue", "noop", "--params",
                              '{"sleep_seconds": 0.01}', "--wait"], env=env, cwd=ROOT, text=True,
                             capture_output=True, timeout=180)  # its imports, on a loaded host
        assert out.returncode == 0, out.stderr
        job_id = int(out.stdout.splitlines()[0])
        shown = subprocess.run([sys.executable, "-m", "geojobs.cli", "jobs", "show", str(job_id)],
                               env=env, cwd=ROOT, text=True, capture_output=True, timeout=180)
        assert shown.returncode == 0, shown.stderr
        assert queue.get(conn, job_id)["status"] == "completed"  # type: ignore[index]
    finally:
        for p in procs:
            stop(p)


@pytest.mark.parametrize("listen", [True, False], ids=["listen-direct", "polling"])
def test_api_through_pgbouncer(db_url: str, conn: psycopg.Connection[Any], bouncer: PgBouncer,
                               tmp_path: Path, listen: bool) -> None:
    """The API (real uvicorn, asyncpg) logged in through PgBouncer: submit with Prefer: wait
    (woken over GEOJOBS_LISTEN_URL, or by the API's polling), read the job and its results,
    follow it over SSE, /metrics and /health; a new result table is listed as a layer without a
    restart and goes with its job (NOTIFY, or the layer catalog's polling)."""
    key = create_key(conn, "alice")
    output_dir = tmp_path / "outputs"
    output_dir.mkdir()
    settings = {"DATABASE_URL": bouncer.url(as_role(db_url, API_ROLE))}
    if listen:
        settings["GEOJOBS_LISTEN_URL"] = as_role(db_url, API_ROLE)
    api = start_server(db_url, output_dir, **settings)
    procs = _workers(1, bouncer.url(as_role(db_url, WORKER_ROLE)), tmp_path)
    try:
        clients = [dict(zip(("user", "database"), (r[1], r[2]), strict=True))
                   for r in bouncer.admin("SHOW CLIENTS")]
        assert {"user": API_ROLE, "database": conn.info.dbname} in clients
        assert (_listening_sessions(conn, API_ROLE) == 1) == listen
        base = f"http://127.0.0.1:{api.port}"  # type: ignore[attr-defined]
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"},
                          timeout=60, trust_env=False) as http:
            for _ in range(7):  # more than any statement cache's threshold
                started = time.monotonic()
                r = http.post("/processes/noop/execution",
                              json={"inputs": {"sleep_seconds": 0.2, "steps": 2}},
                              headers={"Prefer": "wait=20"})
                assert r.status_code == 201, r.text
                assert r.json()["status"] == "successful"
                assert time.monotonic() - started < 5
            job_id = r.headers["Location"].rsplit("/", 1)[1]
            assert http.get(f"/jobs/{job_id}").json()["status"] == "successful"
            assert http.get(f"/jobs/{job_id}/results").status_code == 200
            r = http.post("/processes/noop/execution",
                          json={"inputs": {"sleep_seconds": 1.0, "steps": 5}})
            assert r.status_code == 201, r.text
            job_id = r.headers["Location"].rsplit("/", 1)[1]
            with http.stream("GET", f"/jobs/{job_id}/events", timeout=30) as events:
                statuses = [json.loads(line[6:])["status"] for line in events.iter_lines()
                            if line.startswith("data: ")]
            assert statuses[-1] == "successful" and len(statuses) >= 2
            assert http.get("/metrics").status_code == 200
            assert http.get("/health").status_code == 200
            layer, layer_job = _completed_layer(conn)
            wait_for(lambda: layer in _collections(http), timeout=15)
            conn.execute("DELETE FROM background_jobs WHERE id = %s", (layer_job,))
            wait_for(lambda: layer not in _collections(http), timeout=15)
        row = queue.get(conn, int(job_id))
        assert row is not None and row["status"] == "completed"
    finally:
        for p in [*procs, api]:
            stop(p)
    log = (output_dir.parent / f"api-{api.port}.log").read_text()  # type: ignore[attr-defined]
    assert "prepared statement" not in log and "Traceback" not in log


def _completed_layer(conn: psycopg.Connection[Any]) -> tuple[str, int]:
    """A table in ``results`` and a job of alice's that wrote it, completed as a worker
    completes one (queued, then updated); the layer's id and the job's."""
    conn.execute("CREATE TABLE results.pgb_layer AS "
                 "SELECT 1 AS fid, ST_SetSRID(ST_MakePoint(1, 2), 4326)::geometry(Point, 4326) "
                 "AS geom")
    conn.execute(f"GRANT SELECT ON results.pgb_layer TO {API_ROLE}")
    row = conn.execute("INSERT INTO background_jobs (job_type, params, status, submitted_by) "
                       "VALUES ('dissolve', '{}', 'running', 'alice') RETURNING id").fetchone()
    assert row is not None
    conn.execute("UPDATE background_jobs SET status = 'completed', finished_at = now(), "
                 "result = '{\"output_table\": \"results.pgb_layer\"}' WHERE id = %s", (row[0],))
    return "results.pgb_layer", int(row[0])


def _collections(http: httpx.Client) -> list[str]:
    response = http.get("/collections")
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["collections"]]


def test_short_soak_through_pgbouncer(db_url: str, tmp_path: Path) -> None:
    """The short chaos soak (bench/soak.py) with workers, inserts and cancels through PgBouncer,
    LISTEN over GEOJOBS_LISTEN_URL, and PgBouncer itself stopped and started midway."""
    # a longer deadline than test_soak.py's: PgBouncer's process shares the loaded test machine
    config = dataclasses.replace(SHORT, outage="proxy", deadline=300.0)
    report = run_soak_via_pgbouncer(db_url, config, tmp_path, listen=True)
    assert report.ok, report.summary()
    assert report.lost == [] and report.double_runs == []
    assert report.jobs == config.jobs and sum(report.by_status.values()) == config.jobs
    assert report.sigkills >= 3 and report.sigterms >= 1  # the chaos did happen
    assert report.reconnect_warnings >= 1  # the workers saw PgBouncer go away
    assert report.cancels >= 3 and report.by_kind["cancel"] == {"cancelled": report.cancels}
    assert report.cancel_stop_max_seconds < 2.0
    assert report.by_kind["timeout"] == {"failed": sum(report.by_kind["timeout"].values())}


def test_terminate_with_a_tag_ends_only_the_tagged_transaction(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Behind PgBouncer a server connection serves others once the job's transaction is over:
    ending it by pid alone could end someone else's work. With the tag, only a session whose
    application_name is the job's tag is ended (PostgreSQL's own pg_stat_activity the oracle)."""
    tag = "geojobs job 7.1 4242"
    with psycopg.connect(db_url, autocommit=True) as other:
        pid = other.info.backend_pid
        assert not queue.terminate_backend(conn, pid, tag)  # untagged: left alone
        assert other.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError), other.transaction():  # its commit fails
            other.execute("SELECT set_config('application_name', %s, true)", (tag,))
            assert queue.terminate_backend(conn, pid, "geojobs job 7.2 4242") is False
            assert queue.terminate_backend(conn, pid, tag)  # the tagged transaction: ended
    alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    assert alive == (0,)
