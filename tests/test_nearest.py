"""nearest as a job, against PostGIS KNN (``<->`` with ``ST_Distance``) and geography distances.

The oracle is the same question asked in SQL on the same tables: for planar data a LATERAL
subquery ordered by ``a.geom <-> b.geom, b.key`` with ``LIMIT k``; for geodesic data every
pair's ``ST_Distance(geography, geography)`` (spheroid), ordered the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from geojobs import queue
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db

Pairs = dict[tuple[Any, int], tuple[Any, float]]


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "nearest", params)
    result = run_worker(db_url, "nearest")
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def _ours(conn: psycopg.Connection[Any], table: str, key: str) -> Pairs:
    rows = conn.execute(sql.SQL(
        "SELECT {}, near_rank, near_id, near_dist FROM {} WHERE near_rank IS NOT NULL").format(
            sql.Identifier(key), sql.Identifier(*table.split("."))))
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _knn_oracle(conn: psycopg.Connection[Any], a: str, b: str, key: str, k: int,
                radius: float | None = None, same: bool = False) -> Pairs:
    """PostGIS KNN: ORDER BY a.geom <-> b.geom (then the key) LIMIT k, per input feature."""
    statement = sql.SQL("""
        SELECT a.{key}, row_number() OVER (PARTITION BY a.{key} ORDER BY n.knn, n.id), n.id,
               n.dist
        FROM {a} a CROSS JOIN LATERAL (
            SELECT b.{key} AS id, a.geom <-> b.geom AS knn, ST_Distance(a.geom, b.geom) AS dist
            FROM {b} b
            WHERE (NOT %(same)s OR b.{key} <> a.{key})
              AND (%(radius)s::float8 IS NULL OR ST_DWithin(a.geom, b.geom, %(radius)s))
            ORDER BY a.geom <-> b.geom, b.{key} LIMIT %(k)s) n""").format(
        key=sql.Identifier(key), a=sql.Identifier(*a.split(".")), b=sql.Identifier(*b.split(".")))
    rows = conn.execute(statement, {"same": same, "radius": radius, "k": k})
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _geography_oracle(conn: psycopg.Connection[Any], table: str, key: str, k: int) -> Pairs:
    """Spheroid distances between every pair of one table's features, k smallest per feature."""
    statement = sql.SQL("""
        SELECT a_id, rank, b_id, dist FROM (
            SELECT a.{key} AS a_id, b.{key} AS b_id,
                   ST_Distance(a.geom::geography, b.geom::geography, true) AS dist,
                   row_number() OVER (PARTITION BY a.{key} ORDER BY
                       ST_Distance(a.geom::geography, b.geom::geography, true), b.{key}) AS rank
            FROM {t} a JOIN {t} b ON a.{key} <> b.{key}) pairs
        WHERE rank <= %(k)s""").format(key=sql.Identifier(key), t=sql.Identifier(*table.split(".")))
    return {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(statement, {"k": k})}


def _assert_same(ours: Pairs, oracle: Pairs) -> None:
    assert ours.keys() == oracle.keys()
    for at, (near_id, dist) in oracle.items():
        assert ours[at][0] == near_id, at
        assert ours[at][1] == pytest.approx(dist, rel=1e-6, abs=1e-9), at


@pytest.fixture
def points(conn: psycopg.Connection[Any]) -> str:
    """300 seeded random points over Georgia's bounding box (some outside the state)."""
    conn.execute("""
        CREATE TABLE public.ga_points AS
        SELECT (row_number() OVER ())::int AS fid, d.geom::geometry(Point, 26916) AS geom
        FROM (SELECT (ST_Dump(ST_GeneratePoints(ST_Expand(ST_Extent(geom)::geometry, 20000),
                                                300, 42))).geom
              FROM public.georgia_counties) d""")
    conn.execute("SELECT UpdateGeometrySRID('public', 'ga_points', 'geom', 26916)")
    conn.execute("ALTER TABLE public.ga_points ADD PRIMARY KEY (fid)")
    conn.execute("""
        CREATE TABLE public.ga_lines AS
        SELECT fid, ST_Multi(ST_Boundary(geom))::geometry(MultiLineString, 26916) AS geom
        FROM public.georgia_counties""")
    conn.execute("ALTER TABLE public.ga_lines ADD PRIMARY KEY (fid)")
    return "public.ga_points"


def test_same_table_polygons_match_postgis_knn(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {"input_table": "public.georgia_counties",
                              "near_table": "public.georgia_counties", "k": 3,
                              "output_table": "results.ga_near"})
    assert row["status"] == "completed", row["error"]
    assert row["result"]["rows"] == 159 * 3 and row["result"]["same_table"] is True
    assert row["result"]["method"] == "planar"
    oracle = _knn_oracle(conn, "public.georgia_counties", "public.georgia_counties", "fid", 3,
                         same=True)
    _assert_same(_ours(conn, "results.ga_near", "fid"), oracle)
    # every input attribute is kept, with the input geometry
    columns = {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'results' "
        "AND table_name = 'ga_near'")}
    inputs = {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'georgia_counties'")}
    assert inputs | {"near_id", "near_rank", "near_dist", "near_angle"} <= columns
    same_geom = conn.execute(
        "SELECT bool_and(ST_Equals(r.geom, g.geom)) FROM results.ga_near r "
        "JOIN public.georgia_counties g USING (fid)").fetchone()
    assert same_geom == (True,)


def test_points_to_lines_within_radius(db_url: str, conn: psycopg.Connection[Any],
                                       points: str) -> None:
    row = _run(db_url, conn, {"input_table": points, "near_table": "public.ga_lines", "k": 2,
                              "search_radius": 8000, "lines": True,
                              "output_table": "results.pt_near"})
    assert row["status"] == "completed", row["error"]
    oracle = _knn_oracle(conn, points, "public.ga_lines", "fid", 2, radius=8000)
    _assert_same(_ours(conn, "results.pt_near", "fid"), oracle)
    lonely = conn.execute(
        "SELECT count(*) FROM public.ga_points p WHERE NOT EXISTS (SELECT 1 FROM public.ga_lines "
        "l WHERE ST_DWithin(p.geom, l.geom, 8000))").fetchone()
    assert lonely is not None and lonely[0] > 0
    nulls = conn.execute("SELECT count(*), count(DISTINCT fid) FROM results.pt_near "
                         "WHERE near_rank IS NULL AND near_id IS NULL AND near_dist IS NULL "
                         "AND near_angle IS NULL AND near_line IS NULL").fetchone()
    assert nulls == (lonely[0], lonely[0])
    assert row["result"]["without_neighbour"] == lonely[0]
    # near_line is the shortest line: its length is the distance, it starts on the input,
    # and its angle is the direction of ST_Azimuth turned to east-counter-clockwise.
    check = conn.execute("""
        SELECT max(abs(ST_Length(r.near_line) - r.near_dist)),
               max(ST_Distance(ST_StartPoint(r.near_line), p.geom)),
               max(abs(((90 - degrees(ST_Azimuth(ST_ClosestPoint(p.geom, l.geom),
                                                 ST_ClosestPoint(l.geom, p.geom)))
                         + 540)::numeric % 360) - 180 - r.near_angle::numeric)),
               min(srid), min(type)
        FROM results.pt_near r JOIN public.ga_points p USING (fid)
        JOIN public.ga_lines l ON l.fid = r.near_id
        JOIN geometry_columns g ON g.f_table_schema = 'results' AND g.f_table_name = 'pt_near'
             AND g.f_geometry_column = 'near_line'""").fetchone()
    assert check is not None
    assert check[0] < 1e-6 and check[1] < 1e-6 and check[2] < 1e-6
    assert (check[3], check[4]) == (26916, "LINESTRING")


def test_geodesic_points_match_geography(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("""
        CREATE TABLE public.us_points AS
        SELECT (row_number() OVER ())::int AS id, d.geom::geometry(Point, 4326) AS geom
        FROM (SELECT (ST_Dump(ST_GeneratePoints(ST_Union(geom), 250, 7))).geom
              FROM public.us_states) d""")
    conn.execute("ALTER TABLE public.us_points ADD PRIMARY KEY (id)")
    row = _run(db_url, conn, {"input_table": "public.us_points", "near_table": "public.us_points",
                              "k": 3, "output_table": "results.us_near"})
    assert row["status"] == "completed", row["error"]
    assert (row["result"]["method"], row["result"]["units"]) == ("geodesic", "metres")
    _assert_same(_ours(conn, "results.us_near", "id"),
                 _geography_oracle(conn, "public.us_points", "id", 3))
    # the angle is the spheroid azimuth, turned to east-counter-clockwise
    worst = conn.execute("""
        SELECT max(abs(((90 - degrees(ST_Azimuth(p.geom::geography, q.geom::geography))
                         + 540)::numeric % 360) - 180 - r.near_angle::numeric))
        FROM results.us_near r JOIN public.us_points p USING (id)
        JOIN public.us_points q ON q.id = r.near_id""").fetchone()
    assert worst is not None and worst[0] < 1e-6


def test_near_filter_limits_the_candidates(db_url: str, conn: psycopg.Connection[Any]) -> None:
    pytest.importorskip("geojobs.filters")
    row = _run(db_url, conn, {"input_table": "public.georgia_counties",
                              "near_table": "public.georgia_counties", "k": 1,
                              "near_filter": [{"column": "totpop90", "op": ">", "value": 100000}],
                              "output_table": "results.big_near"})
    assert row["status"] == "completed", row["error"]
    conn.execute("CREATE TABLE public.ga_big AS SELECT * FROM public.georgia_counties "
                 "WHERE totpop90 > 100000")
    _assert_same(_ours(conn, "results.big_near", "fid"),
                 _knn_oracle(conn, "public.georgia_counties", "public.ga_big", "fid", 1,
                             same=True))


@pytest.mark.parametrize(("params", "field"), [
    ({"input_table": None}, "params.input_table"),
    ({"k": 0}, "params.k"),
    ({"k": 5000}, "params.k"),
    ({"search_radius": -5}, "params.search_radius"),
    ({"method": "manhattan"}, "params.method"),
    ({"near_table": "public.nope"}, "near_table"),
    ({"near_key": "nope"}, "near_key"),
    ({"near_table": "public.us_states", "method": "planar",
      "input_table": "public.us_states"}, "method"),
])
def test_bad_params_fail_at_once_naming_the_field(db_url: str, conn: psycopg.Connection[Any],
                                                  params: dict[str, Any], field: str) -> None:
    base = {"input_table": "public.georgia_counties", "near_table": "public.georgia_counties"}
    row = _run(db_url, conn, {**base, **params})
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith(field), row["error"]


def test_existing_output_needs_overwrite(db_url: str, conn: psycopg.Connection[Any]) -> None:
    params = {"input_table": "public.nc_counties", "near_table": "public.nc_counties",
              "output_table": "results.nc_near"}
    assert _run(db_url, conn, params)["status"] == "completed"
    second = _run(db_url, conn, params)
    assert second["status"] == "failed" and "overwrite" in second["error"]
    third = _run(db_url, conn, {**params, "k": 2, "overwrite": True})
    assert third["status"] == "completed"
    assert conn.execute("SELECT count(*) FROM results.nc_near").fetchone() == (200,)
