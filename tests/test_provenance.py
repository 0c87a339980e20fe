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
from typing import Any

import psycopg
import pytest
import shapely

from geojobs import provenance, queue
from tests.support import ROOT, as_role, job_row, run_worker, worker_env

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
