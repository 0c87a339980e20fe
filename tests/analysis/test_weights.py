"""Weights against libpysal's W constructors and brute-force distances computed here."""

from __future__ import annotations

import math

import geopandas as gpd
import libpysal
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from analysis.errors import AnalysisError, GeometryTypeError
from analysis.weights import build_weights


def neighbour_sets(sw) -> dict[int, set[int]]:  # type: ignore[no-untyped-def]
    adj = sw.graph.adjacency
    out: dict[int, set[int]] = {}
    for (i, j), w in adj.items():
        out.setdefault(int(i), set())
        if w != 0:
            out[int(i)].add(int(j))
    return out


def w_sets(w: libpysal.weights.W) -> dict[int, set[int]]:
    return {int(i): {int(j) for j in w.neighbors[i]} for i in w.neighbors}


def test_queen_default_for_polygons_matches_libpysal(columbus: gpd.GeoDataFrame) -> None:
    sw = build_weights(columbus)
    oracle = libpysal.weights.Queen.from_dataframe(columbus, use_index=False)
    assert sw.type == "queen" and sw.transform == "B"
    assert neighbour_sets(sw) == w_sets(oracle)
    assert sw.n_neighbors.tolist() == [oracle.cardinalities[i] for i in range(len(columbus))]


def test_rook_islands_match_libpysal(tokyo: gpd.GeoDataFrame) -> None:
    sw = build_weights(tokyo, {"type": "rook", "transform": "R"})
    oracle = libpysal.weights.Rook.from_dataframe(tokyo, use_index=False,
                                                  silence_warnings=True)
    assert sw.transform == "R"
    assert sorted(sw.islands.tolist()) == sorted(oracle.islands)
    assert len(sw.islands) == 10
    assert neighbour_sets(sw) == {i: s for i, s in w_sets(oracle).items()}


def test_default_distance_band_for_points(baltimore: gpd.GeoDataFrame) -> None:
    xy = np.column_stack([baltimore.geometry.x, baltimore.geometry.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    threshold = d.min(axis=1).max()
    sw = build_weights(baltimore)
    assert sw.type == "distance_band"
    assert sw.threshold == pytest.approx(threshold, rel=1e-12)
    assert sw.n_neighbors.min() >= 1 and len(sw.islands) == 0
    expected = {i: set(np.flatnonzero(d[i] <= threshold * (1 + 1e-9)).tolist())
                for i in range(len(xy))}
    assert neighbour_sets(sw) == expected


def test_threshold_is_inclusive_with_relative_tolerance() -> None:
    def pair(gap: float) -> gpd.GeoSeries:
        return gpd.GeoSeries(gpd.points_from_xy([0.0, gap, 10.0], [0.0, 0.0, 0.0]))

    # inclusive at the threshold and within 1e-9 of it
    for gap in (1.0, 1.0 + 1e-10):
        sw = build_weights(pair(gap), {"type": "distance_band", "threshold": 1.0})
        assert sw.n_neighbors.tolist() == [1, 1, 0]
        assert sw.islands.tolist() == [2]
    # beyond the tolerance: no neighbour at all, which is a clear failure
    with pytest.raises(AnalysisError) as err:
        build_weights(pair(1.0 + 1e-7), {"type": "distance_band", "threshold": 1.0})
    assert err.value.field == "weights.threshold"


def test_coincident_points_are_neighbours() -> None:
    pts = gpd.GeoSeries(gpd.points_from_xy([0, 0, 3, 3, 3], [0, 0, 4, 4, 4]))
    sw = build_weights(pts)
    assert sw.threshold == 0.0
    assert neighbour_sets(sw) == {0: {1}, 1: {0}, 2: {3, 4}, 3: {2, 4}, 4: {2, 3}}


def test_knn_default_k_is_eight(baltimore: gpd.GeoDataFrame) -> None:
    sw = build_weights(baltimore, {"type": "knn"})
    assert sw.k == 8
    # integer coordinates make ties, which libraries break differently: compare distances
    xy = np.column_stack([baltimore.geometry.x, baltimore.geometry.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    for i, neighbours in neighbour_sets(sw).items():
        assert len(neighbours) == 8
        assert sorted(d[i, sorted(neighbours)]) == sorted(d[i])[:8]


def test_geographic_input_is_projected_to_utm(mexico: gpd.GeoDataFrame) -> None:
    minx, _, maxx, maxy = mexico.total_bounds
    zone = math.floor(((minx + maxx) / 2 + 180) / 6) + 1
    epsg = (32600 if maxy > 0 else 32700) + zone
    sw = build_weights(mexico, {"type": "knn", "k": 4})
    assert sw.crs == f"EPSG:{epsg}"
    assert sw.describe()["crs"] == f"EPSG:{epsg}"
    centroids = mexico.to_crs(epsg).centroid
    oracle = libpysal.weights.KNN.from_array(
        np.column_stack([centroids.x, centroids.y]), k=4
    )
    assert neighbour_sets(sw) == w_sets(oracle)
    # contiguity needs no distances: the CRS is left as it is
    assert build_weights(mexico).crs == "EPSG:4326"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"type": "inverse"}, "weights.type"),
        ({"type": "queen", "k": 3}, "weights.k"),
        ({"type": "knn", "k": 0}, "weights.k"),
        ({"type": "knn", "k": 2.5}, "weights.k"),
        ({"threshold": -1}, "weights.threshold"),
        ({"type": "knn", "threshold": 5}, "weights.threshold"),
        ({"transform": "V"}, "weights.transform"),
        ({"kind": "queen"}, "weights"),
        ({"type": "knn", "k": 49}, "weights.k"),
    ],
)
def test_bad_specs_name_the_field(columbus: gpd.GeoDataFrame, spec: dict, field: str) -> None:
    with pytest.raises(AnalysisError) as err:
        build_weights(columbus, spec)
    assert err.value.field == field


def test_contiguity_on_points_is_refused(baltimore: gpd.GeoDataFrame) -> None:
    with pytest.raises(GeometryTypeError) as err:
        build_weights(baltimore, {"type": "queen"})
    assert err.value.field == "weights.type"
