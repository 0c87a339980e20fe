"""Shared by the hotspot and outlier benchmarks: the floor, and esda with numba on and off.

The floor of a local-statistic job is what it cannot avoid, in one process with esda's
kernels already compiled (a worker compiles them before its first claim; see analysis/jit.py):
binary COPY of the same rows and columns in, libpysal weights and the esda statistic, the
same rows and columns out by COPY.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import shapely
from esda.getisord import G_Local
from esda.moran import Moran_Local
from libpysal.graph import Graph

from bench.floor import copy_read, copy_write
from bench.measure import Measurement, time_call

__all__ = ["ATTRIBUTES", "floor_polygons", "floor_grid", "esda_numba_rows", "warm", "best_of",
           "repeat"]

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = {"fid": "int8", "id": "int8", "value": "float8", "category": "text", "rate": "float8"}
STAT_COLUMNS = {
    "gi": {"gi_zscore": "float8", "gi_pvalue": "float8", "gi_psim": "float8",
           "gi_bin": "int8", "n_neighbors": "int8"},
    "lisa": {"lmi_index": "float8", "lmi_zscore": "float8", "lmi_pvalue": "float8",
             "co_type": "text", "n_neighbors": "int8"},
}


def repeat(n: int) -> int:
    """Runs of each case: three at benchmark sizes (the machine is shared), one when smoking."""
    return 3 if n >= 10_000 else 1


def best_of(job: Callable[[], Measurement], floor: Callable[[], tuple[float, float]],
            runs: int) -> tuple[Measurement, float, float]:
    """Job and floor run alternately ``runs`` times; the fastest of each (and its peak RSS)."""
    best_job: Measurement | None = None
    best_floor = (float("inf"), 0.0)
    for _ in range(runs):
        measured = job()
        if best_job is None or measured.job_s < best_job.job_s:
            best_job = measured
        best_floor = min(best_floor, floor())
    assert best_job is not None
    return best_job, best_floor[0], best_floor[1]


def warm() -> None:
    """Compile esda's kernels in this process, as a worker does before its first claim."""
    from analysis.warmup import warm_up

    warm_up("hotspot")
    warm_up("outlier")


def _statistic(kind: str, y: np.ndarray, graph: Graph) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "gi":
            g = G_Local(y, graph, transform="B", star=True, permutations=999,
                        keep_simulations=False, n_jobs=1, seed=12345)
            p = 2 * g.p_norm
            bins = np.sign(g.Zs) * np.select([p < 0.01, p < 0.05, p < 0.1], [3, 2, 1], 0)
            return {"gi_zscore": g.Zs, "gi_pvalue": p, "gi_psim": g.p_sim,
                    "gi_bin": bins.astype(np.int64)}
        lm = Moran_Local(y, graph, transformation="r", permutations=999,
                         keep_simulations=False, n_jobs=1, seed=12345)
        z = (lm.Is - lm.EI) / np.sqrt(lm.VI)
        labels = np.array(["", "HH", "LH", "LL", "HL"], dtype=object)[lm.q]
        co_type = np.where(lm.p_sim <= 0.05, labels, None)
        return {"lmi_index": lm.Is, "lmi_zscore": z, "lmi_pvalue": lm.p_sim, "co_type": co_type}


def floor_polygons(url: str, table: str, out: str, kind: str, value: str = "rate"
                   ) -> tuple[float, float]:
    """Seconds and peak RSS of COPY in + queen weights + esda + COPY out, for polygons."""
    def work() -> None:
        with psycopg.connect(url) as conn:
            gdf = copy_read(conn, table, ATTRIBUTES)
            graph = Graph.build_contiguity(gdf.geometry, rook=False)
            result = _statistic(kind, gdf[value].to_numpy(dtype=float), graph)
            for column, values in result.items():
                # object dtype keeps None as None for COPY (pandas would make it NaN in a str)
                gdf[column] = pd.Series(values, index=gdf.index,
                                        dtype=object if column == "co_type" else None)
            gdf["n_neighbors"] = graph.cardinalities.to_numpy()
            copy_write(conn, gdf, out, {**ATTRIBUTES, **STAT_COLUMNS[kind]},
                       geometry_type="Polygon")
            conn.rollback()
    timing = time_call(work)
    return timing.wall_s, timing.peak_rss_mb


def floor_grid(url: str, table: str, out: str, cell: float) -> tuple[float, float]:
    """Seconds and peak RSS of COPY in (points) + square-grid counts + distance band + Gi*
    + COPY out (cells)."""
    def work() -> None:
        with psycopg.connect(url) as conn:
            points = copy_read(conn, table, {})
            xy = shapely.get_coordinates(points.geometry.to_numpy())
            x0, y0 = xy.min(axis=0)
            col = np.floor((xy[:, 0] - x0) / cell).astype(np.int64)
            row = np.floor((xy[:, 1] - y0) / cell).astype(np.int64)
            n_cols, n_rows = col.max() + 1, row.max() + 1
            counts = np.bincount(row * n_cols + col, minlength=n_rows * n_cols)
            rr, cc = np.divmod(np.arange(n_rows * n_cols), n_cols)
            boxes = shapely.box(x0 + cc * cell, y0 + rr * cell, x0 + (cc + 1) * cell,
                                y0 + (rr + 1) * cell)
            cells = gpd.GeoDataFrame({"cell_id": np.arange(len(boxes)), "count": counts},
                                     geometry=boxes, crs=points.crs)
            graph = Graph.build_distance_band(cells.centroid, cell * (1 + 1e-9))
            for column, values in _statistic("gi", counts.astype(float), graph).items():
                cells[column] = values
            cells["n_neighbors"] = graph.cardinalities.to_numpy()
            copy_write(conn, cells, out, {"cell_id": "int8", "count": "int8",
                                          **STAT_COLUMNS["gi"]}, geometry_type="Polygon")
            conn.rollback()
    timing = time_call(work)
    return timing.wall_s, timing.peak_rss_mb


def esda_numba_rows(job_type: str, kind: str, n: int) -> list[dict[str, Any]]:
    """esda alone on ``n`` cells, numba on and off, each in a fresh process."""
    rows = []
    for numba in (True, False):
        args = [sys.executable, "-m", "bench.esda_kernel", kind, str(n)]
        if not numba:
            args.append("--no-numba")
        done = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        found = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"job_type": job_type, "case": "esda_numba" if numba else "esda_no_numba",
                     "size": n, "wall_s": found["run_s"], "job_s": found["run_s"],
                     "note": f"esda alone, 999 permutations; first call (compile) "
                             f"{found['compile_s']:.1f} s"})
    return rows
