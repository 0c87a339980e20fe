"""hotspot as a job: the result table checked against Gi* computed in PostGIS SQL.

The oracle is independent of esda and libpysal: neighbours from ``ST_Intersects`` (queen) or
``ST_DWithin`` (distance band), and the Gi* z-score of Ord and Getis (1995) with binary
weights and the feature itself included, written out in SQL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from geojobs import queue
from geojobs.layers import write_layer
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db

# Gi* z for every feature, from a table of (i, j) neighbour pairs and the values x.
GI_STAR_SQL = """
WITH v AS (SELECT fid, {value}::float8 AS x FROM {table} WHERE {value} IS NOT NULL),
g AS (SELECT count(*)::float8 AS n, avg(x) AS mean,
             sqrt(avg(x * x) - avg(x) * avg(x)) AS s FROM v),
star AS (SELECT i, j FROM pairs UNION ALL SELECT fid, fid FROM v),
sums AS (SELECT star.i, sum(v.x) AS lag, count(*)::float8 AS w
         FROM star JOIN v ON v.fid = star.j GROUP BY star.i)
SELECT sums.i, (sums.lag - g.mean * sums.w)
       / (g.s * sqrt((g.n * sums.w - sums.w * sums.w) / (g.n - 1))), sums.w - 1
FROM sums, g ORDER BY sums.i
"""


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "hotspot", params)
    # numba kernels are compiled before the first claim only when permutations will run
    warm = "1" if params.get("permutations", 999) else "0"
    result = run_worker(db_url, "hotspot", GEOJOBS_JIT_WARMUP=warm)
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def _oracle(conn: psycopg.Connection[Any], table: str, value: str, pairs_sql: str,
            **literals: Any) -> dict[int, tuple[float, int]]:
    conn.execute(sql.SQL("CREATE TEMP TABLE pairs AS " + pairs_sql).format(  # noqa: S608
        table=sql.Identifier(*table.split(".")),
        **{k: sql.Literal(v) for k, v in literals.items()}))
    rows = conn.execute(sql.SQL(GI_STAR_SQL).format(
        table=sql.Identifier(*table.split(".")), value=sql.Identifier(value))).fetchall()
    conn.execute("DROP TABLE pairs")
    return {int(i): (float(z), int(k)) for i, z, k in rows}


QUEEN_PAIRS = ("SELECT a.fid AS i, b.fid AS j FROM {table} a JOIN {table} b "
               "ON a.fid <> b.fid AND ST_Intersects(a.geom, b.geom)")


def test_queen_hotspots_match_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {"input_table": "public.georgia_counties",
                              "value_column": "pctpov", "output_table": "results.gi"})
    assert row["status"] == "completed", row["error"]
    result = row["result"]
    assert result["rows"] == 159 and result["n_analysed"] == 159
    assert result["weights"]["type"] == "queen" and result["crs"] == "EPSG:26916"
    oracle = _oracle(conn, "public.georgia_counties", "pctpov", QUEEN_PAIRS)
    ours = conn.execute("SELECT fid, gi_zscore, n_neighbors, gi_pvalue, gi_bin, gi_psim, "
                        "pctpov, areakey FROM results.gi ORDER BY fid").fetchall()
    assert len(ours) == len(oracle) == 159
    for fid, z, k, _, _, psim, _, key in ours:
        assert z == pytest.approx(oracle[fid][0], abs=1e-9) and k == oracle[fid][1]
        assert 0 < psim <= 1 and key is not None  # input attributes are kept
    z = np.array([r[1] for r in ours])
    p = np.array([r[3] for r in ours])
    bins = np.sign(z) * np.select([p < 0.01, p < 0.05, p < 0.10], [3, 2, 1], 0)
    assert [r[4] for r in ours] == bins.tolist() and (bins == 3).any() and (bins == -3).any()
    assert result["counts"]["3"] == int((bins == 3).sum())


def test_points_distance_band_and_nulls(db_url: str, conn: psycopg.Connection[Any]) -> None:
    import geopandas as gpd
    from libpysal import examples

    points = gpd.read_file(examples.get_path("baltim.shp")).set_crs(2248)
    points.columns = [c.lower() if c != "geometry" else c for c in points.columns]
    points["price"] = points["price"].astype("Float64")
    points.loc[[5, 50, 100], "price"] = None
    with conn.transaction():
        write_layer(conn, points, "public.baltimore", srid=2248)
    row = _run(db_url, conn, {"input_table": "baltimore", "value_column": "price",
                              "permutations": 0, "output_table": "results.gi_pts"})
    assert row["status"] == "completed", row["error"]
    result = row["result"]
    assert (result["n_null_values"], result["n_analysed"], result["rows"]) == (3, 208, 211)
    threshold = result["weights"]["threshold"]
    # the threshold is the smallest that leaves no point without a neighbour
    far = conn.execute(
        "SELECT max(d) FROM (SELECT (SELECT min(ST_Distance(a.geom, b.geom)) FROM baltimore b "
        "WHERE b.fid <> a.fid AND b.price IS NOT NULL) AS d FROM baltimore a "
        "WHERE a.price IS NOT NULL) t").fetchone()
    assert far is not None and threshold == pytest.approx(far[0], rel=1e-12)
    oracle = _oracle(conn, "public.baltimore", "price",
                     "SELECT a.fid AS i, b.fid AS j FROM {table} a JOIN {table} b "
                     "ON a.fid <> b.fid AND a.price IS NOT NULL AND b.price IS NOT NULL "
                     "AND ST_DWithin(a.geom, b.geom, {threshold} * (1 + 1e-9))", threshold=threshold)
    ours = conn.execute("SELECT fid, gi_zscore, n_neighbors, gi_psim FROM results.gi_pts "
                        "ORDER BY fid").fetchall()
    nulls = [r for r in ours if r[0] not in oracle]
    assert len(nulls) == 3 and all(r[1] is None and r[2] is None for r in nulls)
    for fid, z, k, psim in ours:
        if fid in oracle:
            assert z == pytest.approx(oracle[fid][0], abs=1e-9) and k == oracle[fid][1]
            assert psim is None


def test_incident_grid_counts_match_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    rng = np.random.default_rng(11)
    xy = np.vstack([rng.uniform(0, 5000, (800, 2)), rng.normal(1200, 150, (300, 2))])
    import geopandas as gpd

    incidents = gpd.GeoDataFrame({"kind": ["a"] * len(xy)},
                                 geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=32616)
    with conn.transaction():
        write_layer(conn, incidents, "public.incidents", srid=32616)
    row = _run(db_url, conn, {"input_table": "public.incidents",
                              "grid": {"shape": "hexagon", "cell_size": 400},
                              "permutations": 0, "output_table": "results.gi_grid"})
    assert row["status"] == "completed", row["error"]
    result = row["result"]
    assert result["grid"]["cell_size"] == 400 and result["srid"] == 32616
    counts = conn.execute(
        "SELECT g.count, (SELECT count(*) FROM public.incidents p "
        "WHERE ST_Intersects(p.geom, g.geom)) FROM results.gi_grid g").fetchall()
    assert sum(c for c, _ in counts) == 1100 and all(c == o for c, o in counts)
    assert any(c == 0 for c, _ in counts)
    hottest = conn.execute("SELECT ST_X(ST_Centroid(geom)), ST_Y(ST_Centroid(geom)), gi_bin "
                           "FROM results.gi_grid ORDER BY gi_zscore DESC LIMIT 1").fetchone()
    assert hottest is not None and hottest[2] == 3
    assert abs(hottest[0] - 1200) < 600 and abs(hottest[1] - 1200) < 600
    oracle = _oracle(conn, "results.gi_grid", "count",
                     "SELECT a.fid AS i, b.fid AS j FROM {table} a JOIN {table} b "
                     "ON a.fid <> b.fid AND ST_DWithin(ST_Centroid(a.geom), "
                     "ST_Centroid(b.geom), 400 * (1 + 1e-9))")
    for fid, z, k in conn.execute("SELECT fid, gi_zscore, n_neighbors FROM results.gi_grid"):
        assert z == pytest.approx(oracle[fid][0], abs=1e-9) and k == oracle[fid][1]


BAD_PARAMS: list[tuple[dict[str, Any], str]] = [
    ({"input_table": "public.georgia_counties"}, "value_column"),
    ({"input_table": "public.georgia_counties", "value_column": "pctpov",
      "grid": {"shape": "square"}}, "grid"),
    ({"input_table": "public.us_states", "value_column": "state_name"}, "value_column"),
    ({"input_table": "public.georgia_counties", "value_column": "pctpov",
      "weights": {"type": "inverse"}}, "params.weights.type"),
    ({"input_table": "public.georgia_counties", "value_column": "pctpov",
      "weights": {"type": "knn", "k": 500}}, "weights.k"),
    ({"input_table": "public.georgia_counties", "value_column": "pctpov",
      "weights": {"type": "distance_band", "threshold": 1}}, "weights.threshold"),
    ({"input_table": "public.georgia_counties", "value_column": "pctpov",
      "permutations": -5}, "params.permutations"),
    ({"input_table": "public.georgia_counties", "grid": {"shape": "square"}}, "grid"),
]

def test_bad_params_fail_at_once_naming_the_field(db_url: str,
                                                  conn: psycopg.Connection[Any]) -> None:
    # one worker process drains every bad job: each fails at its first attempt
    ids = [queue.enqueue(conn, "hotspot", params) for params, _ in BAD_PARAMS]
    assert run_worker(db_url, "hotspot", GEOJOBS_JIT_WARMUP="0").returncode == 0
    for job_id, (_, field) in zip(ids, BAD_PARAMS, strict=True):
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("failed", 1)
        assert row["error"].startswith(field), row["error"]
