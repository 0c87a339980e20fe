"""Dissolve: merge the features of each group into one Multi* geometry, with aggregates.

The semantics are those of ArcGIS Dissolve and of PostGIS ``ST_Union ... GROUP BY``:
features with equal values in the ``by`` columns (nulls forming a group of their own, as in
SQL) become one feature; each aggregate ``{"column": "sum"}`` gives a column ``sum_column``.

Speed: the union is GEOS's either way, but polygons that do not overlap (administrative
units, parcels, grids) are merged with ``shapely.coverage_union_all``, several times faster
than the general cascaded union, which is kept for everything else (see :func:`_union` for
the check that decides).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from analysis.errors import AnalysisError, EmptyInput, GeometryTypeError
from analysis.multi import multi_of_dimension
from analysis.summary import Summary

__all__ = ["AGGREGATES", "DissolveSummary", "dissolve"]

Aggregate = Literal["sum", "mean", "min", "max", "count", "first"]
AGGREGATES: tuple[str, ...] = ("sum", "mean", "min", "max", "count", "first")
_NUMERIC_ONLY = {"sum", "mean"}


@dataclass
class DissolveSummary(Summary):
    """What the dissolve did besides its output: counts for the job's ``result``."""

    groups: int = 0
    skipped_empty: int = 0
    repaired: int = 0
    coverage_union_groups: int = 0
    warnings: list[str] = field(default_factory=list)


def _dimension(geoms: np.ndarray) -> int:
    dims = set(shapely.get_dimensions(geoms).tolist())
    if len(dims) != 1:
        raise GeometryTypeError(
            "the layer mixes points, lines and polygons; dissolve one geometry type at a time",
            field="input_table")
    return dims.pop()


def _repair(geoms: np.ndarray, dimension: int) -> tuple[np.ndarray, int]:
    """make_valid the invalid geometries, keeping only parts of the layer's dimension."""
    invalid = ~shapely.is_valid(geoms)
    if not invalid.any():
        return geoms, 0
    fixed = geoms.copy()
    repaired = shapely.make_valid(geoms[invalid])
    parts, index = shapely.get_parts(repaired, return_index=True)
    keep = shapely.get_dimensions(parts) == dimension
    collected = [shapely.union_all(parts[keep & (index == i)]) for i in range(len(repaired))]
    fixed[invalid] = collected
    return fixed, int(invalid.sum())


COVERAGE_AREA_TOLERANCE = 1e-10
"""Relative difference allowed between a coverage union's area and the sum of its parts'."""


def _union(geoms: np.ndarray, dimension: int) -> tuple[shapely.Geometry, bool]:
    """Union one group; True when the fast coverage union could be used.

    ``coverage_union_all`` is exact on polygons whose interiors do not overlap; on others it
    may fail, return an invalid geometry or return one that counts an overlap twice. Its
    result is accepted only when it is valid and its area equals the sum of the parts'
    areas: the union of valid polygons has exactly that area if and only if their
    interiors are pairwise disjoint (an overlap makes it smaller), and gaps between the
    parts are kept as holes by either union. Otherwise the general ``union_all`` runs. This
    check costs a small fraction of ``coverage_is_valid``, which the union used to run first.
    """
    if dimension == 2 and len(geoms) > 1:
        try:
            merged = shapely.coverage_union_all(geoms)
        except shapely.errors.GEOSException:
            merged = None
        if merged is not None and shapely.is_valid(merged):
            parts_area = math.fsum(shapely.area(geoms).tolist())
            if abs(shapely.area(merged) - parts_area) <= COVERAGE_AREA_TOLERANCE * parts_area:
                return merged, True
    return shapely.union_all(geoms), False


_THREADS = max(1, min(os.cpu_count() or 1, 4))
"""Threads sharing the groups' GEOS work (the CPU count, at most 4)."""


def _batches(sizes: np.ndarray, threads: int) -> list[range]:
    """Consecutive runs of groups with about equal numbers of features, several per thread
    (so one large group does not leave the other threads idle, and progress moves)."""
    if len(sizes) == 0:
        return []
    target = max(1, int(sizes.sum()) // (4 * threads))
    ends = np.searchsorted(np.cumsum(sizes), np.arange(target, int(sizes.sum()), target),
                           side="left") + 1
    cuts = np.unique(np.concatenate([[0], np.minimum(ends, len(sizes)), [len(sizes)]]))
    return [range(int(lo), int(hi)) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]


def _aggregate(
    frame: pd.DataFrame, codes: np.ndarray, firsts: pd.DataFrame, column: str, how: str
) -> pd.Series:
    values = frame[column]
    if how in _NUMERIC_ONLY and not pd.api.types.is_numeric_dtype(values.dtype):
        raise AnalysisError(f"{how} needs a numeric column; {column!r} is {values.dtype}",
                            field=f"aggregates.{column}")
    if how == "first":
        return firsts[column]
    grouped = values.groupby(codes)
    if how == "count":
        return grouped.count()
    if how == "sum":
        return grouped.sum(min_count=1)
    return getattr(grouped, how)()


def dissolve(
    gdf: gpd.GeoDataFrame,
    by: Sequence[str] | None = None,
    aggregates: Mapping[str, str] | None = None,
    *,
    key: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[gpd.GeoDataFrame, DissolveSummary]:
    """Dissolve ``gdf`` by the ``by`` columns (all features into one when empty).

    Parameters
    ----------
    gdf : the features; null and empty geometries are skipped and counted.
    by : grouping columns; nulls form their own group, as in SQL ``GROUP BY``.
    aggregates : ``{column: "sum"|"mean"|"min"|"max"|"count"|"first"}``; ``count`` counts
        non-null values, ``first`` takes the value of the feature with the lowest ``key``
        (row order when no key is given).
    key : the column that orders features for ``first``.
    progress : called with the fraction of groups done.

    Returns
    -------
    The dissolved layer (``by`` columns, ``<agg>_<column>``, ``feature_count``, Multi*
    geometry ``geom``, valid, in the input CRS) and a :class:`DissolveSummary`.
    """
    by = list(by or [])
    aggregates = dict(aggregates or {})
    for column in by:
        if column not in gdf.columns:
            raise AnalysisError(f"column {column!r} does not exist", field="by")
    for column, how in aggregates.items():
        if column not in gdf.columns:
            raise AnalysisError(f"column {column!r} does not exist", field="aggregates")
        if how not in AGGREGATES:
            raise AnalysisError(f"unknown aggregate {how!r}; use one of {list(AGGREGATES)}",
                                field=f"aggregates.{column}")
    summary = DissolveSummary()
    geoms = gdf.geometry.to_numpy()
    usable = ~(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    summary.skipped_empty = int((~usable).sum())
    if summary.skipped_empty:
        summary.warnings.append(f"{summary.skipped_empty} feature(s) with a null or empty "
                                "geometry were skipped")
    frame = gdf.loc[usable]
    if frame.empty:
        raise EmptyInput("the layer has no feature with a geometry", field="input_table")
    if key is not None:
        frame = frame.sort_values(key, kind="stable")
    geoms = frame.geometry.to_numpy()
    dimension = _dimension(geoms)

    if by:
        codes = frame.groupby(by, dropna=False, sort=True).ngroup().to_numpy()
    else:
        codes = np.zeros(len(frame), dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    groups = np.split(order, bounds)
    summary.groups = len(groups)

    unions = np.empty(len(groups), dtype=object)
    batches = _batches(np.fromiter(map(len, groups), dtype=np.int64, count=len(groups)),
                       _THREADS)

    def merge(batch: range) -> tuple[int, int]:
        """Repair and union the groups of ``batch``; (repaired, coverage unions) counts."""
        repaired = coverage = 0
        for i in batch:
            members, fixed = _repair(geoms[groups[i]], dimension)
            unions[i], used_coverage = _union(members, dimension)
            repaired += fixed
            coverage += used_coverage
        return repaired, coverage

    done = 0
    # GEOS releases the GIL: validity checks and unions of different groups run in parallel
    with ThreadPoolExecutor(_THREADS) as pool:
        for batch, (repaired, coverage) in zip(batches, pool.map(merge, batches), strict=True):
            summary.repaired += repaired
            summary.coverage_union_groups += coverage
            done += len(batch)
            if progress is not None:
                progress(done / len(groups))
    if summary.repaired:
        summary.warnings.append(f"{summary.repaired} invalid geometry(ies) were repaired with "
                                "make_valid")
    unions = shapely.make_valid(unions)

    firsts = frame.iloc[[g[0] for g in groups]]  # stable sort: each group's lowest key
    out = pd.DataFrame({column: firsts[column].to_numpy() for column in by})
    for column, how in aggregates.items():
        out[f"{how}_{column}"] = _aggregate(frame, codes, firsts, column, how).to_numpy()
    out["feature_count"] = np.array([len(g) for g in groups], dtype=np.int64)
    multi = multi_of_dimension(unions, dimension)
    return gpd.GeoDataFrame(out, geometry=gpd.GeoSeries(multi, crs=gdf.crs), crs=gdf.crs
                            ).rename_geometry("geom"), summary

