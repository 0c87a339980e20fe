"""Clip and erase against independent oracles, without a database.

The oracles are geopandas' own ``clip`` and ``overlay(how="difference")``
(separate implementations of the same operations) on real layers, and hand
reasoning on layouts simple enough to know the answer.  The PostGIS oracle is
in tests/test_overlay_postgis.py.
"""

from __future__ import annotations

import geopandas as gpd
import libpysal
import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, LineString, Point, Polygon, box

from analysis.errors import AnalysisError, GeometryTypeError
from analysis.overlay import clip, erase, keep_dimension

UTM16N = 26916  # G_utm.shp is in UTM zone 16N (its X/Y columns say so), not 17N


@pytest.fixture(scope="module")
def georgia() -> gpd.GeoDataFrame:
    """Georgia's 159 counties in UTM 16N, keyed by AreaKey."""
    path = libpysal.examples.get_path("G_utm.shp")
    return gpd.read_file(path).set_crs(UTM16N).set_index("AreaKey")


@pytest.fixture(scope="module")
def blobs(georgia: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Eight overlapping irregular polygons over Georgia, in lon/lat (another CRS)."""
    rng = np.random.default_rng(6)
    centres = georgia.geometry.centroid.sample(8, random_state=6)
    shapes = []
    for c in centres:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 11))
        radii = rng.uniform(20_000, 70_000, 11)
        ring = np.c_[c.x + radii * np.cos(angles), c.y + radii * np.sin(angles)]
        shapes.append(Polygon(ring))
    frame = gpd.GeoDataFrame({"blob": range(8)}, geometry=shapes, crs=UTM16N)
    assert frame.union_all().area < frame.area.sum()  # they do overlap
    return frame.to_crs(4326)


def _assert_same_measure(ours: gpd.GeoSeries, oracle: gpd.GeoSeries, measure: str) -> None:
    assert set(ours.index) == set(oracle.index)
    a = getattr(ours, measure)
    b = getattr(oracle, measure).reindex(a.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9)


def test_clip_polygons_matches_geopandas_clip(georgia, blobs):
    result = clip(georgia, blobs)
    oracle = gpd.clip(georgia, blobs.to_crs(UTM16N).union_all(), keep_geom_type=True)
    oracle = oracle[~oracle.is_empty & (oracle.area > 0)]
    _assert_same_measure(result.frame.geometry, oracle.geometry, "area")
    assert result.frame.crs == georgia.crs
    assert list(result.frame.columns) == list(georgia.columns)
    got = result.frame.drop(columns="geometry")
    pd_expected = georgia.loc[got.index].drop(columns="geometry")
    assert got.equals(pd_expected)
    assert set(result.frame.geom_type) <= {"Polygon", "MultiPolygon"}
    assert result.summary.output_features == len(oracle)
    assert result.summary.dropped == len(georgia) - len(oracle)


def test_erase_polygons_matches_geopandas_difference(georgia, blobs):
    result = erase(georgia, blobs)
    oracle = gpd.overlay(
        georgia.reset_index(), blobs.to_crs(UTM16N), how="difference", keep_geom_type=True
    ).set_index("AreaKey")
    oracle = oracle[~oracle.is_empty]
    _assert_same_measure(result.frame.geometry, oracle.geometry, "area")
    assert set(result.frame.geom_type) <= {"Polygon", "MultiPolygon"}
    untouched = ~georgia.intersects(blobs.to_crs(UTM16N).union_all())
    assert result.summary.copied_whole == int(untouched.sum())


def test_clip_lines_matches_geopandas_clip(georgia, blobs):
    lines = georgia.copy()
    lines["geometry"] = georgia.boundary
    result = clip(lines, blobs)
    oracle = gpd.clip(lines, blobs.to_crs(UTM16N).union_all(), keep_geom_type=True)
    oracle = oracle[~oracle.is_empty & (oracle.length > 0)]
    _assert_same_measure(result.frame.geometry, oracle.geometry, "length")
    assert set(result.frame.geom_type) <= {"LineString", "MultiLineString"}


def test_erase_lines_matches_geopandas_difference(georgia, blobs):
    lines = georgia.reset_index()
    lines["geometry"] = lines.boundary
    result = erase(lines, blobs)
    oracle = lines.geometry.difference(blobs.to_crs(UTM16N).union_all())
    oracle = oracle[~oracle.is_empty]
    _assert_same_measure(result.frame.geometry, oracle, "length")


def test_points_on_a_grid_by_hand():
    # Points at integer coordinates 0..5; the clip square [0.5, 3.5]^2 holds 3 x 3 of them.
    xy = [(x, y) for x in range(6) for y in range(6)]
    pts = gpd.GeoDataFrame({"xy": [f"{x},{y}" for x, y in xy]}, geometry=[Point(p) for p in xy])
    square = gpd.GeoDataFrame(geometry=[box(0.5, 0.5, 3.5, 3.5)])
    inside = {f"{x},{y}" for x in (1, 2, 3) for y in (1, 2, 3)}
    clipped = clip(pts, square, field="clip_table")
    assert set(clipped.frame["xy"]) == inside
    assert set(clipped.frame.geom_type) == {"Point"}
    erased = erase(pts, square)
    assert set(erased.frame["xy"]) == {f"{x},{y}" for x, y in xy} - inside
    assert erased.summary.copied_whole == 36 - 9


def test_points_match_geopandas_clip():
    baltim = gpd.read_file(libpysal.examples.get_path("baltim.shp"))
    rng = np.random.default_rng(1)
    xs = rng.uniform(880, 970, 5)
    ys = rng.uniform(510, 575, 5)
    circles = gpd.GeoDataFrame(geometry=[Point(x, y).buffer(12) for x, y in zip(xs, ys, strict=True)])
    result = clip(baltim, circles)
    oracle = gpd.clip(baltim, circles.union_all())
    assert set(result.frame.index) == set(oracle.index)
    assert len(result.frame) > 0
    assert set(erase(baltim, circles).frame.index) == set(baltim.index) - set(oracle.index)


def test_polygon_touching_the_clip_edge_is_dropped_not_a_line():
    layer = gpd.GeoDataFrame(
        {"name": ["touching", "straddling"]}, geometry=[box(0, 0, 1, 1), box(0, 2, 2, 3)]
    )
    clipper = gpd.GeoDataFrame(geometry=[box(1, 0, 3, 1), box(1, 2, 3, 3)])
    result = clip(layer, clipper)
    # The straddling box keeps its right half; the touching one shares only an edge.
    assert list(result.frame["name"]) == ["straddling"]
    assert result.frame.geometry.iloc[0].geom_type == "Polygon"
    assert result.frame.geometry.iloc[0].area == pytest.approx(1.0)
    assert result.summary.dropped == 1


def test_empty_result_is_a_wellformed_empty_frame():
    layer = gpd.GeoDataFrame({"a": [1]}, geometry=[box(0, 0, 1, 1)], crs=UTM16N)
    far = gpd.GeoDataFrame(geometry=[box(10, 10, 11, 11)], crs=UTM16N)
    result = clip(layer, far)
    assert len(result.frame) == 0
    assert list(result.frame.columns) == ["a", "geometry"]
    assert result.frame.crs == layer.crs
    assert erase(layer, layer).frame.empty


def test_bow_tie_is_repaired_and_counted():
    bow_tie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # two unit-area triangles
    assert not bow_tie.is_valid
    layer = gpd.GeoDataFrame({"k": [1, 2]}, geometry=[bow_tie, box(5, 5, 6, 6)])
    left = gpd.GeoDataFrame(geometry=[box(-1, -1, 1, 3), box(4, 4, 7, 7)])
    result = clip(layer, left)
    assert result.summary.repaired == 1
    areas = dict(zip(result.frame["k"], result.frame.area, strict=True))
    assert areas == pytest.approx({1: 1.0, 2: 1.0})  # the left triangle; the whole box
    assert all(result.frame.is_valid)
    erased = erase(layer, left)
    assert erased.summary.repaired == 1
    assert dict(zip(erased.frame["k"], erased.frame.area, strict=True)) == pytest.approx({1: 1.0})


def test_null_and_empty_are_skipped_and_counted():
    layer = gpd.GeoDataFrame({"k": [1, 2, 3]}, geometry=[None, Polygon(), box(0, 0, 1, 1)])
    result = clip(layer, gpd.GeoDataFrame(geometry=[box(-1, -1, 2, 2)]))
    assert result.summary.skipped_null == 1
    assert result.summary.skipped_empty == 1
    assert list(result.frame["k"]) == [3]
    assert result.summary.copied_whole == 1
    # The copied feature is the input geometry itself, no overlay noise.
    assert result.frame.geometry.iloc[0].equals_exact(box(0, 0, 1, 1), 0)


def test_clip_layer_of_lower_dimension_is_refused():
    layer = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)])
    lines = gpd.GeoDataFrame(geometry=[LineString([(0, 0), (1, 1)])])
    with pytest.raises(GeometryTypeError) as err:
        clip(layer, lines, field="clip_table")
    assert err.value.field == "clip_table"


def test_missing_crs_on_one_side_names_it():
    layer = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=UTM16N)
    other = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)])
    with pytest.raises(AnalysisError) as err:
        erase(layer, other, field="erase_table")
    assert err.value.field == "erase_table"
    with pytest.raises(AnalysisError) as err:
        erase(other, layer, field="erase_table")
    assert err.value.field == "input_table"


def test_keep_dimension_drops_slivers_and_never_returns_collections():
    poly_a, poly_b = box(0, 0, 1, 1), box(2, 0, 3, 1)
    mixed = GeometryCollection([poly_a, LineString([(1, 0), (2, 0)]), Point(5, 5)])
    two = GeometryCollection([poly_a, poly_b])
    only_line = GeometryCollection([LineString([(0, 0), (1, 1)])])
    out = keep_dimension(np.array([mixed, two, only_line, None], dtype=object), np.array([2] * 4))
    assert out[0].equals(poly_a)
    assert out[1].geom_type == "MultiPolygon" and out[1].area == pytest.approx(2.0)
    assert out[2] is None and out[3] is None
    lines = keep_dimension(np.array([mixed], dtype=object), np.array([1]))
    assert lines[0].geom_type == "LineString" and shapely.length(lines[0]) == pytest.approx(1.0)



def test_an_input_without_features_gives_an_empty_result():
    clipper = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)])
    nothing = gpd.GeoDataFrame({"k": []}, geometry=[])
    only_null = gpd.GeoDataFrame({"k": [1]}, geometry=[None])
    for layer, null in ((nothing, 0), (only_null, 1)):
        for operation in (clip, erase):
            result = operation(layer, clipper)
            assert result.frame.empty and list(result.frame.columns) == ["k", "geometry"]
            assert (result.summary.output_features, result.summary.skipped_null) == (0, null)
