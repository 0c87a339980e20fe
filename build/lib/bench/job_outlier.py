"""outlier: Local Moran's I on a square grid of n polygons against its floor
(bench/local_stats.py), measured in one run.

Cases per size: ``geojobs`` (the whole job as a worker process; ``job_s`` is claim to
completion, ``wall_s`` adds interpreter start and compiling esda's kernels before the claim),
``floor``, and esda alone with numba on and off. Goal (issue 5): job_s within 1.2x of the floor.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from bench.data import load_layer, square_grid
from bench.local_stats import best_of, esda_numba_rows, floor_polygons, repeat, warm
from bench.measure import measure_job

__all__ = ["SIZES", "SMOKE_SIZES", "COLUMNS", "run"]

SIZES = "100k"
SMOKE_SIZES = [300]
NUMBA_MIN_SIZE = 10_000
COLUMNS = ["job_type", "case", "input", "size", "wall_s", "job_s", "peak_rss_mb",
           "ratio_to_floor", "note"]


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size."""
    warm()
    rows: list[dict[str, Any]] = []
    for n in sizes:
        polygons = square_grid(n, seed=n)
        polygons["rate"] = polygons["value"] + 10.0
        table = f"public.bench_outlier_{n}"
        load_layer(database_url, polygons, table)
        job, floor_s, floor_mb = best_of(
            partial(measure_job, database_url, "outlier", {
                "input_table": table, "value_column": "rate",
                "output_table": f"results.bench_outlier_{n}", "overwrite": True}),
            partial(floor_polygons, database_url, table, f"results.bench_lm_floor_{n}", "lisa"),
            repeat(n))
        base = {"job_type": "outlier", "input": f"{n:,} polygons", "size": n}
        rows.append({**base, "case": "geojobs", "wall_s": job.wall_s, "job_s": job.job_s,
                     "peak_rss_mb": job.peak_rss_mb, "ratio_to_floor": job.job_s / floor_s,
                     "note": "queen, row-standardised, 999 permutations"})
        rows.append({**base, "case": "floor", "wall_s": floor_s, "job_s": floor_s,
                     "peak_rss_mb": floor_mb, "ratio_to_floor": 1.0,
                     "note": "COPY in + libpysal queen + esda Moran_Local + COPY out"})
        if n >= NUMBA_MIN_SIZE:  # two fresh processes that compile: not at smoke sizes
            rows.extend(esda_numba_rows("outlier", "lisa", n))
    return rows
