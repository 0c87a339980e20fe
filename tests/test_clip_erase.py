"""clip and erase as jobs, checked against ST_Intersection / ST_Difference in PostGIS.

Each job runs as a real worker process on a fresh database holding the sample layers; the
oracle is the same overlay written in SQL over the same tables.  Per input feature (by its
``fid``) the area, length or point count must match within 1e-6 relative, and the surviving
features must be the same.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import psycopg
import pytest
from psycopg import sql
from shapely.geometry import Point, Polygon

from geojobs import queue
from geojobs.layers import write_layer
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db

UTM16N = 26916
# ST_CollectionExtract type and the measure compared, by geometry dimension.
EXTRACT = {0: 1, 1: 2, 2: 3}
MEASURE = {0: "ST_NumGeometries", 1: "ST_Length", 2: "ST_Area"}


def _bow_tie(x: float, y: float, r: float) -> Polygon:
    return Polygon([(x - r, y - r), (x + r, y + r), (x + r, y - r), (x - r, y + r)])


def _load_blobs(conn: psycopg.Connection[Any]) -> None:
    """public.blobs: 12 overlapping irregular polygons over Georgia in lon/lat, one a bow-tie."""
    counties = conn.execute(
        "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_Centroid(geom) c FROM public.georgia_counties"
        " ORDER BY fid) s"
    ).fetchall()
    rng = np.random.default_rng(60)
    shapes = []
    for k in rng.choice(len(counties), 12, replace=False):
        x, y = counties[k]
        angles = np.sort(rng.uniform(0, 2 * np.pi, 15))
        radii = rng.uniform(15_000, 80_000, 15)
        shapes.append(Polygon(np.c_[x + radii * np.cos(angles), y + radii * np.sin(angles)]))
    shapes.append(_bow_tie(counties[0][0] + 30_000, counties[0][1], 40_000))
    blobs = gpd.GeoDataFrame(
        {"kind": ["north" if s.centroid.y > 3.65e6 else "south" for s in shapes]},
        geometry=shapes,
        crs=UTM16N,
    ).to_crs(4326)
    with conn.transaction():
        write_layer(conn, blobs, "public.blobs", srid=4326, geometry_type="Polygon")


def _spoil_counties(conn: psycopg.Connection[Any]) -> None:
    """One county becomes a bow-tie (invalid), one loses its geometry."""
    conn.execute(
        "UPDATE public.georgia_counties SET geom = ST_Multi(ST_GeomFromText("
        "'POLYGON((700000 3500000, 760000 3560000, 760000 3500000, 700000 3560000,"
        " 700000 3500000))', 26916)) WHERE fid = 11"
    )
    conn.execute("UPDATE public.georgia_counties SET geom = NULL WHERE fid = 21")


def _run(db_url: str, conn: psycopg.Connection[Any], job_type: str, params: dict[str, Any]):
    job_id = queue.enqueue(conn, job_type, params)
    done = run_worker(db_url, job_type)
    assert done.returncode == 0, done.stderr
    return job_row(conn, job_id)


def _oracle(
    conn: psycopg.Connection[Any],
    how: str,
    input_table: str,
    overlay_table: str,
    dim: int,
    srid: int,
    overlay_where: sql.Composable | None = None,
) -> dict[int, float]:
    """Per input fid, PostGIS's clip or erase measure (features left empty are left out)."""
    query = sql.SQL(
        """
        WITH u AS (
            SELECT ST_Union(ST_CollectionExtract(ST_MakeValid(ST_Transform(geom, {srid})), 3)) g
            FROM {overlay} WHERE {where}
        ), r AS (
            SELECT i.fid, ST_CollectionExtract(
                {op}(ST_CollectionExtract(ST_MakeValid(i.geom), {ext}), u.g), {ext}) AS g
            FROM {input} i, u WHERE i.geom IS NOT NULL AND NOT ST_IsEmpty(i.geom)
        )
        SELECT fid, {measure}(g) FROM r WHERE NOT ST_IsEmpty(g)
        """
    ).format(
        srid=sql.Literal(srid),
        overlay=sql.Identifier(*overlay_table.split(".")),
        where=overlay_where or sql.SQL("TRUE"),
        op=sql.SQL("ST_Intersection" if how == "clip" else "ST_Difference"),
        ext=sql.Literal(EXTRACT[dim]),
        input=sql.Identifier(*input_table.split(".")),
        measure=sql.SQL(MEASURE[dim]),
    )
    return {int(k): float(v) for k, v in conn.execute(query)}


def _ours(conn: psycopg.Connection[Any], table: str, dim: int) -> dict[int, float]:
    query = sql.SQL("SELECT fid, {}(geom) FROM {}").format(
        sql.SQL(MEASURE[dim]), sql.Identifier(*table.split("."))
    )
    return {int(k): float(v) for k, v in conn.execute(query)}


def _assert_match(ours: dict[int, float], oracle: dict[int, float]) -> None:
    assert ours.keys() == oracle.keys()
    assert len(ours) > 0
    keys = sorted(ours)
    np.testing.assert_allclose([ours[k] for k in keys], [oracle[k] for k in keys], rtol=1e-6)


def _geometry_column(conn: psycopg.Connection[Any], table: str) -> tuple[int, str]:
    schema, name = table.split(".")
    row = conn.execute(
        "SELECT srid, type FROM geometry_columns WHERE f_table_schema = %s AND f_table_name = %s",
        (schema, name),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_polygons_match_postgis(db_url, conn, how):
    _load_blobs(conn)
    _spoil_counties(conn)
    table = f"results.{how}_counties"
    row = _run(
        db_url,
        conn,
        how,
        {
            "input_table": "georgia_counties",
            f"{how}_table": "public.blobs",
            "output_table": table,
        },
    )
    assert row["status"] == "completed", row["error"]
    _assert_match(
        _ours(conn, table, 2), _oracle(conn, how, "public.georgia_counties", "public.blobs", 2, UTM16N)
    )
    invalid, null = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT ST_IsValid(geom)), count(*) FILTER (WHERE geom IS NULL)"
        " FROM public.georgia_counties"
    ).fetchone()
    result = row["result"]
    assert (result["repaired"], result["skipped_null"]) == (invalid, null) == (1, 1)
    assert result["overlay_repaired"] == 1 and result["rows"] == result["output_features"]
    assert _geometry_column(conn, table) == (UTM16N, "MULTIPOLYGON")
    # Every input attribute is kept, row for row.
    differing = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {} o JOIN public.georgia_counties i USING (fid)"
            " WHERE (o.areakey, o.totpop90, o.pctbach) IS DISTINCT FROM (i.areakey, i.totpop90, i.pctbach)"
        ).format(sql.Identifier("results", f"{how}_counties"))
    ).fetchone()
    assert differing == (0,)
    assert conn.execute(
        sql.SQL("SELECT bool_and(ST_IsValid(geom)) FROM {}").format(
            sql.Identifier("results", f"{how}_counties")
        )
    ).fetchone() == (True,)


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_lines_match_postgis(db_url, conn, how):
    _load_blobs(conn)
    conn.execute(
        "CREATE TABLE public.county_lines AS SELECT fid, areakey,"
        " ST_Multi(ST_Boundary(geom))::geometry(MultiLineString, 26916) AS geom"
        " FROM public.georgia_counties"
    )
    table = f"results.{how}_lines"
    row = _run(
        db_url,
        conn,
        how,
        {
            "input_table": "public.county_lines",
            f"{how}_table": "public.blobs",
            "output_table": table,
        },
    )
    assert row["status"] == "completed", row["error"]
    _assert_match(_ours(conn, table, 1), _oracle(conn, how, "public.county_lines", "public.blobs", 1, UTM16N))
    assert _geometry_column(conn, table) == (UTM16N, "MULTILINESTRING")


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_points_match_postgis(db_url, conn, how):
    _load_blobs(conn)
    xmin, ymin, xmax, ymax = conn.execute(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM"
        " (SELECT ST_Extent(geom) e FROM public.georgia_counties) s"
    ).fetchone()
    rng = np.random.default_rng(61)
    xy = rng.uniform((xmin, ymin), (xmax, ymax), (500, 2))
    points = gpd.GeoDataFrame(
        {"fid": range(1, 501), "value": rng.normal(size=500)},
        geometry=[Point(p) for p in xy],
        crs=UTM16N,
    )
    with conn.transaction():
        write_layer(conn, points, "public.wells", srid=UTM16N)
    table = f"results.{how}_wells"
    row = _run(
        db_url,
        conn,
        how,
        {
            "input_table": "public.wells",
            f"{how}_table": "public.blobs",
            "output_table": table,
        },
    )
    assert row["status"] == "completed", row["error"]
    # write_layer renamed the points' own fid to keep it as an attribute: compare on it.
    ours = {
        int(k): float(v)
        for k, v in conn.execute(
            sql.SQL("SELECT fid, ST_NumGeometries(geom) FROM {}").format(sql.Identifier(*table.split(".")))
        )
    }
    _assert_match(ours, _oracle(conn, how, "public.wells", "public.blobs", 0, UTM16N))
    assert _geometry_column(conn, table) == (UTM16N, "POINT")


def test_clip_by_a_filtered_layer_in_another_srid(db_url, conn):
    """NC counties (NAD27) clipped by two states (WGS 84) picked with a filter."""
    spec = [{"column": "state_name", "op": "in", "value": ["Virginia", "North Carolina"]}]
    row = _run(
        db_url,
        conn,
        "clip",
        {
            "input_table": "public.nc_counties",
            "clip_table": "public.us_states",
            "clip_filter": spec,
            "output_table": "results.nc_clip",
        },
    )
    assert row["status"] == "completed", row["error"]
    where = sql.SQL("state_name IN ('Virginia', 'North Carolina')")
    _assert_match(
        _ours(conn, "results.nc_clip", 2),
        _oracle(conn, "clip", "public.nc_counties", "public.us_states", 2, 4267, where),
    )
    assert row["result"]["overlay_features"] == 2
    assert _geometry_column(conn, "results.nc_clip") == (4267, "MULTIPOLYGON")


def test_erase_with_a_bbox_filter(db_url, conn):
    """States minus the NC counties inside a bounding box given in another SRID."""
    spec = {"bbox": [-9000000, 4000000, -8700000, 4400000], "bbox_srid": 3857}
    row = _run(
        db_url,
        conn,
        "erase",
        {
            "input_table": "public.us_states",
            "erase_table": "public.nc_counties",
            "erase_filter": spec,
            "output_table": "results.states_erased",
        },
    )
    assert row["status"] == "completed", row["error"]
    where = sql.SQL(
        "ST_Intersects(geom, ST_Transform(ST_MakeEnvelope(-9000000, 4000000, -8700000, 4400000, 3857), 4267))"
    )
    oracle = _oracle(conn, "erase", "public.us_states", "public.nc_counties", 2, 4326, where)
    _assert_match(_ours(conn, "results.states_erased", 2), oracle)
    selected = conn.execute(
        sql.SQL("SELECT count(*) FROM public.nc_counties WHERE {}").format(where)
    ).fetchone()
    assert 0 < row["result"]["overlay_features"] == selected[0] < 100


def test_an_empty_result_is_a_completed_job_with_an_empty_table(db_url, conn):
    row = _run(
        db_url,
        conn,
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_filter": [{"column": "state_name", "op": "=", "value": "Maine"}],
            "output_table": "results.nothing",
        },
    )
    assert row["status"] == "completed", row["error"]
    assert row["result"]["rows"] == 0
    assert conn.execute("SELECT count(*) FROM results.nothing").fetchone() == (0,)
    assert _geometry_column(conn, "results.nothing") == (UTM16N, "MULTIPOLYGON")
    nothing = _run(
        db_url,
        conn,
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_filter": [{"column": "state_name", "op": "=", "value": "Atlantis"}],
            "output_table": "results.nothing_at_all",
        },
    )
    assert nothing["status"] == "completed"
    assert nothing["result"]["rows"] == 0 and nothing["result"]["overlay_features"] == 0
    assert "selected no feature" in nothing["result"]["warnings"][0]


BAD_PARAMS = [
    (
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_filter": {"bbox": [0, 0, 1, 1], "bbox_srid": 999999},
        },
        "clip_filter.bbox_srid",
    ),
    ("clip", {"input_table": "public.georgia_counties"}, "params.clip_table"),
    ("clip", {"input_table": "public.georgia_counties", "clip_table": "public.nope"}, "clip_table"),
    ("erase", {"input_table": "public.nope", "erase_table": "public.us_states"}, "input_table"),
    (
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_filter": [{"column": "state_name') OR 1=1 --", "op": "=", "value": "x"}],
        },
        "clip_filter[0].column",
    ),
    (
        "erase",
        {
            "input_table": "public.georgia_counties",
            "erase_table": "public.us_states",
            "erase_filter": [{"column": "area", "op": ">", "value": "0; DROP TABLE x"}],
        },
        "erase_filter[0].value",
    ),
    (
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_filter": [{"column": "area", "op": "; DROP", "value": 1}],
        },
        "params.clip_filter.0.op",
    ),
    (
        "clip",
        {
            "input_table": "public.georgia_counties",
            "clip_table": "public.us_states",
            "clip_geometry_column": "nope",
        },
        "clip_geometry_column",
    ),
    ("erase", {"input_table": "public.georgia_counties", "erase_table": "public.nosrid"}, "erase_table"),
    (
        "clip",
        {"input_table": "public.georgia_counties", "clip_table": "public.state_lines"},
        "clip_table",
    ),
]


def test_bad_params_fail_at_once_naming_the_field(db_url, conn):
    """Every case above is queued, then one worker of each type runs them all."""
    conn.execute(
        "CREATE TABLE public.nosrid AS SELECT fid, ST_SetSRID(geom, 0) AS geom FROM public.nc_counties"
    )
    conn.execute(
        "CREATE TABLE public.state_lines AS SELECT fid, ST_Boundary(geom) AS geom FROM public.us_states"
    )
    before = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    jobs = [(queue.enqueue(conn, job_type, params), params, field) for job_type, params, field in BAD_PARAMS]
    for job_type in ("clip", "erase"):
        done = run_worker(db_url, job_type)
        assert done.returncode == 0, done.stderr
    for job_id, params, field in jobs:
        row = job_row(conn, job_id)
        assert (row["status"], row["attempts"]) == ("failed", 1), params
        assert row["error"].startswith(field), (params, row["error"])
    assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == before
