"""clip and erase: a polygon grid cut by 100 irregular, overlapping polygons, both engines.

Cases, one row each per size, measured in one run on the same tables (each case twice,
interleaved, the faster run kept, since the machine is shared):

- ``geojobs``: the whole job as a worker process (``measure_job``), queue to completed; the
  Shapely engine in the worker (binary COPY in, :mod:`analysis.overlay`, binary COPY out);
- ``sql_engine``: the same overlay done in PostGIS (:mod:`bench.overlay_sql`), rolled back;
- ``shapely_only``: :func:`analysis.overlay.clip` / ``erase`` in process, no I/O;
- ``floor``: binary COPY read + write of the input rows (the I/O floor).

Goal: the chosen engine is the faster of the two and within 1.5x of the floor.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import psycopg
import shapely

from analysis.overlay import clip, erase
from bench.data import DEFAULT_SRID, load_layer, square_grid
from bench.floor import copy_read, copy_write
from bench.measure import measure_job, time_call
from bench.overlay_sql import overlay_in_database

__all__ = ["COLUMNS", "SIZES", "SMOKE_SIZES", "clip_polygons", "run_overlay_bench"]

SIZES = "10k,100k"
SMOKE_SIZES = [400]
CLIP_FEATURES = 100
REPEAT = 2  # runs of each case at measured sizes (10k and up); smoke sizes run once
COLUMNS = ["job_type", "case", "size", "wall_s", "job_s", "peak_rss_mb", "ratio_to_floor", "rows", "note"]
_READ = {"id": "int8", "value": "float8", "category": "text"}


def clip_polygons(side: float, n: int = CLIP_FEATURES, *, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` irregular star-shaped polygons (30 to 120 vertices) over a square of ``side``.

    Radii vary smoothly around each centre, so the outlines look like counties or lakes
    rather than regular stars; neighbours overlap.
    """
    rng = np.random.default_rng(seed)
    geoms = []
    for cx, cy in rng.uniform(0, side, (n, 2)):
        k = int(rng.integers(30, 121))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        base = side * rng.uniform(0.04, 0.12)
        wobble = sum(
            rng.uniform(0, 0.15) * np.sin(f * angles + rng.uniform(0, 2 * math.pi)) for f in (2, 3, 5, 9)
        )
        r = base * (1 + wobble) * rng.uniform(0.92, 1.0, k)
        geoms.append(shapely.Polygon(np.c_[cx + r * np.cos(angles), cy + r * np.sin(angles)]))
    return gpd.GeoDataFrame({"name": [f"zone {i}" for i in range(n)]}, geometry=geoms, crs=DEFAULT_SRID)


def _floor(url: str, table: str, out: str) -> float:
    def work() -> None:
        with psycopg.connect(url) as conn:
            gdf = copy_read(conn, table, _READ)
            copy_write(conn, gdf, out, _READ, geometry_type="Polygon")
            conn.rollback()

    return time_call(work).wall_s


def _sql_engine(
    url: str, how: Literal["clip", "erase"], table: str, mask: str, out: str
) -> tuple[float, float, int]:
    def work() -> int:
        with psycopg.connect(url) as conn:
            rows = overlay_in_database(
                conn,
                how,
                input_table=table,
                overlay_table=mask,
                output_table=out,
                key="fid",
                attributes=list(_READ),
                srid=DEFAULT_SRID,
            )
            conn.rollback()
            return rows

    timing = time_call(work)
    return timing.wall_s, timing.peak_rss_mb, int(timing.value)


def _keeper(best: dict[str, dict[str, Any]]) -> Any:
    """A function recording a case's row when it is the fastest so far."""

    def keep(case: str, row: dict[str, Any]) -> None:
        if case not in best or row["job_s"] < best[case]["job_s"]:
            best[case] = row

    return keep


def run_overlay_bench(
    how: Literal["clip", "erase"], sizes: list[int], database_url: str
) -> list[dict[str, Any]]:
    """One row per case and size for ``how``."""
    rows: list[dict[str, Any]] = []
    operation = clip if how == "clip" else erase
    for n in sizes:
        grid = square_grid(n, seed=n)
        side = math.ceil(math.sqrt(n)) * 100.0
        mask = clip_polygons(side, seed=n)
        table, mask_table = f"public.bench_{how}_{n}", f"public.bench_{how}_mask_{n}"
        load_layer(database_url, grid, table)
        load_layer(database_url, mask, mask_table)
        best: dict[str, dict[str, Any]] = {}
        keep = _keeper(best)
        for _ in range(REPEAT if n >= 10_000 else 1):
            job = measure_job(
                database_url,
                how,
                {
                    "input_table": table,
                    f"{how}_table": mask_table,
                    "output_table": f"results.bench_{how}_{n}",
                    "overwrite": True,
                },
            )
            keep(
                "geojobs",
                {
                    "wall_s": job.wall_s,
                    "job_s": job.job_s,
                    "peak_rss_mb": job.peak_rss_mb,
                    "rows": job.job_row["result"]["rows"],
                    "note": "worker process, Shapely engine; wall_s includes interpreter start",
                },
            )
            sql_s, sql_mb, sql_rows = _sql_engine(
                database_url, how, table, mask_table, f"results.bench_{how}_sql_{n}"
            )
            keep(
                "sql_engine",
                {
                    "wall_s": sql_s,
                    "job_s": sql_s,
                    "peak_rss_mb": sql_mb,
                    "rows": sql_rows,
                    "note": "PostGIS statements, rolled back",
                },
            )
            shp = time_call(operation, grid, mask)
            keep(
                "shapely_only",
                {
                    "wall_s": shp.wall_s,
                    "job_s": shp.wall_s,
                    "peak_rss_mb": shp.peak_rss_mb,
                    "rows": shp.value.summary.output_features,
                    "note": f"analysis.overlay.{how} in process, no I/O",
                },
            )
            floor_s = _floor(database_url, table, f"results.bench_{how}_floor_{n}")
            keep(
                "floor",
                {
                    "wall_s": floor_s,
                    "job_s": floor_s,
                    "peak_rss_mb": float("nan"),
                    "rows": n,
                    "note": "binary COPY read + write of the input rows",
                },
            )
        floor_s = best["floor"]["job_s"]
        for case in ("geojobs", "sql_engine", "shapely_only", "floor"):
            rows.append(
                {
                    "job_type": how,
                    "case": case,
                    "size": n,
                    **best[case],
                    "ratio_to_floor": best[case]["job_s"] / floor_s,
                }
            )
    return rows
