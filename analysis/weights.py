"""Spatial weights for the local statistics, built with libpysal from a GeoDataFrame.

A weights spec is ``{"type": "queen" | "rook" | "knn" | "distance_band", "k": int,
"threshold": number, "transform": "B" | "R"}``; every key is optional. Defaults follow
ArcGIS's Hot Spot / Cluster and Outlier tools: queen contiguity for polygons, otherwise a
distance band whose threshold is the smallest distance that gives every feature at least one
neighbour, and ``k = 8`` for k-nearest neighbours. Distances (knn, distance band) are measured
between centroids in a projected CRS: geographic input is first projected to its UTM zone
(``estimate_utm_crs``) and the CRS used is reported.

The graph is kept binary; the transform (``B`` binary, ``R`` row-standardised) is applied by
esda, which also adds the self-weight of Gi*.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import shapely

from analysis.errors import AnalysisError, GeometryTypeError

if TYPE_CHECKING:  # libpysal (with scikit-learn) costs ~2 s and ~150 MB: loaded when weights are built
    from libpysal.graph import Graph

__all__ = [
    "WEIGHT_TYPES",
    "DEFAULT_K",
    "DISTANCE_TOLERANCE",
    "WeightsSpec",
    "SpatialWeights",
    "build_weights",
    "default_threshold",
    "working_geometry",
]

WEIGHT_TYPES = ("queen", "rook", "knn", "distance_band")
TRANSFORMS = ("B", "R")
DEFAULT_K = 8
DISTANCE_TOLERANCE = 1e-9
"""Relative tolerance on a distance threshold, so that rounding makes no island."""

_POLYGONAL = {"Polygon", "MultiPolygon"}
_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LinearRing", 3: "Polygon", 4: "MultiPoint",
               5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}


@dataclass(frozen=True)
class WeightsSpec:
    """What the analyst asked for; ``None`` means the default for the data."""

    type: str | None = None
    k: int | None = None
    threshold: float | None = None
    transform: str | None = None

    @classmethod
    def parse(cls, raw: WeightsSpec | Mapping[str, Any] | None) -> WeightsSpec:
        """Validate a spec from job parameters; errors name ``weights.<key>``."""
        if raw is None:
            return cls()
        if isinstance(raw, WeightsSpec):
            spec = raw
        elif isinstance(raw, Mapping):
            unknown = sorted(set(raw) - {"type", "k", "threshold", "transform"})
            if unknown:
                raise AnalysisError(
                    f"unknown key(s) {unknown}; use type, k, threshold, transform",
                    field="weights",
                )
            spec = cls(**dict(raw))
        else:
            raise AnalysisError("must be an object such as {\"type\": \"queen\"}", field="weights")
        spec._check()
        return spec

    def _check(self) -> None:
        if self.type is not None and self.type not in WEIGHT_TYPES:
            raise AnalysisError(
                f"{self.type!r} is not a weights type; use one of {list(WEIGHT_TYPES)}",
                field="weights.type",
            )
        if self.k is not None:
            if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
                raise AnalysisError("must be a whole number of at least 1", field="weights.k")
            if self.type not in (None, "knn"):
                raise AnalysisError("k applies only to knn weights", field="weights.k")
        if self.threshold is not None:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, int | float | np.number) or not (
                np.isfinite(t) and t > 0
            ):
                raise AnalysisError(
                    "must be a positive distance in the units of the projected CRS",
                    field="weights.threshold",
                )
            if self.type not in (None, "distance_band"):
                raise AnalysisError(
                    "threshold applies only to distance_band weights", field="weights.threshold"
                )
        if self.transform is not None and str(self.transform).upper() not in TRANSFORMS:
            raise AnalysisError(
                f"{self.transform!r} is not a transform; use 'B' (binary) or 'R' "
                "(row-standardised)",
                field="weights.transform",
            )


@dataclass(frozen=True)
class SpatialWeights:
    """A binary libpysal Graph on positions 0..n-1, with how it was made."""

    graph: Graph
    type: str
    transform: str
    k: int | None
    threshold: float | None
    crs: str | None
    n_neighbors: np.ndarray
    islands: np.ndarray
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The weights as recorded in a job's result."""
        out: dict[str, Any] = {"type": self.type, "transform": self.transform, "crs": self.crs}
        if self.k is not None:
            out["k"] = int(self.k)
        if self.threshold is not None:
            out["threshold"] = float(self.threshold)
        n = self.n_neighbors
        out["neighbors"] = {
            "min": int(n.min()),
            "mean": round(float(n.mean()), 3),
            "max": int(n.max()),
        }
        return out


def working_geometry(geometry: gpd.GeoSeries) -> tuple[gpd.GeoSeries, str | None, list[str]]:
    """Geometry in a CRS whose units are metres or feet: project geographic input to UTM.

    Returns the geometry, the CRS used (``"EPSG:…"`` or WKT, None without a CRS) and
    warnings to pass on.
    """
    crs = geometry.crs
    if crs is None:
        return geometry, None, [
            "the input has no CRS: distances are in the units of its coordinates"
        ]
    if crs.is_geographic:
        utm = geometry.estimate_utm_crs()
        return geometry.to_crs(utm), _crs_name(utm), []
    return geometry, _crs_name(crs), []


def default_threshold(centroids: gpd.GeoSeries) -> float:
    """The smallest distance that gives every point at least one neighbour."""
    from libpysal.weights import min_threshold_distance

    xy = np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy()])
    return float(min_threshold_distance(xy))


def build_weights(
    geometry: gpd.GeoSeries | gpd.GeoDataFrame,
    spec: WeightsSpec | Mapping[str, Any] | None = None,
    *,
    default_transform: str = "B",
    default_type: str | None = None,
) -> SpatialWeights:
    """Binary spatial weights for ``geometry`` (its index is ignored: positions 0..n-1).

    ``default_type`` overrides the per-geometry default (emerging hot spot analysis uses
    distance bands for grid cells, as ArcGIS Pro does). Raises :class:`AnalysisError` when no
    feature has a neighbour.
    """
    from libpysal.graph import Graph

    spec = WeightsSpec.parse(spec)
    geoms = geometry.geometry if isinstance(geometry, gpd.GeoDataFrame) else geometry
    geoms = geoms.reset_index(drop=True)
    if len(geoms) < 2:
        raise AnalysisError("at least two features are needed to build spatial weights")
    type_ids = np.unique(shapely.get_type_id(geoms.to_numpy()))
    kinds = {_TYPE_NAMES.get(int(t), "Geometry") for t in type_ids if t >= 0}
    polygonal = bool(kinds) and kinds <= _POLYGONAL
    wtype = spec.type or default_type or ("queen" if polygonal else "distance_band")
    transform = str(spec.transform or default_transform).upper()

    if wtype in ("queen", "rook"):
        if not polygonal:
            raise GeometryTypeError(
                f"{wtype} contiguity needs polygons, the input has {sorted(kinds)}; use "
                "knn or distance_band",
                field="weights.type",
            )
        crs = _crs_name(geoms.crs) if geoms.crs is not None else None
        graph = Graph.build_contiguity(geoms, rook=wtype == "rook")
        k = threshold = None
        warnings: list[str] = []
    else:
        projected, crs, warnings = working_geometry(geoms)
        centroids = projected if kinds == {"Point"} else projected.centroid
        if wtype == "knn":
            k = int(spec.k or DEFAULT_K)
            if k >= len(geoms):
                raise AnalysisError(
                    f"k = {k} needs more than {k} features; the input has {len(geoms)}",
                    field="weights.k",
                )
            threshold = None
            # coincident points all become neighbours of each other rather than an error
            graph = Graph.build_knn(centroids, k=k, coplanar="clique")
        else:
            k = None
            threshold = (
                float(spec.threshold)
                if spec.threshold is not None
                else default_threshold(centroids)
            )
            graph = Graph.build_distance_band(
                centroids, threshold * (1 + DISTANCE_TOLERANCE) + np.finfo(float).tiny
            )

    cardinalities = graph.cardinalities.reindex(range(len(geoms)), fill_value=0)
    n_neighbors = cardinalities.to_numpy(dtype=np.int64)
    islands = np.flatnonzero(n_neighbors == 0)
    if len(islands) == len(geoms):
        where = "weights.threshold" if wtype == "distance_band" else "weights"
        raise AnalysisError(
            f"no feature has a neighbour with {wtype} weights; use a larger distance, knn, "
            "or check that the polygons share boundaries",
            field=where,
        )
    return SpatialWeights(
        graph=graph,
        type=wtype,
        transform=transform,
        k=k,
        threshold=threshold,
        crs=crs,
        n_neighbors=n_neighbors,
        islands=islands,
        warnings=warnings,
    )


def _crs_name(crs: Any) -> str:
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else crs.to_wkt()
