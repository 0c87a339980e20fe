"""dissolve as a job, checked against PostGIS ``ST_Union ... GROUP BY`` on real layers."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest
from psycopg import sql

from geojobs import queue
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db


def _run(db_url: str, conn: psycopg.Connection[Any], params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "dissolve", params)
    result = run_worker(db_url, "dissolve")
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def test_dissolve_by_region_matches_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {
        "input_table": "public.us_states", "by": ["sub_region"],
        "aggregates": {"area": "sum", "perimeter": "max", "state_fips": "count",
                       "state_name": "first"},
        "output_table": "results.regions"})
    assert row["status"] == "completed", row["error"]
    assert row["result"]["rows"] == 9 and row["result"]["output_table"] == "results.regions"
    ours = {r[0]: r[1:] for r in conn.execute(
        "SELECT sub_region, ST_Area(geom), feature_count, sum_area, max_perimeter, "
        "count_state_fips, first_state_name, ST_IsValid(geom), GeometryType(geom) "
        "FROM results.regions")}
    oracle = {r[0]: r[1:] for r in conn.execute(
        "SELECT sub_region, ST_Area(ST_Union(geom)), count(*), sum(area), max(perimeter), "
        "count(state_fips), (array_agg(state_name ORDER BY fid))[1] "
        "FROM public.us_states GROUP BY sub_region")}
    assert ours.keys() == oracle.keys()
    for region, (area, count, s_area, m_per, n_fips, first, valid, gtype) in ours.items():
        o_area, o_count, o_sum, o_max, o_n, o_first = oracle[region]
        assert area == pytest.approx(o_area, rel=1e-9)
        assert (count, n_fips, first, valid, gtype) == (o_count, o_n, o_first, True, "MULTIPOLYGON")
        assert s_area == pytest.approx(o_sum, rel=1e-12) and m_per == pytest.approx(o_max)
    # Same shapes, not only the same areas: the symmetric difference is negligible.
    diff = conn.execute(
        "SELECT max(ST_Area(ST_SymDifference(r.geom, o.geom)) / ST_Area(o.geom)) FROM "
        "results.regions r JOIN (SELECT sub_region, ST_Union(geom) AS geom FROM public.us_states "
        "GROUP BY sub_region) o USING (sub_region)").fetchone()
    assert diff is not None and diff[0] < 1e-9


def test_dissolve_all_counties_matches_postgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {"input_table": "georgia_counties",
                              "aggregates": {"totpop90": "sum", "pctbach": "mean"}})
    assert row["status"] == "completed", row["error"]
    table = row["result"]["output_table"]
    assert table == f"results.dissolve_{row['id']}"
    ours = conn.execute(sql.SQL("SELECT ST_Area(geom), feature_count, sum_totpop90, mean_pctbach "
                                "FROM {}").format(sql.Identifier(*table.split(".")))).fetchone()
    oracle = conn.execute("SELECT ST_Area(ST_Union(geom)), count(*), sum(totpop90), "
                          "avg(pctbach) FROM public.georgia_counties").fetchone()
    assert ours is not None and oracle is not None
    assert ours[0] == pytest.approx(oracle[0], rel=1e-9)
    assert ours[1:3] == tuple(oracle[1:3]) and ours[3] == pytest.approx(float(oracle[3]))


def test_result_table_is_ready_for_qgis(db_url: str, conn: psycopg.Connection[Any]) -> None:
    row = _run(db_url, conn, {"input_table": "public.nc_counties", "output_table": "results.nc"})
    assert row["status"] == "completed"
    srid, gtype = conn.execute("SELECT srid, type FROM geometry_columns WHERE "
                               "f_table_schema = 'results' AND f_table_name = 'nc'").fetchone()  # type: ignore[misc]
    assert (srid, gtype) == (4267, "MULTIPOLYGON")
    indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'results' "
                           "AND tablename = 'nc'").fetchall()
    assert any("gist" in i[0] for i in indexes) and any("UNIQUE" in i[0] for i in indexes)


def test_null_group_values_form_their_own_group(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE public.us_states SET sub_region = NULL WHERE state_name IN "
                 "('Texas', 'Maine')")
    row = _run(db_url, conn, {"input_table": "public.us_states", "by": ["sub_region"],
                              "output_table": "results.r"})
    assert row["result"]["rows"] == 10
    nulls = conn.execute("SELECT feature_count FROM results.r WHERE sub_region IS NULL").fetchone()
    assert nulls == (2,)


_MIXED_LAYER = """
CREATE TABLE public.mixed (fid serial PRIMARY KEY, grp text, geom geometry(Polygon, 3857));
-- a coverage: 10 x 10 squares sharing edges and vertices
INSERT INTO public.mixed (grp, geom)
  SELECT 'coverage', geom FROM ST_SquareGrid(10, ST_MakeEnvelope(0, 0, 99, 99, 3857));
-- a coverage with gaps: holes of one square, one of two by two, and a missing corner
INSERT INTO public.mixed (grp, geom)
  SELECT 'gapped', ST_Translate(geom, 200, 0)
  FROM ST_SquareGrid(10, ST_MakeEnvelope(0, 0, 99, 99, 3857))
  WHERE NOT (i % 3 = 1 AND j % 3 = 1) AND NOT (i BETWEEN 5 AND 6 AND j BETWEEN 5 AND 6)
    AND NOT (i = 9 AND j = 9);
-- overlapping discs
INSERT INTO public.mixed (grp, geom)
  SELECT 'overlapping', ST_Buffer(ST_MakePoint(400 + 7 * g, 50 + 5 * (g % 3)), 12, 8)::geometry(Polygon, 3857)
  FROM generate_series(0, 14) AS g;
-- one square inside another, and an exact duplicate
INSERT INTO public.mixed (grp, geom) VALUES
  ('nested', ST_MakeEnvelope(600, 0, 700, 100, 3857)),
  ('nested', ST_MakeEnvelope(620, 20, 640, 40, 3857)),
  ('nested', ST_MakeEnvelope(650, 0, 700, 50, 3857)),
  ('duplicate', ST_MakeEnvelope(800, 0, 850, 50, 3857)),
  ('duplicate', ST_MakeEnvelope(800, 0, 850, 50, 3857));
-- invalid: self-intersecting bow ties next to squares that share edges with them
INSERT INTO public.mixed (grp, geom)
  SELECT 'invalid', ST_SetSRID(ST_Translate(
    'POLYGON((0 0, 10 10, 10 0, 0 10, 0 0))'::geometry, 900 + 10 * g, 0), 3857)
  FROM generate_series(0, 4) AS g;
INSERT INTO public.mixed (grp, geom)
  SELECT 'invalid', ST_MakeEnvelope(900 + 10 * g, 10, 910 + 10 * g, 20, 3857)
  FROM generate_series(0, 4) AS g;
"""


def test_coverage_check_is_exact_on_overlaps_gaps_and_invalid_input(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    """Every kind of group gives PostGIS's ST_Union, whichever union the job picked."""
    conn.execute(_MIXED_LAYER)
    row = _run(db_url, conn, {"input_table": "public.mixed", "by": ["grp"],
                              "output_table": "results.mixed"})
    assert row["status"] == "completed", row["error"]
    assert row["result"]["rows"] == 6 and row["result"]["repaired"] == 5
    # the two coverages take the fast path; the overlapping groups cannot
    assert 2 <= row["result"]["coverage_union_groups"] <= 3
    compared = conn.execute("""
        WITH oracle AS (
          SELECT grp, ST_Union(ST_CollectionExtract(ST_MakeValid(geom), 3)) AS geom
          FROM public.mixed GROUP BY grp)
        SELECT r.grp, ST_Area(r.geom), ST_Area(o.geom),
               ST_Area(ST_SymDifference(r.geom, o.geom)), ST_IsValid(r.geom),
               (SELECT sum(ST_NumInteriorRings(d.geom)) FROM ST_Dump(r.geom) d),
               (SELECT sum(ST_NumInteriorRings(d.geom)) FROM ST_Dump(o.geom) d),
               ST_NumGeometries(r.geom),
               ST_NumGeometries(o.geom)
        FROM results.mixed r JOIN oracle o USING (grp)""").fetchall()
    assert len(compared) == 6
    for grp, area, oracle_area, sym_diff, valid, holes, oracle_holes, parts, oracle_parts \
            in compared:
        assert valid, grp
        assert area == pytest.approx(oracle_area, rel=1e-9), grp
        assert sym_diff <= 1e-9 * oracle_area, grp
        assert (parts, holes) == (oracle_parts, oracle_holes), grp
    by_group = {r[0]: r for r in compared}
    assert by_group["overlapping"][1] < conn.execute(
        "SELECT sum(ST_Area(geom)) FROM public.mixed WHERE grp = 'overlapping'").fetchone()[0]  # type: ignore[index]
    assert by_group["gapped"][5] == 10  # the holes survive the coverage union


@pytest.mark.parametrize(("params", "field"), [
    ({}, "params.input_table"),
    ({"input_table": "public.us_states", "group_by": ["x"]}, "params.group_by"),
    ({"input_table": "public.nope"}, "input_table"),
    ({"input_table": "public.us_states", "by": ["nope"]}, "by"),
    ({"input_table": "public.us_states", "aggregates": {"state_name": "sum"}},
     "aggregates.state_name"),
    ({"input_table": "public.us_states", "aggregates": {"area": "median"}}, "params.aggregates"),
    ({"input_table": "public.us_states", "output_table": "pg_catalog.x"}, "params.output_table"),
    ({"input_table": "public.us_states", "output_table": "results.\"x; drop table y\""},
     "params.output_table"),
])
def test_bad_params_fail_at_once_naming_the_field(db_url: str, conn: psycopg.Connection[Any],
                                                  params: dict[str, Any], field: str) -> None:
    before = conn.execute("SELECT count(*) FROM pg_class").fetchone()
    row = _run(db_url, conn, params)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith(field), row["error"]
    assert conn.execute("SELECT count(*) FROM pg_class").fetchone() == before


def test_existing_output_needs_overwrite(db_url: str, conn: psycopg.Connection[Any]) -> None:
    params = {"input_table": "public.us_states", "output_table": "results.states_all"}
    assert _run(db_url, conn, params)["status"] == "completed"
    second = _run(db_url, conn, params)
    assert second["status"] == "failed" and "overwrite" in second["error"]
    assert conn.execute("SELECT count(*) FROM results.states_all").fetchone() == (1,)
    third = _run(db_url, conn, {**params, "by": ["sub_region"], "overwrite": True})
    assert third["status"] == "completed"
    assert conn.execute("SELECT count(*) FROM results.states_all").fetchone() == (9,)


def test_srid_zero_fails_naming_the_table(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE public.nosrid AS SELECT fid, ST_SetSRID(geom, 0) AS geom "
                 "FROM public.nc_counties")
    row = _run(db_url, conn, {"input_table": "public.nosrid"})
    assert row["status"] == "failed" and row["error"].startswith("input_table:")
    assert "SRID" in row["error"]


def test_a_job_that_cannot_complete_leaves_no_table(db_url: str,
                                                    conn: psycopg.Connection[Any]) -> None:
    """The result table and the completed status are one transaction."""
    import workers.dissolve as dissolve_module
    from geojobs.runner import Worker, WorkerSettings

    job_id = queue.enqueue(conn, "dissolve", {"input_table": "public.nc_counties",
                                              "output_table": "results.never"})
    worker = Worker(WorkerSettings(job_type="dissolve", database_url=db_url))

    class Cancelling:
        Params = dissolve_module.Params

        @staticmethod
        def run(ctx: Any, params: Any) -> dict[str, Any]:
            result = dissolve_module.run(ctx, params)  # the table is written...
            with psycopg.connect(db_url, autocommit=True) as other:
                queue.cancel(other, job_id)  # ...but the job is cancelled before it completes
            return result

    worker.jobtype = dataclasses.replace(worker.jobtype, run=Cancelling.run)
    worker.run(drain=True)
    assert job_row(conn, job_id)["status"] == "cancelled"
    assert conn.execute("SELECT to_regclass('results.never')").fetchone() == (None,)
