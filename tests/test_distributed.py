"""One job spread over a real Dask cluster (``distributed.LocalCluster``, 2 worker processes).

Each job type runs twice on the same seeded input, by the same real worker process: once in
the worker (no scheduler) and once partitioned on the cluster (``scheduler`` in its params,
``GEOJOBS_DASK_MIN_ROWS`` set low). The two result tables must hold the same rows: equal
attributes and geometry types, area and length equal to 1e-9 relative. Then the bad cases: a
scheduler that does not answer, a Dask worker killed mid-job, a cancel mid-job.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import geopandas as gpd
import numpy as np
import psycopg
import pytest
from psycopg import sql
from shapely.geometry import Point, box

from geojobs import queue, staging
from geojobs.layers import write_layer
from tests.support import job_row, run_worker, start_worker, wait_for

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.db, pytest.mark.timeout(600)]

SRID = 26916  # UTM 16N: planar metres
SMALL = {"GEOJOBS_DASK_MIN_ROWS": "100", "GEOJOBS_DASK_PARTITION_ROWS": "400"}


class _Cluster:
    """A LocalCluster whose workers have imported the partition tasks' code, as the systemd
    unit's ``--preload geojobs.distributed`` does."""

    def __init__(self, n: int) -> None:
        self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                                processes=True, host="127.0.0.1",
                                                dashboard_address=None, silence_logs=40)
        with distributed.Client(self.cluster) as client:
            client.run(importlib.import_module, "geojobs.distributed")

    def __enter__(self) -> Any:
        return self.cluster

    def __exit__(self, *exc: object) -> None:
        self.cluster.close()


def _cluster(n: int = 2) -> _Cluster:
    return _Cluster(n)


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with _cluster() as cluster:
        yield str(cluster.scheduler_address)


def _load(conn: psycopg.Connection[Any], n_points: int = 3000) -> None:
    """Seeded layers: points with attributes, clip blobs, near squares, a grid of parcels."""
    rng = np.random.default_rng(19)
    xy = rng.uniform(0, 10_000, (n_points, 2))
    points = gpd.GeoDataFrame(
        {"pid": np.arange(n_points), "name": [f"p{i}" for i in range(n_points)],
         "val": rng.normal(10, 3, n_points)},
        geometry=[Point(x, y) for x, y in xy], crs=SRID)
    # a few lie on the same spot, one has no geometry
    points.loc[5, "geometry"] = points.geometry[4]
    points.loc[7, "geometry"] = None
    blobs = gpd.GeoDataFrame(
        {"kind": [f"k{i % 3}" for i in range(25)]},
        geometry=[Point(x, y).buffer(r, 8) for (x, y), r in
                  zip(rng.uniform(0, 10_000, (25, 2)), rng.uniform(300, 1500, 25), strict=True)],
        crs=SRID)
    near = gpd.GeoDataFrame(
        {"nid": np.arange(300)},
        geometry=[box(x, y, x + 40, y + 25) for x, y in rng.uniform(0, 10_000, (300, 2))],
        crs=SRID)
    parcels, groups, values = [], [], []
    for i in range(40):
        for j in range(40):
            parcels.append(box(i * 250, j * 250, (i + 1) * 250, (j + 1) * 250))
            groups.append(f"g{(i // 10) * 4 + j // 10}" if (i + j) % 17 else None)
            values.append(float(rng.integers(0, 100)))
    parcel = gpd.GeoDataFrame({"grp": groups, "v": values, "w": np.arange(1600) % 7},
                              geometry=parcels, crs=SRID)
    with conn.transaction():
        write_layer(conn, points, "public.pts", srid=SRID, geometry_type="Point")
        write_layer(conn, blobs, "public.blobs", srid=SRID, geometry_type="Polygon")
        write_layer(conn, near, "public.near_boxes", srid=SRID, geometry_type="Polygon")
        write_layer(conn, parcel, "public.parcels", srid=SRID, geometry_type="Polygon")


def _rows(conn: psycopg.Connection[Any], table: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """Columns (name, type; geometry columns with their typmod) and rows, geometries as
    (type, parts, area, length), sorted."""
    schema, name = table.split(".")
    cols = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", (table,)).fetchall()
    cols = cols[1:]  # the result's own key (fid, or fid_1 when the input has a fid)
    select = []
    for column, typ in cols:
        ident = sql.Identifier(column)
        if typ.startswith("geometry"):
            select += [sql.SQL("GeometryType({})").format(ident),
                       sql.SQL("ST_NumGeometries({})").format(ident),
                       sql.SQL("ST_Area({})").format(ident), sql.SQL("ST_Length({})").format(ident)]
        else:
            select.append(ident)
    rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(select), sql.Identifier(schema, name))).fetchall()
    return cols, sorted(rows, key=lambda r: tuple((v is None, str(v) if not isinstance(v, float)
                                                    else round(v, 3)) for v in r))


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, float) and isinstance(y, float):
            if math.isnan(x) and math.isnan(y):
                continue
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def _assert_equal_tables(conn: psycopg.Connection[Any], single: str, spread: str) -> int:
    cols_a, rows_a = _rows(conn, single)
    cols_b, rows_b = _rows(conn, spread)
    assert cols_a == cols_b
    assert len(rows_a) == len(rows_b)
    bad = [(a, b) for a, b in zip(rows_a, rows_b, strict=True) if not _same(a, b)]
    assert not bad, bad[:3]
    return len(rows_a)


def _pairs(db_url: str, conn: psycopg.Connection[Any], job_type: str,
           cases: list[dict[str, Any]], scheduler: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Run each params in the worker and on the cluster (one worker process drains them all);
    the job rows, in pairs. Case ``i`` writes results.<type>_one_<i> and results.<type>_dask_<i>."""
    ids = []
    for i, params in enumerate(cases):
        ids.append((
            queue.enqueue(conn, job_type, {**params, "output_table": f"results.{job_type}_one_{i}"}),
            queue.enqueue(conn, job_type, {**params, "output_table": f"results.{job_type}_dask_{i}",
                                           "scheduler": scheduler})))
    done = run_worker(db_url, job_type, timeout=900, **SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    pairs = []
    for single_id, spread_id in ids:
        rows = job_row(conn, single_id), job_row(conn, spread_id)
        for row in rows:
            assert row["status"] == "completed", (row["error"], done.stderr[-3000:])
        assert "dask" not in rows[0]["result"]
        assert rows[1]["result"]["dask"]["partitions"] >= 4
        assert rows[1]["result"]["dask"]["workers"] == 2
        pairs.append(rows)
    assert staging.all_parts(conn) == []
    return pairs


def _pair(db_url: str, conn: psycopg.Connection[Any], job_type: str, params: dict[str, Any],
          scheduler: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return _pairs(db_url, conn, job_type, [params], scheduler)[0]


@pytest.fixture
def data(db_url: str, conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    _load(conn)
    return conn


@pytest.mark.timeout(1800)
def test_clip_and_erase_equal_the_single_process(db_url: str, data: psycopg.Connection[Any],
                                                 scheduler: str) -> None:
    for job_type, other in (("clip", "clip_table"), ("erase", "erase_table")):
        sources = ("public.pts", "public.parcels")
        pairs = _pairs(db_url, data, job_type, [{"input_table": source, other: "public.blobs"}
                                                for source in sources], scheduler)
        for i, (single, spread) in enumerate(pairs):
            rows = _assert_equal_tables(data, f"results.{job_type}_one_{i}",
                                        f"results.{job_type}_dask_{i}")
            assert rows > 100
            for key in ("input_features", "output_features", "overlaid", "copied_whole",
                        "skipped_null", "overlay_features"):
                assert single["result"][key] == spread["result"][key], key


@pytest.mark.timeout(1200)
def test_nearest_equals_the_single_process(db_url: str, data: psycopg.Connection[Any],
                                           scheduler: str) -> None:
    single, spread = _pair(db_url, data, "nearest",
                           {"input_table": "public.pts", "near_table": "public.near_boxes",
                            "k": 3, "lines": True}, scheduler)
    rows = _assert_equal_tables(data, "results.nearest_one_0", "results.nearest_dask_0")
    assert rows == 3 * 2999 + 1  # the point without geometry keeps one row of nulls
    for key in ("input_features", "without_neighbour", "max_near_dist"):
        assert single["result"][key] == spread["result"][key], key


@pytest.mark.timeout(1200)
def test_dissolve_equals_the_single_process(db_url: str, data: psycopg.Connection[Any],
                                            scheduler: str) -> None:
    data.execute("ALTER TABLE public.parcels ADD COLUMN pid_min int")
    data.execute("UPDATE public.parcels SET pid_min = fid * 3 % 101")
    aggregates = {"v": "mean", "w": "sum", "pid_min": "min", "grp": "count"}
    single, spread = _pair(db_url, data, "dissolve",
                           {"input_table": "public.parcels", "by": ["grp"],
                            "aggregates": aggregates | {"fid": "first"}}, scheduler)
    assert _assert_equal_tables(data, "results.dissolve_one_0", "results.dissolve_dask_0") == 17
    assert single["result"]["groups"] == spread["result"]["groups"] == 17
    # one huge group: the tiles' unions merged at the end
    _pair(db_url, data, "dissolve", {"input_table": "public.parcels", "overwrite": True,
                                     "aggregates": {"v": "max", "fid": "first"}}, scheduler)
    assert _assert_equal_tables(data, "results.dissolve_one_0", "results.dissolve_dask_0") == 1
    area = data.execute("SELECT ST_Area(geom) FROM results.dissolve_dask_0").fetchone()
    assert area is not None and math.isclose(area[0], 10_000.0 ** 2, rel_tol=1e-12)


@pytest.mark.timeout(1200)
def test_hotspot_on_incidents_equals_the_single_process(
        db_url: str, data: psycopg.Connection[Any], scheduler: str) -> None:
    for shape in ("square", "hexagon"):
        single, spread = _pair(db_url, data, "hotspot",
                               {"input_table": "public.pts", "overwrite": True,
                                "grid": {"shape": shape, "cell_size": 700},
                                "permutations": 99}, scheduler)
        assert _assert_equal_tables(data, "results.hotspot_one_0", "results.hotspot_dask_0") > 100
        assert single["result"]["grid"] == spread["result"]["grid"]
        assert single["result"]["counts"] == spread["result"]["counts"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(1200)
def test_a_scheduler_that_does_not_answer_fails_the_job_at_once(
        db_url: str, data: psycopg.Connection[Any]) -> None:
    dead = f"tcp://127.0.0.1:{_free_port()}"
    env_job = queue.enqueue(data, "clip", {"input_table": "public.pts", "clip_table": "public.blobs"})
    done = run_worker(db_url, "clip", GEOJOBS_DASK_SCHEDULER=dead,
                      GEOJOBS_DASK_CONNECT_TIMEOUT="2", **SMALL)
    assert done.returncode == 0
    row = job_row(data, env_job)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["error"].startswith(f"GEOJOBS_DASK_SCHEDULER: the Dask scheduler {dead} does "
                                   "not answer within 2 s")
    # at once: claim to failure is the 2 s connect timeout plus the input's count
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 30
    param_job = queue.enqueue(data, "nearest", {"input_table": "public.pts", "scheduler": dead,
                                                "near_table": "public.near_boxes"})
    run_worker(db_url, "nearest", GEOJOBS_DASK_CONNECT_TIMEOUT="2", **SMALL)
    row = job_row(data, param_job)
    assert row["status"] == "failed" and row["error"].startswith("scheduler: the Dask scheduler")
    assert data.execute("SELECT to_regclass(%s)", (f"results.clip_{env_job}",)).fetchone() == (None,)
    # configured to fall back: the job runs in the worker and says so
    fallback = queue.enqueue(data, "clip", {"input_table": "public.pts",
                                            "clip_table": "public.blobs"})
    run_worker(db_url, "clip", GEOJOBS_DASK_SCHEDULER=dead, GEOJOBS_DASK_FALLBACK="local",
               GEOJOBS_DASK_CONNECT_TIMEOUT="2", **SMALL)
    row = job_row(data, fallback)
    assert row["status"] == "completed"
    assert "dask" not in row["result"]
    assert any("does not answer" in w for w in row["result"]["warnings"])


def _big(conn: psycopg.Connection[Any]) -> None:
    """20,000 points cut into 100 parts: a job that runs for seconds on two workers."""
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 10_000, (20_000, 2))
    pts = gpd.GeoDataFrame({"pid": np.arange(len(xy))}, geometry=[Point(x, y) for x, y in xy],
                           crs=SRID)
    with conn.transaction():
        write_layer(conn, pts, "public.many", srid=SRID, geometry_type="Point")


SLOW = {"GEOJOBS_DASK_MIN_ROWS": "100", "GEOJOBS_DASK_PARTITION_ROWS": "150",
        "GEOJOBS_RETRY_DELAYS": "3"}


def _slow(address: str) -> dict[str, str]:
    """The worker's settings: the scheduler in its environment, so that it imports Dask at
    start (the job's own ``scheduler`` parameter is tested by the equality tests)."""
    return {**SLOW, "GEOJOBS_DASK_SCHEDULER": address}


def _parts(conn: psycopg.Connection[Any], job_id: int) -> list[str]:
    return staging.job_parts(conn, job_id)


def _wait_for_parts(conn: psycopg.Connection[Any], job: int, worker: Any) -> None:
    """Until the running job has written 3 parts (the machine may be loaded: up to 5 min)."""
    deadline = time.monotonic() + 420
    while len(_parts(conn, job)) < 3:
        row = job_row(conn, job)
        if row["status"] not in ("queued", "running") or time.monotonic() > deadline:
            worker.terminate()
            _, err = worker.communicate(timeout=60)
            raise AssertionError(f"job {row['status']} {row['error']} parts "
                                 f"{_parts(conn, job)}\n{err[-4000:]}")
        time.sleep(0.02)


@pytest.mark.timeout(900)
def test_a_dask_worker_killed_mid_job_retries_the_job(db_url: str,
                                                      data: psycopg.Connection[Any]) -> None:
    _big(data)
    expected = data.execute(
        "SELECT count(*) FROM public.many p WHERE EXISTS "
        "(SELECT 1 FROM public.blobs b WHERE ST_Intersects(b.geom, p.geom))").fetchone()
    with _cluster() as cluster, distributed.Client(cluster) as client:
        job = queue.enqueue(data, "clip", {"input_table": "public.many",
                                           "clip_table": "public.blobs"})
        worker = start_worker(db_url, "clip", **_slow(cluster.scheduler_address))
        try:
            _wait_for_parts(data, job, worker)
            pids = client.run(os.getpid)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            row = wait_for(lambda: (r := job_row(data, job))["status"] != "running" and r,
                           timeout=30)
            assert row["status"] == "queued", row
            assert "left the cluster while the job ran" in row["error"]
            # the worker drops the first attempt's parts right after recording the failure,
            # before the retry starts (3 s later)
            wait_for(lambda: not [p for p in _parts(data, job) if p.startswith(f"j{job}_a1_")],
                     timeout=2.5)
            assert job_row(data, job)["attempts"] == 1
            row = wait_for(lambda: (r := job_row(data, job))["status"] in
                           ("completed", "failed") and r, timeout=180)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    assert row["status"] == "completed", row["error"]
    assert row["attempts"] == 2
    assert row["result"]["rows"] == expected[0]  # type: ignore[index]
    assert staging.all_parts(data) == []


@pytest.mark.timeout(900)
def test_cancel_mid_job_drops_the_staging_tables(db_url: str,
                                                 data: psycopg.Connection[Any]) -> None:
    _big(data)
    with _cluster() as cluster, distributed.Client(cluster) as client:
        job = queue.enqueue(data, "clip", {"input_table": "public.many",
                                           "clip_table": "public.blobs"})
        worker = start_worker(db_url, "clip", **_slow(cluster.scheduler_address))
        try:
            _wait_for_parts(data, job, worker)
            assert queue.cancel(data, job)
            wait_for(lambda: _parts(data, job) == [], timeout=15)
            # the job's futures are released on the scheduler; nothing is written after
            wait_for(lambda: client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.tasks)) == 0, timeout=30)
            time.sleep(1.0)
            assert _parts(data, job) == []
            row = job_row(data, job)
            assert row["status"] == "cancelled"
            assert data.execute("SELECT to_regclass(%s)", (f"results.clip_{job}",)).fetchone() == (None,)
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def test_janitor_drops_parts_of_attempts_no_longer_running(conn: psycopg.Connection[Any]) -> None:
    """A job whose last attempt died with its worker (failed by the lease) leaves parts behind:
    the janitor drops them, and keeps those of the attempt that is running."""
    from geojobs.janitor import run_janitor

    dead = queue.enqueue(conn, "noop", {})
    alive = queue.enqueue(conn, "noop", {})
    conn.execute("UPDATE background_jobs SET status = 'failed', attempts = 2 WHERE id = %s", (dead,))
    conn.execute("UPDATE background_jobs SET status = 'running', attempts = 3, "
                 "started_at = now(), heartbeat_at = now() WHERE id = %s", (alive,))
    for job, attempt in ((dead, 2), (alive, 2), (alive, 3)):
        conn.execute(sql.SQL("CREATE TABLE {} (fid bigint)").format(
            sql.Identifier(staging.SCHEMA, staging.part_name(job, attempt, 0))))
    report = run_janitor(conn)
    assert sorted(report.staging_dropped) == sorted([staging.part_name(dead, 2, 0),
                                                     staging.part_name(alive, 2, 0)])
    assert staging.all_parts(conn) == [staging.part_name(alive, 3, 0)]


# -- credentials: no password in the task graph, the logs, the job row ----------------------

SECRET = "s3cret-7f2c91"


class _RunSpecs(distributed.diagnostics.plugin.SchedulerPlugin):
    """Keeps every task as the scheduler hands it to a Dask worker, pickled as it is sent."""

    name = "geojobs-test-run-specs"

    def __init__(self) -> None:
        self.specs: list[bytes] = []

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        task = self.scheduler.tasks.get(key)
        if finish == "processing" and task is not None:
            self.specs.append(distributed.protocol.pickle.dumps(task.run_spec))


def test_no_password_reaches_the_cluster_logs_or_the_job_row(
        db_url: str, data: psycopg.Connection[Any], scheduler: str) -> None:
    """The job's connection has a password (trust authentication ignores it, so the Dask workers
    connect without it): no task, scheduler or worker log line, worker output or job row holds
    it, while the tasks do carry the job's database."""
    job = queue.enqueue(data, "clip", {"input_table": "public.pts", "clip_table": "public.blobs",
                                       "output_table": "results.clip_secret",
                                       "scheduler": scheduler})
    with distributed.Client(scheduler) as client:
        client.register_plugin(_RunSpecs())
        try:
            done = run_worker(f"{db_url} password={SECRET}", "clip", timeout=900, **SMALL)
            specs = client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.plugins[_RunSpecs.name].specs)
            logs = repr(client.get_scheduler_logs()) + repr(client.get_worker_logs())
        finally:
            client.unregister_scheduler_plugin(_RunSpecs.name)
    row = job_row(data, job)
    assert row["status"] == "completed", (row["error"], done.stderr[-3000:])
    assert row["result"]["dask"]["partitions"] >= 4
    assert len(specs) >= 4 and all(data.info.dbname.encode() in s for s in specs
                                   if b"public.pts" in s)
    assert not [s for s in specs if SECRET.encode() in s]
    for text in (logs, done.stdout, done.stderr, repr(dict(row))):
        assert SECRET not in text


def test_task_conninfo_takes_the_password_of_the_same_database_only() -> None:
    """A Dask worker's own DATABASE_URL lends its password only to connections to the same
    host, port, database and user; the public conninfo never has one."""
    from psycopg.conninfo import conninfo_to_dict

    from geojobs.distributed import public_conninfo, task_conninfo

    job = "host=db.example port=5432 dbname=geojobs user=geojobs_worker password=p1 sslpassword=k"
    public = public_conninfo(job)
    assert conninfo_to_dict(public) == {"host": "db.example", "port": "5432",
                                        "dbname": "geojobs", "user": "geojobs_worker"}
    same = {"DATABASE_URL": "postgresql://geojobs_worker:p2@db.example:5432/geojobs"}
    assert conninfo_to_dict(task_conninfo(public, same))["password"] == "p2"
    for other in ("postgresql://geojobs_worker:p2@db.example:5432/elsewhere",
                  "postgresql://someone:p2@db.example:5432/geojobs",
                  "postgresql://geojobs_worker:p2@other.example:5432/geojobs",
                  "postgresql://geojobs_worker@db.example:5432/geojobs", "not a url", ""):
        assert "password" not in conninfo_to_dict(task_conninfo(public, {"DATABASE_URL": other}))
    assert "password" not in conninfo_to_dict(task_conninfo(public, {}))
