"""Clip a raster to polygons into a cloud-optimised GeoTIFF (``rasterio.mask`` semantics).

The source is read tile by tile, and only the tiles under a clip geometry,
so a raster larger than memory can be clipped: peak memory follows the
tile size, not the input. Pixels outside the polygons, and pixels that are
nodata in the source, take the output's nodata value. The tiles go to a
temporary tiled GeoTIFF that GDAL's COG driver then copies, with DEFLATE
and overviews, to another temporary name that is finally renamed, so a
half-written file never carries the output's name.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.shutil
import shapely
from rasterio.errors import RasterioIOError, WindowError
from rasterio.features import geometry_mask, geometry_window
from rasterio.windows import Window

from analysis.errors import AnalysisError, EmptyInput
from analysis.summary import Summary

__all__ = ["ClipResult", "clip_raster", "default_nodata"]

TILE = 512
GDAL_CACHE_MB = 64


@dataclass(frozen=True)
class ClipResult(Summary):
    """What was written: the job's ``result``."""

    path: str
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    bounds: tuple[float, float, float, float]
    nodata: float | int | None
    valid_pixels: int


def _open_source(source: str | os.PathLike[str]) -> Any:
    """Open the input raster; a file GDAL cannot read fails naming ``raster`` (no retry)."""
    try:
        return rasterio.open(source)
    except RasterioIOError:
        raise AnalysisError(f"{Path(source).name} is not a raster GDAL can read",
                            field="raster") from None


def clip_raster(
    source: str | os.PathLike[str],
    shapes: gpd.GeoSeries | gpd.GeoDataFrame,
    destination: str | os.PathLike[str],
    *,
    crop: bool = True,
    all_touched: bool = False,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: Callable[[float], None] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    on_written: Callable[[Path], None] | None = None,
) -> ClipResult:
    """Clip every band of ``source`` to the union of ``shapes`` into ``destination``.

    ``shapes`` in another CRS are transformed to the raster's. ``crop`` shrinks
    the output to the shapes' extent; ``all_touched`` keeps every pixel a shape
    touches, not only those whose centre it holds. ``nodata`` defaults to the
    source's, else NaN for floating point data, else the end of the data
    type's range that the clipped data does not reach. ``progress`` gets the
    fraction of tiles done (and may raise to stop the clip). The temporary files (and GDAL's)
    go to ``workdir`` (default: beside ``destination``; on the same file system), so a caller
    that may be killed mid-write can remove them all; ``on_written`` is told of
    ``destination`` as soon as it holds the new file.
    """
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise AnalysisError(
            f"{destination.name} already exists; set overwrite to replace it",
            field="output_raster",
        )
    geoms = _clip_geometries(shapes)
    # GDAL's own temporary files (the COG driver's overviews) stay beside the output too.
    scratch = Path(workdir) if workdir is not None else destination.parent
    env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024, CPL_TMPDIR=str(scratch))
    with env, _open_source(source) as src:
        if src.crs is None:
            raise AnalysisError("the raster has no coordinate reference system", field="raster")
        if shapes.crs is not None and shapes.crs != src.crs:
            geoms = np.asarray(gpd.GeoSeries(geoms, crs=shapes.crs).to_crs(src.crs).array)
        window = _output_window(src, geoms, crop)
        tree = shapely.STRtree(geoms)
        if nodata is None:
            nodata = src.nodata if src.nodata is not None else default_nodata(
                src, window, geoms, tree, all_touched
            )
        nodata = _check_nodata(nodata, src.dtypes[0])
        stem = f".{destination.name}.{uuid.uuid4().hex}"
        tiled = scratch / (stem + ".tiles.tif")
        cog = scratch / (stem + ".cog.tif")
        try:
            valid = _write_tiles(src, window, geoms, tree, all_touched, nodata, tiled,
                                 progress or (lambda fraction: None))
            rasterio.shutil.copy(
                tiled, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=TILE,
                OVERVIEW_RESAMPLING="NEAREST", BIGTIFF="IF_SAFER",
            )
            if overwrite:
                os.replace(cog, destination)
            else:
                os.link(cog, destination)  # fails, rather than replaces, if it now exists
            if on_written is not None:
                on_written(destination)
        except FileExistsError as exc:
            raise AnalysisError(
                f"{destination.name} appeared while clipping; set overwrite to replace it",
                field="output_raster",
            ) from exc
        finally:
            for path in (tiled, cog):
                path.unlink(missing_ok=True)
        transform = src.window_transform(window)
        bounds = rasterio.windows.bounds(Window(0, 0, window.width, window.height), transform)
        return ClipResult(
            path=str(destination),
            width=int(window.width),
            height=int(window.height),
            bands=src.count,
            dtype=src.dtypes[0],
            crs=src.crs.to_string(),
            bounds=tuple(float(v) for v in bounds),  # type: ignore[arg-type]
            nodata=nodata,
            valid_pixels=valid,
        )


def _clip_geometries(shapes: gpd.GeoSeries | gpd.GeoDataFrame) -> np.ndarray:
    if shapes.crs is None:
        raise AnalysisError(
            "the clip layer has no coordinate reference system; give it an SRID",
            field="clip_table",
        )
    geoms = np.asarray(shapes.geometry.array if isinstance(shapes, gpd.GeoDataFrame)
                       else shapes.array, dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    if not len(geoms):
        raise EmptyInput("the clip layer has no feature with a geometry", field="clip_table")
    kinds = set(shapely.get_type_id(geoms).tolist())
    if not kinds <= {3, 6}:  # Polygon, MultiPolygon
        raise AnalysisError("the clip layer must hold polygons", field="clip_table")
    return geoms


def _output_window(src: rasterio.DatasetReader, geoms: np.ndarray, crop: bool) -> Window:
    footprint = shapely.Polygon(
        [src.transform @ xy for xy in ((0, 0), (src.width, 0), (src.width, src.height),
                                       (0, src.height))]
    )
    try:
        if not shapely.intersects(geoms, footprint).any():
            raise WindowError("no overlap")
        window = geometry_window(src, geoms)
    except WindowError as exc:
        raise AnalysisError(
            "the clip polygons do not overlap the raster; check that they cover the "
            "same area (and that both have the right coordinate reference system)",
            field="clip_table",
        ) from exc
    if not crop:
        return Window(0, 0, src.width, src.height)
    return Window(int(window.col_off), int(window.row_off), int(window.width),
                  int(window.height))


def _tiles(window: Window) -> Iterator[tuple[Window, Window]]:
    """(window in the output, window in the source), row by row of tiles."""
    for row in range(0, int(window.height), TILE):
        for col in range(0, int(window.width), TILE):
            out = Window(col, row, min(TILE, window.width - col), min(TILE, window.height - row))
            yield out, Window(window.col_off + col, window.row_off + row, out.width, out.height)


def _inside(
    src: rasterio.DatasetReader,
    window: Window,
    geoms: np.ndarray,
    tree: shapely.STRtree,
    all_touched: bool,
) -> np.ndarray | None:
    """Pixels of the source window that the clip geometries select, None if none can."""
    transform = src.window_transform(window)
    x0, y0, x1, y1 = rasterio.windows.bounds(Window(0, 0, window.width, window.height),
                                             transform)
    hits = tree.query(shapely.box(x0, y0, x1, y1), predicate="intersects")
    if not len(hits):
        return None
    shape = (int(window.height), int(window.width))
    return geometry_mask(geoms[hits], out_shape=shape, transform=transform,
                         all_touched=all_touched, invert=True)


def _write_tiles(
    src: rasterio.DatasetReader,
    window: Window,
    geoms: np.ndarray,
    tree: shapely.STRtree,
    all_touched: bool,
    nodata: float,
    path: Path,
    progress: Callable[[float], None],
) -> int:
    profile = {
        "driver": "GTiff", "width": int(window.width), "height": int(window.height),
        "count": src.count, "dtype": src.dtypes[0], "crs": src.crs,
        "transform": src.window_transform(window), "nodata": nodata, "tiled": True,
        "blockxsize": TILE, "blockysize": TILE, "sparse_ok": True, "bigtiff": "IF_SAFER",
    }
    valid = 0
    total = math.ceil(window.height / TILE) * math.ceil(window.width / TILE)
    with rasterio.open(path, "w", **profile) as dst:
        for done, (out_window, src_window) in enumerate(_tiles(window)):
            if done % 64 == 0:
                progress(0.9 * done / total)
            inside = _inside(src, src_window, geoms, tree, all_touched)
            if inside is None or not inside.any():
                continue  # a sparse tile reads back as nodata
            data = src.read(window=src_window, masked=True)
            data.mask = np.ma.getmaskarray(data) | ~inside
            valid += int((~data.mask).any(axis=0).sum())
            dst.write(data.filled(nodata), window=out_window)
    return valid


def default_nodata(
    src: rasterio.DatasetReader,
    window: Window,
    geoms: np.ndarray,
    tree: shapely.STRtree,
    all_touched: bool,
) -> float | int:
    """A nodata value outside the range of the pixels the clip keeps.

    NaN for floating point; for integers the type's maximum (unsigned) or
    minimum (signed), else the other end, found by one pass over the tiles.
    """
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind == "f":
        return float("nan")
    info = np.iinfo(dtype)
    low, high = info.max, info.min
    for _, src_window in _tiles(window):
        inside = _inside(src, src_window, geoms, tree, all_touched)
        if inside is None or not inside.any():
            continue
        data = src.read(window=src_window, masked=True)
        kept = data[:, inside].compressed()
        if kept.size:
            low, high = min(low, int(kept.min())), max(high, int(kept.max()))
    ends = (info.max, info.min) if dtype.kind == "u" else (info.min, info.max)
    for end in ends:
        if not low <= end <= high:
            return int(end)
    raise AnalysisError(
        f"the clipped data use the whole {dtype} range, so no value is free for nodata; "
        "give nodata explicitly",
        field="nodata",
    )


def _check_nodata(nodata: float | int, dtype: str) -> float | int:
    """``nodata`` as a value of ``dtype``, or an error if it does not fit."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        if math.isfinite(nodata) and abs(nodata) > np.finfo(kind).max:
            raise AnalysisError(f"nodata {nodata} does not fit {dtype}", field="nodata")
        return float(nodata)
    info = np.iinfo(kind)
    if not math.isfinite(nodata) or not float(nodata).is_integer() or not (
        info.min <= nodata <= info.max
    ):
        raise AnalysisError(
            f"nodata {nodata} is not a whole number from {info.min} to {info.max} ({dtype})",
            field="nodata",
        )
    return int(nodata)
