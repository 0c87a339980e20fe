"""The k nearest features of one layer to each feature of another (ArcGIS *Near* semantics).

Distances are between the features' nearest points, not their centroids, so
points, lines and polygons can be mixed on either side. The search uses
Shapely 2's STRtree: a per-feature search radius that doubles until it holds
``k`` candidates (a candidate set that holds ``k`` features within ``r`` holds
the true ``k`` nearest, ties included); candidates are found by bounding box and
their exact distances, computed once, decide which lie within ``r``.

``planar`` distances are in the CRS's units. ``geodesic`` distances are in
metres on the CRS's ellipsoid: the nearest points are found in longitude and
latitude, then measured with :class:`pyproj.Geod` (Karney 2013, *Algorithms
for geodesics*, J. Geodesy 87:43-55); candidates are bounded by a box that no
feature within the current ``k``-th geodesic distance can lie outside.
Data crossing the antimeridian is not handled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray
from pyproj import CRS, Geod

from analysis.errors import AnalysisError, EmptyInput

__all__ = ["NEAR_COLUMNS", "Method", "default_method", "nearest"]

Method = Literal["planar", "geodesic"]
NEAR_COLUMNS = ("near_id", "near_rank", "near_dist", "near_angle")
MAX_K = 1000

CHUNK = 25_000
"""Input features searched together: several chunks per thread keep both cores busy and bound
the memory of the candidate pairs."""

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
T = TypeVar("T")


def default_method(crs: CRS | None) -> Method:
    """``geodesic`` for geographic coordinates, ``planar`` otherwise."""
    return "geodesic" if crs is not None and CRS.from_user_input(crs).is_geographic else "planar"


def nearest(
    inputs: gpd.GeoDataFrame,
    near: gpd.GeoDataFrame | None = None,
    *,
    k: int = 1,
    search_radius: float | None = None,
    method: Method | None = None,
    near_key: str | None = None,
    input_key: str | None = None,
    same_table: bool = False,
    lines: bool = False,
    threads: int | None = None,
) -> gpd.GeoDataFrame:
    """Return one row per input feature and neighbour rank, closest first.

    ``near`` defaults to ``inputs`` itself. With ``same_table`` (implied when
    ``near`` is omitted) a near feature whose key equals the input feature's
    key is never its neighbour. Keys are the named columns, or the index.
    ``search_radius`` is in the CRS's units for ``planar`` and in metres for
    ``geodesic``. Output: the input rows (index and every column) plus
    ``near_id``, ``near_rank`` (ties broken by ``near_id``), ``near_dist``,
    ``near_angle`` (degrees counter-clockwise from east, -180..180, from the
    input's nearest point to the near feature's) and, with ``lines``,
    ``near_line``. An input feature without neighbour keeps one row of nulls.
    Planar searches share chunks of inputs among ``threads`` threads (default: the CPU
    count, at most 4); the result does not depend on their number.
    """
    if near is None:
        near, same_table = inputs, True
        input_key = input_key if input_key is not None else near_key
    k = _check_k(k)
    workers = _threads(threads)
    radius = _check_radius(search_radius)
    method = _check_method(inputs, near, method)
    taken = [c for c in (*NEAR_COLUMNS, "near_line") if c in inputs.columns]
    if taken:
        raise AnalysisError(
            f"the input already has column(s) {taken}, which the result needs; rename them",
            field="input_table",
        )
    if len(inputs) == 0:
        raise EmptyInput("the input layer has no feature", field="input_table")
    near = near if near.crs == inputs.crs or near.crs is None else near.to_crs(inputs.crs)
    near_ids = _keys(near, near_key, "near_table")
    near_geoms = np.asarray(near.geometry.array, dtype=object)
    usable = ~(shapely.is_missing(near_geoms) | shapely.is_empty(near_geoms))
    if not usable.any():
        raise EmptyInput("the near layer has no feature with a geometry", field="near_table")
    b_pos = np.flatnonzero(usable)
    b = near_geoms[b_pos]
    a = np.asarray(inputs.geometry.array, dtype=object)

    exclude = None
    if same_table:
        in_ids = _keys(inputs, input_key, "input_table")
        codes, _ = pd.factorize(np.concatenate([np.asarray(in_ids, dtype=object),
                                                np.asarray(near_ids, dtype=object)[b_pos]]))
        exclude = (codes[: len(a)], codes[len(a):])

    key_order = np.argsort(np.argsort(np.asarray(near_ids[b_pos]), kind="stable"))
    if method == "planar" and _all_points(a) and _all_points(b):
        left, right, dist, line, angle = _points_knn(a, b, k, radius, exclude, key_order,
                                                     lines, workers)
    elif method == "planar":
        left, right, dist, line, angle = _planar_knn(a, b, k, radius, exclude, key_order,
                                                     lines, workers)
    else:
        left, right, dist, line = _geodesic_knn(a, b, k, radius, exclude, key_order,
                                                inputs.crs)
        angle = _angles(line, method, inputs.crs)
    right = b_pos[right]
    if lines and method == "geodesic" and not CRS.from_user_input(inputs.crs).is_geographic:
        line = gpd.GeoSeries(line, crs=CRS.from_user_input(inputs.crs).geodetic_crs)
        line = np.asarray(line.to_crs(inputs.crs).array, dtype=object)
    return _assemble(inputs, near_ids, left, right, dist, angle, line if lines else None)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_K:
        raise AnalysisError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}", field="k")
    return int(k)


def _threads(threads: int | None) -> int:
    if threads is None:
        return max(1, min(os.cpu_count() or 1, 4))
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
        raise AnalysisError(f"threads must be a whole number of 1 or more, got {threads!r}",
                            field="threads")
    return int(threads)


def _in_chunks(work: Callable[[int, int], T], n: int, threads: int) -> list[T]:
    """``work(lo, hi)`` over consecutive chunks of ``range(n)``, in order, on ``threads``
    threads (Shapely and NumPy release the GIL for the heavy parts)."""
    edges = np.linspace(0, n, max(1, -(-n // CHUNK), min(threads, n)) + 1).astype(int)
    spans = list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))
    if threads == 1 or len(spans) == 1:
        return [work(lo, hi) for lo, hi in spans]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda span: work(*span), spans))


def _check_radius(radius: float | None) -> float | None:
    if radius is None:
        return None
    if not isinstance(radius, int | float) or not math.isfinite(radius) or radius < 0:
        raise AnalysisError(
            f"search_radius must be a finite distance of 0 or more, got {radius!r}",
            field="search_radius",
        )
    return float(radius)


def _check_method(inputs: gpd.GeoDataFrame, near: gpd.GeoDataFrame, method: str | None) -> Method:
    if (inputs.crs is None) != (near.crs is None):
        raise AnalysisError(
            "one layer has a coordinate reference system and the other has none; "
            "assign the right SRID to both",
            field="near_table",
        )
    if method is None:
        return default_method(inputs.crs)
    if method not in ("planar", "geodesic"):
        raise AnalysisError(
            f"method must be 'planar' or 'geodesic', got {method!r}", field="method"
        )
    if method == "geodesic" and inputs.crs is None:
        raise AnalysisError(
            "geodesic distances need a coordinate reference system; the input has none",
            field="method",
        )
    if method == "planar" and inputs.crs is not None and CRS.from_user_input(
        inputs.crs
    ).is_geographic:
        raise AnalysisError(
            "planar distances on longitude/latitude would be in degrees; "
            "use method 'geodesic' (metres) or a projected layer",
            field="method",
        )
    return cast(Method, method)


def _keys(frame: gpd.GeoDataFrame, column: str | None, field: str) -> pd.Index:
    if column is None:
        keys = frame.index
    elif column in frame.columns:
        keys = pd.Index(frame[column])
    else:
        raise AnalysisError(f"the layer has no key column {column!r}", field=field)
    if keys.hasnans or not keys.is_unique:
        raise AnalysisError(
            "the layer's key must be unique and not null to identify neighbours", field=field
        )
    return keys


def _group_rank(left: IntArray, value: FloatArray) -> IntArray:
    """Rank (0, 1, ...) of each pair within its input by ``value``, for ``left`` sorted.

    One float sort: the input's position plus the value scaled into [0, 0.5). Values closer
    than 2**-30 of the largest may swap ranks, so callers use ranks only to choose
    thresholds, never to decide the result.
    """
    if not len(left):
        return np.empty(0, np.int64)
    group = np.cumsum(np.r_[0, np.diff(left) != 0])
    top = float(value.max())
    key = group + (value / (2.0 * top + 1.0) if top > 0 else 0.0)
    order = np.argsort(key, kind="stable")
    rank = np.empty(len(left), np.int64)
    starts = np.searchsorted(group, group, side="left")
    rank[order] = np.arange(len(left)) - starts[order]
    return rank


def _per_input_max(left: IntArray, value: FloatArray, n: int) -> FloatArray:
    out = np.full(n, -np.inf)
    np.maximum.at(out, left, value)
    return out


def _box_distance(a_bounds: FloatArray, b_bounds: FloatArray) -> FloatArray:
    """Distance between bounding boxes: never more than between the geometries they hold."""
    dx = np.maximum(np.maximum(b_bounds[:, 0] - a_bounds[:, 2], a_bounds[:, 0] - b_bounds[:, 2]),
                    0.0)
    dy = np.maximum(np.maximum(b_bounds[:, 1] - a_bounds[:, 3], a_bounds[:, 1] - b_bounds[:, 3]),
                    0.0)
    return np.hypot(dx, dy)


def _search(
    tree: shapely.STRtree,
    a: NDArray[np.object_],
    b: NDArray[np.object_],
    k: int,
    cap: float,
    exclude: tuple[IntArray, IntArray] | None,
    start: float,
) -> tuple[IntArray, IntArray, FloatArray, NDArray[np.bool_]]:
    """Candidate pairs with their exact distances, holding every input's ``k`` nearest within
    ``cap`` (ties included): for each input, every near feature at most as far as its ``k``-th
    candidate, ``d_k``.

    Per round, the tree gives the features whose boxes lie within ``r`` of the input's box.
    Box distances are lower bounds of the true ones, so the exact distance is computed only
    for the ``k`` closest boxes (bounding ``d_k`` from above), then for the boxes closer than
    that bound; features whose box is farther cannot be among the ``k`` nearest. An input with
    fewer than ``k`` boxes within ``r``, or whose bound exceeds ``r``, goes to the next round
    with a larger ``r`` (doubled, or that bound). Returns the pairs within the bound, their
    distances, and which inputs reached ``cap`` (they may hold fewer than ``k``).
    """
    n = len(a)
    r = np.full(n, min(start, cap))
    pending = np.flatnonzero(~(shapely.is_missing(a) | shapely.is_empty(a)))
    bounds = np.full((n, 4), np.nan)
    bounds[pending] = shapely.bounds(a[pending])
    b_bounds = shapely.bounds(b)
    at_cap = np.zeros(n, dtype=bool)
    lefts: list[IntArray] = []
    rights: list[IntArray] = []
    dists: list[FloatArray] = []
    while pending.size:
        grow = r[pending][:, None] * np.array([-1.0, -1.0, 1.0, 1.0])
        boxes = shapely.box(*(bounds[pending] + grow).T)
        sub_l, right = tree.query(boxes)  # sorted by input
        left = pending[sub_l]
        if exclude is not None:
            keep = exclude[0][left] != exclude[1][right]
            left, right = left[keep], right[keep]
        box_d = _box_distance(bounds[left], b_bounds[right])
        inside = box_d <= r[left]
        left, right, box_d = left[inside], right[inside], box_d[inside]
        counts = np.bincount(left, minlength=n)
        capped = r >= cap
        ready = np.zeros(n, dtype=bool)
        ready[pending] = (counts[pending] >= k) | capped[pending]
        sel = ready[left]
        left, right, box_d = left[sel], right[sel], box_d[sel]
        # 1. exact distances of the k closest boxes bound d_k from above
        first = _group_rank(left, box_d) < k
        bound_box = _per_input_max(left[first], box_d[first], n)
        bound_box[capped & (counts < k)] = np.inf
        near1 = box_d <= bound_box[left]
        dist = np.full(len(left), np.inf)
        dist[near1] = shapely.distance(a[left[near1]], b[right[near1]])
        kth = np.full(n, np.inf)
        got = np.flatnonzero(near1)
        if got.size:
            within = _group_rank(left[got], dist[got]) < k
            kth = _per_input_max(left[got[within]], dist[got[within]], n)
            kth[counts < k] = np.inf
        # a little beyond d_k: distances that _tie_key rounds to d_k are ties and must stay
        limit = np.minimum(kth * (1.0 + 1e-9), cap)
        # 2. the other boxes within the bound, and whether the search reached that far
        done = ready & (limit <= r)
        near2 = ~near1 & done[left] & (box_d <= limit[left])
        dist[near2] = shapely.distance(a[left[near2]], b[right[near2]])
        at_cap[done & capped & (counts < k)] = True
        keep = done[left] & (dist <= limit[left])
        lefts.append(left[keep])
        rights.append(right[keep])
        dists.append(dist[keep])
        again = pending[~done[pending]]
        wider = ready[again]  # holds k boxes, but the bound lies beyond r: search to it
        r[again] = np.where(wider, np.minimum(limit[again], cap),
                            np.minimum(r[again] * 2.0, cap))
        pending = again
    if not lefts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), at_cap
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(dists), at_cap


def _start_radius(a: NDArray[np.object_], b: NDArray[np.object_], k: int) -> tuple[float, float]:
    """A first search radius (k features' worth of the near layer's density),
    and a radius that holds every pair."""
    ax0, ay0, ax1, ay1 = shapely.total_bounds(a)
    bx0, by0, bx1, by1 = shapely.total_bounds(b)
    span = math.hypot(max(ax1, bx1) - min(ax0, bx0), max(ay1, by1) - min(ay0, by0))
    everything = span * (1 + 1e-9) + 1e-12 * max(1.0, span)
    width, height = bx1 - bx0, by1 - by0
    area = width * height if width > 0 and height > 0 else max(width, height) ** 2
    density = math.sqrt(k * area / (math.pi * len(b)))
    return max(density, everything * 1e-9), everything


def _tie_key(dist: FloatArray) -> FloatArray:
    """Distances rounded to 11 significant digits, so that geometric ties computed with
    different rounding (a boundary shared by two polygons, traversed in opposite
    directions) still go to the near key."""
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log10(np.where(dist > 0, dist, 1.0)))
    scale = 10.0 ** (exponent - 10)
    return np.round(dist / scale) * scale


def _top_k(
    left: IntArray,
    right: IntArray,
    dist: FloatArray,
    k: int,
    radius: float | None,
    key_order: IntArray,
) -> IntArray:
    """Positions of the ``k`` closest pairs per input, ties broken by the near key."""
    if radius is not None:
        inside = np.flatnonzero(dist <= radius)
    else:
        inside = np.arange(len(left))
    # lexicographic (input, rounded distance, near key) by stable sorts, last key first
    order = inside[np.argsort(key_order[right[inside]], kind="stable")]
    order = order[np.argsort(_tie_key(dist[order]), kind="stable")]
    order = order[np.argsort(left[order], kind="stable")]
    sl = left[order]
    first = np.searchsorted(sl, sl, side="left")
    rank = np.arange(len(sl)) - first
    return order[rank < k]


def _planar_knn(
    a: NDArray[np.object_],
    b: NDArray[np.object_],
    k: int,
    radius: float | None,
    exclude: tuple[IntArray, IntArray] | None,
    key_order: IntArray,
    all_lines: bool,
    threads: int,
) -> tuple[IntArray, IntArray, FloatArray, NDArray[np.object_], FloatArray]:
    """The STRtree search per chunk of inputs, and the angles; the shortest lines are kept
    only when they are wanted (a million of them weigh about 200 MB)."""
    tree = shapely.STRtree(b)
    tree.query(b[:1])  # builds the tree here, before threads share it
    start, everything = _start_radius(a, b, k)
    cap = everything if radius is None else radius

    def part(lo: int, hi: int
             ) -> tuple[IntArray, IntArray, FloatArray, NDArray[np.object_], FloatArray]:
        sub = a[lo:hi]
        ex = None if exclude is None else (exclude[0][lo:hi], exclude[1])
        left, right, dist, _ = _search(tree, sub, b, k, cap, ex, start)
        keep = _top_k(left, right, dist, k, radius, key_order)
        left, right, dist = left[keep], right[keep], dist[keep]
        # Touching pairs need no line for their angle (0); skip them unless lines are wanted.
        line = np.full(len(left), None, dtype=object)
        todo = np.arange(len(left)) if all_lines else np.flatnonzero(dist > 0)
        line[todo] = shapely.shortest_line(sub[left[todo]], b[right[todo]])
        angle = _angles(line, "planar", None)
        if not all_lines:
            line = np.full(len(left), None, dtype=object)
        return left + lo, right, dist, line, angle

    parts = _in_chunks(part, len(a), threads)
    left, right, dist, line, angle = (np.concatenate([p[i] for p in parts]) for i in range(5))
    return left, right, dist, line, angle


def _all_points(geoms: NDArray[np.object_]) -> bool:
    """Whether every present, non-empty geometry is a single two-dimensional point."""
    ids = shapely.get_type_id(geoms)
    return bool(np.all((ids == -1) | shapely.is_empty(geoms) | ((ids == 0) & ~shapely.has_z(geoms))))


def _points_knn(
    a: NDArray[np.object_],
    b: NDArray[np.object_],
    k: int,
    radius: float | None,
    exclude: tuple[IntArray, IntArray] | None,
    key_order: IntArray,
    all_lines: bool,
    threads: int,
) -> tuple[IntArray, IntArray, FloatArray, NDArray[np.object_], FloatArray]:
    """Points to points with a KD-tree, and the angles: a few more than the ``k`` nearest
    bound ``d_k``; where they may not hold every feature within that bound (plus the tie
    margin), a ball query adds them. Distances are computed as GEOS computes a point-to-point
    distance, ``sqrt(dx * dx + dy * dy)``."""
    from scipy.spatial import cKDTree  # only this path needs SciPy's spatial module

    bxy = shapely.get_coordinates(b)
    tree = cKDTree(bxy)
    _, everything = _start_radius(a, b, k)
    cap = everything if radius is None else radius
    # An input shares its key with at most one near feature, which is then not its neighbour;
    # a few more than k neighbours usually hold every tie of the k-th.
    probe = min(k + (exclude is not None) + 3, len(b))

    def part(lo: int, hi: int) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
        sub = a[lo:hi]
        have = np.flatnonzero(~(shapely.is_missing(sub) | shapely.is_empty(sub)))
        axy = shapely.get_coordinates(sub[have])
        if not len(have):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0)
        tree_d, idx = tree.query(axy, k=probe)
        tree_d = np.asarray(tree_d, dtype=float).reshape(len(have), probe)
        pos = np.repeat(np.arange(len(have)), probe)
        cand = np.asarray(idx, dtype=np.int64).ravel()
        if exclude is not None:
            other = exclude[0][lo:hi][have][pos] != exclude[1][cand]
            pos, cand = pos[other], cand[other]
        dist = _point_distance(axy[pos], bxy[cand])
        kth = np.full(len(have), np.inf)
        order = np.lexsort((dist, pos))
        first = np.searchsorted(pos[order], pos[order], side="left")
        at_k = order[np.arange(len(order)) - first == k - 1]
        kth[pos[at_k]] = dist[at_k]
        # a little beyond d_k: distances that _tie_key rounds to d_k are ties and must stay
        reach = np.minimum(kth * (1.0 + 1e-9), cap) * (1.0 + 1e-12)
        # where the last neighbour probed lies within reach, more may: search the ball
        more = np.flatnonzero(tree_d[:, -1] <= reach) if probe < len(b) else np.empty(0, int)
        if more.size:
            again = np.zeros(len(have), dtype=bool)
            again[more] = True
            keep = ~again[pos]
            found = tree.query_ball_point(axy[more], reach[more], return_sorted=False)
            counts = np.array([len(f) for f in found], dtype=np.int64)
            pos2 = np.repeat(more, counts)
            cand2 = np.concatenate([np.asarray(f, dtype=np.int64) for f in found])
            if exclude is not None:
                other = exclude[0][lo:hi][have][pos2] != exclude[1][cand2]
                pos2, cand2 = pos2[other], cand2[other]
            pos = np.concatenate([pos[keep], pos2])
            cand = np.concatenate([cand[keep], cand2])
            dist = np.concatenate([dist[keep], _point_distance(axy[pos2], bxy[cand2])])
            order = np.argsort(pos, kind="stable")
            pos, cand, dist = pos[order], cand[order], dist[order]
        left = have[pos]
        keep = _top_k(left, cand, dist, k, radius, key_order)
        left, right, dist = left[keep], cand[keep], dist[keep]
        ends_a, ends_b = axy[pos[keep]], bxy[right]
        # the angle as _angles takes it from the shortest line, which joins the two points
        angle = np.where(dist > 0, np.degrees(np.arctan2(ends_b[:, 1] - ends_a[:, 1],
                                                         ends_b[:, 0] - ends_a[:, 0])), 0.0)
        return left + lo, right, dist, angle

    parts = _in_chunks(part, len(a), threads)
    left, right, dist, angle = (np.concatenate([p[i] for p in parts]) for i in range(4))
    line = np.full(len(left), None, dtype=object)
    if all_lines:
        line = shapely.linestrings(np.stack([shapely.get_coordinates(a[left]), bxy[right]],
                                            axis=1))
    return left, right, dist, line, angle


def _point_distance(p: FloatArray, q: FloatArray) -> FloatArray:
    dx, dy = p[:, 0] - q[:, 0], p[:, 1] - q[:, 1]
    return np.asarray(np.sqrt(dx * dx + dy * dy), dtype=float)


def _box_margins(geod: Geod, dist: FloatArray, lat_lo: FloatArray, lat_hi: FloatArray
                 ) -> tuple[FloatArray, FloatArray]:
    """Degrees of latitude and longitude that no path of length ``dist`` can exceed.

    A path of length d changes latitude by at most d / (a(1 - e^2)) (the
    smallest meridional radius of curvature) and longitude by at most
    d / (a cos(phi_max)), phi_max the highest latitude it can reach.
    """
    m_min = geod.a * (1 - geod.es)
    dlat = np.minimum(np.degrees(dist / m_min), 180.0)
    top = np.maximum(np.abs(lat_lo), np.abs(lat_hi)) + dlat
    with np.errstate(divide="ignore", invalid="ignore"):
        dlon = np.degrees(dist / (geod.a * np.cos(np.radians(np.minimum(top, 90.0)))))
    dlon = np.where((top >= 90.0) | ~np.isfinite(dlon), 360.0, dlon)
    return dlat, dlon


def _shifted(geoms: NDArray[np.object_], shift: float) -> NDArray[np.object_]:
    if shift == 0.0:
        return geoms
    return np.asarray(shapely.transform(geoms, lambda c: c + (shift, 0.0)), dtype=object)


def _geodesic_dist(geod: Geod, a: NDArray[np.object_], b: NDArray[np.object_]) -> FloatArray:
    c = shapely.get_coordinates(shapely.shortest_line(a, b)).reshape(-1, 2, 2)
    _, _, dist = geod.inv(c[:, 0, 0], c[:, 0, 1], c[:, 1, 0], c[:, 1, 1])
    return np.asarray(dist, dtype=float)


def _kth_smallest(left: IntArray, dist: FloatArray, k: int, n: int) -> FloatArray:
    kth = np.full(n, np.inf)
    order = np.lexsort((dist, left))
    sl = left[order]
    pick = order[(np.arange(len(sl)) - np.searchsorted(sl, sl, side="left")) == k - 1]
    kth[left[pick]] = dist[pick]
    return kth


def _geodesic_knn(
    a: NDArray[np.object_],
    b: NDArray[np.object_],
    k: int,
    radius: float | None,
    exclude: tuple[IntArray, IntArray] | None,
    key_order: IntArray,
    crs: CRS,
) -> tuple[IntArray, IntArray, FloatArray, NDArray[np.object_]]:
    crs = CRS.from_user_input(crs)
    geod = crs.get_geod()
    assert geod is not None
    if not crs.is_geographic:
        lonlat = crs.geodetic_crs
        a = np.asarray(gpd.GeoSeries(a, crs=crs).to_crs(lonlat).array, dtype=object)
        b = np.asarray(gpd.GeoSeries(b, crs=crs).to_crs(lonlat).array, dtype=object)
    tree = shapely.STRtree(b)
    # Stage 1: k candidates by distance in degrees bound the k-th geodesic distance.
    start, everything = _start_radius(a, b, k)
    left, right, _, _ = _search(tree, a, b, k, everything, exclude, start)
    kth = _kth_smallest(left, _geodesic_dist(geod, a[left], b[right]), k, len(a))
    if radius is not None:
        kth = np.minimum(kth, radius)
    # Stage 2: every feature within that bound, found with a conservative
    # lon/lat box, also shifted by 360 degrees where it crosses the antimeridian.
    todo = np.flatnonzero(~(shapely.is_missing(a) | shapely.is_empty(a)))
    x0, y0, x1, y1 = shapely.bounds(a[todo]).T
    dlat, dlon = _box_margins(geod, kth[todo], y0, y1)
    lefts, rights, dists, shifts = [], [], [], []
    for shift, crosses in ((0.0, np.ones(len(todo), bool)), (-360.0, x1 + dlon > 180.0),
                           (360.0, x0 - dlon < -180.0)):
        sel = np.flatnonzero(crosses)
        boxes = shapely.box(x0[sel] - dlon[sel] + shift, y0[sel] - dlat[sel],
                            x1[sel] + dlon[sel] + shift, y1[sel] + dlat[sel])
        sub, r = tree.query(boxes, predicate="intersects")
        lft = todo[sel[sub]]
        if exclude is not None:
            keep = exclude[0][lft] != exclude[1][r]
            lft, r = lft[keep], r[keep]
        lefts.append(lft)
        rights.append(r)
        dists.append(_geodesic_dist(geod, _shifted(a[lft], shift), b[r]))
        shifts.append(np.full(len(lft), shift))
    left, right = np.concatenate(lefts), np.concatenate(rights)
    dist, shift_of = np.concatenate(dists), np.concatenate(shifts)
    # A pair found twice (once shifted) keeps its shorter distance.
    order = np.lexsort((dist, right, left))
    first = np.ones(len(order), bool)
    first[1:] = (np.diff(left[order]) != 0) | (np.diff(right[order]) != 0)
    once = order[first]
    keep = once[_top_k(left[once], right[once], dist[once], k, radius, key_order)]
    left, right, dist, shift_of = left[keep], right[keep], dist[keep], shift_of[keep]
    line = np.empty(len(left), dtype=object)
    for shift in (0.0, -360.0, 360.0):
        at = np.flatnonzero(shift_of == shift)
        shortest = shapely.shortest_line(_shifted(a[left[at]], shift), b[right[at]])
        line[at] = _shifted(np.asarray(shortest, dtype=object), -shift)
    return left, right, dist, line


def _angles(line: NDArray[np.object_], method: Method, crs: CRS | None) -> FloatArray:
    """Degrees from east, counter-clockwise, along each line; 0 where there is none."""
    angle = np.zeros(len(line))
    has = np.flatnonzero(~shapely.is_missing(line))
    c = shapely.get_coordinates(line[has]).reshape(-1, 2, 2)
    if method == "planar":
        dx, dy = c[:, 1, 0] - c[:, 0, 0], c[:, 1, 1] - c[:, 0, 1]
        angle[has] = np.degrees(np.arctan2(dy, dx))
        return angle
    geod = CRS.from_user_input(crs).get_geod()
    assert geod is not None
    azimuth, _, dist = geod.inv(c[:, 0, 0], c[:, 0, 1], c[:, 1, 0], c[:, 1, 1])
    turned = (90.0 - np.asarray(azimuth) + 180.0) % 360.0 - 180.0
    turned = np.where(turned == -180.0, 180.0, turned)
    angle[has] = np.where(np.asarray(dist) == 0, 0.0, turned)
    return angle


def _assemble(
    inputs: gpd.GeoDataFrame,
    near_ids: pd.Index,
    left: IntArray,
    right: IntArray,
    dist: FloatArray,
    angle: FloatArray,
    line: NDArray[np.object_] | None,
) -> gpd.GeoDataFrame:
    n = len(inputs)
    has = np.zeros(n, dtype=bool)
    has[left] = True
    lonely = np.flatnonzero(~has)
    rows = np.concatenate([left, lonely])
    target = np.concatenate([right, np.full(len(lonely), -1)])
    rank = np.zeros(len(rows), dtype=np.int64)
    if len(left):
        first = np.searchsorted(left, left, side="left")
        rank[: len(left)] = np.arange(len(left)) - first + 1
    order = np.lexsort((rank, rows))
    rows, target = rows[order], target[order]
    matched = target >= 0
    out = inputs.iloc[rows]  # a new frame (copy on write): no second copy
    out["near_id"] = pd.array(near_ids.to_numpy()).take(target, allow_fill=True)
    out["near_rank"] = pd.arrays.IntegerArray(rank[order], ~matched)
    fill = np.full(len(rows), np.nan)
    dist_all, angle_all = fill.copy(), fill.copy()
    dist_all[: len(left)], angle_all[: len(left)] = dist, angle
    out["near_dist"] = pd.arrays.FloatingArray(dist_all[order], ~matched)
    out["near_angle"] = pd.arrays.FloatingArray(angle_all[order], ~matched)
    if line is not None:
        lines_all = np.full(len(rows), None, dtype=object)
        lines_all[: len(left)] = line
        out["near_line"] = gpd.GeoSeries(lines_all[order], index=out.index, crs=inputs.crs)
    return out
