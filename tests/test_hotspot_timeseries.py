"""hotspot_timeseries as a job, checked against esda and PostGIS on real and planted data.

Oracles: esda's Gi* of each year on the US state income panel read back from PostGIS
(k = 0); the long layout made from the wide table in SQL; incident counts per cell and month
made in PostGIS (``ST_Contains`` and ``date_trunc``); a planted hot spot.
"""

from __future__ import annotations

from typing import Any

import esda
import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import psycopg
import pytest
from psycopg import sql

from geojobs import queue
from geojobs.layers import write_layer
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db

YEARS = [f"y{year}" for year in range(1929, 2010)]
JOB = "hotspot_timeseries"


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, JOB, params)
    result = run_worker(db_url, JOB)
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def _frame(conn: psycopg.Connection[Any], query: str | sql.Composable) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(query)  # fixed test SQL, no parameters
        names = [d.name for d in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=names)


def test_wide_income_panel_matches_esda(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {
        "input_table": "public.us_income", "value_columns": YEARS, "neighborhood_time_step": 0,
        "output_table": "results.trends", "slices_table": "results.trend_slices",
    })  # fmt: skip
    assert row["status"] == "completed", row["error"]
    res = row["result"]
    assert res["rows"] == 48 and res["slice_rows"] == 48 * 81 and res["time_steps"] == 81
    assert res["input_shape"] == "wide" and res["srid"] == 4326
    assert sum(res["categories"].values()) == 48 and len(res["categories"]) == 17

    table = _frame(conn, sql.SQL(
        "SELECT state_fips, ST_AsBinary(geom) AS wkb, {} FROM public.us_income ORDER BY fid"
    ).format(sql.SQL(", ").join(map(sql.Identifier, YEARS))))
    states = gpd.GeoDataFrame(table, geometry=gpd.GeoSeries.from_wkb(table["wkb"]), crs=4326)
    w = libpysal.weights.Queen.from_dataframe(states, use_index=False, silence_warnings=True)
    slices = _frame(conn, "SELECT s.time, o.state_fips, s.gi_zscore, s.gi_pvalue, s.value "
                          "FROM results.trend_slices s JOIN results.trends o "
                          "USING (location_id)")  # fmt: skip
    for year in YEARS[::8]:
        g = esda.G_Local(states[year].to_numpy(float), libpysal.weights.W(w.neighbors),
                         transform="B", star=True, permutations=0)  # fmt: skip
        ours = slices.loc[slices["time"] == year].set_index("state_fips").loc[states.state_fips]
        np.testing.assert_allclose(ours["gi_zscore"], g.Zs, atol=1e-9)
        np.testing.assert_allclose(ours["gi_pvalue"], 2 * g.p_norm, atol=1e-12)
        np.testing.assert_allclose(ours["value"], states[year].to_numpy(float))

    # the output keeps the attributes and geometries, and agrees with its slices
    checks = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT ST_Equals(o.geom, i.geom)), "
        "count(*) FILTER (WHERE o.state_name IS DISTINCT FROM i.state_name), count(*) "
        "FROM results.trends o JOIN public.us_income i USING (state_fips)").fetchone()
    assert checks == (0, 0, 48)
    counts = conn.execute(
        "SELECT count(*) FROM results.trends o JOIN (SELECT location_id, "
        "count(*) FILTER (WHERE gi_bin = 1) AS hot, count(*) FILTER (WHERE gi_bin = -1) AS cold "
        "FROM results.trend_slices GROUP BY location_id) s USING (location_id) "
        "WHERE s.hot = o.hot_steps AND s.cold = o.cold_steps").fetchone()
    assert counts == (48,)
    by_category = dict(conn.execute(
        "SELECT category, count(*) FROM results.trends GROUP BY category").fetchall())
    assert by_category == {k: v for k, v in res["categories"].items() if v}
    types = dict(conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        "'results' AND table_name = 'trends'").fetchall())
    assert types["category"] == "text" and types["category_code"] == "smallint"
    assert types["trend_tau"] == "double precision" and types["last_gi_bin"] == "smallint"


def test_long_layout_from_sql_equals_wide(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "CREATE TABLE public.us_income_long AS SELECT u.state_fips, u.state_name, "
        "substr(kv.key, 2)::int AS year, kv.value::float8 AS income, u.geom "
        "FROM public.us_income u, jsonb_each_text(to_jsonb(u) - 'geom') kv "
        "WHERE kv.key ~ '^y[0-9]{4}$'")
    conn.execute("SELECT UpdateGeometrySRID('public', 'us_income_long', 'geom', 4326)")
    long = _run(db_url, conn, {
        "input_table": "public.us_income_long", "location_column": "state_fips",
        "time_column": "year", "value_column": "income", "output_table": "results.long",
        "slices_table": "results.long_slices",
    })  # fmt: skip
    wide = _run(db_url, conn, {"input_table": "public.us_income", "value_columns": YEARS,
                               "output_table": "results.wide"})  # fmt: skip
    assert long["status"] == "completed", long["error"]
    assert wide["status"] == "completed", wide["error"]
    assert long["result"]["categories"] == wide["result"]["categories"]
    assert long["result"]["input_shape"] == "long" and long["result"]["input_rows"] == 48 * 81
    differ = conn.execute(
        "SELECT count(*) FROM results.long l JOIN results.wide w USING (state_fips) "
        "WHERE l.category <> w.category OR abs(l.trend_tau - w.trend_tau) > 1e-12 "
        "OR abs(l.last_gi_zscore - w.last_gi_zscore) > 1e-9 OR NOT ST_Equals(l.geom, w.geom)"
    ).fetchone()
    assert differ == (0,)
    year_type = conn.execute(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'results' "
        "AND table_name = 'long_slices' AND column_name = 'time'").fetchone()
    assert year_type == ("integer",) or year_type == ("bigint",)


def _incidents(seed: int = 11) -> gpd.GeoDataFrame:
    """Background incidents over 8 x 8 km and 12 months, and 200 in one spot in the last month."""
    rng = np.random.default_rng(seed)
    n = 6_000
    start = pd.Timestamp("2024-01-01")
    xs = np.r_[rng.uniform(500_000, 508_000, n), 503_000 + rng.normal(0, 200, 200)]
    ys = np.r_[rng.uniform(3_700_000, 3_708_000, n), 3_705_000 + rng.normal(0, 200, 200)]
    times = np.r_[
        start + pd.to_timedelta(rng.uniform(0, 366, n), unit="D"),
        pd.Timestamp("2024-12-01") + pd.to_timedelta(rng.uniform(0, 30, 200), unit="D"),
    ]
    return gpd.GeoDataFrame(
        {"kind": rng.choice(["fire", "theft"], n + 200),
         "reported_at": pd.DatetimeIndex(times).floor("s")},
        geometry=gpd.points_from_xy(xs, ys), crs=32617,
    )  # fmt: skip


def test_incidents_counts_match_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        write_layer(conn, _incidents(), "public.incidents", srid=32617)
    row = _run(db_url, conn, {
        "input_table": "public.incidents", "time_column": "reported_at", "time_step": "1 month",
        "grid": {"shape": "hexagon", "cell_size": 600}, "output_table": "results.cells",
        "slices_table": "results.cell_slices",
    })  # fmt: skip
    assert row["status"] == "completed", row["error"]
    res = row["result"]
    assert res["input_shape"] == "incidents" and res["time_steps"] == 12 and res["srid"] == 32617
    assert res["incidents"] == 6_200 and res["weights"]["type"] == "distance_band"

    mismatches = conn.execute(
        "WITH oracle AS (SELECT c.cell_id, date_trunc('month', i.reported_at) AS month, "
        "count(*) AS n FROM results.cells c JOIN public.incidents i "
        "ON ST_Intersects(c.geom, i.geom) GROUP BY 1, 2) "
        "SELECT count(*) FROM results.cell_slices s FULL JOIN oracle o "
        "ON o.cell_id = s.cell_id AND o.month = s.time "
        "WHERE coalesce(o.n, 0) <> coalesce(s.value, -1)").fetchone()
    assert mismatches == (0,)
    totals = conn.execute("SELECT sum(count), count(*) FILTER (WHERE count = 0) "
                          "FROM results.cells").fetchone()  # fmt: skip
    assert totals is not None and totals[0] == 6_200 and totals[1] >= 0
    planted = conn.execute(
        "SELECT category FROM results.cells WHERE "
        "ST_Contains(geom, ST_SetSRID(ST_MakePoint(503000, 3705000), 32617))").fetchone()
    assert planted == ("New Hot Spot",)
    far = conn.execute(
        "SELECT avg((category = 'No Pattern Detected')::int) FROM results.cells WHERE "
        "ST_Distance(geom, ST_SetSRID(ST_MakePoint(503000, 3705000), 32617)) > 1500").fetchone()
    assert far is not None and far[0] > 0.95


def test_demo_and_example_complete(db_url: str, conn: psycopg.Connection[Any]) -> None:
    from workers import hotspot_timeseries

    ids = [queue.enqueue(conn, JOB, p) for p in [*hotspot_timeseries.DEMO, hotspot_timeseries.EXAMPLE]]
    result = run_worker(db_url, JOB)
    assert result.returncode == 0, result.stderr
    rows = [job_row(conn, i) for i in ids]
    assert [r["status"] for r in rows] == ["completed"] * len(ids), [r["error"] for r in rows]
    demo = rows[0]["result"]
    assert demo["rows"] == 48 and demo["slice_rows"] == 48 * 81
    assert rows[-1]["result"]["time_steps"] == 20


BAD_PARAMS = [
    ({"input_table": "public.us_income", "value_columns": YEARS[:6]}, "value_columns:"),
    ({"input_table": "public.us_income", "value_columns": ["y1929", "state_name"]},
     "value_columns:"),
    ({"input_table": "public.us_income", "value_columns": YEARS,
      "weights": {"transform": "R"}}, "params.weights.transform:"),
    ({"input_table": "public.us_income", "time_column": "y1929", "time_step": "1 month"},
     "time_column:"),
    ({"input_table": "public.us_income", "value_columns": YEARS, "time_step": "1 month"},
     "time_step:"),
    ({"input_table": "public.us_income"}, "value_column:"),
    ({"input_table": "public.us_income", "value_columns": YEARS, "alpha": 2},
     "params.alpha:"),
    ({"input_table": "public.nope", "value_columns": YEARS}, "input_table:"),
    ({"input_table": "public.us_income", "value_columns": YEARS,
      "output_table": "results.same", "slices_table": "results.same"}, "params.slices_table:"),
]  # fmt: skip


def test_bad_params_fail_at_once(db_url: str, conn: psycopg.Connection[Any]) -> None:
    ids = [queue.enqueue(conn, JOB, params) for params, _ in BAD_PARAMS]
    result = run_worker(db_url, JOB)
    assert result.returncode == 0, result.stderr
    for job_id, (params, field) in zip(ids, BAD_PARAMS, strict=True):
        row = job_row(conn, job_id)
        assert row["status"] == "failed" and row["attempts"] == 1, params
        assert row["error"].startswith(field), row["error"]
