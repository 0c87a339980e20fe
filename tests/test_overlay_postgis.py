"""analysis.overlay against PostGIS: the same clip/erase done by ST_Intersection/ST_Difference.

Real data (Georgia's counties, their boundaries, points over the state), a
clip layer of overlapping irregular polygons in another SRID, and invalid
geometries on both sides.  For each input feature the area, length or point
count must match PostGIS within 1e-6 relative, and the surviving keys must be
the same.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import libpysal
import numpy as np
import psycopg
import pytest
import shapely
from psycopg import sql
from shapely.geometry import MultiPoint, Point, Polygon

from analysis.overlay import OverlayResult, clip, erase

pytestmark = pytest.mark.db

UTM16N = 26916  # G_utm.shp is in UTM zone 16N (its X/Y columns say so), not 17N
# ST_CollectionExtract type and the measure compared, by geometry dimension.
EXTRACT = {0: 1, 1: 2, 2: 3}
MEASURE = {0: "ST_NumGeometries", 1: "ST_Length", 2: "ST_Area"}


def _bow_tie(x: float, y: float, r: float) -> Polygon:
    return Polygon([(x - r, y - r), (x + r, y + r), (x + r, y - r), (x - r, y + r)])


@pytest.fixture(scope="module")
def counties() -> gpd.GeoDataFrame:
    """Georgia's counties (UTM 16N) keyed by ``key``, one turned into a bow-tie, one null."""
    g = gpd.read_file(libpysal.examples.get_path("G_utm.shp")).set_crs(UTM16N)
    g = g[["AreaKey", "TotPop90", "geometry"]].rename(columns={"AreaKey": "key"})
    c = g.geometry.iloc[10].centroid
    g.loc[10, "geometry"] = _bow_tie(c.x, c.y, 15_000)
    g.loc[20, "geometry"] = None
    return g


@pytest.fixture(scope="module")
def blobs(counties: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Twelve overlapping irregular polygons in lon/lat, one self-intersecting."""
    rng = np.random.default_rng(60)
    centres = counties.geometry.dropna().centroid.sample(12, random_state=60)
    shapes = []
    for c in centres:
        angles = np.sort(rng.uniform(0, 2 * np.pi, 15))
        radii = rng.uniform(15_000, 80_000, 15)
        shapes.append(Polygon(np.c_[c.x + radii * np.cos(angles), c.y + radii * np.sin(angles)]))
    assert shapely.union_all(shapes).area < sum(s.area for s in shapes)  # they overlap
    c = centres.iloc[0]
    shapes.append(_bow_tie(c.x + 30_000, c.y, 40_000))
    frame = gpd.GeoDataFrame({"blob": range(len(shapes))}, geometry=shapes, crs=UTM16N)
    return frame.to_crs(4326)


@pytest.fixture(scope="module")
def boundaries(counties: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    lines = counties.copy()
    lines["geometry"] = counties.boundary
    return lines


@pytest.fixture(scope="module")
def points(counties: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """400 points and 40 three-point multipoints over Georgia, plus an empty point."""
    rng = np.random.default_rng(61)
    xmin, ymin, xmax, ymax = counties.total_bounds
    xy = rng.uniform((xmin, ymin), (xmax, ymax), (520, 2))
    geoms = [Point(p) for p in xy[:400]] + [MultiPoint(xy[i : i + 3]) for i in range(400, 520, 3)]
    geoms.append(Point())
    return gpd.GeoDataFrame({"key": range(len(geoms))}, geometry=geoms, crs=UTM16N)


def _load(conn: psycopg.Connection[Any], name: str, frame: gpd.GeoDataFrame) -> None:
    srid = frame.crs.to_epsg()
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (key integer, geom geometry(Geometry, {}))").format(
            sql.Identifier(name), sql.Literal(srid)
        )
    )
    keys = frame["key"] if "key" in frame else frame.index
    wkb = shapely.to_wkb(np.asarray(frame.geometry.array, dtype=object))
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {} VALUES (%s, ST_GeomFromWKB(%s, %s))").format(sql.Identifier(name)),
            [(int(k), w, srid) for k, w in zip(keys, wkb, strict=True)],
        )


def _postgis(conn: psycopg.Connection[Any], how: str, dim: int, srid: int) -> dict[int, float]:
    """Per input key, the measure of PostGIS's clip or erase (empty results left out)."""
    op = sql.SQL("ST_Intersection" if how == "clip" else "ST_Difference")
    query = sql.SQL(
        """
        WITH u AS (
            SELECT ST_Union(ST_CollectionExtract(ST_MakeValid(ST_Transform(geom, {srid})), 3)) AS g
            FROM overlay_layer WHERE NOT ST_IsEmpty(geom)
        ), r AS (
            SELECT i.key, ST_CollectionExtract(
                       {op}(ST_CollectionExtract(ST_MakeValid(i.geom), {ext}), u.g), {ext}) AS g
            FROM input_layer i, u WHERE NOT ST_IsEmpty(i.geom)
        )
        SELECT key, {measure}(g) FROM r WHERE NOT ST_IsEmpty(g)
        """
    ).format(
        srid=sql.Literal(srid),
        op=op,
        ext=sql.Literal(EXTRACT[dim]),
        measure=sql.SQL(MEASURE[dim]),
    )
    return {k: float(v) for k, v in conn.execute(query)}


def _measure(result: OverlayResult, dim: int) -> dict[int, float]:
    geoms = np.asarray(result.frame.geometry.array, dtype=object)
    if dim == 2:
        values = shapely.area(geoms)
    elif dim == 1:
        values = shapely.length(geoms)
    else:
        values = shapely.get_num_geometries(geoms)
    return dict(zip(result.frame["key"].astype(int), values.astype(float), strict=True))


def _compare(conn, layer: gpd.GeoDataFrame, overlay: gpd.GeoDataFrame, how: str, dim: int):
    _load(conn, "input_layer", layer)
    _load(conn, "overlay_layer", overlay)
    result = (clip if how == "clip" else erase)(layer, overlay)
    ours = _measure(result, dim)
    theirs = _postgis(conn, how, dim, layer.crs.to_epsg())
    assert ours.keys() == theirs.keys()
    assert len(ours) > 0
    keys = sorted(ours)
    np.testing.assert_allclose([ours[k] for k in keys], [theirs[k] for k in keys], rtol=1e-6)
    return result


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_polygons_match_postgis(conn, counties, blobs, how):
    result = _compare(conn, counties, blobs, how, 2)
    invalid, null = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT ST_IsValid(geom)), count(*) FILTER (WHERE geom IS NULL)"
        " FROM input_layer"
    ).fetchone()
    assert result.summary.repaired == invalid == 1
    assert result.summary.skipped_null == null == 1
    assert result.summary.overlay_repaired == 1
    assert set(result.frame.geom_type) <= {"Polygon", "MultiPolygon"}
    assert result.frame.crs.to_epsg() == UTM16N


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_lines_match_postgis(conn, boundaries, blobs, how):
    result = _compare(conn, boundaries, blobs, how, 1)
    assert set(result.frame.geom_type) <= {"LineString", "MultiLineString"}


@pytest.mark.parametrize("how", ["clip", "erase"])
def test_points_match_postgis(conn, points, blobs, how):
    result = _compare(conn, points, blobs, how, 0)
    assert result.summary.skipped_empty == 1
    assert set(result.frame.geom_type) <= {"Point", "MultiPoint"}
