"""Seeded benchmark inputs: polygon grids, random points, irregular polygons; loaded by COPY.

Every generator takes ``seed`` and returns the same GeoDataFrame for the same arguments, in a
projected CRS (metres, EPSG:3857 by default). Attributes: ``id`` (int64, 0..n-1), ``value``
(float64, standard normal), ``category`` (text, 8 values) and, for layers to dissolve,
``grp`` (int32): ``groups`` contiguous blocks (like counties into regions) or random labels.

Grids are exact coverages: neighbours share their edges vertex for vertex (integer
coordinates), as administrative units and parcels do, so ``shapely.coverage_is_valid`` holds.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import psycopg
import shapely

from geojobs.layers import write_layer

__all__ = ["DEFAULT_SRID", "square_grid", "hex_grid", "random_points", "irregular_polygons",
           "load_layer", "parse_size", "parse_sizes"]

DEFAULT_SRID = 3857
Grouping = Literal["blocks", "random"]
_CATEGORIES = np.array(["a", "b", "c", "d", "e", "f", "g", "h"], dtype=object)


def parse_size(text: str) -> int:
    """``'10k'`` -> 10000, ``'1M'`` -> 1000000, ``'2500'`` -> 2500."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    value = float(number) * scale
    if value < 1 or value != int(value):
        raise ValueError(f"size {text!r} is not a positive whole number")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """``'10k,100k,1M'`` -> [10000, 100000, 1000000]."""
    return [parse_size(part) for part in text.split(",") if part.strip()]


def _attributes(n: int, rng: np.random.Generator) -> dict[str, Any]:
    return {"id": np.arange(n, dtype=np.int64),
            "value": rng.standard_normal(n),
            "category": _CATEGORIES[rng.integers(0, len(_CATEGORIES), n)].astype(str)}


def _groups(ix: np.ndarray, iy: np.ndarray, ncols: int, nrows: int, groups: int | None,
            grouping: Grouping, rng: np.random.Generator) -> np.ndarray | None:
    """Group labels: contiguous blocks (bands of rows, each cut into columns), or random."""
    if not groups:
        return None
    if grouping == "random":
        return rng.integers(0, groups, len(ix)).astype(np.int32)
    bands = max(1, min(groups, round(math.sqrt(groups * nrows / max(ncols, 1)))))
    per_band = np.full(bands, groups // bands) + (np.arange(bands) < groups % bands)
    offset = np.concatenate([[0], np.cumsum(per_band)[:-1]])
    band = np.minimum(iy * bands // max(nrows, 1), bands - 1)
    column = np.minimum(ix * per_band[band] // max(ncols, 1), per_band[band] - 1)
    return (offset[band] + column).astype(np.int32)


def _frame(geoms: np.ndarray, attrs: dict[str, Any], grp: np.ndarray | None,
           srid: int) -> gpd.GeoDataFrame:
    if grp is not None:
        attrs["grp"] = grp
    return gpd.GeoDataFrame(attrs, geometry=gpd.GeoSeries(geoms, crs=srid), crs=srid)


def square_grid(n: int, *, cell: int = 100, groups: int | None = None,
                grouping: Grouping = "blocks", seed: int = 0,
                srid: int = DEFAULT_SRID) -> gpd.GeoDataFrame:
    """``n`` square cells of side ``cell`` metres, row by row in a near-square layout."""
    rng = np.random.default_rng(seed)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    k = np.arange(n)
    ix, iy = k % ncols, k // ncols
    geoms = shapely.box(ix * cell, iy * cell, (ix + 1) * cell, (iy + 1) * cell)
    return _frame(geoms, _attributes(n, rng), _groups(ix, iy, ncols, nrows, groups, grouping, rng),
                  srid)


def hex_grid(n: int, *, size: int = 50, groups: int | None = None,
             grouping: Grouping = "blocks", seed: int = 0,
             srid: int = DEFAULT_SRID) -> gpd.GeoDataFrame:
    """``n`` hexagons (flat-topped, on an integer lattice so shared edges match exactly).

    Vertices are (x±2s, y), (x±s, y±s): not regular, but a true hexagonal tiling whose
    coordinates are exact integers.
    """
    rng = np.random.default_rng(seed)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    k = np.arange(n)
    ix, iy = k % ncols, k // ncols
    cx = ix * 3 * size
    cy = iy * 2 * size + (ix % 2) * size
    dx = np.array([-2, -1, 1, 2, 1, -1, -2]) * size
    dy = np.array([0, -1, -1, 0, 1, 1, 0]) * size
    coords = np.stack([cx[:, None] + dx, cy[:, None] + dy], axis=-1).astype(float)
    geoms = shapely.polygons(coords)
    return _frame(geoms, _attributes(n, rng), _groups(ix, iy, ncols, nrows, groups, grouping, rng),
                  srid)


def random_points(n: int, *, extent: float = 100_000.0, seed: int = 0,
                  srid: int = DEFAULT_SRID) -> gpd.GeoDataFrame:
    """``n`` points uniform in a square of side ``extent`` metres."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, extent, size=(n, 2))
    return _frame(shapely.points(xy), _attributes(n, rng), None, srid)


def irregular_polygons(n: int, *, overlapping: bool = False, extent: float | None = None,
                       groups: int | None = None, grouping: Grouping = "blocks", seed: int = 0,
                       srid: int = DEFAULT_SRID) -> gpd.GeoDataFrame:
    """``n`` irregular polygons: a Voronoi coverage, or (``overlapping``) random star shapes.

    The Voronoi cells of seeded random points, clipped to the square, tile it with shared
    edges (a coverage). The star shapes (5 to 12 vertices, radius about one cell) overlap
    their neighbours, the case where a coverage union does not apply.
    """
    rng = np.random.default_rng(seed)
    side = extent or 100.0 * math.sqrt(n)
    xy = rng.uniform(0, side, size=(n, 2))
    ncols = max(1, math.ceil(math.sqrt(n)))
    ix = np.minimum((xy[:, 0] / side * ncols).astype(int), ncols - 1)
    iy = np.minimum((xy[:, 1] / side * ncols).astype(int), ncols - 1)
    if overlapping:
        radius = side / math.sqrt(n)
        counts = rng.integers(5, 13, n)
        geoms = np.empty(n, dtype=object)
        for i in range(n):
            angles = np.sort(rng.uniform(0, 2 * math.pi, counts[i]))
            r = radius * rng.uniform(0.4, 1.0, counts[i])
            ring = np.column_stack([xy[i, 0] + r * np.cos(angles), xy[i, 1] + r * np.sin(angles)])
            geoms[i] = shapely.Polygon(ring)
    else:
        cells = shapely.get_parts(shapely.voronoi_polygons(
            shapely.multipoints(xy), extend_to=shapely.box(0, 0, side, side)))
        cells = shapely.intersection(cells, shapely.box(0, 0, side, side))
        # voronoi_polygons returns cells in its own order: match each back to its point
        tree = shapely.STRtree(cells)
        hit = tree.query(shapely.points(xy), predicate="within")
        geoms = np.empty(n, dtype=object)
        geoms[hit[0]] = cells[hit[1]]
    return _frame(geoms, _attributes(n, rng), _groups(ix, iy, ncols, ncols, groups, grouping, rng),
                  srid)


def load_layer(database_url: str | psycopg.Connection[Any], gdf: gpd.GeoDataFrame, table: str,
               *, srid: int | None = None, overwrite: bool = True) -> int:
    """Write ``gdf`` to ``table`` (``schema.name``) with the project's binary COPY path."""
    srid = srid or gdf.crs.to_epsg() or DEFAULT_SRID
    if isinstance(database_url, psycopg.Connection):
        with database_url.transaction():
            return write_layer(database_url, gdf, table, srid=srid, overwrite=overwrite)
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        return write_layer(conn, gdf, table, srid=srid, overwrite=overwrite)
