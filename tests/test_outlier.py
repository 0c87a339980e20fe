"""outlier as a job: the result table checked against Local Moran's I computed in PostGIS SQL.

The oracle is independent of esda and libpysal: neighbours from ``ST_Intersects`` (queen) or a
k-nearest ``LATERAL`` query on centroids in the UTM zone, row-standardised, and Anselin's (1995)
I_i = (n - 1) z_i lag(z)_i / sum(z^2), with z standardised by the population deviation.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from geojobs import queue
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db

LOCAL_MORAN_SQL = """
WITH v AS (SELECT fid, {value}::float8 AS x FROM {table} WHERE {value} IS NOT NULL),
g AS (SELECT count(*)::float8 AS n, avg(x) AS mean, stddev_pop(x) AS s FROM v),
z AS (SELECT fid, (x - g.mean) / g.s AS z FROM v, g),
lag AS (SELECT pairs.i, avg(z.z) AS lag FROM pairs JOIN z ON z.fid = pairs.j GROUP BY pairs.i)
SELECT z.fid, (g.n - 1) * z.z * lag.lag / (SELECT sum(z * z) FROM z),
       CASE WHEN z.z > 0 AND lag.lag > 0 THEN 'HH' WHEN z.z > 0 THEN 'HL'
            WHEN lag.lag > 0 THEN 'LH' ELSE 'LL' END
FROM z JOIN lag ON lag.i = z.fid, g
"""


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "outlier", params)
    # numba kernels are compiled before the first claim only when permutations will run
    warm = "1" if params.get("permutations", 999) else "0"
    result = run_worker(db_url, "outlier", GEOJOBS_JIT_WARMUP=warm)
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def _oracle(conn: psycopg.Connection[Any], table: str, value: str, pairs_sql: str,
            **literals: Any) -> dict[int, tuple[float, str]]:
    ident = sql.Identifier(*table.split("."))
    conn.execute(sql.SQL("CREATE TEMP TABLE pairs AS " + pairs_sql).format(  # noqa: S608
        table=ident, **{k: sql.Literal(v) for k, v in literals.items()}))
    rows = conn.execute(sql.SQL(LOCAL_MORAN_SQL).format(
        table=ident, value=sql.Identifier(value))).fetchall()
    conn.execute("DROP TABLE pairs")
    return {int(i): (float(ii), q) for i, ii, q in rows}


def _check(conn: psycopg.Connection[Any], table: str, oracle: dict[int, tuple[float, str]]
           ) -> int:
    rows = conn.execute(sql.SQL("SELECT fid, lmi_index, lmi_pvalue, co_type FROM {}").format(
        sql.Identifier(*table.split(".")))).fetchall()
    assert len(rows) == len(oracle)
    significant = 0
    for fid, index, p, co_type in rows:
        assert index == pytest.approx(oracle[fid][0], abs=1e-9)
        assert co_type == (oracle[fid][1] if p <= 0.05 else None)
        significant += co_type is not None
    return significant


def test_queen_clusters_match_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    # the same job twice, drained by one worker: the seed makes the pseudo p-values repeat
    params = {"input_table": "public.nc_counties", "value_column": "sidr79",
              "permutations": 499}
    first = queue.enqueue(conn, "outlier", {**params, "output_table": "results.lisa"})
    second = queue.enqueue(conn, "outlier", {**params, "output_table": "results.lisa2"})
    assert run_worker(db_url, "outlier").returncode == 0
    row = job_row(conn, first)
    assert row["status"] == "completed", row["error"]
    result = row["result"]
    assert result["weights"]["transform"] == "R" and result["rows"] == 100
    oracle = _oracle(conn, "public.nc_counties", "sidr79",
                     "SELECT a.fid AS i, b.fid AS j FROM {table} a JOIN {table} b "
                     "ON a.fid <> b.fid AND ST_Intersects(a.geom, b.geom)")
    significant = _check(conn, "results.lisa", oracle)
    assert significant == sum(v for k, v in result["counts"].items() if k != "not_significant")
    assert significant > 0
    smallest = conn.execute("SELECT min(lmi_pvalue) FROM results.lisa").fetchone()
    assert smallest is not None and smallest[0] >= 1 / 500
    assert job_row(conn, second)["status"] == "completed"
    differ = conn.execute("SELECT count(*) FROM results.lisa a JOIN results.lisa2 b USING (fid) "
                          "WHERE a.lmi_pvalue <> b.lmi_pvalue").fetchone()
    assert differ == (0,)


def test_geographic_knn_matches_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {"input_table": "public.us_states", "value_column": "area",
                              "weights": {"type": "knn", "k": 4}, "permutations": 0,
                              "output_table": "results.lisa_knn"})
    assert row["status"] == "completed", row["error"]
    crs = row["result"]["crs"]
    assert crs.startswith("EPSG:326")
    utm = int(crs.split(":")[1])
    oracle = _oracle(conn, "public.us_states", "area",
                     "WITH c AS (SELECT fid, ST_Centroid(ST_Transform(geom, {utm})) "
                     "AS p FROM {table}) SELECT a.fid AS i, n.fid AS j FROM c a CROSS JOIN "
                     "LATERAL (SELECT b.fid FROM c b WHERE b.fid <> a.fid "
                     "ORDER BY ST_Distance(a.p, b.p) LIMIT 4) n", utm=utm)
    _check(conn, "results.lisa_knn", oracle)
    geom_srid = conn.execute("SELECT DISTINCT ST_SRID(geom) FROM results.lisa_knn").fetchall()
    assert geom_srid == [(4326,)]  # the features stay in their own CRS


def test_bad_params_fail_at_once_naming_the_field(db_url: str,
                                                  conn: psycopg.Connection[Any]) -> None:
    bad = [({"input_table": "public.nc_counties"}, "params.value_column"),
           ({"input_table": "public.nc_counties", "value_column": "name"}, "value_column"),
           ({"input_table": "public.nc_counties", "value_column": "sidr79",
             "weights": {"transform": "V"}}, "params.weights.transform"),
           ({"input_table": "public.nc_counties", "value_column": "sidr79",
             "grid": {"shape": "square"}}, "params.grid"),
           ({"input_table": "public.nc_counties", "value_column": "sidr79", "seed": -1},
            "params.seed")]
    ids = [queue.enqueue(conn, "outlier", params) for params, _ in bad]
    assert run_worker(db_url, "outlier", GEOJOBS_JIT_WARMUP="0").returncode == 0
    for job_id, (_, field) in zip(ids, bad, strict=True):
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert row["error"].startswith(field), row["error"]
