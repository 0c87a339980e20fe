"""Hot spot analysis: the Getis-Ord Gi* statistic per feature, with ArcGIS-style bins.

Getis, A. and Ord, J. K. (1992), "The analysis of spatial association by use of distance
statistics", Geographical Analysis 24(3); Ord, J. K. and Getis, A. (1995), "Local spatial
autocorrelation statistics: distributional issues and an application", Geographical Analysis
27(4). The statistic is esda's ``G_Local`` with ``star=True`` (the feature is its own
neighbour) and binary weights by default, whose z-score equals ArcGIS's GiZScore.

Output columns (ArcGIS's GiZScore, GiPValue, GiPseudoP, Gi_Bin, NNeighbors):
``gi_zscore``, ``gi_pvalue`` (two-sided normal), ``gi_psim`` (esda's pseudo p-value, null
without permutations), ``gi_bin`` (+/-3, 2, 1 at p < 0.01, 0.05, 0.10, or at the
Benjamini-Hochberg cut-offs with ``fdr``) and ``n_neighbors`` (not counting the feature).

With ``grid`` and no ``value_column`` the input is point incidents: they are counted per
cell of a square or hexagonal grid (:mod:`analysis.grid`) and the counts are analysed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
from esda.getisord import G_Local
from scipy import stats

from analysis.errors import AnalysisError
from analysis.fdr import bh_cutoff, significant
from analysis.grid import GridSpec, PointCounts, aggregate_points
from analysis.local_input import (
    DEFAULT_PERMUTATIONS,
    DEFAULT_SEED,
    LocalSummary,
    Progress,
    check_inference,
    exact_pseudo_p,
    nullable,
    prepare_input,
)
from analysis.weights import WeightsSpec

__all__ = ["CONFIDENCE_LEVELS", "hotspot", "gi_bins"]

CONFIDENCE_LEVELS = ((3, 0.01), (2, 0.05), (1, 0.10))
"""Bin magnitude and the p-value it must be below (99 %, 95 %, 90 % confidence)."""


def gi_bins(zscores: np.ndarray, pvalues: np.ndarray, *, fdr: bool = False
            ) -> tuple[np.ndarray, dict[str, float | None]]:
    """ArcGIS's Gi_Bin: +3/+2/+1 for hot spots at 99/95/90 % confidence, negatives for cold.

    Returns the bins and, with ``fdr``, the Benjamini-Hochberg cut-off used at each level.
    """
    bins = np.zeros(len(zscores), dtype=np.int64)
    cutoffs: dict[str, float | None] = {}
    for magnitude, alpha in reversed(CONFIDENCE_LEVELS):
        hit = significant(pvalues, alpha, fdr=fdr)
        bins[hit] = magnitude
        if fdr:
            cutoffs[str(alpha)] = bh_cutoff(pvalues, alpha)
    return np.where(zscores < 0, -bins, bins), cutoffs


def hotspot(
    gdf: gpd.GeoDataFrame,
    value_column: str | None = None,
    *,
    geometry_column: str | None = None,
    weights: WeightsSpec | Mapping[str, Any] | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
    fdr: bool = False,
    grid: GridSpec | Mapping[str, Any] | None = None,
    n_jobs: int = 1,
    progress: Progress | None = None,
    counted: PointCounts | None = None,
) -> tuple[gpd.GeoDataFrame, LocalSummary]:
    """Gi* hot spots of ``value_column``, or of incident counts per grid cell with ``grid``.

    ``counted``: the incidents already counted on the grid (e.g. partition by partition on a
    cluster, :func:`analysis.grid.point_counts`); ``gdf`` is then not read.

    Returns the input with the Gi* columns added (one row per feature, or per cell) and a
    summary for the job's result. Raises :class:`AnalysisError` naming the parameter at fault.
    """
    permutations, seed = check_inference(permutations, seed)
    report = progress or (lambda _fraction: None)
    grid_info = None
    default_type = None
    extra_warnings: list[str] = []
    if grid is not None or value_column is None:
        if value_column is not None:
            raise AnalysisError("give either value_column or grid, not both", field="grid")
        if grid is None:
            raise AnalysisError("a value column is needed, or a grid to count point incidents",
                                field="value_column")
        if counted is not None:
            cells, grid_info = counted.cells, dict(counted.info)
        else:
            source = gdf if geometry_column is None else gdf.set_geometry(geometry_column)
            cells, _, grid_info = aggregate_points(source, grid)
        extra_warnings = grid_info.pop("warnings")
        gdf, value_column, geometry_column = cells, "count", None
        default_type = "distance_band"
    report(0.05)

    data = prepare_input(gdf, value_column, geometry_column=geometry_column, weights=weights,
                         default_transform="B", default_type=default_type)
    sw = data.weights
    report(0.2)
    y = data.y
    if y.mean() <= 0:
        # esda normalises Gi* by the sum of the values; z and pseudo p do not change with a
        # shift, so a shift to a positive mean gives ArcGIS's z-scores
        shift = 1.0 - float(y.min())
        y = y + shift
        extra_warnings.append(
            f"values have a mean <= 0; Gi* was computed on the values plus {shift:g}, "
            "which leaves z-scores and p-values unchanged"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # esda's notice on `alternative`
        warnings.filterwarnings("ignore", message="Gi\\* requested")
        with np.errstate(divide="ignore", invalid="ignore"):
            g = G_Local(y, sw.graph, transform=sw.transform, permutations=permutations,
                        star=True, keep_simulations=False, n_jobs=n_jobs, seed=seed)
    report(0.9)

    has_neighbour = sw.n_neighbors > 0
    z = np.asarray(g.Zs, dtype=float)[has_neighbour]
    p = 2.0 * stats.norm.sf(np.abs(z))
    bins, cutoffs = gi_bins(z, p, fdr=fdr)
    tested = data.tested
    n = len(data.frame)
    out = data.frame.copy()
    out["gi_zscore"] = nullable(z, tested, n, "Float64")
    out["gi_pvalue"] = nullable(p, tested, n, "Float64")
    psim = exact_pseudo_p(g.p_sim, permutations)[has_neighbour] if permutations else None
    out["gi_psim"] = nullable(psim if psim is not None else np.full(len(tested), np.nan),
                              tested, n, "Float64")
    out["gi_bin"] = nullable(bins, tested, n, "Int64")
    out["n_neighbors"] = nullable(sw.n_neighbors, data.analysed, n, "Int64")

    summary = LocalSummary.of(
        "gi_star", data, permutations=permutations, seed=seed, fdr=fdr,
        counts={str(b): int((bins == b).sum()) for b in range(-3, 4)},
        fdr_cutoffs=cutoffs if fdr else None, grid=grid_info, warnings=extra_warnings,
    )
    report(1.0)
    return out, summary
