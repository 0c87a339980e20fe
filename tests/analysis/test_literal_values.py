"""Literal values worked out by hand: Gi*, Local Moran's I and dissolve on a few unit squares.

The other analysis tests compare with esda run on the same input; these fix the statistic
itself, so a change of formula, weights default or transform in esda or in ``analysis`` shows up.

The hot spot and outlier fixture is five unit squares in a row (queen contiguity = a chain:
each square touches the one before and after it) with the values x = 1, 2, 3, 5, 9:
n = 5, mean 4, sum 20, sum of squares 120.
"""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from numpy.testing import assert_allclose

from analysis.dissolve import dissolve
from analysis.hotspot import hotspot
from analysis.outlier import outlier

VALUES = [1.0, 2.0, 3.0, 5.0, 9.0]
SQRT3 = math.sqrt(3.0)
PERMUTATIONS = 999
PSEUDO_P_TOLERANCE = 0.06
"""About four binomial standard deviations of a pseudo p-value near 0.25 from 999 permutations."""


@pytest.fixture
def chain() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"x": VALUES}, geometry=[shapely.box(i, 0, i + 1, 1) for i in range(5)],
                            crs=32617)


def _two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def test_gi_star_by_hand(chain: gpd.GeoDataFrame) -> None:
    """Gi* with binary weights, each feature its own neighbour (Getis & Ord 1992, Ord & Getis 1995;
    the form of ArcGIS's "How Hot Spot Analysis works"):

        Gi* = (sum_j w_ij x_j - mean * W_i) / (S * sqrt((n * W_i - W_i^2) / (n - 1)))
        S   = sqrt(sum x^2 / n - mean^2) = sqrt(120 / 5 - 16) = sqrt(8)

    W_i = sum_j w_ij = sum_j w_ij^2 (binary): 2 at the ends, 3 inside. The square root is
    sqrt((5*2 - 4) / 4) = sqrt((5*3 - 9) / 4) = sqrt(1.5) either way, so every denominator is
    sqrt(8) * sqrt(1.5) = sqrt(12) = 2 sqrt(3).

        i  neighbours  sum w x       numerator      z
        0  0,1         1+2   = 3     3 - 4*2 = -5   -5 / (2 sqrt 3) = -1.443376
        1  0,1,2       1+2+3 = 6     6 - 4*3 = -6   -sqrt 3         = -1.732051
        2  1,2,3       2+3+5 = 10   10 - 12  = -2   -1 / sqrt 3     = -0.577350
        3  2,3,4       3+5+9 = 17   17 - 12  =  5    5 / (2 sqrt 3) =  1.443376
        4  3,4         5+9   = 14   14 - 8   =  6    sqrt 3         =  1.732051

    Two-sided normal p: 2 * (1 - Phi(sqrt 3)) = 0.083265 (< 0.10: bins -1 and +1),
    2 * (1 - Phi(1.443376)) = 0.148915, 2 * (1 - Phi(0.577350)) = 0.563703 (bin 0).
    """
    out, summary = hotspot(chain, "x", permutations=0)
    z = np.array([-5 / (2 * SQRT3), -SQRT3, -1 / SQRT3, 5 / (2 * SQRT3), SQRT3])
    assert_allclose(out["gi_zscore"].to_numpy(float), z, rtol=0, atol=1e-9)
    assert_allclose(out["gi_zscore"].to_numpy(float),
                    [-1.443376, -1.732051, -0.577350, 1.443376, 1.732051], atol=1e-6)
    assert_allclose(out["gi_pvalue"].to_numpy(float), [_two_sided(v) for v in z], atol=1e-12)
    assert_allclose(out["gi_pvalue"].to_numpy(float),
                    [0.148915, 0.083265, 0.563703, 0.148915, 0.083265], atol=1e-6)
    assert out["gi_bin"].tolist() == [0, -1, 0, 0, 1]
    assert out["n_neighbors"].tolist() == [1, 2, 2, 2, 1]
    assert summary.counts == {"-3": 0, "-2": 0, "-1": 1, "0": 3, "1": 1, "2": 0, "3": 0}


def test_gi_star_pseudo_p_hot_side(chain: gpd.GeoDataFrame) -> None:
    """Conditional permutation: feature i keeps its value, its neighbours are drawn from the other
    four values. Listing every draw gives the pseudo p-value in the limit of many permutations:

        i=4 (x 9, one neighbour, observed 5): draws 1, 2, 3, 5; Gi* grows with the neighbour's
            value, so P(sim >= observed) = 1/4.
        i=3 (x 5, two neighbours, observed 3+9 = 12): pairs of {1, 2, 3, 9} sum to 3, 4, 10, 5,
            11, 12; only 12 reaches the observed: 1/6.
    """
    out, _ = hotspot(chain, "x", permutations=PERMUTATIONS, seed=12345)
    assert_allclose(out["gi_psim"].to_numpy(float)[[3, 4]], [1 / 6, 1 / 4], atol=PSEUDO_P_TOLERANCE)


@pytest.mark.xfail(strict=True, reason="esda folds the pseudo p-value as min(#sim >= obs, R - #sim >= obs):"
                   " on the cold side it counts only draws strictly below the observed value, so a"
                   " tie (likely with five features) yields 1 / (R + 1); on esda's folding see"
                   " https://github.com/pysal/esda/issues/199")
def test_gi_star_pseudo_p_cold_side(chain: gpd.GeoDataFrame) -> None:
    """i=0 (x 1, observed neighbour 2): draws 2, 3, 5, 9; P(sim <= observed) = 1/4.
    i=1 (x 2, observed 1+3 = 4): pairs of {1, 3, 5, 9} sum to 4, 6, 10, 8, 12, 14: 1/6."""
    out, _ = hotspot(chain, "x", permutations=PERMUTATIONS, seed=12345)
    assert_allclose(out["gi_psim"].to_numpy(float)[[0, 1]], [1 / 4, 1 / 6], atol=PSEUDO_P_TOLERANCE)


def test_local_moran_by_hand(chain: gpd.GeoDataFrame) -> None:
    """Local Moran's I with row-standardised weights (Anselin 1995, eq. 7, with the variance
    taken over n - 1 as esda and GeoDa do):

        I_i = (n - 1) * d_i * sum_j w_ij d_j / sum_k d_k^2,   d = x - mean = -3, -2, -1, 1, 5
        sum d^2 = 9 + 4 + 1 + 1 + 25 = 40

        i  neighbours  lag of d          I_i
        0  1           -2                4 * (-3)(-2)   / 40 = 0.6
        1  0,2         (-3 - 1)/2 = -2   4 * (-2)(-2)   / 40 = 0.4
        2  1,3         (-2 + 1)/2 = -0.5 4 * (-1)(-0.5) / 40 = 0.05
        3  2,4         (-1 + 5)/2 = 2    4 * 1 * 2      / 40 = 0.2
        4  3           1                 4 * 5 * 1      / 40 = 0.5

    z-score under total randomisation (Sokal, Oden & Thomson 1998, Geographical Analysis 30(4),
    eqs. A3-A4), with z = d / sd (population sd sqrt 8), m2 = sum z^2 / n = 1,
    b2 = (sum z^4 / n) / m2^2 = (81 + 16 + 1 + 1 + 625) / 64 / 5 = 2.2625, w_i = 1:

        E[I_i] = -w_i / (n - 1) = -0.25
        V[I_i] = w_i2 (n - b2) / (n - 1) + (w_i^2 - w_i2)(2 b2 - n) / ((n - 1)(n - 2)) - 1/16
               = 0.684375 - 0.0625 = 0.621875                      (ends, w_i2 = 1)
               = 0.5 * 0.684375 + 0.5 * (-0.475 / 12) - 0.0625 = 0.259896 (inside, w_i2 = 0.5)

        z = (0.6 + 0.25) / sqrt 0.621875 = 1.077872,  (0.4 + 0.25) / sqrt 0.259896 = 1.275010,
            (0.05 + 0.25) / sqrt 0.259896 = 0.588466, (0.2 + 0.25) / sqrt 0.259896 = 0.882699,
            (0.5 + 0.25) / sqrt 0.621875 = 0.951064

    None reaches p <= 0.05, so no COType; the quadrants would be LL, LL, LL, HH, HH.
    """
    out, summary = outlier(chain, "x", permutations=0)
    assert_allclose(out["lmi_index"].to_numpy(float), [0.6, 0.4, 0.05, 0.2, 0.5], atol=1e-12)
    ends, inside = 0.684375 - 0.0625, 0.5 * 0.684375 + 0.5 * (-0.475 / 12) - 0.0625
    variance = np.array([ends, inside, inside, inside, ends])
    z = (np.array([0.6, 0.4, 0.05, 0.2, 0.5]) + 0.25) / np.sqrt(variance)
    assert_allclose(out["lmi_zscore"].to_numpy(float), z, atol=1e-9)
    assert_allclose(out["lmi_zscore"].to_numpy(float),
                    [1.077872, 1.275010, 0.588466, 0.882699, 0.951064], atol=1e-6)
    assert_allclose(out["lmi_pvalue"].to_numpy(float), [_two_sided(v) for v in z], atol=1e-12)
    assert out["co_type"].isna().all()
    assert summary.counts["not_significant"] == 5


def test_local_moran_pseudo_p_by_enumeration(chain: gpd.GeoDataFrame) -> None:
    """Every conditional draw of the neighbours, I_i = 4 * d_i * lag / 40:

        i=0 (d -3): neighbour from {-2, -1, 1, 5}: I = 0.6, 0.3, -0.3, -1.5; observed 0.6: 1/4
        i=1 (d -2): pair means of {-3, -1, 1, 5}: -2, -1, 1, 0, 2, 3; I = 0.4 (observed), 0.2,
                    -0.2, 0, -0.4, -0.6: 1/6
        i=2 (d -1): pair means of {-3, -2, 1, 5}: I = 0.25, 0.1, -0.1, 0.05 (observed), -0.15,
                    -0.3: 3/6
        i=3 (d 1):  pair means of {-3, -2, -1, 5}: I = -0.25, -0.2, 0.1, -0.15, 0.15,
                    0.2 (observed): 1/6
        i=4 (d 5):  neighbour from {-3, -2, -1, 1}: I = -1.5, -1, -0.5, 0.5 (observed): 1/4
    """
    out, _ = outlier(chain, "x", permutations=PERMUTATIONS, seed=12345)
    assert_allclose(out["lmi_pvalue"].to_numpy(float), [1 / 4, 1 / 6, 1 / 2, 1 / 6, 1 / 4],
                    atol=PSEUDO_P_TOLERANCE)


def test_dissolve_hand_drawn_squares() -> None:
    """Group a: two unit squares side by side (a 2 x 1 rectangle) and one far away: a
    MultiPolygon of two parts, area 3. Group b: [0,2] x [1,2] and [1,3] x [1,2] overlap on a
    unit square: union [0,3] x [1,2], area 2 + 2 - 1 = 3. A null group value forms its own group
    (as SQL GROUP BY). A feature with an empty geometry is skipped and counted, so it is
    neither b's first feature nor in its sums.

        group  sum v        mean w           first name (lowest k)  count u  features
        a      10+20+5=35   (1+3+5)/3 = 3    a0 (k 1)               3        3
        b      1 (+ null)   2 (1 null)       b0 (k 4)               1        2
        null   7            7                n0                     1        1
    """
    squares = gpd.GeoDataFrame(
        {"g": ["a", "a", "a", "b", "b", None, "b"],
         "v": [10, 20, 5, 1, None, 7, 100],
         "u": [10, 20, 5, 1, None, 7, 100],
         "w": [1.0, 3.0, 5.0, None, 2.0, 7.0, 100.0],
         "name": ["a1", "a0", "a2", "b0", "b1", "n0", "e"],
         "k": [2, 1, 3, 4, 5, 6, 0]},
        geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1), shapely.box(5, 5, 6, 6),
                  shapely.box(0, 1, 2, 2), shapely.box(1, 1, 3, 2), shapely.box(10, 10, 11, 11),
                  shapely.Polygon()],
        crs=32617)
    out, summary = dissolve(squares, by=["g"], key="k",
                            aggregates={"v": "sum", "w": "mean", "name": "first", "u": "count"})
    assert (summary.groups, summary.skipped_empty) == (3, 1)
    out = out.assign(g=out["g"].fillna("null")).set_index("g").sort_index()
    assert list(out.index) == ["a", "b", "null"]
    assert out["sum_v"].tolist() == [35, 1, 7]
    assert out["mean_w"].tolist() == [3.0, 2.0, 7.0]
    assert out["first_name"].tolist() == ["a0", "b0", "n0"]
    assert out["count_u"].tolist() == [3, 1, 1]
    assert out["feature_count"].tolist() == [3, 2, 1]
    assert_allclose(out.geometry.area.to_numpy(), [3.0, 3.0, 1.0], atol=1e-12)
    assert set(out.geometry.geom_type) == {"MultiPolygon"}
    assert shapely.get_num_geometries(out.geometry.to_numpy()).tolist() == [2, 1, 1]
    expected = [shapely.MultiPolygon([shapely.box(0, 0, 2, 1), shapely.box(5, 5, 6, 6)]),
                shapely.MultiPolygon([shapely.box(0, 1, 3, 2)]),
                shapely.MultiPolygon([shapely.box(10, 10, 11, 11)])]
    assert all(shapely.equals(out.geometry.to_numpy(), expected))
    assert out.crs == squares.crs
    assert isinstance(out, gpd.GeoDataFrame) and not isinstance(out["sum_v"], pd.DataFrame)
