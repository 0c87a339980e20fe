"""dissolve: a hex-grid coverage into 50 contiguous groups, against PostGIS and its floor.

Cases, one row each per size, all in one run on the same table:

- ``geojobs``: the whole job as a worker process (``measure_job``), queue to completed;
- ``floor``: binary COPY read + ``shapely.coverage_union_all`` per group + COPY write;
- ``postgis``: ``CREATE TABLE ... AS SELECT grp, ST_Union(geom) ... GROUP BY grp``, what a
  user would write in SQL (rolled back);
- ``geopandas``: ``read_postgis`` + ``GeoDataFrame.dissolve`` + ``to_postgis``, the plain
  script (up to 100k features: it is the slowest by far).

Goal: 100,000 polygons into 50 groups at least 2x faster than PostGIS.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np
import psycopg
import shapely
from psycopg import sql

from bench.data import hex_grid, load_layer
from bench.database import sqlalchemy_engine
from bench.floor import copy_read, copy_write
from bench.measure import growth_exponent, measure_job, time_call, time_sql

__all__ = ["SIZES", "SMOKE_SIZES", "COLUMNS", "run"]

SIZES = "10k,100k,1M"
SMOKE_SIZES = [300]
GROUPS = 50
GEOPANDAS_MAX = 100_000
COLUMNS = ["job_type", "case", "size", "groups", "wall_s", "job_s", "peak_rss_mb",
           "ratio_to_floor", "speedup_vs_postgis", "growth_exponent", "note"]


def _floor(url: str, table: str, out: str) -> tuple[float, float]:
    """Seconds of the bare path (read, union per group, write) and its peak RSS."""
    def work() -> None:
        with psycopg.connect(url) as conn:
            gdf = copy_read(conn, table, {"grp": "int4"})
            geoms = gdf.geometry.to_numpy()
            codes = gdf["grp"].to_numpy()
            order = np.argsort(codes, kind="stable")
            groups = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
            unions = [shapely.coverage_union_all(geoms[g]) for g in groups]
            result = gpd.GeoDataFrame({"grp": codes[[g[0] for g in groups]]},
                                      geometry=unions, crs=gdf.crs)
            copy_write(conn, result, out, {"grp": "int4"})
            conn.rollback()
    timing = time_call(work)
    return timing.wall_s, timing.peak_rss_mb


def _geopandas(url: str, table: str, out: str) -> tuple[float, float]:
    """Seconds of the plain GeoPandas script and its peak RSS."""
    engine = sqlalchemy_engine(url)
    schema, _, name = out.rpartition(".")

    def work() -> None:
        gdf = gpd.read_postgis(f"SELECT grp, geom FROM {table}", engine,  # noqa: S608 - fixed names
                               geom_col="geom")
        gdf.dissolve("grp").reset_index().to_postgis(name, engine, schema=schema,
                                                     if_exists="replace")
    try:
        timing = time_call(work)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
        engine.dispose()
    return timing.wall_s, timing.peak_rss_mb


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size; the geojobs rows carry the fitted growth exponent."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        table = f"public.bench_dissolve_{n}"
        load_layer(database_url, hex_grid(n, groups=GROUPS, seed=n), table)
        base = {"job_type": "dissolve", "size": n, "groups": GROUPS}
        job = measure_job(database_url, "dissolve", {
            "input_table": table, "by": ["grp"], "output_table": f"results.bench_dissolve_{n}",
            "overwrite": True})
        coverage = job.job_row["result"].get("coverage_union_groups")
        floor_s, floor_mb = _floor(database_url, table, f"results.bench_floor_{n}")
        pg = time_sql(database_url, sql.SQL(
            "CREATE TABLE results.bench_pg AS SELECT grp, ST_Multi(ST_Union(geom)) AS geom "
            "FROM {} GROUP BY grp").format(sql.Identifier(*table.split("."))))
        rows.append({**base, "case": "geojobs", "wall_s": job.wall_s, "job_s": job.job_s,
                     "peak_rss_mb": job.peak_rss_mb, "ratio_to_floor": job.job_s / floor_s,
                     "speedup_vs_postgis": pg.wall_s / job.job_s,
                     "note": f"{coverage}/{GROUPS} groups by coverage union; wall_s includes "
                             "interpreter start"})
        rows.append({**base, "case": "floor", "wall_s": floor_s, "job_s": floor_s,
                     "peak_rss_mb": floor_mb, "ratio_to_floor": 1.0,
                     "note": "COPY read + coverage_union_all per group + COPY write, in process"})
        rows.append({**base, "case": "postgis", "wall_s": pg.wall_s, "job_s": pg.wall_s,
                     "peak_rss_mb": pg.peak_rss_mb, "ratio_to_floor": pg.wall_s / floor_s,
                     "note": "CREATE TABLE AS ... ST_Union GROUP BY; backend private RSS"})
        if n <= GEOPANDAS_MAX:
            gp_s, gp_mb = _geopandas(database_url, table, f"results.bench_gpd_{n}")
            rows.append({**base, "case": "geopandas", "wall_s": gp_s, "job_s": gp_s,
                         "peak_rss_mb": gp_mb, "ratio_to_floor": gp_s / floor_s,
                         "note": "read_postgis + dissolve + to_postgis, in process"})
    for case in ("geojobs", "floor", "postgis"):
        found = [r for r in rows if r["case"] == case]
        if len(found) >= 2:
            exponent = growth_exponent([r["size"] for r in found], [r["job_s"] for r in found])
            for r in found:
                r["growth_exponent"] = exponent
    return rows
