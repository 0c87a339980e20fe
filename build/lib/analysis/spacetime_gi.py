"""Space-time Getis-Ord Gi* and the Mann-Kendall trend of its z-scores.

The space-time Gi* is the statistic of ArcGIS Pro's Emerging Hot Spot
Analysis and of sfdep's ``emerging_hotspot_analysis`` (Parry 2023), the
Gi* of Getis and Ord (1992) and Ord and Getis (1995) computed over a
neighbourhood in space and time. For location i at time step t, with n
locations and a spatial neighbour set N(i) (binary weights, i itself
included, as in Gi*):

- the space-time neighbourhood is {(j, s) : j in N(i) or j = i,
  max(0, t - k) <= s <= t}: the same spatial neighbours at this step and at
  the k previous steps (fewer at the start of the series);
- W_it is its size, (|N(i)| + 1) * (min(k, t) + 1), and S_it the sum of
  the values x_js over it;
- the mean x̄_t and standard deviation S_t (population, divided by n) are
  those of the values of step t over all n locations, as sfdep does;
- z_it = (S_it - x̄_t W_it) / (S_t sqrt((n W_it - W_it²) / (n - 1))),
  and its p-value is two-sided normal, 2 (1 - Φ(|z_it|)).

With k = 0 this is exactly the Gi* z of each step alone (esda's
``G_Local(y, w, transform="B", star=True).Zs``). A step whose values are all
equal has no defined z: its z and p are NaN and it counts as not significant.

The trend of each location's series of z-scores is the Mann-Kendall test
(Mann 1945, Kendall 1975) of pymannkendall's ``original_test``: Kendall's
tau and the two-sided p-value (with the tie correction of the variance).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import cast

import numpy as np
import numpy.typing as npt
import pymannkendall
import scipy.sparse as sp
from libpysal.weights import W
from scipy import stats

from analysis.errors import AnalysisError
from analysis.fdr import significant as fdr_significant

__all__ = ["spacetime_gistar", "significance_bins", "mann_kendall"]

FloatArray = npt.NDArray[np.float64]


def _binary_with_self(w: W | sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """The binary spatial weights of ``w`` with every location its own neighbour."""
    matrix = w.sparse if isinstance(w, W) else w
    a = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    a.data = (a.data != 0).astype(np.float64)
    a.setdiag(1.0)
    a.eliminate_zeros()
    return a


def spacetime_gistar(
    values: npt.ArrayLike,
    w: W | sp.spmatrix | sp.sparray,
    neighborhood_time_step: int = 1,
) -> tuple[FloatArray, FloatArray]:
    """Space-time Gi* z-scores and two-sided p-values, each (locations, steps).

    ``values`` has one row per location in the order of ``w`` (its
    ``id_order`` for a libpysal ``W``) and one column per time step, in time
    order. Only which pairs are neighbours in ``w`` matters (binary weights).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise AnalysisError("values must be a (locations, steps) table", field="values")
    n, n_steps = x.shape
    k = int(neighborhood_time_step)
    if k < 0:
        raise AnalysisError(
            "must be 0 (space only) or a positive number of previous steps",
            field="neighborhood_time_step",
        )
    if not np.isfinite(x).all():
        raise AnalysisError("the values hold nulls or infinities", field="values")
    a = _binary_with_self(w)
    if a.shape != (n, n):
        raise AnalysisError(f"the weights cover {a.shape[0]} locations but the values {n}", field="weights")

    lag = np.asarray(a @ x)
    cumulative = np.cumsum(lag, axis=1)
    window_sum = cumulative.copy()
    if k < n_steps:
        window_sum[:, k + 1 :] -= cumulative[:, : n_steps - k - 1]

    cardinality = np.asarray(a.sum(axis=1)).ravel()
    steps_in_window = np.minimum(np.arange(n_steps), k) + 1.0
    weight_sum = cardinality[:, None] * steps_in_window[None, :]
    if (weight_sum >= n).any():
        raise AnalysisError(
            f"some space-time neighbourhoods hold {int(weight_sum.max())} cells for only "
            f"{n} locations, so Gi* has no variance: use fewer previous steps or "
            "smaller spatial neighbourhoods",
            field="neighborhood_time_step",
        )

    mean = x.mean(axis=0)
    std = x.std(axis=0)
    spread = np.sqrt((n * weight_sum - weight_sum**2) / (n - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (window_sum - mean[None, :] * weight_sum) / (std[None, :] * spread)
    z[:, std == 0] = np.nan
    p = 2.0 * stats.norm.sf(np.abs(z))
    return z, p


def significance_bins(
    z: FloatArray, p: FloatArray, alpha: float = 0.05, fdr: bool = True
) -> npt.NDArray[np.int8]:
    """+1 for a significant hot spot, -1 cold, 0 otherwise, per location and step.

    Significant means ``p < alpha``; with ``fdr``, ``p`` at most the
    Benjamini-Hochberg cut-off at ``alpha`` computed within each step.
    """
    significant = np.zeros(z.shape, dtype=bool)
    for step in range(z.shape[1]):
        significant[:, step] = fdr_significant(p[:, step], alpha, fdr=fdr)
    significant &= np.isfinite(z)
    return (np.sign(np.nan_to_num(z)) * significant).astype(np.int8)


def mann_kendall(
    series: npt.ArrayLike,
    alpha: float = 0.05,
    progress: Callable[[float], None] | None = None,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int8]]:
    """Mann-Kendall test of each row: tau, two-sided p-value, trend (+1, -1, 0).

    The trend is +1 (-1) where the p-value is below ``alpha`` and tau is
    positive (negative). NaN steps are skipped, as pymannkendall does. ``progress``
    receives the fraction of rows done every 1,000 rows.
    """
    rows = np.atleast_2d(np.asarray(series, dtype=np.float64))
    tau = np.full(rows.shape[0], np.nan)
    pvalue = np.full(rows.shape[0], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, row in enumerate(rows):
            if progress is not None and i % 1000 == 0:
                progress(i / len(rows))
            if np.isfinite(row).sum() < 3:
                continue
            result = pymannkendall.original_test(row, alpha=alpha)
            tau[i] = float(result.Tau)
            pvalue[i] = float(result.p)
    significant = np.nan_to_num(pvalue, nan=1.0) < alpha
    trend = (np.sign(np.nan_to_num(tau)) * significant).astype(np.int8)
    return tau, pvalue, cast(npt.NDArray[np.int8], trend)
