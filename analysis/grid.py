"""Square or hexagonal grids over point incidents, and the count of incidents per cell.

Analysts run hot spot analysis on incidents (crimes, fires) by counting them per cell of a
regular grid; the cells inside the incidents' extent that hold none count as 0. ``cell_size``
is the distance between the centres of adjacent cells (the side of a square; for the
pointy-top hexagons, whose circumradius is ``cell_size / sqrt(3)``, the width across flats).
Without a cell size, :func:`derive_cell_size` uses the points' spacing.

Points are located by arithmetic rather than a spatial join: floor division for squares, and
axial coordinates with cube rounding for hexagons (Patel, "Hexagonal Grids", Red Blob Games,
2013), so that counting millions of points stays fast. :class:`Grid` is reusable: build it
once over all incidents and call :meth:`Grid.count` with a group per point (e.g. a time step)
to get one column of counts per group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import shapely
from scipy.spatial import KDTree

from analysis.errors import AnalysisError, EmptyInput, GeometryTypeError
from analysis.weights import working_geometry

__all__ = [
    "GRID_SHAPES",
    "GridSpec",
    "Grid",
    "make_grid",
    "derive_cell_size",
    "point_coordinates",
    "PointCounts",
    "count_points",
    "aggregate_points",
    "point_counts",
]

GRID_SHAPES = ("square", "hexagon")
_SQRT3 = math.sqrt(3.0)
EXTENT_DIVISIONS = 100
"""A derived cell is never smaller than the longer side of the extent over this."""


@dataclass(frozen=True)
class GridSpec:
    """``{"shape": "square" | "hexagon", "cell_size": number}``; no cell size means derived."""

    shape: str = "square"
    cell_size: float | None = None

    @classmethod
    def parse(cls, raw: GridSpec | Mapping[str, Any] | None) -> GridSpec:
        """Validate a spec from job parameters; errors name ``grid.<key>``."""
        if raw is None or isinstance(raw, GridSpec):
            spec = raw or cls()
        elif isinstance(raw, Mapping):
            unknown = sorted(set(raw) - {"shape", "cell_size"})
            if unknown:
                raise AnalysisError(f"unknown key(s) {unknown}; use shape, cell_size",
                                    field="grid")
            spec = cls(**{k: v for k, v in raw.items() if v is not None})
        else:
            raise AnalysisError('must be an object such as {"shape": "hexagon"}', field="grid")
        if spec.shape not in GRID_SHAPES:
            raise AnalysisError(f"{spec.shape!r} is not a grid shape; use 'square' or 'hexagon'",
                                field="grid.shape")
        c = spec.cell_size
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, int | float | np.number)
            or not (np.isfinite(c) and c > 0)
        ):
            raise AnalysisError("must be a positive distance in the units of the projected CRS",
                                field="grid.cell_size")
        return spec


@dataclass(frozen=True)
class Grid:
    """Cells covering an extent, addressed by (row, column) through ``lookup``.

    ``lookup[row, col]`` is the cell's position in ``cells`` or -1 when the cell lies outside
    the extent (only hexagons at the edges).
    """

    shape: str
    cell_size: float
    origin: tuple[float, float]
    lookup: np.ndarray
    cells: gpd.GeoDataFrame

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def locate(self, xy: npt.ArrayLike) -> np.ndarray:
        """The position of the cell holding each point (n x 2 array); -1 outside the grid."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        rows, cols = _row_col(self.shape, self.cell_size, self.origin, xy)
        n_rows, n_cols = self.lookup.shape
        inside = (rows >= 0) & (rows < n_rows) & (cols >= 0) & (cols < n_cols)
        out = np.full(len(xy), -1, dtype=np.int64)
        out[inside] = self.lookup[rows[inside], cols[inside]]
        return out

    def count(
        self, xy: npt.ArrayLike, groups: npt.ArrayLike | None = None, n_groups: int | None = None
    ) -> np.ndarray:
        """Points per cell: shape (n_cells,), or (n_cells, n_groups) with a group per point.

        Groups are integers 0..n_groups-1 (e.g. time-step indices); points outside the grid
        or with a group outside that range are not counted.
        """
        cell = self.locate(xy)
        if groups is None:
            return np.bincount(cell[cell >= 0], minlength=self.n_cells).astype(np.int64)
        g = np.asarray(groups, dtype=np.int64)
        if n_groups is None:
            n_groups = int(g.max()) + 1 if g.size else 0
        keep = (cell >= 0) & (g >= 0) & (g < n_groups)
        flat = np.bincount(cell[keep] * n_groups + g[keep], minlength=self.n_cells * n_groups)
        return flat.reshape(self.n_cells, n_groups).astype(np.int64)


def make_grid(
    bounds: tuple[float, float, float, float], cell_size: float, shape: str = "square",
    crs: Any = None,
) -> Grid:
    """Cells of ``shape`` covering ``bounds`` (minx, miny, maxx, maxy), origin at (minx, miny)."""
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    if shape not in GRID_SHAPES:
        raise AnalysisError(f"{shape!r} is not a grid shape", field="grid.shape")
    if shape == "square":
        origin = (minx, miny)
        n_rows = int(np.floor((maxy - miny) / cell_size)) + 1
        n_cols = int(np.floor((maxx - minx) / cell_size)) + 1
    else:
        # start one column and two rows (keeping row parity) below the extent, so that every
        # point of the extent has a row and column >= 0; cells outside it are trimmed below
        radius = cell_size / _SQRT3
        origin = (minx - cell_size, miny - 3.0 * radius)
        corner = np.array([[maxx, maxy]])
        top, right = (int(v[0]) for v in _row_col(shape, cell_size, origin, corner))
        n_rows, n_cols = top + 2, right + 2
    cells_needed = n_rows * n_cols
    if cells_needed > 50_000_000:
        raise AnalysisError(
            f"a cell size of {cell_size:g} makes {cells_needed:,} cells over this extent; "
            "use a larger cell size",
            field="grid.cell_size",
        )
    rr = np.repeat(np.arange(n_rows, dtype=np.int64), n_cols)
    cc = np.tile(np.arange(n_cols, dtype=np.int64), n_rows)
    polygons = _cell_polygons(shape, cell_size, origin, rr, cc)
    if shape == "hexagon":
        keep = shapely.intersects(polygons, shapely.box(minx, miny, maxx, maxy))
    else:
        keep = np.ones(len(polygons), dtype=bool)
    lookup = np.full(n_rows * n_cols, -1, dtype=np.int64)
    lookup[keep] = np.arange(int(keep.sum()))
    cells = gpd.GeoDataFrame(
        {"cell_id": np.arange(int(keep.sum()), dtype=np.int64),
         "grid_row": rr[keep], "grid_col": cc[keep]},
        geometry=polygons[keep], crs=crs,
    )
    return Grid(shape=shape, cell_size=float(cell_size), origin=origin,
                lookup=lookup.reshape(n_rows, n_cols), cells=cells)


def derive_cell_size(xy: np.ndarray) -> float:
    """A cell size from the points' spacing: the mean distance from each distinct location to
    its nearest neighbour, but at least 1/100 of the extent's longer side (so that a million
    points do not make a million cells)."""
    unique = np.unique(xy, axis=0)
    if len(unique) < 2:
        raise AnalysisError("all points are at one location; no grid can be derived",
                            field="grid.cell_size")
    distances, _ = KDTree(unique).query(unique, k=2)
    mean_nn = float(distances[:, 1].mean())
    extent = float(max(np.ptp(unique[:, 0]), np.ptp(unique[:, 1])))
    return max(mean_nn, extent / EXTENT_DIVISIONS)


def point_coordinates(geometry: gpd.GeoSeries) -> np.ndarray:
    """x, y of point incidents (n x 2), refusing other geometry types."""
    arr = geometry.to_numpy()
    kinds = np.unique(shapely.get_type_id(arr))
    if not set(kinds.tolist()) <= {0}:  # 0: Point
        names = sorted(set(geometry.geom_type.dropna().unique()))
        raise GeometryTypeError(f"a grid counts point incidents, the input has {names}",
                                field="grid")
    return np.asarray(shapely.get_coordinates(arr), dtype=float)


MAX_CELLS_X_GROUPS = 50_000_000
"""The largest table of counts :func:`count_points` builds (cells times groups)."""


@dataclass(frozen=True)
class PointCounts:
    """Incidents counted per cell (and group): the grid, its cells and what was done."""

    grid: Grid
    counts: np.ndarray
    """(n_cells,) without groups, (n_cells, n_groups) with them."""
    cells: gpd.GeoDataFrame
    """``cell_id``, ``count`` (all groups together), polygon, in the CRS used."""
    info: dict[str, Any]
    """shape, cell size, whether it was derived, CRS, counts and warnings, for a job's result."""


def count_points(
    points: gpd.GeoSeries | gpd.GeoDataFrame,
    spec: GridSpec | Mapping[str, Any] | None = None,
    groups: npt.ArrayLike | None = None,
    n_groups: int | None = None,
) -> PointCounts:
    """Count point incidents per cell of a grid over their extent, optionally per group.

    Geographic input is projected to UTM first. Points without a geometry are left out (with
    their group). ``groups`` gives each point an integer 0..n_groups-1 (e.g. its time step);
    the counts then have one column per group.
    """
    spec = GridSpec.parse(spec)
    geoms = points.geometry if isinstance(points, gpd.GeoDataFrame) else points
    group_of = None if groups is None else np.asarray(groups, dtype=np.int64)
    arr = geoms.to_numpy()
    missing = shapely.is_missing(arr) | shapely.is_empty(arr)
    if missing.any():
        geoms = geoms[~missing]
        if group_of is not None:
            group_of = group_of[~missing]
    if len(geoms) == 0:
        raise EmptyInput("no point with a geometry to count", field="input_table")
    projected, crs, warnings = working_geometry(geoms)
    xy = point_coordinates(projected)
    derived = spec.cell_size is None
    cell_size = derive_cell_size(xy) if derived else float(spec.cell_size)  # type: ignore[arg-type]
    bounds = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
    grid = make_grid(bounds, cell_size, spec.shape, crs=projected.crs)
    if group_of is not None:
        if n_groups is None:
            n_groups = int(group_of.max()) + 1
        if grid.n_cells * n_groups > MAX_CELLS_X_GROUPS:
            raise AnalysisError(
                f"{grid.n_cells} cells x {n_groups} time steps is too large; use larger cells "
                "or longer steps", field="grid.cell_size")
        counts = grid.count(xy, group_of, n_groups)
    else:
        counts = grid.count(xy)
    return point_counts(grid, counts, GridSpec(spec.shape, cell_size), derived=derived, crs=crs,
                        n_points=len(xy), warnings=warnings)


def point_counts(grid: Grid, counts: np.ndarray, spec: GridSpec, *, derived: bool,
                 crs: str | None, n_points: int, warnings: list[str]) -> PointCounts:
    """The :class:`PointCounts` of counts already made on ``grid`` (e.g. summed over the
    partitions of a large input, each counted with :meth:`Grid.count`)."""
    total = counts.sum(axis=1) if counts.ndim == 2 else counts
    cells = grid.cells[["cell_id", "geometry"]].copy()
    cells.insert(1, "count", total)
    info: dict[str, Any] = {
        "shape": spec.shape,
        "cell_size": grid.cell_size,
        "cell_size_derived": derived,
        "crs": crs,
        "n_cells": grid.n_cells,
        "n_points": n_points,
        "empty_cells": int((total == 0).sum()),
        "warnings": list(warnings),
    }
    return PointCounts(grid, counts, cells, info)


def aggregate_points(
    points: gpd.GeoSeries | gpd.GeoDataFrame, spec: GridSpec | Mapping[str, Any] | None = None
) -> tuple[gpd.GeoDataFrame, Grid, dict[str, Any]]:
    """Count point incidents per cell of a grid over their extent (see :func:`count_points`).

    Returns the cells (``cell_id``, ``count``, polygon, in the CRS used), the grid, and what
    was done (shape, cell size, whether it was derived, CRS, counts) for the job's result.
    """
    counted = count_points(points, spec)
    return counted.cells, counted.grid, counted.info


def _row_col(shape: str, c: float, origin: tuple[float, float], xy: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    px = xy[:, 0] - origin[0]
    py = xy[:, 1] - origin[1]
    if shape == "square":
        return np.floor(py / c).astype(np.int64), np.floor(px / c).astype(np.int64)
    radius = c / _SQRT3
    q = (_SQRT3 / 3.0 * px - py / 3.0) / radius
    r = (2.0 / 3.0 * py) / radius
    # cube rounding: round all three cube coordinates, then fix the one that moved most
    s = -q - r
    rq, rr, rs = np.rint(q), np.rint(r), np.rint(s)
    dq, dr, ds = np.abs(rq - q), np.abs(rr - r), np.abs(rs - s)
    fix_q = (dq > dr) & (dq > ds)
    fix_r = ~fix_q & (dr > ds)
    rq = np.where(fix_q, -rr - rs, rq)
    rr = np.where(fix_r, -rq - rs, rr)
    row = rr.astype(np.int64)
    col = rq.astype(np.int64) + (row - (row & 1)) // 2  # axial to "odd-r" offset columns
    return row, col


def _cell_polygons(shape: str, c: float, origin: tuple[float, float], rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
    if shape == "square":
        x0 = origin[0] + cols * c
        y0 = origin[1] + rows * c
        return shapely.box(x0, y0, x0 + c, y0 + c)
    radius = c / _SQRT3
    cx = origin[0] + c * (cols + 0.5 * (rows & 1))
    cy = origin[1] + rows * 1.5 * radius
    angles = np.deg2rad(30.0 + 60.0 * np.arange(7))  # pointy-top: first vertex at 30°
    ring_x = cx[:, None] + radius * np.cos(angles)[None, :]
    ring_y = cy[:, None] + radius * np.sin(angles)[None, :]
    coords = np.stack([ring_x, ring_y], axis=-1)
    return shapely.polygons(coords)
