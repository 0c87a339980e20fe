"""Space-time Gi*, its significance bins and the Mann-Kendall trend, against oracles.

Oracles: esda's G_Local per step (k = 0) on the US state income panel
(libpysal's us_income, 48 states x 81 years); a dense numpy space-time
weights matrix built here from libpysal's queen contiguity (k >= 1);
scipy's Benjamini-Hochberg adjustment; scipy's Kendall tau.
"""

from __future__ import annotations

import esda
import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.errors import AnalysisError
from analysis.spacetime_gi import mann_kendall, significance_bins, spacetime_gistar

YEARS = [str(y) for y in range(1929, 2010)]


@pytest.fixture(scope="module")
def us_income() -> gpd.GeoDataFrame:
    states = gpd.read_file(libpysal.examples.get_path("us48.shp"))
    states["STATE_FIPS"] = states["STATE_FIPS"].astype(int)
    income = pd.read_csv(libpysal.examples.get_path("usjoin.csv")).drop(columns="Name")
    return states.merge(income, on="STATE_FIPS").set_crs(4269)


@pytest.fixture(scope="module")
def queen(us_income: gpd.GeoDataFrame) -> libpysal.weights.W:
    return libpysal.weights.Queen.from_dataframe(us_income, use_index=False, silence_warnings=True)


def test_k0_equals_esda_gistar_on_every_year(us_income, queen) -> None:
    x = us_income[YEARS].to_numpy(float)
    z, p = spacetime_gistar(x, queen, neighborhood_time_step=0)
    for t, year in enumerate(YEARS):
        w = libpysal.weights.W(queen.neighbors, silence_warnings=True)
        g = esda.G_Local(us_income[year].to_numpy(float), w, transform="B", star=True,
                         permutations=0)  # fmt: skip
        np.testing.assert_allclose(z[:, t], g.Zs, rtol=0, atol=1e-9, err_msg=year)
        np.testing.assert_allclose(p[:, t], 2 * g.p_norm, rtol=0, atol=1e-12, err_msg=year)


def dense_spacetime_gistar(x: np.ndarray, w: libpysal.weights.W, k: int) -> np.ndarray:
    """The issue's definition, written out with a dense (n*T, n*T) weights matrix."""
    n, n_steps = x.shape
    spatial = w.full()[0] != 0
    np.fill_diagonal(spatial, True)
    big = np.zeros((n * n_steps, n * n_steps))
    for t in range(n_steps):
        for s in range(max(0, t - k), t + 1):
            big[t * n : (t + 1) * n, s * n : (s + 1) * n] = spatial
    stacked = x.T.ravel()  # step-major: row t * n + i is x[i, t]
    z = np.empty((n, n_steps))
    for t in range(n_steps):
        rows = big[t * n : (t + 1) * n]
        current = x[:, t]
        mean = current.mean()
        sd = np.sqrt((current**2).mean() - mean**2)
        wsum = rows.sum(axis=1)
        w2sum = (rows**2).sum(axis=1)
        numerator = rows @ stacked - mean * wsum
        z[:, t] = numerator / (sd * np.sqrt((n * w2sum - wsum**2) / (n - 1)))
    return z


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_previous_steps_equal_a_dense_spacetime_matrix(us_income, queen, k) -> None:
    x = us_income[YEARS[:30]].to_numpy(float)
    z, p = spacetime_gistar(x, queen, neighborhood_time_step=k)
    expected = dense_spacetime_gistar(x, queen, k)
    np.testing.assert_allclose(z, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(p, 2 * stats.norm.sf(np.abs(expected)), atol=1e-12)
    # the time window matters: k steps differ from space alone after the first step
    z0, _ = spacetime_gistar(x, queen, neighborhood_time_step=0)
    np.testing.assert_allclose(z[:, 0], z0[:, 0], atol=1e-12)
    assert np.abs(z[:, 1:] - z0[:, 1:]).max() > 0.1


def test_window_sums_equal_esda_lag_on_stacked_steps(us_income, queen) -> None:
    # esda's Gi* statistic times the sum of y is the lag sum W @ y: on the two
    # stacked steps t-1, t with a block space-time W it gives the window sums.
    x = us_income[YEARS[:2]].to_numpy(float)
    n = len(x)
    z, _ = spacetime_gistar(x, queen, neighborhood_time_step=1)
    a = queen.full()[0]
    block = np.block([[a, np.zeros_like(a)], [a + np.eye(n), a]])
    w2 = libpysal.weights.full2W(block)
    y = np.r_[x[:, 0], x[:, 1]]
    g = esda.G_Local(y, w2, transform="B", star=True, permutations=0)
    window = g.Gs[n:] * y.sum()
    wsum = 2 * (a.sum(axis=1) + 1)
    mean, sd = x[:, 1].mean(), x[:, 1].std()
    expected = (window - mean * wsum) / (sd * np.sqrt((n * wsum - wsum**2) / (n - 1)))
    np.testing.assert_allclose(z[:, 1], expected, atol=1e-9)


def test_constant_step_has_no_z(queen) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(48, 12))
    x[:, 4] = 7.0
    z, p = spacetime_gistar(x, queen, neighborhood_time_step=0)
    assert np.isnan(z[:, 4]).all() and np.isnan(p[:, 4]).all()
    assert np.isfinite(z[:, [3, 5]]).all()
    bins = significance_bins(z, p, alpha=0.5, fdr=False)
    assert (bins[:, 4] == 0).all()


def test_neighbourhood_as_large_as_the_panel_fails() -> None:
    full = np.ones((4, 4)) - np.eye(4)
    x = np.arange(40, dtype=float).reshape(4, 10) ** 1.5
    with pytest.raises(AnalysisError) as err:
        spacetime_gistar(x, libpysal.weights.full2W(full), neighborhood_time_step=1)
    assert err.value.field == "neighborhood_time_step"


def test_bins_without_fdr_are_p_below_alpha_signed(us_income, queen) -> None:
    x = us_income[YEARS].to_numpy(float)
    z, p = spacetime_gistar(x, queen, 1)
    bins = significance_bins(z, p, alpha=0.05, fdr=False)
    assert set(np.unique(bins)) <= {-1, 0, 1}
    assert ((bins == 1) == ((p < 0.05) & (z > 0))).all()
    assert ((bins == -1) == ((p < 0.05) & (z < 0))).all()
    assert (bins == 1).any() and (bins == -1).any()


def test_fdr_bins_match_scipy_benjamini_hochberg_per_step(us_income, queen) -> None:
    x = us_income[YEARS].to_numpy(float)
    z, p = spacetime_gistar(x, queen, 1)
    for alpha in (0.05, 0.1):
        bins = significance_bins(z, p, alpha=alpha, fdr=True)
        for t in range(x.shape[1]):
            adjusted = stats.false_discovery_control(p[:, t], method="bh")
            significant = adjusted <= alpha
            np.testing.assert_array_equal(bins[:, t] != 0, significant, err_msg=f"step {t}")
        # FDR is stricter than the raw cut-off
        assert (bins != 0).sum() < (significance_bins(z, p, alpha, fdr=False) != 0).sum()


def brute_force_mann_kendall(y: np.ndarray) -> tuple[float, float]:
    n = len(y)
    s = sum(np.sign(y[j] - y[i]) for i in range(n) for j in range(i + 1, n))
    _, ties = np.unique(y, return_counts=True)
    var = (n * (n - 1) * (2 * n + 5) - (ties * (ties - 1) * (2 * ties + 5)).sum()) / 18
    zs = (s - np.sign(s)) / np.sqrt(var)
    return s / (n * (n - 1) / 2), 2 * stats.norm.sf(abs(zs))


def test_mann_kendall_matches_kendall_tau_and_the_definition(us_income, queen) -> None:
    z, _ = spacetime_gistar(us_income[YEARS].to_numpy(float), queen, 1)
    tau, pvalue, trend = mann_kendall(z, alpha=0.05)
    steps = np.arange(z.shape[1])
    for i in range(z.shape[0]):
        assert tau[i] == pytest.approx(stats.kendalltau(steps, z[i]).statistic, abs=1e-12)
        bf_tau, bf_p = brute_force_mann_kendall(z[i])
        assert tau[i] == pytest.approx(bf_tau, abs=1e-12)
        assert pvalue[i] == pytest.approx(bf_p, abs=1e-12)
    assert ((trend != 0) == (pvalue < 0.05)).all()
    assert (np.sign(tau[trend != 0]) == trend[trend != 0]).all()
    assert (trend == 1).any() and (trend == -1).any()


def test_mann_kendall_with_ties_and_a_skipped_step() -> None:
    y = np.array([1.0, 1.0, 2.0, np.nan, 2.0, 3.0, 5.0, 5.0, 4.0, 6.0])
    tau, pvalue, trend = mann_kendall(y)
    bf_tau, bf_p = brute_force_mann_kendall(y[np.isfinite(y)])
    assert tau[0] == pytest.approx(bf_tau) and pvalue[0] == pytest.approx(bf_p)
    assert trend[0] == 1


def _series_with_ties_gaps_and_constants(rng: np.random.Generator, rows: int, steps: int
                                         ) -> np.ndarray:
    x = rng.normal(size=(rows, steps))
    quarter = rows // 4
    x[:quarter] = np.round(x[:quarter] * 1.5)  # many ties
    x[quarter:quarter + rows // 20] = 7.0  # constant series
    walk = slice(quarter + rows // 20, 2 * quarter)
    x[walk] = np.cumsum(rng.integers(-1, 3, size=x[walk].shape), axis=1)  # trends with ties
    gaps = slice(2 * quarter, 3 * quarter)
    x[gaps] = np.where(rng.random(x[gaps].shape) < 0.1, np.nan, x[gaps])  # skipped steps
    x[3 * quarter: 3 * quarter + 10, : steps - 2] = np.nan  # too short to test
    return x


@pytest.mark.parametrize(("rows", "steps"), [(5_000, 24), (4_000, 12), (1_000, 5)])
def test_mann_kendall_equals_pymannkendall_on_every_series(rows: int, steps: int) -> None:
    """10,000 series in all, with ties, constant series, gaps and too-short ones."""
    pymannkendall = pytest.importorskip("pymannkendall")
    x = _series_with_ties_gaps_and_constants(np.random.default_rng(steps), rows, steps)
    tau, pvalue, trend = mann_kendall(x, alpha=0.05)
    checked = 0
    for i, row in enumerate(x):
        if np.isfinite(row).sum() < 3:
            assert np.isnan(tau[i]) and np.isnan(pvalue[i]) and trend[i] == 0
            continue
        oracle = pymannkendall.original_test(row, alpha=0.05)
        assert abs(tau[i] - oracle.Tau) <= 1e-12, i
        assert abs(pvalue[i] - oracle.p) <= 1e-12, i
        assert trend[i] == (int(np.sign(oracle.Tau)) if oracle.p < 0.05 else 0)
        checked += 1
    assert checked >= 0.95 * rows
    constant = np.isfinite(x).all(axis=1) & (np.nanstd(x, axis=1) == 0)
    assert constant.any() and (tau[constant] == 0).all() and (pvalue[constant] == 1).all()
    assert (trend == 1).any() and (trend == -1).any()
