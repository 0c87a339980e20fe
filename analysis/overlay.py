"""Clip and erase a layer by another layer, with ArcGIS Clip/Erase semantics.

Each input feature keeps its attributes; its geometry becomes the part inside
(clip) or outside (erase) the union of the overlay features near it.  The
input's geometry dimension is kept: lower-dimension slivers an overlay leaves
behind (a polygon touching the clip edge along a line) are dropped, never
written as geometry collections.  Invalid geometries are repaired with
``make_valid`` first, empty and null geometries are skipped, and every such
decision is counted in the returned :class:`OverlaySummary`.

For speed an STRtree over the input lets every overlay feature meet only the
input features near it, and a feature wholly covered by one clip feature (or
touching no erase feature) is copied without running an overlay at all.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

import geopandas as gpd
import numpy as np
import shapely
from numpy.typing import NDArray

from analysis.errors import AnalysisError, GeometryTypeError
from analysis.multi import MULTI_MAKERS
from analysis.summary import Summary

__all__ = ["OverlayResult", "OverlaySummary", "clip", "combine_summaries", "erase",
           "keep_dimension"]

Geoms = NDArray[np.object_]

_COLLECTION = 7


@dataclass(frozen=True)
class OverlaySummary(Summary):
    """What happened to the features of one clip or erase run."""

    input_features: int
    output_features: int
    skipped_null: int
    skipped_empty: int
    repaired: int
    collapsed: int
    copied_whole: int
    overlaid: int
    dropped: int
    overlay_features: int
    overlay_skipped: int
    overlay_repaired: int


_OVERLAY_FIELDS = ("overlay_features", "overlay_skipped", "overlay_repaired")


def combine_summaries(summaries: list[OverlaySummary]) -> OverlaySummary:
    """The summary of one layer overlaid in blocks (each block by the same overlay layer):
    the input counts added up, the overlay layer's counts taken once."""
    first = summaries[0]
    return OverlaySummary(**{
        name: getattr(first, name) if name in _OVERLAY_FIELDS
        else sum(getattr(s, name) for s in summaries)
        for name in OverlaySummary.__dataclass_fields__})


@dataclass(frozen=True)
class OverlayResult:
    """The overlaid layer and the counts that explain it."""

    frame: gpd.GeoDataFrame
    summary: OverlaySummary


def keep_dimension(geoms: Geoms, dims: NDArray[np.integer]) -> Geoms:
    """Keep only the parts of each geometry whose dimension is ``dims[i]``.

    Returns None where nothing of that dimension is left.  Several parts are
    gathered into a Multi* geometry, one part stays a single geometry, so a
    result never is a GeometryCollection.
    """
    geoms = np.asarray(geoms, dtype=object)
    dims = np.asarray(dims)
    out = np.full(len(geoms), None, dtype=object)
    present = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)
    types = shapely.get_type_id(geoms)
    simple = present & (types != _COLLECTION)
    same = simple & (shapely.get_dimensions(geoms) == dims)
    out[same] = geoms[same]

    coll = np.flatnonzero(present & (types == _COLLECTION))
    if len(coll) == 0:
        return out
    parts, owner = shapely.get_parts(geoms[coll], return_index=True)
    owner = coll[owner]
    # make_valid can nest a MultiPolygon inside a GeometryCollection.
    while True:
        nested = shapely.get_type_id(parts) >= 4
        if not nested.any():
            break
        sub, sub_owner = shapely.get_parts(parts[nested], return_index=True)
        parts = np.concatenate([parts[~nested], sub])
        owner = np.concatenate([owner[~nested], owner[nested][sub_owner]])
    keep = (shapely.get_dimensions(parts) == dims[owner]) & ~shapely.is_empty(parts)
    parts, owner = parts[keep], owner[keep]
    for dim, make_multi in MULTI_MAKERS.items():
        mine = dims[owner] == dim
        if not mine.any():
            continue
        ids, first, counts = np.unique(owner[mine], return_index=True, return_counts=True)
        merged = make_multi(parts[mine], indices=np.searchsorted(ids, owner[mine]))
        single = counts == 1
        merged[single] = parts[mine][first[single]]
        out[ids] = merged
    return out


def clip(
    layer: gpd.GeoDataFrame,
    clip_layer: gpd.GeoDataFrame,
    *,
    field: str = "clip_table",
    threads: int | None = None,
    progress: Callable[[float], None] | None = None,
    unions: dict[tuple[int, ...], shapely.Geometry] | None = None,
) -> OverlayResult:
    """The part of each feature of ``layer`` inside the union of ``clip_layer``.

    ArcGIS *Clip*: attributes kept, geometry type kept, features wholly
    outside dropped.  ``clip_layer`` is reprojected to the CRS of ``layer``.
    ``threads`` (default: the CPU count, at most 4) share the GEOS work;
    ``progress`` is called with the fraction done.  ``unions`` keeps the unions
    of overlay features between calls with the same ``clip_layer`` (blocks of
    one input layer).
    """
    return _overlay(layer, clip_layer, "clip", field, threads, progress, unions)


def erase(
    layer: gpd.GeoDataFrame,
    erase_layer: gpd.GeoDataFrame,
    *,
    field: str = "erase_table",
    threads: int | None = None,
    progress: Callable[[float], None] | None = None,
    unions: dict[tuple[int, ...], shapely.Geometry] | None = None,
) -> OverlayResult:
    """The part of each feature of ``layer`` outside the union of ``erase_layer``.

    ArcGIS *Erase*: attributes kept, geometry type kept, features wholly
    erased dropped.  ``erase_layer`` is reprojected to the CRS of ``layer``.
    ``threads`` (default: the CPU count, at most 4) share the GEOS work;
    ``progress`` is called with the fraction done.  ``unions`` keeps the unions
    of overlay features between calls with the same ``erase_layer``.
    """
    return _overlay(layer, erase_layer, "erase", field, threads, progress, unions)


def _clean(geoms: Geoms) -> tuple[Geoms, NDArray[np.integer], dict[str, int]]:
    """Repair invalid geometries and mark null/empty ones (returned as None)."""
    null = shapely.is_missing(geoms)
    empty = ~null & shapely.is_empty(geoms)
    dims = np.where(null | empty, -1, shapely.get_dimensions(geoms))
    usable = ~null & ~empty
    invalid = usable & ~shapely.is_valid(geoms)
    fixed = geoms.copy()
    fixed[null | empty] = None
    fixed[invalid] = shapely.make_valid(geoms[invalid])
    # A repaired polygon may carry collapsed line parts (or be only lines).
    fixed[invalid] = keep_dimension(fixed[invalid], dims[invalid])
    collapsed = invalid & shapely.is_missing(fixed)
    counts = {
        "skipped_null": int(null.sum()),
        "skipped_empty": int(empty.sum()),
        "repaired": int(invalid.sum()),
        "collapsed": int(collapsed.sum()),
    }
    return fixed, dims, counts


def _overlay(
    layer: gpd.GeoDataFrame,
    other: gpd.GeoDataFrame,
    how: Literal["clip", "erase"],
    field: str,
    threads: int | None,
    progress: Callable[[float], None] | None,
    unions: dict[tuple[int, ...], shapely.Geometry] | None = None,
) -> OverlayResult:
    other = _to_crs_of(layer, other, field)
    geoms, dims, counts = _clean(np.asarray(layer.geometry.array, dtype=object))
    ogeoms, odims, ocounts = _clean(np.asarray(other.geometry.array, dtype=object))
    ogeoms = ogeoms[~shapely.is_missing(ogeoms)]
    odims = odims[odims >= 0]
    usable = ~shapely.is_missing(geoms)
    if len(odims) and usable.any() and odims.min() < dims[usable].max():
        kinds = {0: "points", 1: "lines", 2: "polygons"}
        raise GeometryTypeError(
            f"the {how} layer holds {kinds[int(odims.min())]}, which cannot {how} "
            f"{kinds[int(dims[usable].max())]}: its features need at least the input's dimension",
            field=field,
        )

    workers = _threads(threads)
    report = progress or (lambda fraction: None)
    other_i, input_i, inside = _pairs(geoms, ogeoms, workers)
    report(0.2)
    covered = np.zeros(len(geoms), dtype=bool)
    covered[input_i[inside]] = True
    near = np.zeros(len(geoms), dtype=bool)
    near[input_i] = True

    out = np.full(len(geoms), None, dtype=object)
    if how == "clip":
        whole, todo = covered, near & ~covered
    else:
        whole, todo = usable & ~near, near & ~covered
    out[whole] = geoms[whole]
    todo_idx = np.flatnonzero(todo)
    if len(todo_idx):
        masks = _neighbour_unions(todo_idx, input_i, other_i, ogeoms,
                                  {} if unions is None else unions)
        op = shapely.intersection if how == "clip" else shapely.difference
        # Many small chunks, so progress moves and a cancelled job stops soon.
        n_chunks = min(len(todo_idx), max(workers, len(todo_idx) // 2000))
        chunks = np.array_split(np.arange(len(todo_idx)), n_chunks)
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(op, geoms[todo_idx[c]], masks[c]): c for c in chunks}
            for done, future in enumerate(as_completed(futures), 1):
                c = futures[future]
                out[todo_idx[c]] = keep_dimension(future.result(), dims[todo_idx[c]])
                report(0.2 + 0.8 * done / len(chunks))
    report(1.0)

    kept = ~shapely.is_missing(out)
    frame = layer.loc[kept].copy()
    frame[layer.geometry.name] = gpd.GeoSeries(out[kept], index=frame.index, crs=layer.crs)
    summary = OverlaySummary(
        input_features=len(layer),
        output_features=int(kept.sum()),
        copied_whole=int(whole.sum()),
        overlaid=len(todo_idx),
        dropped=int((usable & ~kept).sum()),
        overlay_features=len(other),
        overlay_skipped=ocounts["skipped_null"] + ocounts["skipped_empty"] + ocounts["collapsed"],
        overlay_repaired=ocounts["repaired"],
        **counts,
    )
    return OverlayResult(frame, summary)


def _pairs(
    geoms: Geoms, ogeoms: Geoms, workers: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
    """Pairs (overlay index, input index) that intersect, and whether the overlay contains the input.

    ``contains`` rather than ``covers`` because it is cheaper with a prepared polygon; the two
    differ only for an input lying wholly on the overlay's boundary, which the exact overlay
    then handles.

    An STRtree over the input gives candidate pairs by bounding box; the exact tests use
    prepared overlay geometries.  Threads take disjoint runs of overlay features, so no
    prepared geometry is shared between threads (GEOS builds its indexes lazily).
    """
    tree = shapely.STRtree(geoms)
    other_i, input_i = tree.query(ogeoms)  # grouped by overlay feature, in order
    shapely.prepare(ogeoms)
    bounds = np.searchsorted(other_i, [len(ogeoms) * k // workers for k in range(workers + 1)])

    def test(k: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        o = ogeoms[other_i[bounds[k] : bounds[k + 1]]]
        g = geoms[input_i[bounds[k] : bounds[k + 1]]]
        inside = shapely.contains(o, g)
        hits = inside.copy()
        hits[~inside] = shapely.intersects(o[~inside], g[~inside])
        return hits, inside

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(test, range(workers)))
    hits = np.concatenate([r[0] for r in results])
    inside = np.concatenate([r[1] for r in results])
    return other_i[hits], input_i[hits], inside[hits]


def _threads(threads: int | None) -> int:
    if threads is None:
        return max(1, min(os.cpu_count() or 1, 4))
    if threads < 1:
        raise AnalysisError("threads must be at least 1", field="threads")
    return threads


def _neighbour_unions(
    todo_idx: NDArray[np.intp], input_i: NDArray[np.intp], other_i: NDArray[np.intp], ogeoms: Geoms,
    unions: dict[tuple[int, ...], shapely.Geometry],
) -> Geoms:
    """For each input in ``todo_idx``, the union of the overlay features it meets.

    Neighbouring inputs often meet the same overlay features, so each distinct
    set is unioned once (``unions``, by sorted overlay indices, may hold sets
    from earlier calls).
    """
    neighbours: dict[int, list[int]] = defaultdict(list)
    wanted = np.isin(input_i, todo_idx)
    for i, o in zip(input_i[wanted].tolist(), other_i[wanted].tolist(), strict=True):
        neighbours[i].append(o)
    masks = np.empty(len(todo_idx), dtype=object)
    for k, i in enumerate(todo_idx.tolist()):
        key = tuple(sorted(neighbours[i]))
        if key not in unions:
            unions[key] = ogeoms[key[0]] if len(key) == 1 else shapely.union_all(ogeoms[list(key)])
        masks[k] = unions[key]
    return masks


def _to_crs_of(layer: gpd.GeoDataFrame, other: gpd.GeoDataFrame, field: str) -> gpd.GeoDataFrame:
    """``other`` in the CRS of ``layer``; a layer without CRS cannot be matched."""
    if layer.crs is None and other.crs is None:
        return other
    if other.crs is None:
        raise AnalysisError("the overlay layer has no coordinate reference system; set its SRID", field=field)
    if layer.crs is None:
        raise AnalysisError(
            "the input layer has no coordinate reference system; set its SRID",
            field="input_table",
        )
    return other if other.crs == layer.crs else other.to_crs(layer.crs)
