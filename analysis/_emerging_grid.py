"""Square or hexagonal cells over points' extent, and each point's cell (temporary).

Stand-in until the hotspot branch's ``analysis.grid`` lands.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import shapely
from scipy.spatial import cKDTree

from analysis.errors import AnalysisError

__all__ = ["grid_cells"]


def grid_cells(
    points: gpd.GeoSeries, shape: str, cell_size: float
) -> tuple[gpd.GeoDataFrame, npt.NDArray[np.int64]]:
    """Cells covering the points' bounding box and the cell index of each point.

    Squares have side ``cell_size``; hexagons (pointy-top) are ``cell_size``
    apart centre to centre. A point is in the cell whose centre is nearest.
    """
    if shape not in ("square", "hexagon"):
        raise AnalysisError("use 'square' or 'hexagon'", field="grid.shape")
    if not cell_size > 0:
        raise AnalysisError("must be a positive distance", field="grid.cell_size")
    x = points.x.to_numpy()
    y = points.y.to_numpy()
    xmin, ymin, xmax, ymax = x.min(), y.min(), x.max(), y.max()
    if shape == "square":
        nx = int(np.floor((xmax - xmin) / cell_size)) + 1
        ny = int(np.floor((ymax - ymin) / cell_size)) + 1
        ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
        x0 = xmin + ix.ravel() * cell_size
        y0 = ymin + iy.ravel() * cell_size
        polygons = shapely.box(x0, y0, x0 + cell_size, y0 + cell_size)
        col = np.minimum(((x - xmin) // cell_size).astype(np.int64), nx - 1)
        row = np.minimum(((y - ymin) // cell_size).astype(np.int64), ny - 1)
        index = row * nx + col
    else:
        radius = cell_size / np.sqrt(3.0)
        dy = 1.5 * radius
        ny = int(np.ceil((ymax - ymin) / dy)) + 2
        nx = int(np.ceil((xmax - xmin) / cell_size)) + 2
        iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        cx = xmin + (ix + 0.5 * (iy % 2) - 0.5) * cell_size
        cy = ymin + (iy - 0.5) * dy
        centres = np.column_stack([cx.ravel(), cy.ravel()])
        _, nearest = cKDTree(centres).query(np.column_stack([x, y]))
        angles = np.deg2rad(np.arange(6) * 60.0 + 30.0)
        used = np.unique(nearest)
        # keep the rows and columns spanned by the points: the extent, holes included
        keep = _hex_extent(centres, xmin, ymin, xmax, ymax, radius)
        keep[used] = True
        centres = centres[keep]
        remap = np.cumsum(keep) - 1
        index = remap[nearest]
        rings = centres[:, None, :] + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
        polygons = shapely.polygons(rings)
    cells = gpd.GeoDataFrame(
        {"cell_id": np.arange(len(polygons), dtype=np.int64)},
        geometry=polygons,
        crs=points.crs,
    )
    return cells, np.asarray(index, dtype=np.int64)


def _hex_extent(
    centres: npt.NDArray[np.float64],
    xmin: float,
    ymin: float,
    xmax: float,
    ymax: float,
    radius: float,
) -> npt.NDArray[np.bool_]:
    """Hexagons that overlap the box (their centre within a radius of it)."""
    cx, cy = centres[:, 0], centres[:, 1]
    return (
        (cx >= xmin - radius)
        & (cx <= xmax + radius)
        & (cy >= ymin - radius)
        & (cy <= ymax + radius)
    )
