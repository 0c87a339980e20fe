"""hotspot: Gi* on a square grid of n polygons, and on 10 n point incidents counted into about
n / 10 square cells, each against its floor (bench/local_stats.py), measured in one run.

Cases per size: ``geojobs`` (the whole job as a worker process, queue to completed; its
``job_s`` is claim to completion, its ``wall_s`` adds interpreter start and the compilation of
esda's kernels before the claim), ``floor``, and for the polygons esda alone with numba on and
off. Goal: job_s within 1.2x of the floor.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from bench.data import load_layer, random_points, square_grid
from bench.local_stats import best_of, esda_numba_rows, floor_grid, floor_polygons, repeat, warm
from bench.measure import measure_job

__all__ = ["SIZES", "SMOKE_SIZES", "COLUMNS", "run"]

SIZES = "100k"
SMOKE_SIZES = [300]
NUMBA_MIN_SIZE = 10_000
EXTENT = 100_000.0
COLUMNS = ["job_type", "case", "input", "size", "wall_s", "job_s", "peak_rss_mb",
           "ratio_to_floor", "note"]


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size."""
    warm()
    rows: list[dict[str, Any]] = []
    for n in sizes:
        polygons = square_grid(n, seed=n)
        polygons["rate"] = polygons["value"] + 10.0  # Gi* wants positive values
        table = f"public.bench_hotspot_{n}"
        load_layer(database_url, polygons, table)
        job, floor_s, floor_mb = best_of(
            partial(measure_job, database_url, "hotspot", {
                "input_table": table, "value_column": "rate",
                "output_table": f"results.bench_hotspot_{n}", "overwrite": True}),
            partial(floor_polygons, database_url, table, f"results.bench_hs_floor_{n}", "gi"),
            repeat(n))
        base = {"job_type": "hotspot", "input": f"{n:,} polygons", "size": n}
        rows.append({**base, "case": "geojobs", "wall_s": job.wall_s, "job_s": job.job_s,
                     "peak_rss_mb": job.peak_rss_mb, "ratio_to_floor": job.job_s / floor_s,
                     "note": "queen, binary, 999 permutations"})
        rows.append({**base, "case": "floor", "wall_s": floor_s, "job_s": floor_s,
                     "peak_rss_mb": floor_mb, "ratio_to_floor": 1.0,
                     "note": "COPY in + libpysal queen + esda G_Local + COPY out"})

        n_points = 10 * n
        cell = EXTENT / math.sqrt(n / 10)
        points = random_points(n_points, extent=EXTENT, seed=n)[["geometry"]]
        ptable = f"public.bench_incidents_{n_points}"
        load_layer(database_url, points, ptable)
        job, floor_s, floor_mb = best_of(
            partial(measure_job, database_url, "hotspot", {
                "input_table": ptable, "grid": {"shape": "square", "cell_size": cell},
                "output_table": f"results.bench_hotspot_grid_{n}", "overwrite": True}),
            partial(floor_grid, database_url, ptable, f"results.bench_grid_floor_{n}", cell),
            repeat(n))
        cells = job.job_row["result"]["grid"]["n_cells"]
        base = {"job_type": "hotspot", "input": f"{n_points:,} points", "size": n_points}
        rows.append({**base, "case": "geojobs", "wall_s": job.wall_s, "job_s": job.job_s,
                     "peak_rss_mb": job.peak_rss_mb, "ratio_to_floor": job.job_s / floor_s,
                     "note": f"{cells:,} square cells of {cell:,.0f} m, distance band"})
        rows.append({**base, "case": "floor", "wall_s": floor_s, "job_s": floor_s,
                     "peak_rss_mb": floor_mb, "ratio_to_floor": 1.0,
                     "note": "COPY in + bincount + distance band + G_Local + COPY out"})
        if n >= NUMBA_MIN_SIZE:  # two fresh processes that compile: not at smoke sizes
            rows.extend(esda_numba_rows("hotspot", "gi", n))
    return rows
