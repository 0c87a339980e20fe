"""Spatial weights for the emerging hot spot analysis (temporary).

Stand-in until the hotspot branch's ``analysis.weights`` lands; same spec:
``{"type": "queen" | "rook" | "knn" | "distance_band", "k", "threshold"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import scipy.sparse as sp
from libpysal.graph import Graph
from scipy.spatial import cKDTree

from analysis.errors import AnalysisError

__all__ = ["spatial_weights"]

_TYPES = ("queen", "rook", "knn", "distance_band")


def _points(gdf: gpd.GeoDataFrame) -> np.ndarray:
    geoms = gdf.geometry
    if not (geoms.geom_type == "Point").all():
        geoms = geoms.centroid
    return np.column_stack([geoms.x.to_numpy(), geoms.y.to_numpy()])


def spatial_weights(
    gdf: gpd.GeoDataFrame, spec: Mapping[str, Any] | None
) -> tuple[sp.csr_matrix, dict[str, Any]]:
    """Binary neighbour matrix (no self) in row order of ``gdf``, and what was used."""
    polygons = gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).all()
    spec = dict(spec or {})
    kind = spec.get("type") or ("queen" if polygons else "distance_band")
    if kind not in _TYPES:
        raise AnalysisError(
            f"unknown weights type {kind!r}; use one of {_TYPES}", field="weights.type"
        )
    frame = gdf.reset_index(drop=True)
    used: dict[str, Any] = {"type": kind}
    if kind in ("queen", "rook"):
        if not polygons:
            raise AnalysisError(f"{kind} contiguity needs polygons", field="weights.type")
        graph = Graph.build_contiguity(frame.geometry, rook=kind == "rook")
    elif kind == "knn":
        if frame.crs is not None and frame.crs.is_geographic:
            frame = frame.to_crs(frame.estimate_utm_crs())
            used["crs"] = frame.crs.to_string()
        k = int(spec.get("k") or 8)
        if not 1 <= k < len(frame):
            raise AnalysisError(f"k must be between 1 and {len(frame) - 1}", field="weights.k")
        graph = Graph.build_knn(_points(frame), k=k)
        used["k"] = k
    else:
        if frame.crs is not None and frame.crs.is_geographic:
            frame = frame.to_crs(frame.estimate_utm_crs())
            used["crs"] = frame.crs.to_string()
        xy = _points(frame)
        threshold = spec.get("threshold")
        if threshold is None:
            distances, _ = cKDTree(xy).query(xy, k=2)
            threshold = float(distances[:, 1].max()) * (1 + 1e-9)
        elif float(threshold) <= 0:
            raise AnalysisError("threshold must be positive", field="weights.threshold")
        graph = Graph.build_distance_band(xy, float(threshold))
        used["threshold"] = float(threshold)
    matrix = sp.csr_matrix(graph.sparse, dtype=np.float64)
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    matrix.data[:] = 1.0
    return matrix, used
