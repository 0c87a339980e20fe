"""Provenance of results and re-runs: real PostGIS, real worker processes, the real CLI.

Oracles: the row counts and the catalog (``obj_description``) read by plain SQL; the installed
versions read from the packages themselves; the properties the fingerprint promises (equal for
the same rows in another order, different after a change of one value or one row).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
import shapely
from psycopg import sql

from geojobs import provenance, queue
from geojobs.params import InputTable, JobParams
from tests.support import ROOT, as_role, job_row, run_worker, start_worker, wait_for, worker_env

pytestmark = pytest.mark.db

DISSOLVE = {"input_table": "public.us_states", "by": ["sub_region"],
            "output_table": "results.regions"}


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geojobs.cli", *args], env=worker_env(db_url),
                          cwd=ROOT, text=True, capture_output=True, timeout=60)


def _count(conn: psycopg.Connection[Any], table: str = "background_jobs") -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - fixed names
    assert row is not None
    return int(row[0])


def _comment(conn: psycopg.Connection[Any], relation: str) -> str | None:
    row = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (relation,)).fetchone()
    assert row is not None
    return row[0]


def test_result_records_provenance_and_the_table_comment(db_url, conn):
    """Job id, type, validated params with defaults, inputs with fingerprints, versions, worker,
    timings; the same document is the result table's COMMENT."""
    job_id = queue.enqueue(conn, "dissolve", DISSOLVE)
    run = run_worker(as_role(db_url), "dissolve")
    assert run.returncode == 0, run.stderr
    job = job_row(conn, job_id)
    assert job["status"] == "completed", job["error"]
    prov = job["result"]["provenance"]
    assert prov["job_id"] == job_id and prov["job_type"] == "dissolve"
    assert prov["worker_id"] == job["worker_id"]
    # params after validation: the defaults the submitter left out are filled in
    assert prov["params"]["input_table"] == "public.us_states"
    assert prov["params"]["overwrite"] is False and prov["params"]["aggregates"] == {}
    [source] = prov["inputs"]
    assert source["param"] == "input_table" and source["table"] == "public.us_states"
    assert source["rows"] == _count(conn, "public.us_states") == 48
    assert len(source["signature"]) == 16
    versions = prov["versions"]
    for package in provenance.PACKAGES:
        assert versions[package] == importlib.metadata.version(package), package
    assert versions["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert versions["geos"] == shapely.geos_version_string  # dissolve loads shapely
    assert prov["timings"]["run_seconds"] > 0 and "started_at" in prov["timings"]
    assert prov["output"] == "results.regions"

    comment = _comment(conn, "results.regions")
    assert comment is not None
    head, _, body = comment.partition("\n")
    assert head.startswith(f"geojobs job {job_id} (dissolve), written ")
    assert json.loads(body) == prov


def test_fingerprint_changes_with_content_not_with_row_order(conn):
    """Same rows in another physical order: same fingerprint; one value or one row changed:
    another fingerprint (and the row count follows the rows)."""
    conn.execute("CREATE TABLE public.fwd AS SELECT * FROM public.nc_counties ORDER BY name")
    conn.execute("CREATE TABLE public.rev AS SELECT * FROM public.nc_counties ORDER BY name DESC")
    fwd = provenance.fingerprint(conn, "public.fwd")
    rev = provenance.fingerprint(conn, "rev")  # through the search path
    first = conn.execute("SELECT name FROM public.fwd LIMIT 1").fetchone()
    last = conn.execute("SELECT name FROM public.rev LIMIT 1").fetchone()
    assert first != last  # the two tables really hold their rows in different orders
    assert fwd["rows"] == rev["rows"] == 100 and fwd["signature"] == rev["signature"]
    assert rev["table"] == "public.rev"

    conn.execute("UPDATE public.rev SET sid74 = sid74 + 1 WHERE name = 'Ashe'")
    changed = provenance.fingerprint(conn, "public.rev")
    assert changed["rows"] == 100 and changed["signature"] != fwd["signature"]
    conn.execute("UPDATE public.rev SET sid74 = sid74 - 1 WHERE name = 'Ashe'")
    assert provenance.fingerprint(conn, "public.rev") == rev  # back as it was

    conn.execute("UPDATE public.rev SET geom = ST_Translate(geom, 1e-9, 0) WHERE name = 'Ashe'")
    assert provenance.fingerprint(conn, "public.rev")["signature"] != rev["signature"]
    conn.execute("DELETE FROM public.fwd WHERE name = 'Ashe'")
    gone = provenance.fingerprint(conn, "public.fwd")
    assert gone["rows"] == 99 and gone["signature"] != fwd["signature"]


def test_input_changed_between_runs_shows_in_the_fingerprints(db_url, conn):
    """Two runs of the same job around a change of the input: the fingerprints differ."""
    conn.execute("CREATE TABLE public.states AS SELECT * FROM public.us_states")
    conn.execute("GRANT SELECT ON public.states TO geojobs_worker")
    params = {**DISSOLVE, "input_table": "public.states", "overwrite": True}
    first = queue.enqueue(conn, "dissolve", params)
    assert run_worker(as_role(db_url), "dissolve").returncode == 0
    conn.execute("UPDATE public.states SET sub_region = 'Pacific' WHERE state_name = 'Nevada'")
    second = queue.enqueue(conn, "dissolve", params)
    assert run_worker(as_role(db_url), "dissolve").returncode == 0
    a, b = (job_row(conn, j)["result"]["provenance"]["inputs"][0] for j in (first, second))
    assert a["rows"] == b["rows"] == 48 and a["signature"] != b["signature"]
    assert json.loads(_comment(conn, "results.regions").partition("\n")[2])["job_id"] == second


def test_rerun_with_nested_sets_queues_a_validated_copy(db_url, conn):
    """``jobs rerun ID --set`` (dotted keys, JSON values) queues a copy naming the job it
    re-runs; the copy's provenance names it too."""
    params = {"input_table": "public.nc_counties", "value_column": "sid74",
              "weights": {"type": "queen"}, "permutations": 99, "seed": 7,
              "output_table": "results.spots"}
    original = queue.enqueue(conn, "hotspot", params, priority=3, max_attempts=2)
    out = _cli(db_url, "jobs", "rerun", str(original), "--set", "weights.type=knn",
               "--set", "weights.k=6", "--set", "output_table=results.spots_knn",
               "--set", "fdr=true")
    assert out.returncode == 0, out.stderr
    copy = int(out.stdout.strip())
    row = job_row(conn, copy)
    assert row["rerun_of"] == original and row["job_type"] == "hotspot"
    assert row["params"] == {**params, "weights": {"type": "knn", "k": 6},
                             "output_table": "results.spots_knn", "fdr": True}
    assert job_row(conn, original)["params"] == params  # the original is untouched
    assert row["priority"] == 3 and row["max_attempts"] == 2
    run = run_worker(as_role(db_url), "hotspot")
    assert run.returncode == 0, run.stderr
    done = job_row(conn, copy)
    assert done["status"] == "completed", done["error"]
    prov = done["result"]["provenance"]
    assert prov["rerun_of"] == original and prov["params"]["weights"]["k"] == 6
    assert _comment(conn, "results.spots_knn").startswith(  # type: ignore[union-attr]
        f"geojobs job {copy} (hotspot), re-run of job {original}, ")


@pytest.mark.parametrize("args, message", [
    (["jobs", "rerun", "999999"], "ID: no job 999999"),
    (["jobs", "pin", "999999"], "ID: no job 999999"),
    (["jobs", "rerun", "{job}", "--set", "permutation=99"], "params.permutation: Extra inputs"),
    (["jobs", "rerun", "{job}", "--set", "weights.kk=3"], "params.weights.kk: Extra inputs"),
    (["jobs", "rerun", "{job}", "--set", "permutations=-5"], "params.permutations: "),
    (["jobs", "rerun", "{job}", "--set", "value_column.x=1"],
     "--set 'value_column.x=1': bad key 'value_column.x': params.value_column is not an object"),
    (["jobs", "rerun", "{job}", "--set", "permutations"],
     "--set 'permutations': bad key 'permutations': must be key=value"),
    (["jobs", "rerun", "{job}", "--set", "weights..k=1"],
     "--set 'weights..k=1': bad key 'weights..k': must be key=value"),
    (["jobs", "cancel", "{job}", "--set", "a=1"], "--set: only for jobs rerun"),
])
def test_bad_reruns_name_the_key_and_insert_nothing(db_url, conn, args, message):
    job = queue.enqueue(conn, "hotspot", {"input_table": "public.nc_counties",
                                          "value_column": "sid74"})
    before = _count(conn)
    out = _cli(db_url, *(a.format(job=job) for a in args))
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert _count(conn) == before
    assert job_row(conn, job)["status"] == "queued" and job_row(conn, job)["pinned"] is False


def test_pipeline_rerun_names_the_run_it_replaces(db_url, conn):
    """``pipeline rerun --from STEP``: each re-run step's job has ``rerun_of`` = the job of the
    same step in the replaced run, and its provenance names both runs."""
    from geojobs import pipelines

    spec = {"name": "regions", "steps": [
        {"name": "regions", "job_type": "dissolve",
         "params": {"input_table": "public.us_states", "by": ["sub_region"]}},
        {"name": "view", "job_type": "create_view",
         "params": {"input_table": {"output_of": "regions"}, "output_table": "results.regions_v"}},
    ]}
    first, jobs = pipelines.submit(conn, spec)
    for job_type in ("dissolve", "create_view"):
        assert run_worker(as_role(db_url), job_type).returncode == 0
    assert pipelines.show(conn, first)["status"] == "completed"
    second, again = pipelines.rerun(conn, first, "view",
                                    ['view.filter=[{"column": "sub_region", "op": "=", '
                                     '"value": "Pacific"}]'])
    assert list(again) == ["view"]
    assert job_row(conn, again["view"])["rerun_of"] == jobs["view"]
    assert run_worker(as_role(db_url), "create_view").returncode == 0
    row = job_row(conn, again["view"])
    assert row["status"] == "completed", row["error"]
    prov = row["result"]["provenance"]
    assert prov["rerun_of"] == jobs["view"]
    assert prov["pipeline"] == {"id": second, "replaces": first, "rerun_from": "view",
                                "step": "view"}
    # the reused upstream step is the same job, and the view reads its table
    assert prov["inputs"][0]["table"] == job_row(conn, jobs["regions"])["result"]["output_table"]
    count = conn.execute("SELECT count(*) FROM results.regions_v").fetchone()
    assert count == (1,)


def _plain_fingerprint(conn: psycopg.Connection[Any], table: str) -> tuple[int, str]:
    """The fingerprint computed by hand in plain SQL (the oracle of the recorded one)."""
    row = conn.execute(f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "  # noqa: S608
                       f"FROM {table} AS t").fetchone()  # fixed names of this module
    assert row is not None
    return int(row[0]), f"{int(row[1]) % 2**64:016x}"


def test_fingerprint_beside_the_job_equals_the_one_in_its_transaction(db_url, conn):
    """On a table nothing changes, the fingerprint read beside the job (in the snapshot it began
    with) equals the one read in a transaction and the plain SQL sum; a second run gives the
    same again."""
    first = queue.enqueue(conn, "dissolve", {**DISSOLVE, "overwrite": True})
    second = queue.enqueue(conn, "dissolve", {**DISSOLVE, "overwrite": True})
    run = run_worker(as_role(db_url), "dissolve")
    assert run.returncode == 0, run.stderr
    a, b = (job_row(conn, j)["result"]["provenance"] for j in (first, second))
    [source] = a["inputs"]
    assert source["as_of"] == provenance.AT_START and "note" not in source
    assert (source["rows"], source["signature"]) == _plain_fingerprint(conn, "public.us_states")
    in_transaction = provenance.fingerprint(conn, "public.us_states")
    assert {k: source[k] for k in in_transaction} == in_transaction
    assert b["inputs"] == a["inputs"]
    assert a["timings"]["fingerprint_seconds"] > 0


def test_fingerprint_does_not_depend_on_the_session_settings(conn):
    """Settings that change a row's text (time zone, date and interval styles, float digits,
    bytea output) do not change the fingerprint; the plain sum under those settings does."""
    conn.execute("CREATE TABLE public.stamps AS SELECT g AS id, "
                 "timestamptz '2026-01-01 12:00+00' + g * interval '1 hour 1 minute' AS at, "
                 "g * interval '90 minutes' AS span, g / 3.0::float8 AS x, "
                 "decode(md5(g::text), 'hex') AS b FROM generate_series(1, 50) AS g")
    plain = provenance.fingerprint(conn, "public.stamps")
    before = _plain_fingerprint(conn, "public.stamps")
    conn.execute("SET TimeZone = 'America/New_York'")
    conn.execute("SET DateStyle = 'SQL, DMY'")
    conn.execute("SET IntervalStyle = 'iso_8601'")
    conn.execute("SET extra_float_digits = 0")
    conn.execute("SET bytea_output = 'escape'")
    assert _plain_fingerprint(conn, "public.stamps") != before  # the text really changed
    assert provenance.fingerprint(conn, "public.stamps") == plain
    assert plain["rows"] == 50 and plain["signature"] == before[1]  # this server's defaults


def test_fingerprint_runs_while_the_handler_works(db_url, conn):
    """An input that takes about a second to read (a view sleeping 20 ms a row) costs about a
    second to the handler and a second to the fingerprint: the fingerprint, read beside the
    handler, adds far less than its own time to the job."""
    conn.execute("CREATE VIEW public.slow_states AS SELECT s.*, pg_sleep(0.02) IS NULL AS nap "
                 "FROM public.us_states AS s")
    conn.execute("GRANT SELECT ON public.slow_states TO geojobs_worker")
    job_id = queue.enqueue(conn, "dissolve", {**DISSOLVE, "input_table": "public.slow_states"})
    run = run_worker(as_role(db_url), "dissolve")
    assert run.returncode == 0, run.stderr
    job = job_row(conn, job_id)
    assert job["status"] == "completed", job["error"]
    prov = job["result"]["provenance"]
    [source] = prov["inputs"]
    assert source["as_of"] == provenance.AT_START and source["rows"] == 48
    timings = prov["timings"]
    # the handler read the view at least once, the fingerprint once: each at least 48 x 20 ms
    assert timings["run_seconds"] >= 0.9 and timings["fingerprint_seconds"] >= 0.9, timings
    # after the handler the job waited for at most the part of the fingerprint the handler
    # did not cover; one after the other it would have taken the whole fingerprint again
    assert timings["fingerprint_wait_seconds"] <= timings["provenance_seconds"]
    assert timings["provenance_seconds"] < timings["fingerprint_seconds"] - 0.5, timings


def test_an_input_the_fingerprint_cannot_read_does_not_fail_the_job(db_url, conn):
    """A view with a column that fails to compute (division by zero), which the job does not
    read: the job completes; the fingerprint (which reads every column) says why it is missing."""
    conn.execute("CREATE VIEW public.broken_states AS SELECT s.*, "
                 "1 / (length(s.state_name) - length(s.state_name)) AS boom FROM public.us_states AS s")
    conn.execute("GRANT SELECT ON public.broken_states TO geojobs_worker")
    job_id = queue.enqueue(conn, "dissolve", {**DISSOLVE, "input_table": "public.broken_states"})
    run = run_worker(as_role(db_url), "dissolve")
    assert run.returncode == 0, run.stderr
    job = job_row(conn, job_id)
    assert job["status"] == "completed", job["error"]
    [source] = job["result"]["provenance"]["inputs"]
    assert source["rows"] is None and source["signature"] is None
    assert "division by zero" in source["error"] and source["table"] == "public.broken_states"
    assert job["result"]["rows"] == _count(conn, "(SELECT DISTINCT sub_region FROM "
                                                 "public.us_states) AS r")


def test_without_a_second_connection_the_job_fingerprints_in_its_own(db_url, conn):
    """The database takes no connection beyond the worker's two (control, job): the side
    connection fails, and the job reads the fingerprint in its own transaction after the
    handler, says why, and completes."""
    [(name, used)] = conn.execute("SELECT current_database(), count(*) FROM pg_stat_activity "
                                  "WHERE datname = current_database()").fetchall()
    conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
        sql.Identifier(name), sql.Literal(used + 2)))
    job_id = queue.enqueue(conn, "dissolve", DISSOLVE)
    run = run_worker(as_role(db_url), "dissolve")
    job = job_row(conn, job_id)
    assert job["status"] == "completed", (job["error"], run.stderr)
    [source] = job["result"]["provenance"]["inputs"]
    assert source["as_of"] == provenance.AFTER_HANDLER
    assert "too many connections" in source["note"], source
    assert (source["rows"], source["signature"]) == _plain_fingerprint(conn, "public.us_states")


class _Inputs(JobParams):
    """Parameters naming two input tables, for the tests that drive the side connection."""

    input_table: InputTable
    near_table: InputTable


@pytest.mark.parametrize("how", ["held", "queued"])
def test_a_side_waiting_for_the_jobs_own_lock_gives_way(db_url, conn, how):
    """The job's transaction holds a lock the side's read of an input waits for: itself
    (``held``: ACCESS EXCLUSIVE) or through another session whose ACCESS EXCLUSIVE request is
    queued behind the job's read (``queued``). The job, waiting for the side, would wait for
    ever; instead the side gives way and the job fingerprints in its own transaction."""
    conn.execute("CREATE TABLE public.locked AS SELECT * FROM public.nc_counties")
    params = _Inputs(input_table="public.us_states", near_table="public.locked")
    side = provenance.SideConnection(db_url)
    other: threading.Thread | None = None
    with psycopg.connect(db_url, autocommit=True) as job, \
            psycopg.connect(db_url, autocommit=True) as third:
        job.execute("BEGIN")
        if how == "held":
            job.execute("LOCK TABLE public.locked IN ACCESS EXCLUSIVE MODE")
        else:
            job.execute("SELECT count(*) FROM public.locked")  # ACCESS SHARE until the end
            other = threading.Thread(target=third.execute,
                                     args=("BEGIN; LOCK TABLE public.locked IN ACCESS EXCLUSIVE MODE; "
                                           "COMMIT",))
            other.start()
            wait_for(lambda: conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock' "
                "AND relation = 'public.locked'::regclass").fetchone() == (1,))
        run = side.start(job, params)
        assert run is not None
        started = time.monotonic()
        inputs = run.collect(job)
        waited = time.monotonic() - started
        job.execute("ROLLBACK")
        if other is not None:
            other.join(timeout=30)
    assert waited < 10, waited  # half-second checks, a cancel, a fingerprint of 100 rows
    states, locked = inputs
    assert states["as_of"] == provenance.AT_START and states["rows"] == 48
    assert locked["as_of"] == provenance.AFTER_HANDLER and locked["rows"] == 100
    assert "lock the job's transaction holds" in locked["note"]
    assert (locked["rows"], locked["signature"]) == _plain_fingerprint(conn, "public.locked")


def test_a_failed_job_does_not_wait_for_its_fingerprint(db_url, conn):
    """A job that fails at once on an input whose fingerprint takes 10 s: it fails in far less,
    and the side's query is cancelled (no session of the worker reads the input any more)."""
    conn.execute("CREATE VIEW public.very_slow AS SELECT s.*, pg_sleep(0.2) IS NULL AS nap "
                 "FROM public.us_states AS s")
    conn.execute("GRANT SELECT ON public.very_slow TO geojobs_worker")
    job_id = queue.enqueue(conn, "dissolve", {"input_table": "public.very_slow",
                                              "by": ["no_such_column"]}, max_attempts=1)
    worker = start_worker(as_role(db_url), "dissolve")
    try:
        wait_for(lambda: job_row(conn, job_id)["status"] == "failed", timeout=120)
        job = job_row(conn, job_id)
        assert "no_such_column" in job["error"]
        assert (job["finished_at"] - job["started_at"]).total_seconds() < 5, job
        assert wait_for(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'geojobs_worker' "
            "AND datname = current_database() AND query LIKE '%%very_slow%%' "
            "AND state = 'active'").fetchone() == (0,), timeout=3)
    finally:
        worker.terminate()
        worker.communicate(timeout=60)


def test_a_side_connection_lost_between_jobs_is_opened_again(db_url, conn):
    """The kept side connection is ended while the worker waits (as by a database restart):
    the next job opens another and still reads its fingerprint beside the handler."""
    first = queue.enqueue(conn, "dissolve", {**DISSOLVE, "overwrite": True})
    worker = start_worker(as_role(db_url), "dissolve")
    try:
        wait_for(lambda: job_row(conn, first)["status"] == "completed", timeout=120)
        ended = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND application_name = %s",
                             (provenance.APPLICATION_NAME,)).fetchone()
        assert ended == (1,)
        second = queue.enqueue(conn, "dissolve", {**DISSOLVE, "overwrite": True})
        wait_for(lambda: job_row(conn, second)["status"] == "completed", timeout=120)
    finally:
        worker.terminate()
        worker.communicate(timeout=60)
    a, b = (job_row(conn, j)["result"]["provenance"]["inputs"][0] for j in (first, second))
    assert a["as_of"] == b["as_of"] == provenance.AT_START, b
    assert a == b
