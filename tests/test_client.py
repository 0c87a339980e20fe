"""geojobs.client against a real PostGIS and real worker processes."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
import shapely
from shapely import wkb

from geojobs import queue
from geojobs.client import Jobs, no_worker_message, stall_message
from geojobs.errors import GeojobsError, InvalidParams, JobCancelled, JobFailed, JobNotFinished
from tests.support import FRONTEND_ROLE, as_role, job_row, run_worker, start_worker, wait_for

pytestmark = pytest.mark.db


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM background_jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_job_events_trigger(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """A status or progress change announces the job id; a heartbeat that changes nothing does not."""
    job_id = queue.enqueue(conn, "noop", {})
    with psycopg.connect(db_url, autocommit=True) as listener:
        queue.listen_job_events(listener)
        claimed = queue.claim(conn, "noop", "w1")
        assert claimed is not None
        assert queue.job_events(listener, timeout=5) == {job_id}
        assert queue.heartbeat(conn, claimed, 0.5)
        assert queue.job_events(listener, timeout=5) == {job_id}
        assert queue.heartbeat(conn, claimed, None)
        assert queue.job_events(listener, timeout=0.5) == set()
        assert queue.complete(conn, claimed, {})
        assert queue.job_events(listener, timeout=5) == {job_id}


def test_submit_wait_result_with_progress(db_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The bar follows the worker's progress to 100 %; wait returns soon after the job completes."""
    with Jobs(db_url, stall_seconds=60) as jobs:
        job = jobs.submit("noop", {"sleep_seconds": 1.5, "steps": 5})
        with pytest.raises(JobNotFinished):
            _ = job.result
        worker = start_worker(db_url, "noop", "--drain")
        try:
            wait_for(lambda: job.status != "queued", timeout=60)  # the worker is registered
            job.wait(progress=True, timeout=60)
            returned = time.time()
        finally:
            worker.communicate(timeout=60)
        result = dict(job.result)
        assert result.pop("provenance")["job_id"] == job.id
        assert result == {"slept": 1.5, "warnings": []}
        finished = job.row["finished_at"].timestamp()
        assert returned - finished < 0.5  # woken by the notification, not by a slow poll
        err = capfd.readouterr().err
        assert f"job {job.id} noop running" in err and "100%" in err
        assert job.messages == []


def test_stall_message_when_no_worker(db_url: str, capfd: pytest.CaptureFixture[str]) -> None:
    """With no worker of the type, wait says so at once from the worker registry, and once more
    after stall_seconds (and not before) that nothing claimed the job; neither is repeated."""
    with Jobs(db_url) as jobs:
        job = jobs.submit("noop", {})
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.6, stall_seconds=1.0)
        at_once = "no noop worker is running: start noop_worker"
        assert job.messages == [at_once] == [no_worker_message("noop")]
        with pytest.raises(TimeoutError):
            job.wait(timeout=3, stall_seconds=1.0)
        assert time.monotonic() - started < 4
        expected = "no noop worker has claimed a job in 1 s: is noop_worker running?"
        assert job.messages == [at_once, expected] and expected == stall_message("noop", 1.0)
        err = capfd.readouterr().err
        assert err.count(expected) == 1 and err.count(at_once) == 1


def test_no_stall_message_while_a_worker_is_busy(db_url: str) -> None:
    """A worker running a long job of the type heartbeats: the job behind it is not reported."""
    with Jobs(db_url) as jobs:
        long = jobs.submit("noop", {"sleep_seconds": 4, "steps": 40})
        worker = start_worker(db_url, "noop", "--drain")
        try:
            wait_for(lambda: long.status == "running", timeout=30)
            second = jobs.submit("noop", {})
            second.wait(stall_seconds=1.0, timeout=60)
        finally:
            worker.communicate(timeout=60)
        assert second.messages == [] and long.wait().result["slept"] == 4


def test_failed_job_raises_with_its_error(db_url: str) -> None:
    with Jobs(db_url) as jobs:
        job = jobs.submit("noop", {"raise_error": "boom at step 1"}, max_attempts=1)
        assert run_worker(db_url, "noop").returncode == 0
        with pytest.raises(JobFailed) as caught:
            job.wait(timeout=30)
        assert isinstance(caught.value, GeojobsError)
        assert caught.value.job_id == job.id and "boom at step 1" in (caught.value.error or "")
        assert "boom at step 1" in str(caught.value)
        with pytest.raises(JobFailed):
            _ = job.result


@pytest.mark.parametrize(("job_type", "params", "field"), [
    ("hotspot", {"input_table": "public.georgia_counties", "value_column": "pctpov",
                 "permutations": -5}, "params.permutations"),
    ("dissolve", {"input_table": "public.us_states", "byy": ["sub_region"]}, "params.byy"),
    ("no_such_type", {}, "job_type"),
])
def test_bad_params_insert_nothing(db_url: str, conn: psycopg.Connection[Any], job_type: str,
                                   params: dict[str, Any], field: str) -> None:
    before = _count(conn)
    with Jobs(db_url) as jobs, pytest.raises(InvalidParams) as caught:
        jobs.submit(job_type, params)
    assert str(caught.value).startswith(f"{field}:")
    assert _count(conn) == before


def test_cancel_running_job_as_frontend_role(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """The client needs only the front end's role: submit, watch, cancel its own job."""
    with Jobs(as_role(db_url, FRONTEND_ROLE)) as jobs:
        job = jobs.submit("noop", {"sleep_seconds": 30, "steps": 300})
        worker = start_worker(db_url, "noop", "--drain")
        try:
            wait_for(lambda: job.status == "running", timeout=30)
            assert job.cancel()
            with pytest.raises(JobCancelled) as caught:
                job.wait(timeout=30)
            assert isinstance(caught.value, JobFailed)
            assert not job.cancel()  # already finished
        finally:
            worker.communicate(timeout=60)
    assert job_row(conn, job.id)["status"] == "cancelled"
    row = conn.execute("SELECT submitted_by FROM background_jobs WHERE id = %s", (job.id,)).fetchone()
    assert row == (FRONTEND_ROLE,)


def test_frame_matches_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    """The GeoDataFrame holds the result table's rows, geometries and SRID as PostGIS has them."""
    with Jobs(db_url) as jobs:
        job = jobs.submit("dissolve", {"input_table": "public.us_states", "by": ["sub_region"],
                                       "output_table": "results.client_regions"})
        assert run_worker(db_url, "dissolve").returncode == 0
        frame = job.wait(timeout=30).frame()
        noop = jobs.submit("noop", {})
        assert run_worker(db_url, "noop").returncode == 0
        with pytest.raises(GeojobsError, match="wrote no result table"):
            noop.wait(timeout=30).frame()
    rows = conn.execute("SELECT sub_region, ST_AsBinary(geom), ST_SRID(geom) "
                        "FROM results.client_regions ORDER BY sub_region").fetchall()
    assert frame.crs is not None and frame.crs.to_epsg() == rows[0][2] == 4326
    frame = frame.sort_values("sub_region").reset_index(drop=True)
    assert list(frame["sub_region"]) == [r[0] for r in rows]
    for geom, row in zip(frame.geometry, rows, strict=True):
        assert shapely.equals_exact(geom, wkb.loads(row[1]), tolerance=0)
