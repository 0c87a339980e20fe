"""``python -m bench.million [job_type ...] --sizes 100k,1M``: each job type at a million features.

Only the geojobs job runs (no peer, no floor): one worker process per job (``measure_job``),
its time (``job_s``, claim to completion; ``wall_s``, process start to exit), the peak RSS of
the worker and the job process it forks, whether that peak stayed within
``GEOJOBS_MEMORY_CAP_MB`` (default 1024), and the growth exponent of ``job_s`` over the sizes
(``time = a * size^b``; goal b <= 1.15). Inputs are those of the job types' own benchmarks
(``bench/job_<type>.py``), generated with the same seeds. ``raster_clip``'s size is the
raster's side in pixels (``--raster-sizes``), the others' the number of input features.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from bench.data import hex_grid, irregular_polygons, load_layer, parse_sizes, random_points, square_grid
from bench.database import bench_database
from bench.measure import ROOT, growth_exponent, measure_job
from bench.report import print_table, report

__all__ = ["JOB_TYPES", "COLUMNS", "run", "main"]

COLUMNS = ["job_type", "size", "input", "wall_s", "job_s", "peak_rss_mb", "within_cap",
           "exponent", "note"]
MEMORY_CAP_MB = float(os.environ.get("GEOJOBS_MEMORY_CAP_MB", "1024"))


def _dissolve(url: str, n: int) -> tuple[dict[str, Any], str]:
    table = f"public.scale_dissolve_{n}"
    load_layer(url, hex_grid(n, groups=50, seed=n), table)
    return {"input_table": table, "by": ["grp"]}, f"{n:,} hexagons -> 50 groups"


def _overlay(how: str) -> Callable[[str, int], tuple[dict[str, Any], str]]:
    def setup(url: str, n: int) -> tuple[dict[str, Any], str]:
        from bench.overlay_cases import clip_polygons
        table, mask = f"public.scale_{how}_{n}", f"public.scale_{how}_mask_{n}"
        load_layer(url, square_grid(n, seed=n), table)
        load_layer(url, clip_polygons(math.ceil(math.sqrt(n)) * 100.0, seed=n), mask)
        return {"input_table": table, f"{how}_table": mask}, f"{n:,} squares, 100 masks"
    return setup


def _nearest(url: str, n: int) -> tuple[dict[str, Any], str]:
    extent = 100.0 * math.sqrt(n)
    points, polygons = f"public.scale_near_pts_{n}", f"public.scale_near_polys_{n}"
    load_layer(url, random_points(n, extent=extent, seed=n), points)
    load_layer(url, irregular_polygons(max(10, n // 10), overlapping=True, extent=extent,
                                       seed=n + 1), polygons)
    return ({"input_table": points, "near_table": polygons, "k": 1},
            f"{n:,} points x {n // 10:,} polygons, k = 1")


def _local(job_type: str) -> Callable[[str, int], tuple[dict[str, Any], str]]:
    def setup(url: str, n: int) -> tuple[dict[str, Any], str]:
        polygons = square_grid(n, seed=n)
        polygons["rate"] = polygons["value"] + 10.0
        table = f"public.scale_{job_type}_{n}"
        load_layer(url, polygons, table)
        return {"input_table": table, "value_column": "rate"}, f"{n:,} squares, 999 perms"
    return setup


def _hotspot_timeseries(url: str, n: int) -> tuple[dict[str, Any], str]:
    from bench.job_hotspot_timeseries import _cell_size, incidents
    table = f"public.scale_incidents_{n}"
    load_layer(url, incidents(n, seed=n), table)
    return ({"input_table": table, "time_column": "reported_at", "time_step": "1 month",
             "grid": {"shape": "square", "cell_size": _cell_size(n, "square")}},
            f"{n:,} incidents, 24 months, squares")


def _create_view(url: str, n: int) -> tuple[dict[str, Any], str]:
    table = f"public.scale_view_{n}"
    load_layer(url, square_grid(n, seed=n), table)
    return ({"input_table": table,
             "filter": [{"column": "value", "op": ">", "value": 0}]},
            f"{n:,} squares, filter value > 0")


JOB_TYPES: dict[str, Callable[[str, int], tuple[dict[str, Any], str]]] = {
    "dissolve": _dissolve, "clip": _overlay("clip"), "erase": _overlay("erase"),
    "nearest": _nearest, "hotspot": _local("hotspot"), "outlier": _local("outlier"),
    "hotspot_timeseries": _hotspot_timeseries, "create_view": _create_view,
}


def _raster_clip(url: str, sizes: Sequence[int]) -> list[dict[str, Any]]:
    from bench.job_raster_clip import _diamond, make_raster
    cache = ROOT / "bench" / "results" / "rasters"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in sizes:
        source = make_raster(cache / f"noise_{n}.tif", n)
        table = f"public.scale_raster_clip_{n}"
        load_layer(url, _diamond(n), table)
        with tempfile.TemporaryDirectory(dir=cache) as out:
            job = measure_job(url, "raster_clip", {
                "raster": source.name, "clip_table": table, "output_raster": "clip.tif"},
                env={"GEOJOBS_RASTER_DIR": str(cache), "GEOJOBS_OUTPUT_DIR": out})
        rows.append(_row("raster_clip", n, f"{n:,} x {n:,} px uint8, diamond", job))
    return rows


def _row(job_type: str, n: int, what: str, job: Any) -> dict[str, Any]:
    return {"job_type": job_type, "size": n, "input": what, "wall_s": job.wall_s,
            "job_s": job.job_s, "peak_rss_mb": job.peak_rss_mb,
            "within_cap": job.peak_rss_mb <= MEMORY_CAP_MB}


def run(job_types: Sequence[str], sizes: Sequence[int], raster_sizes: Sequence[int],
        database_url: str) -> list[dict[str, Any]]:
    """One row per job type and size; the largest size's row carries the exponent."""
    rows: list[dict[str, Any]] = []
    for job_type in job_types:
        if job_type == "raster_clip":
            found = _raster_clip(database_url, raster_sizes)
        else:
            found = []
            for n in sizes:
                params, what = JOB_TYPES[job_type](database_url, n)
                job = measure_job(database_url, job_type, {
                    **params, "output_table": f"results.scale_{job_type}_{n}",
                    "overwrite": True})
                found.append(_row(job_type, n, what, job))
        if len(found) > 1:
            found[-1]["exponent"] = growth_exponent([r["size"] for r in found],
                                                    [r["job_s"] for r in found])
        rows.extend(found)
        print_table(f"{job_type} at scale", found, COLUMNS)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.million", description=__doc__)
    parser.add_argument("job_types", nargs="*", help=f"default: all of {[*JOB_TYPES, 'raster_clip']}")
    parser.add_argument("--sizes", default="100k,1M")
    parser.add_argument("--raster-sizes", default="4000,40000")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    job_types = args.job_types or [*JOB_TYPES, "raster_clip"]
    with bench_database(prefix="geojobs_scale") as url:
        rows = run(job_types, parse_sizes(args.sizes), parse_sizes(args.raster_sizes), url)
    return report("scale", rows, COLUMNS, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
