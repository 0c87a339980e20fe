"""Grid counts against a geopandas spatial join, and cell shapes against geometry."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pytest
import shapely
from scipy.spatial.distance import cdist

from analysis.errors import AnalysisError, GeometryTypeError
from analysis.grid import aggregate_points, derive_cell_size


def sjoin_counts(points: gpd.GeoSeries, cells: gpd.GeoDataFrame) -> np.ndarray:
    """Points per cell by spatial join; a point on a shared edge goes to each cell it touches
    only if the arithmetic put it there, so such points are checked separately."""
    joined = gpd.sjoin(gpd.GeoDataFrame(geometry=points), cells, predicate="within")
    counts = joined.groupby("cell_id").size()
    return counts.reindex(cells["cell_id"], fill_value=0).to_numpy()


@pytest.mark.parametrize("shape", ["square", "hexagon"])
def test_counts_match_spatial_join(shape: str) -> None:
    rng = np.random.default_rng(7)
    xy = rng.normal(size=(5000, 2)) * 800 + [500_000, 4_100_000]
    points = gpd.GeoSeries(gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=32633)
    cells, grid, info = aggregate_points(points, {"shape": shape, "cell_size": 300})
    assert info["cell_size"] == 300 and not info["cell_size_derived"]
    assert cells["count"].sum() == len(points)
    expected = sjoin_counts(points, cells)
    # random points fall on no edge except the extent's minimum on a square grid
    on_edge = len(points) - expected.sum()
    assert on_edge <= (2 if shape == "square" else 0)
    assert (np.abs(cells["count"].to_numpy() - expected) <= on_edge).all()
    # each point lies in (or on the edge of) the cell it was counted in
    located = grid.locate(xy)
    assert shapely.intersects(cells.geometry.values[located], points.values).all()


@pytest.mark.parametrize("shape", ["square", "hexagon"])
def test_zero_cells_fill_the_extent(burkitt: gpd.GeoDataFrame, shape: str) -> None:
    cells, _, info = aggregate_points(burkitt, {"shape": shape, "cell_size": 10})
    extent = shapely.box(*burkitt.total_bounds)
    assert (cells["count"] == 0).sum() == info["empty_cells"] > 0
    assert shapely.intersects(cells.geometry.values, extent).all()
    # the cells cover the extent with no gap and no overlap
    union = shapely.union_all(cells.geometry.values)
    assert extent.difference(union).area == pytest.approx(0, abs=1e-6)
    assert cells.area.sum() == pytest.approx(union.area, rel=1e-9)
    assert (sjoin_counts(burkitt.geometry, cells) <= cells["count"].to_numpy()).all()


def test_hexagon_geometry() -> None:
    pts = gpd.GeoSeries(gpd.points_from_xy([0, 1000], [0, 800]))
    cells, _, _ = aggregate_points(pts, {"shape": "hexagon", "cell_size": 100})
    # a regular hexagon 100 across the flats has area (sqrt(3) / 2) * 100^2
    assert np.allclose(cells.area, math.sqrt(3) / 2 * 100**2)
    centres = np.column_stack([cells.centroid.x, cells.centroid.y])
    d = cdist(centres, centres)
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1), 100)


def test_derived_cell_size(burkitt: gpd.GeoDataFrame) -> None:
    xy = np.unique(np.column_stack([burkitt.geometry.x, burkitt.geometry.y]), axis=0)
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    expected = max(d.min(axis=1).mean(), max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1])) / 100)
    assert derive_cell_size(xy) == pytest.approx(expected, rel=1e-12)
    cells, _, info = aggregate_points(burkitt, {"shape": "square"})
    assert info["cell_size_derived"] and info["cell_size"] == pytest.approx(expected)
    assert cells["count"].sum() == len(burkitt)


def test_counts_per_group_add_up() -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 1000, size=(3000, 2))
    step = rng.integers(0, 6, size=3000)
    points = gpd.GeoSeries(gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=3857)
    _, grid, _ = aggregate_points(points, {"shape": "hexagon", "cell_size": 90})
    table = grid.count(xy, step, n_groups=6)
    assert table.shape == (grid.n_cells, 6)
    for s in range(6):
        assert (table[:, s] == grid.count(xy[step == s])).all()


def test_geographic_points_are_projected(mexico: gpd.GeoDataFrame) -> None:
    points = mexico.representative_point()
    cells, _, info = aggregate_points(points, {"shape": "square", "cell_size": 200_000})
    assert info["crs"].startswith("EPSG:326")
    assert cells.crs.to_epsg() == int(info["crs"].split(":")[1])
    assert cells["count"].sum() == len(mexico)


def test_refuses_bad_input(columbus: gpd.GeoDataFrame, burkitt: gpd.GeoDataFrame) -> None:
    with pytest.raises(GeometryTypeError) as err:
        aggregate_points(columbus, {"shape": "square", "cell_size": 1})
    assert err.value.field == "grid"
    for spec, field in [({"shape": "triangle"}, "grid.shape"),
                        ({"cell_size": 0}, "grid.cell_size"),
                        ({"cell_size": 1e-6}, "grid.cell_size"),
                        ({"size": 3}, "grid")]:
        with pytest.raises(AnalysisError) as err:
            aggregate_points(burkitt, spec)
        assert err.value.field == field
