"""Benjamini–Hochberg false discovery rate cut-offs for many local tests at once.

Benjamini, Y. and Hochberg, Y. (1995), "Controlling the false discovery rate", JRSS B 57(1).
Sort the n p-values; the cut-off at level alpha is the largest p(i) with p(i) <= (i / n) alpha,
and a test is significant when its p-value is at most that cut-off (none is when no p(i)
qualifies). This is how ArcGIS applies its FDR correction to each confidence level.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["bh_cutoff", "significant"]


def bh_cutoff(pvalues: npt.ArrayLike, alpha: float) -> float | None:
    """The Benjamini–Hochberg cut-off at ``alpha``; None when nothing is significant.

    NaN p-values (features not tested) are left out of n.
    """
    p = np.asarray(pvalues, dtype=float)
    p = np.sort(p[~np.isnan(p)])
    n = p.size
    if n == 0:
        return None
    passing = np.flatnonzero(p <= np.arange(1, n + 1) / n * alpha)
    return float(p[passing[-1]]) if passing.size else None


def significant(
    pvalues: npt.ArrayLike, alpha: float, *, fdr: bool = False, inclusive: bool = False
) -> np.ndarray:
    """Which p-values are significant: ``p < alpha`` (``<=`` if ``inclusive``), or
    ``p <= BH cut-off`` with ``fdr``. NaN p-values are never significant.
    """
    p = np.asarray(pvalues, dtype=float)
    with np.errstate(invalid="ignore"):
        if not fdr:
            return p <= alpha if inclusive else p < alpha
        cutoff = bh_cutoff(p, alpha)
        if cutoff is None:
            return np.zeros(p.shape, dtype=bool)
        return p <= cutoff
