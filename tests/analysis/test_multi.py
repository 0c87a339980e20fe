"""Multi* promotion: geometries, parts of one dimension, and EWKB written without copies."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely import wkt

from analysis.multi import ewkb, multi_of_dimension, to_multi

MIXED = [
    "POINT (1 2)", "POINT Z (1 2 3)", "LINESTRING (0 0, 1 1)", "LINEARRING (0 0, 1 0, 1 1, 0 0)",
    "POLYGON ((0 0, 1 0, 1 1, 0 0))", "POLYGON Z ((0 0 1, 1 0 1, 1 1 1, 0 0 1))",
    "POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0), (1 1, 2 1, 2 2, 1 1))",
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)))", "MULTIPOINT ((1 1), (2 2))",
    "GEOMETRYCOLLECTION (POINT (1 1), POLYGON ((0 0, 1 0, 1 1, 0 0)))", "POLYGON EMPTY",
]


@pytest.mark.parametrize("promote", [False, True])
def test_ewkb_is_shapely_ewkb_of_the_promoted_geometries(promote: bool) -> None:
    geoms = np.array([*map(wkt.loads, MIXED), None], dtype=object)
    source = to_multi(geoms) if promote else geoms
    oracle = shapely.to_wkb(shapely.set_srid(source, 3857), include_srid=True, byte_order=1)
    assert ewkb(geoms, 3857, promote=promote) == list(oracle)
    # and PostGIS's reading of it: the SRID and the promoted type are in the bytes
    back = shapely.from_wkb(ewkb(geoms[:-1], 3857, promote=promote))
    assert (shapely.get_srid(back) == 3857).all()
    names = shapely.get_type_id(back)
    assert (names[[0, 2, 4]] == ([4, 5, 6] if promote else [0, 1, 3])).all()
    assert shapely.equals(back[4], geoms[4]) and shapely.has_z(back[5])


def test_to_multi_promotes_only_single_parts() -> None:
    geoms = np.array([*map(wkt.loads, MIXED)], dtype=object)
    out = to_multi(geoms)
    singles = np.isin(shapely.get_type_id(geoms), [0, 1, 3])
    assert (shapely.get_type_id(out[singles]) >= 4).all()
    assert all(out[i] is geoms[i] for i in np.flatnonzero(~singles))
    assert shapely.equals(out[singles & ~shapely.is_empty(geoms)],
                          geoms[singles & ~shapely.is_empty(geoms)]).all()


def test_multi_of_dimension_keeps_parts_of_that_dimension() -> None:
    geoms = np.array([wkt.loads(w) for w in [
        "POLYGON ((0 0, 1 0, 1 1, 0 0))",
        "GEOMETRYCOLLECTION (LINESTRING (0 0, 5 5), MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), "
        "((5 5, 6 5, 6 6, 5 5))))",
        "LINESTRING (0 0, 1 1)",
        "POINT (0 0)",
    ]], dtype=object)
    out = multi_of_dimension(geoms, 2)
    assert [g.geom_type for g in out] == ["MultiPolygon"] * 4
    assert shapely.get_num_geometries(out).tolist() == [1, 2, 0, 0]
    assert shapely.area(out).tolist() == [0.5, 1.0, 0.0, 0.0]
