"""Benjamini-Hochberg cut-offs: a hand-checked case and scipy's adjusted p-values as oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.fdr import bh_cutoff, significant

# sorted, n = 10; worked by hand against p(i) <= (i / 10) * alpha:
#  alpha 0.01: only p(1) = 0.0009 <= 0.001                      -> cut-off 0.0009
#  alpha 0.05: p(5) = 0.025 <= 0.025 (a tie: 0.5 * 0.05 is exact) -> cut-off 0.025, although
#              p(3) = 0.020 > 0.015 and p(4) = 0.024 > 0.020 (step-up: they count too)
#  alpha 0.10: p(6) = 0.061 > 0.060, p(7) = 0.074 > 0.070, p(8..10) > 0.08 -> cut-off 0.025
HAND = np.array([0.0009, 0.008, 0.020, 0.024, 0.025, 0.061, 0.074, 0.205, 0.212, 0.216])


def test_hand_checked_cutoffs() -> None:
    shuffled = HAND[np.random.default_rng(3).permutation(HAND.size)]
    assert bh_cutoff(shuffled, 0.01) == 0.0009
    assert bh_cutoff(shuffled, 0.05) == 0.025
    assert bh_cutoff(shuffled, 0.10) == 0.025
    assert significant(HAND, 0.05, fdr=True).tolist() == [True] * 5 + [False] * 5
    assert significant(HAND, 0.10, fdr=False).sum() == 7
    assert significant(HAND, 0.10, fdr=True).sum() == 5


def test_nothing_significant_gives_no_cutoff() -> None:
    p = np.array([0.2, 0.5, 0.9, np.nan])
    assert bh_cutoff(p, 0.05) is None
    assert not significant(p, 0.05, fdr=True).any()
    assert bh_cutoff(np.array([np.nan]), 0.05) is None


def test_nan_is_left_out_of_n() -> None:
    # with n = 2, 0.024 <= 0.025; were the NaN counted (n = 3) it would exceed 0.0167 * 2
    p = np.array([0.024, 0.03, np.nan])
    assert bh_cutoff(p, 0.05) == 0.03
    assert significant(p, 0.05, fdr=True).tolist() == [True, True, False]


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.10])
def test_matches_scipy_adjusted_pvalues(alpha: float) -> None:
    rng = np.random.default_rng(42)
    p = np.concatenate([rng.uniform(0, 0.0005, 40), rng.uniform(0, 1, 400)])
    adjusted = stats.false_discovery_control(p, method="bh")
    assert significant(p, alpha, fdr=True).tolist() == (adjusted <= alpha).tolist()
    assert 0 < significant(p, alpha, fdr=True).sum() < significant(p, alpha).sum()


def test_inclusive_only_changes_ties() -> None:
    p = np.array([0.05, 0.049, 0.051])
    assert significant(p, 0.05).tolist() == [False, True, False]
    assert significant(p, 0.05, inclusive=True).tolist() == [True, True, False]
