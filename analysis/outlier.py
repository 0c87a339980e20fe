"""Cluster and outlier analysis: Anselin's Local Moran's I per feature, with ArcGIS's COType.

Anselin, L. (1995), "Local indicators of spatial association — LISA", Geographical Analysis
27(2). The statistic is esda's ``Moran_Local`` with row-standardised weights by default.

Output columns (ArcGIS's LMiIndex, LMiZScore, LMiPValue, COType, NNeighbors):
``lmi_index`` (local I), ``lmi_zscore`` ((I - E[I]) / sqrt(V[I]) under randomisation, esda's
``EI`` and ``VI``), ``lmi_pvalue`` (esda's pseudo p-value from conditional permutations, or
the two-sided normal p-value of the z-score without permutations), ``co_type`` (``HH``/``LL``
clusters, ``HL``/``LH`` outliers, from the signs of the standardised value and its spatial
lag, where ``lmi_pvalue <= 0.05``, or the Benjamini-Hochberg cut-off with ``fdr``; null
otherwise) and ``n_neighbors``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from esda.moran import Moran_Local
from scipy import stats

from analysis.fdr import bh_cutoff, significant
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

__all__ = ["ALPHA", "QUADRANTS", "outlier"]

ALPHA = 0.05
QUADRANTS = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}
"""esda's quadrant codes (``geoda_quads=False``) and ArcGIS's COType labels."""


def outlier(
    gdf: gpd.GeoDataFrame,
    value_column: str,
    *,
    geometry_column: str | None = None,
    weights: WeightsSpec | Mapping[str, Any] | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = DEFAULT_SEED,
    fdr: bool = False,
    n_jobs: int = 1,
    progress: Progress | None = None,
) -> tuple[gpd.GeoDataFrame, LocalSummary]:
    """Local Moran clusters and outliers of ``value_column``.

    Returns the input with the Local Moran columns added and a summary for the job's result.
    Raises :class:`AnalysisError` naming the parameter at fault.
    """
    permutations, seed = check_inference(permutations, seed)
    report = progress or (lambda _fraction: None)
    data = prepare_input(gdf, value_column, geometry_column=geometry_column, weights=weights,
                         default_transform="R")
    sw = data.weights
    report(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # esda's notice on `alternative`
        with np.errstate(divide="ignore", invalid="ignore"):
            lm = Moran_Local(data.y, sw.graph, transformation=sw.transform,
                             permutations=permutations, keep_simulations=False,
                             n_jobs=n_jobs, seed=seed)
    report(0.9)

    has_neighbour = sw.n_neighbors > 0
    index = np.asarray(lm.Is, dtype=float)[has_neighbour]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = ((lm.Is - lm.EI) / np.sqrt(lm.VI))[has_neighbour]
    if permutations:
        p = exact_pseudo_p(lm.p_sim, permutations)[has_neighbour]
    else:
        p = 2.0 * stats.norm.sf(np.abs(z))
    hit = significant(p, ALPHA, fdr=fdr, inclusive=True)
    quadrant = np.asarray(lm.q)[has_neighbour]
    labels = np.array([QUADRANTS[int(q)] for q in quadrant], dtype=object)

    tested = data.tested
    n = len(data.frame)
    out = data.frame.copy()
    out["lmi_index"] = nullable(index, tested, n, "Float64")
    out["lmi_zscore"] = nullable(z, tested, n, "Float64")
    out["lmi_pvalue"] = nullable(p, tested, n, "Float64")
    co_type = np.full(n, None, dtype=object)
    co_type[tested[hit]] = labels[hit]
    out["co_type"] = pd.array(co_type, dtype="str")
    out["n_neighbors"] = nullable(sw.n_neighbors, data.analysed, n, "Int64")

    counts = {label: int((labels[hit] == label).sum()) for label in QUADRANTS.values()}
    counts["not_significant"] = int((~hit).sum())
    summary = LocalSummary.of(
        "local_moran", data, permutations=permutations, seed=seed, fdr=fdr, counts=counts,
        fdr_cutoffs={str(ALPHA): bh_cutoff(p, ALPHA)} if fdr else None,
    )
    report(1.0)
    return out, summary
