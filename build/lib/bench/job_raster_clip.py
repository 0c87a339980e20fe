"""raster_clip: a size x size single-band raster clipped by one polygon covering a quarter of it.

Cases, one row each per size:

- ``geojobs``: the whole job as a worker process (``measure_job``): tile-by-tile read of the
  windows under the polygon, temporary tiled GeoTIFF, COG copy with overviews;
- ``mask_whole``: ``rasterio.mask.mask(crop=False)`` (reads the whole raster into memory)
  and a tiled DEFLATE GeoTIFF written in one call, in a child process;
- ``mask_crop``: the same with ``crop=True`` (reads the polygon's bounding window).

The polygon is a diamond centred on the raster, area a quarter of the raster's, so its bounding
box holds half the raster. Peak memory is each process's ``VmHWM``. The source is tiled and
DEFLATE-compressed uint8, written tile by tile, kept between runs under bench/results/.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin
from rasterio.windows import Window

from bench.data import load_layer
from bench.measure import ROOT, _wait_peak, measure_job

__all__ = ["SIZES", "SMOKE_SIZES", "COLUMNS", "run", "make_raster"]

SIZES = "20000"
SMOKE_SIZES = [1200]
COLUMNS = ["job_type", "case", "size", "wall_s", "job_s", "peak_rss_mb", "wall_vs_geojobs",
           "output_px", "note"]
SRID = 3857
PIXEL = 10.0


def make_raster(path: Path, size: int) -> Path:
    """A size x size uint8 raster of smooth seeded noise, nodata 0, written block by block."""
    if path.exists():
        return path
    rng = np.random.default_rng(size)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
               "crs": f"EPSG:{SRID}", "transform": from_origin(0, size * PIXEL, PIXEL, PIXEL),
               "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512,
               "compress": "deflate", "bigtiff": "if_safer"}
    tmp = path.with_suffix(".part.tif")
    step = 2048
    with rasterio.open(tmp, "w", **profile) as dst:
        cols = np.arange(size)
        for top in range(0, size, step):
            rows = np.arange(top, min(top + step, size))[:, None]
            noise = rng.integers(0, 40, (len(rows), size))
            value = 1 + (cols[None, :] // 7 + rows // 5) % 200 + noise
            dst.write(value.astype("uint8")[None], window=Window(0, top, size, len(rows)))
    tmp.rename(path)
    return path


def _diamond(size: int) -> gpd.GeoDataFrame:
    half = size * PIXEL / 2
    a = math.sqrt(0.125) * size * PIXEL  # 2 a^2 = size^2 / 4
    shape = shapely.Polygon([(half - a, half), (half, half - a), (half + a, half),
                             (half, half + a)])
    return gpd.GeoDataFrame({"id": [1]}, geometry=[shape], crs=SRID)


_MASK_SCRIPT = """
import sys, rasterio, shapely
from rasterio.mask import mask
source, target, wkt, crop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
with rasterio.open(source) as src:
    data, transform = mask(src, [shapely.from_wkt(wkt)], crop=crop)
    profile = dict(src.profile, width=data.shape[2], height=data.shape[1], transform=transform,
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")
with rasterio.open(target, "w", **profile) as dst:
    dst.write(data)
"""


def _mask_process(source: Path, target: Path, wkt: str, crop: bool) -> tuple[float, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _MASK_SCRIPT, str(source), str(target), wkt,
                             "1" if crop else "0"], cwd=ROOT, stdout=subprocess.DEVNULL)
    code, peak = _wait_peak(proc, 3600)
    if code != 0:
        raise RuntimeError(f"rasterio.mask process failed with exit code {code}")
    return time.perf_counter() - started, peak


def run(sizes: list[int], database_url: str) -> list[dict[str, Any]]:
    """One row per case and size."""
    rows: list[dict[str, Any]] = []
    cache = ROOT / "bench" / "results" / "rasters"
    cache.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        source = make_raster(cache / f"noise_{n}.tif", n)
        clip = _diamond(n)
        table = f"public.bench_clip_{n}"
        load_layer(database_url, clip, table)
        with tempfile.TemporaryDirectory(dir=cache) as out:
            env = {"GEOJOBS_RASTER_DIR": str(cache), "GEOJOBS_OUTPUT_DIR": out}
            job = measure_job(database_url, "raster_clip", {
                "raster": source.name, "clip_table": table, "output_raster": "clip.tif"},
                env=env)
            result = job.job_row["result"]
            base = {"job_type": "raster_clip", "size": n}
            rows.append({**base, "case": "geojobs", "wall_s": job.wall_s, "job_s": job.job_s,
                         "peak_rss_mb": job.peak_rss_mb, "wall_vs_geojobs": 1.0,
                         "output_px": result["width"] * result["height"],
                         "note": "tiles under the polygon only; COG with overviews; wall_s "
                                 "includes interpreter start"})
            wkt = clip.geometry.iloc[0].wkt
            for case, crop in (("mask_whole", False), ("mask_crop", True)):
                wall, peak = _mask_process(source, Path(out) / f"{case}.tif", wkt, crop)
                with rasterio.open(Path(out) / f"{case}.tif") as written:
                    px = written.width * written.height
                rows.append({**base, "case": case, "wall_s": wall, "job_s": wall,
                             "peak_rss_mb": peak, "wall_vs_geojobs": wall / job.wall_s,
                             "output_px": px,
                             "note": f"rasterio.mask(crop={crop}) + one tiled DEFLATE write, "
                                     "child process"})
    return rows
