"""create_view as a job: views QGIS can open, from a spec that cannot inject SQL.

The oracle for row sets is the same condition written by hand in SQL over the sample tables;
geometry types and SRIDs are read back from ``geometry_columns``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from geojobs import queue
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "create_view", params)
    done = run_worker(db_url, "create_view")
    assert done.returncode == 0, done.stderr
    return job_row(conn, job_id)


def _geometry_column(conn: psycopg.Connection[Any], schema: str, name: str) -> Any:
    return conn.execute(
        "SELECT f_geometry_column, srid, type FROM geometry_columns"
        " WHERE f_table_schema = %s AND f_table_name = %s",
        (schema, name),
    ).fetchall()


def test_view_with_columns_and_filter(db_url, conn):
    row = _run(
        db_url,
        conn,
        {
            "input_table": "public.nc_counties",
            "output_table": "nc_sids",
            "columns": ["fid", "name", "sid74", "geom"],
            "filter": [
                {"column": "sid74", "op": ">=", "value": 5},
                {"column": "name", "op": "ilike", "value": "%a%"},
                {"column": "bir74", "op": "between", "value": [1000, 20000]},
                {"column": "fipsno", "op": "not_in", "value": [37001, 37003]},
            ],
        },
    )
    assert row["status"] == "completed", row["error"]
    oracle = {
        r[0]
        for r in conn.execute(
            "SELECT fid FROM public.nc_counties WHERE sid74 >= 5 AND name ILIKE '%a%'"
            " AND bir74 BETWEEN 1000 AND 20000 AND fipsno NOT IN (37001, 37003)"
        )
    }
    ours = {r[0] for r in conn.execute("SELECT fid FROM results.nc_sids")}
    assert ours == oracle and 0 < len(ours) < 100
    assert row["result"]["rows"] == len(oracle)
    assert row["result"]["view_name"] == "results.nc_sids"
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'results'"
            " AND table_name = 'nc_sids' ORDER BY ordinal_position"
        )
    ]
    assert columns == ["fid", "name", "sid74", "geom"]
    assert _geometry_column(conn, "results", "nc_sids") == [("geom", 4267, "MULTIPOLYGON")]


def test_untyped_geometry_is_cast_so_qgis_sees_type_and_srid(db_url, conn):
    # Polygons and multipolygons mixed in an untyped column, as many hand-made tables are.
    conn.execute(
        "CREATE TABLE public.loose AS SELECT fid, name, CASE WHEN fid % 2 = 0"
        " THEN ST_GeometryN(geom, 1) ELSE geom END::geometry AS geom FROM public.nc_counties"
    )
    conn.execute("ALTER TABLE public.loose ADD PRIMARY KEY (fid)")
    assert _geometry_column(conn, "public", "loose") == [("geom", 0, "GEOMETRY")]
    row = _run(db_url, conn, {"input_table": "public.loose", "view_name": "results.loose_v"})
    assert row["status"] == "completed", row["error"]
    assert _geometry_column(conn, "results", "loose_v") == [("geom", 4267, "MULTIPOLYGON")]
    ours = conn.execute("SELECT count(*), sum(ST_Area(geom)) FROM results.loose_v").fetchone()
    oracle = conn.execute("SELECT count(*), sum(ST_Area(geom)) FROM public.loose").fetchone()
    assert ours[0] == oracle[0] == 100 and ours[1] == pytest.approx(oracle[1], rel=1e-12)
    assert row["result"]["geometry_type"] == "MultiPolygon"


def test_materialized_view_with_bbox_indexes_and_refresh(db_url, conn):
    bbox = [-9000000, 4000000, -8700000, 4400000]  # web mercator metres over central NC
    row = _run(
        db_url,
        conn,
        {
            "input_table": "public.nc_counties",
            "view_name": "results.nc_box",
            "columns": ["name", "bir74", "geom"],
            "bbox": bbox,
            "bbox_srid": 3857,
            "materialized": True,
        },
    )
    assert row["status"] == "completed", row["error"]
    in_box = (
        "SELECT count(*) FROM public.nc_counties WHERE ST_Intersects(geom, ST_Transform("
        "ST_MakeEnvelope(-9000000, 4000000, -8700000, 4400000, 3857), 4267))"
    )
    expected = conn.execute(in_box).fetchone()[0]
    assert 0 < row["result"]["rows"] == expected < 100
    assert row["result"]["columns"] == ["fid", "name", "bir74", "geom"]  # key added
    assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'nc_box'").fetchone() == ("m",)
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'results' AND tablename = 'nc_box'"
        )
    ]
    assert any("USING gist (geom)" in i for i in indexes)
    assert any("UNIQUE" in i and "(fid)" in i for i in indexes)
    assert _geometry_column(conn, "results", "nc_box") == [("geom", 4267, "MULTIPOLYGON")]

    conn.execute(
        "DELETE FROM public.nc_counties WHERE fid IN (SELECT fid FROM results.nc_box ORDER BY fid LIMIT 2)"
    )
    refreshed = _run(db_url, conn, {"output_table": "results.nc_box", "refresh": True})
    assert refreshed["status"] == "completed", refreshed["error"]
    assert refreshed["result"]["concurrently"] is True
    assert refreshed["result"]["rows"] == conn.execute(in_box).fetchone()[0] == expected - 2
    assert conn.execute("SELECT count(*) FROM results.nc_box").fetchone() == (expected - 2,)


@pytest.mark.parametrize(
    ("name", "overwrite"), [("output_table", "overwrite"), ("view_name", "replace")]
)
def test_replace_only_views_and_only_when_asked(db_url, conn, name, overwrite):
    """The same, in today's names and in the older ones existing jobs still use."""
    params = {"input_table": "public.us_states", name: "results.states_v"}
    assert _run(db_url, conn, params)["status"] == "completed"
    again = _run(db_url, conn, params)
    assert again["status"] == "failed" and again["error"].startswith("output_table:")
    assert "set overwrite to true" in again["error"]
    narrowed = _run(
        db_url,
        conn,
        {
            **params,
            overwrite: True,
            "columns": ["state_name", "geom"],
            "filter": [{"column": "sub_region", "op": "=", "value": "Mtn"}],
        },
    )
    assert narrowed["status"] == "completed", narrowed["error"]
    oracle = conn.execute("SELECT count(*) FROM public.us_states WHERE sub_region = 'Mtn'")
    assert narrowed["result"]["rows"] == oracle.fetchone()[0] == 8
    assert narrowed["result"]["output_table"] == narrowed["result"]["view_name"] == "results.states_v"
    conn.execute("CREATE TABLE results.a_table (id int)")
    clash = _run(db_url, conn, {**params, name: "results.a_table", overwrite: True})
    assert clash["status"] == "failed" and clash["error"].startswith("output_table:")
    assert conn.execute("SELECT to_regclass('results.a_table')").fetchone()[0] is not None
    refresh_plain = _run(db_url, conn, {name: "results.states_v", "refresh": True})
    assert refresh_plain["status"] == "failed" and "not a materialised view" in refresh_plain["error"]
    conn.execute("DROP TABLE results.a_table")
    conn.execute("DROP VIEW results.states_v")


def test_bbox_in_the_filter_or_at_the_top_level_selects_the_same_rows(db_url, conn):
    """The filter's bbox, and the top-level bbox older jobs use, against hand-written SQL."""
    bbox = [-84.5, 33.5, -84.0, 34.0]  # longitude/latitude around Atlanta
    srid = conn.execute("SELECT Find_SRID('public', 'georgia_counties', 'geom')").fetchone()[0]
    oracle = conn.execute(
        "SELECT count(*) FROM public.georgia_counties WHERE ST_Intersects(geom, ST_Transform("
        "ST_MakeEnvelope(-84.5, 33.5, -84.0, 34.0, 4326), %s))", (srid,)
    ).fetchone()[0]
    base = {"input_table": "public.georgia_counties", "overwrite": True}
    new = _run(db_url, conn, {**base, "output_table": "results.atl_a",
                              "filter": {"bbox": bbox, "bbox_srid": 4326}})
    old = _run(db_url, conn, {**base, "output_table": "results.atl_b", "bbox": bbox,
                              "bbox_srid": 4326})
    assert new["status"] == old["status"] == "completed", (new["error"], old["error"])
    assert 0 < new["result"]["rows"] == old["result"]["rows"] == oracle < 159


INJECTIONS = [
    ({"view_name": "results.v; DROP TABLE public.us_states"}, "params.view_name"),
    ({"view_name": 'results."v"'}, "params.view_name"),
    ({"view_name": "pg_catalog.v"}, "params.view_name"),
    ({"output_table": "results.w"}, "params: give output_table or its older name view_name"),
    ({"output_table": 'results."v"', "view_name": ...}, "params.output_table"),
    ({"replace": "yes please"}, "params.replace"),
    ({"overwrite": True, "replace": True}, "params: give overwrite or its older name replace"),
    ({"bbox": [0, 0, 1, 1], "filter": {"bbox": [0, 0, 2, 2]}}, "params: give the bbox"),
    ({"filter": {"bbox": [0, 0, 1, 1], "bbox_srid": 999999}}, "filter.bbox_srid"),
    ({"input_table": "public.us_states; DROP TABLE public.us_states"}, "params.input_table"),
    ({"input_table": "us_states; DROP TABLE us_states"}, "input_table"),
    ({"columns": ['state_name", (SELECT 1) AS "x']}, "columns[0]"),
    ({"columns": ["state_name", "state_name"]}, "columns"),
    ({"filter": [{"column": "sub_region = sub_region OR 1", "op": "=", "value": 1}]}, "filter[0].column"),
    ({"filter": [{"column": "area", "op": "=", "value": "0 OR 1=1"}]}, "filter[0].value"),
    ({"filter": [{"column": "state_name", "op": "in", "value": ["a", ["b"]]}]}, "params.filter.0.value"),
    ({"filter": [{"column": "state_name", "op": "= '' OR ''='", "value": "x"}]}, "params.filter.0.op"),
    ({"filter": [{"column": "state_name", "op": "=", "value": "x", "raw": "1=1"}]}, "params.filter.0.raw"),
    ({"filter": [{"column": "geom", "op": "=", "value": "POINT(0 0)"}]}, "filter[0].op"),
    ({"bbox": ["0); DROP TABLE public.us_states; --", 0, 1, 1]}, "params.bbox.0"),
    ({"bbox": [0, 0, 1, 1], "bbox_srid": "4326); DROP TABLE public.us_states"}, "params.bbox_srid"),
    ({"bbox": [0, 0, 1, 1], "bbox_srid": 999999}, "bbox_srid"),
    ({"materialized": "yes; DROP TABLE public.us_states"}, "params.materialized"),
    ({"sql": "SELECT 1"}, "params.sql"),
]


def test_injection_through_any_field_fails_naming_it_and_changes_nothing(db_url, conn):
    """Every spec above is queued, then one worker runs them all."""
    before = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    jobs = [
        (
            queue.enqueue(
                conn,
                "create_view",
                {
                    k: v
                    for k, v in {"input_table": "public.us_states", "view_name": "results.v",
                                 **change}.items()
                    if v is not ...  # ``...`` leaves the key out
                },
            ),
            change,
            field,
        )
        for change, field in INJECTIONS
    ]
    done = run_worker(db_url, "create_view")
    assert done.returncode == 0, done.stderr
    for job_id, change, field in jobs:
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("failed", 1), change
        assert row["error"].startswith(field), (change, row["error"])
    assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == before
    assert conn.execute("SELECT count(*) FROM public.us_states").fetchone() == (48,)
    assert conn.execute("SELECT to_regclass('results.v')").fetchone() == (None,)

