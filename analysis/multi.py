"""Multi* promotion, the one way every job type makes Point/LineString/Polygon into Multi*.

A typed PostGIS column holds one geometry type, so results that mix single and multi parts
are written as Multi*. Three forms share the rules here: promoting geometries
(:func:`to_multi`), gathering the parts of one dimension into one Multi* per feature
(:func:`multi_of_dimension`), and writing promoted EWKB straight from the parts' WKB
(:func:`ewkb`), which copies no geometry: a one-part Multi* is the part's WKB behind a
nine-byte header.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import shapely

__all__ = ["MULTI_TYPE_NAMES", "MULTI_MAKERS", "ewkb", "multi_of_dimension", "multi_type_name",
           "to_multi"]

MULTI_TYPE_NAMES = {"Point": "MultiPoint", "LineString": "MultiLineString",
                    "Polygon": "MultiPolygon"}
"""The Multi* type of each single-part type, by OGC name."""

MULTI_MAKERS = {0: shapely.multipoints, 1: shapely.multilinestrings, 2: shapely.multipolygons}
"""The shapely constructor of the Multi* type of each dimension."""

_EMPTY = {0: "MULTIPOINT EMPTY", 1: "MULTILINESTRING EMPTY", 2: "MULTIPOLYGON EMPTY"}
_PROMOTE = {0: 4, 1: 5, 3: 6}  # shapely type id of Point, LineString, Polygon -> its Multi*
_WKB_TYPE = {0: 1, 1: 2, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7}  # shapely type id -> WKB type
_Z, _SRID = 0x80000000, 0x20000000  # EWKB flags


def multi_type_name(name: str) -> str:
    """``"Polygon"`` -> ``"MultiPolygon"``; other names pass through."""
    return MULTI_TYPE_NAMES.get(name, name)


def to_multi(geometries: Any) -> np.ndarray:
    """Promote single-part geometries to their Multi* type; others pass through."""
    geoms = np.asarray(geometries, dtype=object)
    out = geoms.copy()
    type_ids = shapely.get_type_id(geoms)
    for single, multi in _PROMOTE.items():
        idx = np.flatnonzero(type_ids == single)
        if len(idx):
            make = MULTI_MAKERS[{4: 0, 5: 1, 6: 2}[multi]]
            out[idx] = make(geoms[idx], indices=np.arange(len(idx)))  # one C call, not a loop
    return out


def multi_of_dimension(geometries: Any, dimension: int) -> np.ndarray:
    """Each geometry as a Multi* of its parts of ``dimension`` (lower-dimension debris dropped).

    A geometry with no part of that dimension becomes an empty Multi*.
    """
    geoms = np.asarray(geometries, dtype=object)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    # make_valid can nest a Multi* inside a GeometryCollection: flatten until single parts
    while len(parts) and (shapely.get_type_id(parts) >= 4).any():
        nested = shapely.get_type_id(parts) >= 4
        sub, sub_owner = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], sub])
        owner = np.concatenate([owner[~nested], owner[nested][sub_owner]])
    keep = np.flatnonzero(shapely.get_dimensions(parts) == dimension)
    keep = keep[np.argsort(owner[keep], kind="stable")]  # parts in their original order
    make = MULTI_MAKERS[dimension]
    out = np.empty(len(geoms), dtype=object)
    out[:] = shapely.from_wkt(_EMPTY[dimension])  # for a geometry with no part of the dimension
    make(parts[keep], indices=owner[keep], out=out)
    return out


def ewkb(geometries: Any, srid: int, promote: bool = False) -> list[bytes | None]:
    """Little-endian EWKB of each geometry with ``srid``; with ``promote``, singles as Multi*.

    Equal, byte for byte, to ``shapely.to_wkb(shapely.set_srid(to_multi(g), srid),
    include_srid=True)`` (little-endian), without copying any geometry; None stays None.
    """
    geoms = np.asarray(geometries, dtype=object)
    wkb = shapely.to_wkb(geoms, byte_order=1)
    n = len(wkb)
    present = np.flatnonzero(wkb != None)  # noqa: E711  (element-wise test for None)
    geoms, wkb = geoms[present], wkb[present]
    srid = int(srid)
    # header and how many bytes of the WKB it replaces, by shapely type id * 2 + has_z
    headers = np.empty(16, dtype=object)
    cuts = np.zeros(16, dtype=np.int64)
    for type_id in range(8):
        for z in (0, 1):
            flags = _SRID | (_Z if z else 0)
            if promote and type_id in _PROMOTE:  # the part keeps its own (SRID-less) header
                headers[2 * type_id + z] = b"\x01" + struct.pack(
                    "<III", _PROMOTE[type_id] | flags, srid, 1)
            else:
                headers[2 * type_id + z] = b"\x01" + struct.pack(
                    "<II", _WKB_TYPE[type_id] | flags, srid)
                cuts[2 * type_id + z] = 5
    code = 2 * shapely.get_type_id(geoms) + shapely.has_z(geoms)
    made = [h + w[c:] for h, w, c in zip(headers[code].tolist(), wkb.tolist(),
                                          cuts[code].tolist(), strict=True)]
    if len(present) == n:
        return made
    out = np.full(n, None, dtype=object)
    out[present] = made
    return out.tolist()
