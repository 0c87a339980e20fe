"""Dependencies between jobs and pipelines: real PostGIS, real worker processes, the real CLI.

The oracle of the three-step pipeline is the same three jobs submitted and run by hand; of the
cascades, the rule of docs/jobs.md worked by hand (which job ends how, with which error).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql

from geojobs import pipelines, queue
from geojobs.client import Jobs
from geojobs.errors import GeojobsError, InvalidParams, JobFailed
from tests.support import (
    FRONTEND_ROLE,
    ROOT,
    as_role,
    job_row,
    run_worker,
    start_worker,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.db

SEED = 7
CUT = {"input_table": "public.nc_counties", "clip_table": "public.us_states",
       "clip_filter": [{"column": "state_name", "op": "=", "value": "North Carolina"}]}
SPOTS = {"value_column": "sid74", "weights": {"type": "queen"}, "permutations": 99, "seed": SEED}
HOT = {"filter": [{"column": "gi_bin", "op": ">=", "value": 1}]}


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geojobs.cli", *args], env=worker_env(db_url),
                          cwd=ROOT, text=True, capture_output=True, timeout=60)


def _rows(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    schema, name = table.split(".")
    query = sql.SQL("SELECT name, round(gi_zscore::numeric, 9), gi_bin, "
                    "round(ST_Area(geom)::numeric, 6) FROM {} ORDER BY name").format(
        sql.Identifier(schema, name))
    return conn.execute(query).fetchall()


def test_three_step_pipeline_equals_the_steps_run_by_hand(db_url, conn, tmp_path):
    """clip -> hotspot -> create_view, submitted as YAML with --set, equals the same jobs by hand."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: nc hot spots\nsteps:\n"
        f"  - {{name: cut, job_type: clip, params: {json.dumps(CUT)}}}\n"
        "  - name: spots\n    job_type: hotspot\n"
        f"    params: {json.dumps({**SPOTS, 'input_table': {'output_of': 'cut'}, 'seed': 1})}\n"
        "  - name: hot\n    job_type: create_view\n"
        f"    params: {json.dumps({**HOT, 'input_table': {'output_of': 'spots'}})}\n")
    out = _cli(db_url, "pipeline", "submit", str(spec), "--set", f"spots.seed={SEED}",
               "--set", "hot.view_name=results.nc_hot_pipeline")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    pipeline_id = int(lines[1])
    ids = dict(zip(lines[2::2], map(int, lines[3::2]), strict=True))
    assert list(ids) == ["cut", "spots", "hot"]
    assert [job_row(conn, i)["status"] for i in ids.values()] == ["queued", "waiting", "waiting"]
    assert job_row(conn, ids["hot"])["depends_on"] == [ids["spots"]]

    # By hand: the same three jobs, each submitted once the previous one has completed.
    by_hand = {}
    by_hand["cut"] = queue.enqueue(conn, "clip", {**CUT, "output_table": "results.hand_cut"})
    for job_type in ("clip", "hotspot", "create_view"):
        assert run_worker(db_url, job_type).returncode == 0
    by_hand["spots"] = queue.enqueue(conn, "hotspot", {**SPOTS, "input_table": "results.hand_cut",
                                                       "output_table": "results.hand_spots"})
    assert run_worker(db_url, "hotspot").returncode == 0
    by_hand["hot"] = queue.enqueue(conn, "create_view", {**HOT, "input_table": "results.hand_spots",
                                                         "view_name": "results.nc_hot_hand"})
    assert run_worker(db_url, "create_view").returncode == 0

    for step, job_id in ids.items():
        row = job_row(conn, job_id)
        assert row["status"] == "completed", (step, row["error"])
        assert job_row(conn, by_hand[step])["status"] == "completed"
    spots = job_row(conn, ids["spots"])
    cut_table = job_row(conn, ids["cut"])["result"]["output_table"]
    assert spots["params"]["input_table"] == {"output_of": ids["cut"]}  # stored as submitted
    assert job_row(conn, ids["spots"])["started_at"] >= job_row(conn, ids["cut"])["finished_at"]
    ours = _rows(conn, "results.nc_hot_pipeline")
    assert ours and ours == _rows(conn, "results.nc_hot_hand")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(*cut_table.split(".")))).fetchone()[0] == 100

    shown = _cli(db_url, "pipeline", "show", str(pipeline_id))
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"pipeline \d+ 'nc hot spots': completed", shown.stdout)
    assert re.search(r"└─ spots: job \d+ hotspot completed", shown.stdout)
    assert re.search(r"   └─ hot: job \d+ create_view completed", shown.stdout)

    # Re-run from spots with another seed: cut is reused, spots and hot run again.
    out = _cli(db_url, "pipeline", "rerun", str(pipeline_id), "--from", "spots",
               "--set", "spots.permutations=199")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    rerun_id, new = int(lines[1]), dict(zip(lines[2::2], map(int, lines[3::2]), strict=True))
    assert list(new) == ["spots", "hot"]
    assert job_row(conn, new["spots"])["depends_on"] == [ids["cut"]]
    for job_type in ("hotspot", "create_view"):
        assert run_worker(db_url, job_type).returncode == 0
    run = pipelines.show(conn, rerun_id)
    assert run["replaces"] == pipeline_id and run["rerun_from"] == "spots"
    assert run["status"] == "completed", [s["error"] for s in run["steps"]]
    assert [(s["step"], s["reused"]) for s in run["steps"]] == [
        ("cut", True), ("spots", False), ("hot", False)]
    assert job_row(conn, new["spots"])["params"]["permutations"] == 199
    assert job_row(conn, new["hot"])["params"]["overwrite"] is True  # replaces the run it replaces


def test_failure_in_the_middle_fails_downstream_at_once_and_a_retry_lets_it_run(db_url, conn):
    """first (noop) -> middle (create_view of a missing table) -> last (noop, after middle)."""
    pipeline_id, ids = pipelines.submit(conn, {"steps": [
        {"name": "first", "job_type": "noop"},
        {"name": "middle", "job_type": "create_view", "after": ["first"],
         "params": {"input_table": "public.later", "view_name": "results.later_view"}},
        {"name": "last", "job_type": "noop", "after": ["middle"]}]})
    assert run_worker(db_url, "noop").returncode == 0
    assert run_worker(db_url, "create_view").returncode == 0
    middle, last = job_row(conn, ids["middle"]), job_row(conn, ids["last"])
    assert job_row(conn, ids["first"])["status"] == "completed"
    assert middle["status"] == "failed" and middle["error"].startswith("input_table")
    assert last["status"] == "failed"
    assert last["error"] == f"dependency {ids['middle']} failed: {middle['error']}"
    assert last["started_at"] is None and last["attempts"] == 0  # never ran
    assert pipelines.show(conn, pipeline_id)["status"] == "failed"

    # A retry of the downstream step alone is refused while its dependency is failed.
    with pytest.raises(GeojobsError, match=f"dependency {ids['middle']} is failed"):
        queue.retry(conn, ids["last"])

    conn.execute("CREATE TABLE public.later AS SELECT fid, name, geom FROM public.nc_counties")
    out = _cli(db_url, "jobs", "retry", str(ids["middle"]))
    assert out.returncode == 0, out.stderr
    assert job_row(conn, ids["last"])["status"] == "waiting"
    assert job_row(conn, ids["last"])["error"] is None
    assert run_worker(db_url, "create_view").returncode == 0
    assert job_row(conn, ids["last"])["status"] == "queued"
    assert run_worker(db_url, "noop").returncode == 0
    assert pipelines.show(conn, pipeline_id)["status"] == "completed"


def test_cancel_cascades(db_url, conn):
    """Cancelling a pipeline cancels every unfinished step; cancelling one job fails its
    dependents (and theirs) at once, naming it."""
    pipeline_id, ids = pipelines.submit(conn, {"steps": [
        {"name": "a", "job_type": "noop"},
        {"name": "b", "job_type": "noop", "after": ["a"]},
        {"name": "c", "job_type": "noop", "after": ["b"]}]})
    assert run_worker(db_url, "noop", "--once").returncode == 0  # a completes, b is queued
    out = _cli(db_url, "pipeline", "cancel", str(pipeline_id))
    assert out.returncode == 0, out.stderr
    assert [job_row(conn, i)["status"] for i in ids.values()] == ["completed", "cancelled",
                                                                 "cancelled"]
    assert pipelines.show(conn, pipeline_id)["status"] == "cancelled"

    a = queue.enqueue(conn, "noop", {})
    b = queue.enqueue(conn, "noop", {}, depends_on=[a])
    c = queue.enqueue(conn, "noop", {}, depends_on=[a, b])
    assert queue.cancel(conn, a)
    assert job_row(conn, b)["error"] == f"dependency {a} failed: cancelled by request"
    assert job_row(conn, c)["status"] == "failed"
    assert job_row(conn, c)["error"].startswith(f"dependency {a} failed: ")
    # A job submitted on a dependency that already failed fails at once.
    d = queue.enqueue(conn, "noop", {}, depends_on=[c])
    assert job_row(conn, d)["status"] == "failed"
    assert job_row(conn, d)["error"].startswith(f"dependency {c} failed: dependency {a}")


def _counts(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    return conn.execute("SELECT (SELECT count(*) FROM background_jobs), "
                        "(SELECT count(*) FROM pipelines)").fetchone()


@pytest.mark.parametrize("depends_on, params, message", [
    ([123456], {}, "depends_on: job 123456 does not exist"),
    (None, {"x": {"output_of": "JOB"}}, "params.x: output_of job JOB is not among depends_on"),
    (["JOB"], {"a": [{"output_of": 123456}]}, r"params.a\[0\]: output_of job 123456 is not among"),
    (["JOB"], {"x": {"output_of": "cut"}}, "params.x: output_of must be a job id"),
])
def test_bad_dependencies_are_refused_by_the_database(conn, depends_on, params, message):
    """The insert trigger's checks apply to any front end that inserts rows."""
    job = queue.enqueue(conn, "noop", {})
    fill = json.loads(json.dumps(params).replace('"JOB"', str(job)))
    deps = [job if d == "JOB" else d for d in depends_on] if depends_on else None
    before = _counts(conn)
    with pytest.raises(psycopg.errors.DataError, match=message.replace("JOB", str(job))):
        queue.enqueue(conn, "noop", fill, depends_on=deps)
    assert _counts(conn) == before


def test_a_job_cannot_depend_on_itself_or_on_another_submitters_job(db_url, conn):
    own = conn.execute("SELECT nextval(pg_get_serial_sequence('background_jobs', 'id'))").fetchone()
    with pytest.raises(psycopg.errors.DataError, match="cannot depend on itself"):
        conn.execute("INSERT INTO background_jobs (id, job_type, depends_on) OVERRIDING SYSTEM "
                     "VALUE VALUES (%s, 'noop', %s)", (own[0], [own[0]]))
    admins_job = queue.enqueue(conn, "noop", {})  # submitted by the superuser running the tests
    before = _counts(conn)
    with psycopg.connect(as_role(db_url, FRONTEND_ROLE), autocommit=True) as front:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match=f"depends_on: job {admins_job} belongs to another submitter"):
            front.execute("INSERT INTO background_jobs (job_type, depends_on) VALUES ('noop', %s)",
                          ([admins_job],))
        own_id = front.execute("INSERT INTO background_jobs (job_type) VALUES ('noop') "
                               "RETURNING id").fetchone()[0]
        mine = front.execute("INSERT INTO background_jobs (job_type, depends_on) VALUES "
                             "('noop', %s) RETURNING id, status", ([own_id],)).fetchone()
        assert mine[1] == "waiting"
    # The superuser (an admin) may depend on the front end's job.
    assert job_row(conn, queue.enqueue(conn, "noop", {}, depends_on=[own_id]))["status"] == "waiting"
    assert _counts(conn)[0] == before[0] + 3


def _running_job(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("INSERT INTO background_jobs (job_type, status, attempts, started_at) "
                       "VALUES ('noop', 'running', 1, now()) RETURNING id").fetchone()
    return int(row[0])


def _has_dependents(conn: psycopg.Connection[Any], job_id: int) -> bool:
    row = conn.execute("SELECT has_dependents FROM background_jobs WHERE id = %s", (job_id,))
    return bool(row.fetchone()[0])


@pytest.mark.parametrize("first", ["completion", "insert"])
def test_a_dependency_completing_while_its_dependent_is_inserted(db_url, conn, first):
    """The dependent of a job that completes at the same instant is never left waiting: when the
    completion commits first, the insert sees it completed (queued); when the insert commits
    first, the completion sees that the job now has a dependent and promotes it."""
    parent = _running_job(conn)
    assert not _has_dependents(conn, parent)
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as other:
        if first == "completion":
            holder.execute("UPDATE background_jobs SET status = 'completed', finished_at = now() "
                           "WHERE id = %s", (parent,))
            late = "INSERT INTO background_jobs (job_type, depends_on) VALUES ('noop', %s) RETURNING id"
            args: tuple[Any, ...] = ([parent],)
        else:
            child = holder.execute("INSERT INTO background_jobs (job_type, depends_on) VALUES "
                                   "('noop', %s) RETURNING id", ([parent],)).fetchone()[0]
            late = ("UPDATE background_jobs SET status = 'completed', finished_at = now() "
                    "WHERE id = %s RETURNING id")
            args = (parent,)
        pool = ThreadPoolExecutor(1)
        waiting = pool.submit(lambda: other.execute(late, args).fetchone()[0])
        time.sleep(0.3)
        assert not waiting.done()  # held by the other transaction's row lock
        holder.commit()
        if first == "completion":
            child = waiting.result(timeout=10)
        else:
            waiting.result(timeout=10)
        pool.shutdown()
    assert job_row(conn, parent)["status"] == "completed"
    assert _has_dependents(conn, parent)
    assert job_row(conn, child)["status"] == "queued"


def _steps(n: int) -> list[dict[str, Any]]:
    return [{"name": f"s{i}", "job_type": "noop", **({"after": [f"s{i - 1}"]} if i else {})}
            for i in range(n)]


@pytest.mark.parametrize("spec, message", [
    ({"steps": [{"name": "a", "job_type": "noop"}, {"name": "a", "job_type": "noop"}]},
     r"steps\[1\].name: step 'a' is used twice"),
    ({"steps": [{"name": "a", "job_type": "noop", "after": ["b"]},
                {"name": "b", "job_type": "noop", "after": ["a"]}]},
     "steps: cycle between steps a -> b -> a"),
    ({"steps": [{"name": "a", "job_type": "noop", "after": ["a"]}]}, "cannot depend on itself"),
    ({"steps": [{"name": "a", "job_type": "dissolve",
                 "params": {"input_table": {"output_of": "nope"}}}]},
     r"steps\[0\] \(a\).params: output_of 'nope' is not a step"),
    ({"steps": [{"name": "a", "job_type": "dissolve", "params": {"input_table": {"x": 1}}}]},
     r"steps\[0\] \(a\).params.input_table"),
    ({"steps": [{"name": "a", "job_type": "nope"}]}, r"steps\[0\] \(a\).job_type: unknown"),
    ({"steps": _steps(10_000)}, "steps: a pipeline has at most 1000 steps, this one has 10000"),
    ({"steps": []}, "steps: List should have at least 1 item"),
])
def test_bad_specs_insert_nothing(conn, spec, message):
    before = _counts(conn)
    with pytest.raises(InvalidParams, match=message):
        pipelines.submit(conn, spec)
    assert _counts(conn) == before


def test_bad_spec_files_and_sets_are_named(db_url, conn, tmp_path):
    bad = tmp_path / "spec.toml"
    bad.write_text("x")
    out = _cli(db_url, "pipeline", "submit", str(bad))
    assert out.returncode == 2 and "extension must be .json, .yaml or .yml" in out.stderr
    assert _counts(conn) == (0, 0)


@pytest.mark.parametrize("item, message", [
    ("zz.sleep_seconds=1", "--set 'zz.sleep_seconds=1': bad key 'zz.sleep_seconds': no step named 'zz'"),
    ("s1=1", "--set 's1=1': bad key 's1': must be step.key=value"),
    ("s1.sleep_seconds", "--set 's1.sleep_seconds': bad key 's1.sleep_seconds': must be key=value"),
    ("s1..x=1", "--set 's1..x=1': bad key 's1..x': must be key=value"),
    ("s1.raise_error.x=1",
     "--set 's1.raise_error.x=1': bad key 's1.raise_error.x': params.raise_error is not an object"),
])
def test_bad_sets_name_the_key_as_rerun_does(db_url, conn, tmp_path, item, message):
    """``pipeline submit --set`` is parsed as ``jobs rerun --set`` is (tests/test_provenance.py):
    the same wording, naming the key; a value on the way that is not an object is refused."""
    good = tmp_path / "spec.json"
    good.write_text(json.dumps({"steps": [*_steps(1), {"name": "s1", "job_type": "noop",
                                                        "params": {"raise_error": "boom"}}]}))
    out = _cli(db_url, "pipeline", "submit", str(good), "--set", item)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert _counts(conn) == (0, 0)


def test_soak_pipelines_with_worker_kills(db_url, conn):
    """Chains of sleeping noop jobs, three workers, two killed with SIGKILL mid-run: every job
    completes, none completes twice, none starts before its dependencies completed."""
    runs = []
    for p in range(4):
        _, ids = pipelines.submit(conn, {"name": f"chain {p}", "steps": [
            {"name": f"s{i}", "job_type": "noop", "params": {"sleep_seconds": 0.3, "steps": 3},
             **({"after": [f"s{i - 1}"]} if i else {})} for i in range(4)]})
        runs.extend(ids.values())
    settings = {"GEOJOBS_LEASE_SECONDS": "2", "GEOJOBS_HEARTBEAT_SECONDS": "0.3"}
    procs = [start_worker(db_url, "noop", **settings) for _ in range(3)]
    logs: list[str] = []
    try:
        for victim in procs[:2]:
            wait_for(lambda: conn.execute(
                "SELECT count(*) FROM background_jobs WHERE status = 'completed'").fetchone()[0] >= 3)
            time.sleep(0.15)  # mid-sleep of a job
            victim.send_signal(signal.SIGKILL)
            procs.append(start_worker(db_url, "noop", **settings))
        wait_for(lambda: conn.execute(
            "SELECT count(*) FROM background_jobs WHERE status <> 'completed'").fetchone()[0] == 0,
            timeout=90)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, err = proc.communicate(timeout=30)
            logs.append(err)
    completed = re.findall(r"job (\d+) noop attempt \d+/\d+ completed", "\n".join(logs))
    # 0 lost: every step completed (waited for above); 0 twice: no job's completion logged twice.
    # A worker killed between its job process's commit and its own log line logs nothing for
    # that job, so the logs may hold fewer completions than there are jobs, never more.
    assert len(completed) == len(set(completed)) and set(map(int, completed)) <= set(runs)
    assert len(completed) >= len(runs) - 2  # at most one unlogged completion per killed worker
    early = conn.execute(
        "SELECT j.id FROM background_jobs AS j JOIN background_jobs AS d "
        "ON d.id = ANY (j.depends_on) WHERE j.started_at < d.finished_at").fetchall()
    assert early == []


def test_client_submits_and_waits_for_a_pipeline(db_url, conn):
    """geojobs.client: submit_pipeline, wait, frame of the last step; cancel as the front end."""
    with Jobs(db_url) as jobs:
        pipeline = jobs.submit_pipeline({"steps": [
            {"name": "cut", "job_type": "clip", "params": CUT},
            {"name": "whole", "job_type": "dissolve",
             "params": {"input_table": {"output_of": "cut"}}}]})
        workers = [start_worker(db_url, t) for t in ("clip", "dissolve")]
        try:
            frame = pipeline.wait(timeout=120).frame()
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
        area = conn.execute(  # the oracle: the same clip and dissolve in PostGIS
            "SELECT ST_Area(ST_Intersection(ST_Union(c.geom), ST_Transform(s.geom, 4267))) "
            "FROM public.nc_counties AS c, public.us_states AS s "
            "WHERE s.state_name = 'North Carolina' GROUP BY s.geom").fetchone()[0]
        assert len(frame) == 1 and abs(frame.geometry.area.iloc[0] - area) < 1e-6 * area
        assert "whole: job" in pipeline.show()

        failing = jobs.submit_pipeline({"steps": [
            {"name": "a", "job_type": "noop", "params": {"raise_error": "boom"}, "max_attempts": 1},
            {"name": "b", "job_type": "noop", "after": ["a"]}]})
        assert run_worker(db_url, "noop").returncode == 0
        with pytest.raises(JobFailed, match="boom"):
            failing.wait(timeout=30)
    with Jobs(as_role(db_url, FRONTEND_ROLE)) as jobs:
        waiting = jobs.submit_pipeline({"steps": _steps(3)})
        assert sorted(waiting.cancel()) == sorted(j.id for j in waiting.steps.values())
