"""hotspot_timeseries: point incidents over 24 monthly steps into a grid, against its I/O floor.

The input is ``size`` incidents over 10 x 10 km and 24 months (2023-2024): uniform background,
plus 5 % in a cluster that grows month by month and 2 % in one that appears in the last two
months. The grid has about ``size / 50`` cells (10,000 for 500,000 incidents), so each cell
holds 50 incidents on average whatever the size.

Cases, one row each per size, in one run on the same table:

- ``geojobs``: the whole job as a worker process (``measure_job``), square cells; its row
  carries the shares of the job spent in aggregation (building the cell x month counts),
  Gi* (weights, space-time Gi*, FDR bins) and Mann-Kendall, from the job's ``timings_s``;
- ``geojobs_hexagon``: the same with hexagons of the same area;
- ``io_floor``: binary COPY read of the incidents + binary COPY write of as many result rows
  with the same columns, in process: what any job must spend moving the data.
"""

from __future__ import annotations

import math
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg

from bench.data import DEFAULT_SRID, load_layer
from bench.floor import copy_read, copy_write
from bench.measure import measure_job, time_call

__all__ = ["SIZES", "SMOKE_SIZES", "COLUMNS", "run", "incidents"]

SIZES = "500k"
SMOKE_SIZES = [3_000]
EXTENT = 10_000.0
STEPS = 24
PER_CELL = 50
COLUMNS = ["job_type", "case", "size", "cells", "steps", "wall_s", "job_s", "peak_rss_mb",
           "ratio_to_floor", "share_aggregation", "share_gistar", "share_mann_kendall", "share_rest",
           "categories", "note"]  # fmt: skip
_RESULT_COLUMNS = {"cell_id": "int8", "count": "int8", "category": "text",
                   "category_code": "int2", "trend_tau": "float8", "trend_pvalue": "float8",
                   "n_time_steps": "int4", "hot_steps": "int4", "cold_steps": "int4",
                   "last_gi_zscore": "float8", "last_gi_bin": "int2"}  # fmt: skip


def incidents(n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """``n`` incidents with a ``reported_at`` timestamp; see the module docstring."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2023-01-01T00:00:00")
    month_starts = np.array(
        [np.datetime64(f"{2023 + m // 12}-{m % 12 + 1:02d}-01T00:00:00") for m in range(STEPS)]
    )
    growing, new = int(0.05 * n), int(0.02 * n)
    background = n - growing - new
    xy = [rng.uniform(0, EXTENT, (background, 2))]
    seconds = rng.uniform(0, 730 * 86_400, background).astype("int64")
    times = [start + seconds.astype("timedelta64[s]")]
    weights = np.arange(1, STEPS + 1, dtype=float)
    months = rng.choice(STEPS, size=growing, p=weights / weights.sum())
    xy.append(rng.normal((0.7 * EXTENT, 0.3 * EXTENT), 0.03 * EXTENT, (growing, 2)))
    times.append(month_starts[months] + rng.integers(0, 27 * 86_400, growing).astype("m8[s]"))
    months = rng.choice([STEPS - 2, STEPS - 1], size=new)
    xy.append(rng.normal((0.3 * EXTENT, 0.7 * EXTENT), 0.03 * EXTENT, (new, 2)))
    times.append(month_starts[months] + rng.integers(0, 27 * 86_400, new).astype("m8[s]"))
    points = np.clip(np.concatenate(xy), 0, EXTENT)
    return gpd.GeoDataFrame(
        {"id": np.arange(n, dtype=np.int64), "reported_at": pd.DatetimeIndex(np.concatenate(times))},
        geometry=gpd.points_from_xy(points[:, 0], points[:, 1]),
        crs=DEFAULT_SRID,
    )


def _cell_size(n: int, shape: str) -> float:
    """Cells of ``PER_CELL`` incidents on average: ``n / PER_CELL`` cells over the extent."""
    area = EXTENT * EXTENT / max(n / PER_CELL, 1.0)
    # a pointy-top hexagon of width c has area (sqrt(3) / 2) c^2
    return math.sqrt(area) if shape == "square" else math.sqrt(area / (math.sqrt(3) / 2))


def _io_floor(url: str, table: str, result: str, out: str) -> tuple[float, float]:
    """Seconds and peak RSS of COPY-reading the incidents and COPY-writing the result rows."""
    with psycopg.connect(url) as conn:
        rows = copy_read(conn, result, _RESULT_COLUMNS)

    def work() -> None:
        with psycopg.connect(url) as conn:
            copy_read(conn, table, {"reported_at": "timestamp"})
            copy_write(conn, rows, out, _RESULT_COLUMNS, geometry_type="Polygon")
            conn.rollback()

    timing = time_call(work)
    return timing.wall_s, timing.peak_rss_mb


def _shares(job_s: float, timings: dict[str, float]) -> dict[str, float]:
    aggregation = timings.get("panel", float("nan"))
    gistar = timings.get("weights", 0.0) + timings.get("gistar", 0.0)
    mann_kendall = timings.get("mann_kendall", float("nan"))
    return {
        "share_aggregation": aggregation / job_s,
        "share_gistar": gistar / job_s,
        "share_mann_kendall": mann_kendall / job_s,
        # catalog lookups, read_layer, write_layer, classification, commit
        "share_rest": 1.0 - (aggregation + gistar + mann_kendall) / job_s,
    }


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        table = f"public.bench_incidents_{n}"
        load_layer(database_url, incidents(n, seed=n), table)
        floor_s = floor_mb = float("nan")
        for case, shape in (("geojobs", "square"), ("geojobs_hexagon", "hexagon")):
            output = f"results.bench_emerging_{shape}_{n}"
            job = measure_job(database_url, "hotspot_timeseries", {
                "input_table": table, "time_column": "reported_at", "time_step": "1 month",
                "grid": {"shape": shape, "cell_size": _cell_size(n, shape)},
                "output_table": output, "overwrite": True,
            })  # fmt: skip
            result = job.job_row["result"]
            if case == "geojobs":
                floor_s, floor_mb = _io_floor(
                    database_url, table, output, f"results.bench_floor_{n}"
                )
            found = {k: v for k, v in result["categories"].items() if v}
            rows.append({
                "job_type": "hotspot_timeseries", "case": case, "size": n,
                "cells": result["locations"], "steps": result["time_steps"],
                "wall_s": job.wall_s, "job_s": job.job_s, "peak_rss_mb": job.peak_rss_mb,
                "ratio_to_floor": job.job_s / floor_s,
                **_shares(job.job_s, result["timings_s"]),
                "categories": "; ".join(f"{k}: {v}" for k, v in found.items()),
                "note": "wall_s includes interpreter start; shares are of job_s",
            })  # fmt: skip
        rows.append({
            "job_type": "hotspot_timeseries", "case": "io_floor", "size": n,
            "wall_s": floor_s, "job_s": floor_s, "peak_rss_mb": floor_mb, "ratio_to_floor": 1.0,
            "note": "COPY read of the incidents + COPY write of the result rows, in process",
        })  # fmt: skip
    return rows
