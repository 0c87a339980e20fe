"""nearest() against brute force: every pair's distance, sorted, on real layers.

The oracle measures all pairs (shapely ``distance`` for planar, ``pyproj.Geod``
for geodesic) and sorts by (distance, key); nearest() must find the same
neighbours through its STRtree search. The PostGIS KNN oracle is in
tests/test_nearest_db.py.
"""

from __future__ import annotations

import warnings

import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Geod, Proj

import analysis.nearest as nearest_module
from analysis.errors import AnalysisError, EmptyInput
from analysis.nearest import nearest

GEOD = Geod(ellps="WGS84")


def _read(name: str) -> gpd.GeoDataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gpd.read_file(libpysal.examples.get_path(name))


@pytest.fixture(scope="module")
def georgia() -> gpd.GeoDataFrame:
    """Georgia's 159 counties, UTM zone 16N (NAD83)."""
    return _read("G_utm.shp").set_crs(26916)


@pytest.fixture(scope="module")
def seats(georgia: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One point per county from the layer's own X/Y columns."""
    return gpd.GeoDataFrame(
        {"AreaKey": georgia["AreaKey"].to_numpy(), "TotPop90": georgia["TotPop90"].to_numpy()},
        geometry=gpd.points_from_xy(georgia["X"], georgia["Y"]), crs=georgia.crs,
    )


@pytest.fixture(scope="module")
def carolina() -> gpd.GeoDataFrame:
    """North Carolina's 100 counties in longitude/latitude."""
    return _read("sids2.shp").set_crs(4326)


def tie(d: np.ndarray) -> np.ndarray:
    """Distances to 11 significant digits: nearer than that counts as a tie (by key)."""
    return np.array([float(f"{v:.10e}") for v in d])


def brute_planar(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, key: str, k: int,
                 radius: float | None = None, self_key: str | None = None) -> list[list]:
    """For each input: [(near key, distance), ...] closest first, by pairwise distance."""
    keys = b[key].to_numpy()
    out = []
    for i, geom in enumerate(a.geometry):
        d = np.array([geom.distance(other) for other in b.geometry])
        order = [j for j in np.lexsort((keys, tie(d)))
                 if (radius is None or d[j] <= radius)
                 and (self_key is None or keys[j] != a[self_key].iloc[i])]
        out.append([(keys[j], d[j]) for j in order[:k]])
    return out


def brute_geodesic(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, key: str, k: int,
                   self_key: str | None = None) -> list[list]:
    """Geodesic distance between each pair's nearest points, all pairs."""
    keys = b[key].to_numpy()
    out = []
    for i, geom in enumerate(a.geometry):
        ends = [shapely.shortest_line(geom, other).coords for other in b.geometry]
        p = np.array([[c[0][0], c[0][1], c[1][0], c[1][1]] for c in ends])
        _, _, d = GEOD.inv(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        order = [j for j in np.lexsort((keys, tie(d)))
                 if self_key is None or keys[j] != a[self_key].iloc[i]]
        out.append([(keys[j], d[j]) for j in order[:k]])
    return out


def got_pairs(result: gpd.GeoDataFrame, a: gpd.GeoDataFrame, key: str) -> list[list]:
    out = []
    for value in a[key]:
        rows = result[result[key] == value]
        rows = rows[rows["near_rank"].notna()]
        assert list(rows["near_rank"]) == list(range(1, len(rows) + 1))
        out.append(list(zip(rows["near_id"], rows["near_dist"].astype(float), strict=True)))
    return out


def assert_same(got: list[list], expected: list[list], rtol: float = 1e-9) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert [key for key, _ in g] == [key for key, _ in e]
        np.testing.assert_allclose([d for _, d in g], [d for _, d in e], rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3])
def test_points_to_county_boundaries(seats, georgia, k):
    lines = gpd.GeoDataFrame({"AreaKey": georgia["AreaKey"]},
                             geometry=georgia.boundary, crs=georgia.crs)
    result = nearest(seats, lines, k=k, near_key="AreaKey")
    assert len(result) == k * len(seats)
    assert_same(got_pairs(result, seats, "AreaKey"), brute_planar(seats, lines, "AreaKey", k))


def test_same_table_polygons_never_self_and_ties_by_key(georgia):
    # Neighbouring counties touch: many ties at distance 0, broken by AreaKey.
    result = nearest(georgia, k=4, near_key="AreaKey")
    assert (result["near_id"] != result["AreaKey"]).all()
    assert (result.loc[result["near_rank"] == 1, "near_dist"] == 0).all()
    expected = brute_planar(georgia, georgia, "AreaKey", 4, self_key="AreaKey")
    assert_same(got_pairs(result, georgia, "AreaKey"), expected)


def test_polygons_to_points_within_radius_keep_every_input(georgia, seats):
    far = seats[seats["TotPop90"] > 50_000]
    radius = 40_000.0
    result = nearest(georgia, far, k=2, near_key="AreaKey", search_radius=radius)
    expected = brute_planar(georgia, far, "AreaKey", 2, radius=radius)
    assert_same(got_pairs(result, georgia, "AreaKey"), expected)
    lonely = [key for key, pairs in zip(georgia["AreaKey"], expected, strict=True) if not pairs]
    assert lonely, "the radius should leave some county without a neighbour"
    rows = result[result["AreaKey"].isin(lonely)]
    assert len(rows) == len(lonely)
    assert rows[["near_id", "near_rank", "near_dist", "near_angle"]].isna().all().all()
    assert set(result["AreaKey"]) == set(georgia["AreaKey"])
    # every input column comes through, with the input's geometry
    assert set(georgia.columns) <= set(result.columns)
    assert result.geometry.name == georgia.geometry.name


def test_angle_and_line_run_between_the_nearest_points(seats, georgia):
    lines = gpd.GeoDataFrame({"AreaKey": georgia["AreaKey"]},
                             geometry=georgia.boundary, crs=georgia.crs)
    result = nearest(seats, lines, k=2, near_key="AreaKey", lines=True)
    near_geoms = lines.set_index("AreaKey").geometry
    for row in result.itertuples():
        target = near_geoms.loc[row.near_id]
        start, end = shapely.shortest_line(row.geometry, target).coords
        angle = np.degrees(np.arctan2(end[1] - start[1], end[0] - start[0]))
        assert row.near_angle == pytest.approx(angle, abs=1e-9)
        assert -180 <= row.near_angle <= 180
        assert row.near_line.length == pytest.approx(row.near_dist, rel=1e-9, abs=1e-9)
        assert row.near_line.coords[0] == pytest.approx(start)


def test_angle_convention_east_counterclockwise():
    pts = gpd.GeoDataFrame({"id": [0, 1, 2, 3, 4]},
                           geometry=gpd.points_from_xy([0, 10, 0, -10, 0], [0, 0, 10, 0, -10]),
                           crs=26916)
    centre = pts.iloc[[0]]
    result = nearest(centre, pts.iloc[1:], k=4, near_key="id")
    angles = dict(zip(result["near_id"], result["near_angle"], strict=True))
    assert angles == {1: 0.0, 2: 90.0, 3: 180.0, 4: -90.0}


def test_geodesic_points_match_geod_on_coordinates(georgia, carolina):
    seats = gpd.GeoDataFrame({"AreaKey": georgia["AreaKey"]},
                             geometry=gpd.points_from_xy(georgia["Longitud"], georgia["Latitude"]),
                             crs=4326)
    result = nearest(seats, k=3, near_key="AreaKey")  # geographic: geodesic by default
    lon, lat = seats.geometry.x.to_numpy(), seats.geometry.y.to_numpy()
    keys = seats["AreaKey"].to_numpy()
    expected = []
    for i in range(len(seats)):
        az, _, d = GEOD.inv(np.full(len(seats), lon[i]), np.full(len(seats), lat[i]), lon, lat)
        order = [j for j in np.lexsort((keys, d)) if j != i][:3]
        expected.append([(keys[j], d[j]) for j in order])
        rows = result[result["AreaKey"] == keys[i]]
        np.testing.assert_allclose(rows["near_angle"].astype(float),
                                   (90 - az[order] + 180) % 360 - 180, atol=1e-9)
    assert_same(got_pairs(result, seats, "AreaKey"), expected)


def test_geodesic_polygons(carolina, georgia):
    seats = gpd.GeoDataFrame({"AreaKey": georgia["AreaKey"]},
                             geometry=gpd.points_from_xy(georgia["Longitud"], georgia["Latitude"]),
                             crs=4326)
    result = nearest(seats, carolina, k=2, near_key="FIPSNO")
    assert_same(got_pairs(result, seats, "AreaKey"), brute_geodesic(seats, carolina, "FIPSNO", 2))
    same = nearest(carolina, k=3, near_key="FIPSNO")
    assert (same["near_id"] != same["FIPSNO"]).all()
    expected = brute_geodesic(carolina, carolina, "FIPSNO", 3, self_key="FIPSNO")
    assert_same(got_pairs(same, carolina, "FIPSNO"), expected)


def test_geodesic_on_projected_data_agrees_with_utm(seats):
    # Over a short line, UTM distance / ellipsoidal distance is the projection's
    # point scale factor at the midpoint (pyproj computes it independently).
    geodesic = nearest(seats, k=2, near_key="AreaKey", method="geodesic", lines=True)
    planar = nearest(seats, k=2, near_key="AreaKey", method="planar")
    assert list(geodesic["near_id"]) == list(planar["near_id"])
    mid = gpd.GeoSeries(geodesic["near_line"].interpolate(0.5, normalized=True),
                        crs=seats.crs).to_crs(4326)
    factors = Proj(seats.crs).get_factors(mid.x.to_numpy(), mid.y.to_numpy())
    start = gpd.GeoSeries(shapely.get_point(geodesic["near_line"].array, 0), crs=seats.crs)
    start = start.to_crs(4326)
    convergence = Proj(seats.crs).get_factors(start.x.to_numpy(),
                                              start.y.to_numpy()).meridian_convergence
    ratio = planar["near_dist"].astype(float).to_numpy() / geodesic["near_dist"].astype(float)
    np.testing.assert_allclose(ratio, factors.meridional_scale, rtol=2e-5)
    # and grid north differs from true north by the meridian convergence at the start
    # (up to the arc-to-chord correction, hundredths of a degree over these lines)
    turn = (planar["near_angle"].astype(float) - geodesic["near_angle"].astype(float) + 180) % 360
    np.testing.assert_allclose(turn - 180, convergence, atol=0.03)


def test_antimeridian_neighbour_found():
    pts = gpd.GeoDataFrame({"id": [1, 2, 3]},
                           geometry=gpd.points_from_xy([179.9, -179.9, 170.0], [10, 10, 10]),
                           crs=4326)
    result = nearest(pts, k=1, near_key="id")
    assert dict(zip(result["id"], result["near_id"], strict=True)) == {1: 2, 2: 1, 3: 1}
    _, _, d = GEOD.inv(179.9, 10, -179.9, 10)
    assert result.iloc[0]["near_dist"] == pytest.approx(d, rel=1e-12)


def test_geodesic_radius_in_metres(seats):
    lonlat = seats.to_crs(4326)
    result = nearest(lonlat, k=5, near_key="AreaKey", search_radius=30_000)
    assert (result["near_dist"].dropna() <= 30_000).all()
    expected = brute_geodesic(lonlat, lonlat, "AreaKey", 5, self_key="AreaKey")
    expected = [[(key, d) for key, d in pairs if d <= 30_000] for pairs in expected]
    assert_same(got_pairs(result, lonlat, "AreaKey"), expected)


def test_near_layer_in_another_crs_is_transformed(seats, georgia):
    other = georgia.to_crs(3857)
    result = nearest(seats, other, k=1, near_key="AreaKey")
    expected = brute_planar(seats, georgia, "AreaKey", 1)
    assert [pairs[0][0] for pairs in got_pairs(result, seats, "AreaKey")] == [
        pairs[0][0] for pairs in expected
    ]


def test_string_keys_and_missing_geometry(seats):
    named = seats.assign(name=seats["AreaKey"].astype(str))
    named.loc[named.index[:3], "geometry"] = None
    result = nearest(named, k=2, near_key="name", input_key="name")
    assert len(result[result["name"].isin(named["name"][:3])]) == 3
    assert result.loc[result["name"].isin(named["name"][:3]), "near_id"].isna().all()
    assert not result["near_id"].isin(named["name"][:3]).any()


def _grid_points_and_stars(n_points: int, n_stars: int, seed: int) -> tuple[gpd.GeoDataFrame,
                                                                            gpd.GeoDataFrame]:
    """Points on a coarse grid (exact ties at equal distances), some missing, and star
    polygons that overlap."""
    rng = np.random.default_rng(seed)
    xy = np.round(rng.uniform(0, 1000, (n_points, 2)) / 25) * 25
    geoms = shapely.points(xy)
    geoms[rng.choice(n_points, 5, replace=False)] = None
    points = gpd.GeoDataFrame({"pid": np.arange(n_points) * 3 + 7}, geometry=geoms,
                              crs=26916)
    stars = []
    for cx, cy in np.round(rng.uniform(0, 1000, (n_stars, 2)) / 50) * 50:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        r = 40 * rng.uniform(0.4, 1.0, 7)
        stars.append(shapely.Polygon(np.column_stack([cx + r * np.cos(angles),
                                                      cy + r * np.sin(angles)])))
    polygons = gpd.GeoDataFrame({"sid": rng.permutation(n_stars) + 100}, geometry=stars,
                                crs=26916)
    return points, polygons


def _assert_identical(one: gpd.GeoDataFrame, other: gpd.GeoDataFrame) -> None:
    assert one.index.equals(other.index)
    for column in ("near_id", "near_rank"):
        assert one[column].tolist() == other[column].tolist()
    for column in ("near_dist", "near_angle"):
        np.testing.assert_array_equal(one[column].to_numpy(float, na_value=np.nan),
                                      other[column].to_numpy(float, na_value=np.nan))
    if "near_line" in one.columns:
        assert shapely.equals_exact(one["near_line"].to_numpy(), other["near_line"].to_numpy(),
                                    tolerance=0).tolist() == \
            (~one["near_line"].isna()).tolist()


@pytest.mark.parametrize("threads", [2, 3, 7])
@pytest.mark.parametrize(("k", "radius", "lines"), [(1, None, False), (5, None, True),
                                                    (4, 30.0, False)])
def test_threaded_chunks_equal_one_thread_bit_for_bit(threads, k, radius, lines):
    # Several chunks searched on several threads must give exactly what one thread gives,
    # and both what every pair measured gives.
    points, polygons = _grid_points_and_stars(1500, 120, seed=16)
    one = nearest(points, polygons, k=k, search_radius=radius, near_key="sid", lines=lines,
                  threads=1)
    many = nearest(points, polygons, k=k, search_radius=radius, near_key="sid", lines=lines,
                   threads=threads)
    _assert_identical(one, many)
    sample = points.iloc[::25]
    expected = brute_planar(sample, polygons, "sid", k, radius)
    assert_same(got_pairs(many[many["pid"].isin(sample["pid"])], sample, "pid"), expected)


def test_threaded_same_table_never_self(georgia):
    one = nearest(georgia, k=4, near_key="AreaKey", threads=1)
    many = nearest(georgia, k=4, near_key="AreaKey", threads=5)
    _assert_identical(one, many)
    assert (many["near_id"] != many["AreaKey"]).all()


@pytest.mark.parametrize(("k", "radius", "same", "lines"),
                         [(1, None, False, False), (5, None, False, True),
                          (3, 60.0, False, False), (4, None, True, False),
                          (2, 40.0, True, True)])
def test_points_kd_tree_equals_strtree_bit_for_bit(k, radius, same, lines):
    # Points on both sides take the KD-tree; the STRtree search must give exactly the same,
    # grid points making many exact ties (broken by key), and every pair measured agree.
    points, _ = _grid_points_and_stars(1200, 1, seed=61)
    near = points if same else points.iloc[::7].rename(columns={"pid": "nid"})
    key = "pid" if same else "nid"
    a = np.asarray(points.geometry.array, dtype=object)
    b = np.asarray(near.geometry.array, dtype=object)
    b_pos = np.flatnonzero(~shapely.is_missing(b))
    key_order = np.argsort(np.argsort(near[key].to_numpy()[b_pos], kind="stable"))
    exclude = None
    if same:
        codes = points["pid"].to_numpy()
        exclude = (codes, codes[b_pos])
    assert nearest_module._all_points(a) and nearest_module._all_points(b[b_pos])
    kd = nearest_module._points_knn(a, b[b_pos], k, radius, exclude, key_order, lines, 2)
    tree = nearest_module._planar_knn(a, b[b_pos], k, radius, exclude, key_order, lines, 2)
    for got, expected in zip((*kd[:3], kd[4]), (*tree[:3], tree[4]), strict=True):
        np.testing.assert_array_equal(got, expected)
    if lines:
        assert shapely.equals_exact(kd[3], tree[3], tolerance=0).all()

    result = nearest(points, None if same else near, k=k, search_radius=radius,
                     near_key=key, lines=lines)
    sample = points.iloc[::40]
    sample = sample[~sample.geometry.isna()]
    expected = brute_planar(sample, near[~near.geometry.isna()], key, k, radius,
                            self_key="pid" if same else None)
    assert_same(got_pairs(result[result["pid"].isin(sample["pid"])], sample, "pid"), expected)


def test_points_with_z_or_multipoints_take_the_strtree():
    flat = shapely.points([[0, 0], [1, 1]])
    assert nearest_module._all_points(np.array([*flat, None, shapely.Point()], dtype=object))
    assert not nearest_module._all_points(np.array([*flat, shapely.Point(0, 0, 1)]))
    assert not nearest_module._all_points(np.array([*flat, shapely.MultiPoint([(0, 0)])]))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"search_radius": -1.0}, "search_radius"),
     ({"method": "manhattan"}, "method"), ({"near_key": "nope"}, "near_table"),
     ({"threads": 0}, "threads"), ({"threads": 1.5}, "threads")],
)
def test_bad_parameters_name_their_field(seats, kwargs, field):
    with pytest.raises(AnalysisError) as err:
        nearest(seats, seats, **kwargs)
    assert err.value.field == field


def test_planar_on_longitude_latitude_is_refused(carolina):
    with pytest.raises(AnalysisError, match="degrees") as err:
        nearest(carolina, method="planar")
    assert err.value.field == "method"


def test_layer_problems_are_explained(seats):
    with pytest.raises(EmptyInput):
        nearest(seats, seats.iloc[:0])
    with pytest.raises(AnalysisError, match="unique"):
        nearest(seats, pd.concat([seats, seats]), near_key="AreaKey")
    with pytest.raises(AnalysisError, match="coordinate reference system"):
        nearest(seats, seats.set_crs(None, allow_override=True))
    with pytest.raises(AnalysisError, match="near_dist"):
        nearest(seats.assign(near_dist=1.0), seats)
