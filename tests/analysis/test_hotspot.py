"""Gi* hot spots compared feature by feature with esda computed here on libpysal's W."""

from __future__ import annotations

import math
import warnings

import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pytest
from esda.getisord import G_Local
from scipy import stats
from scipy.spatial.distance import cdist

from analysis.errors import AnalysisError, TooFewFeatures
from analysis.hotspot import gi_bins, hotspot

PERMS = 199


def esda_gi(y: np.ndarray, w: libpysal.weights.W, seed: int = 12345,
            permutations: int = PERMS) -> G_Local:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return G_Local(y, w, transform="B", star=True, permutations=permutations, seed=seed,
                       n_jobs=1)


def expected_bins(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    bins = np.select([p < 0.01, p < 0.05, p < 0.10], [3, 2, 1], 0)
    return np.sign(z).astype(int) * bins


def as_float(column: pd.Series) -> np.ndarray:
    return column.to_numpy(dtype=float, na_value=np.nan)


def test_columbus_queen_matches_esda(columbus: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(columbus, "CRIME", permutations=PERMS)
    w = libpysal.weights.Queen.from_dataframe(columbus, use_index=False)
    ref = esda_gi(columbus["CRIME"].to_numpy(float), w)
    z = as_float(out["gi_zscore"])
    assert np.abs(z - ref.Zs).max() < 1e-9
    assert np.abs(as_float(out["gi_pvalue"]) - 2 * ref.p_norm).max() < 1e-12
    assert np.abs(as_float(out["gi_psim"]) - ref.p_sim).max() < 1e-6
    assert (out["gi_bin"].to_numpy() == expected_bins(ref.Zs, 2 * ref.p_norm)).all()
    assert (out["n_neighbors"].to_numpy() == [w.cardinalities[i] for i in range(49)]).all()
    assert (out["gi_bin"].abs() == 3).any() and (out["gi_bin"] < 0).any()
    assert list(out.columns[:-5]) == list(columbus.columns)
    assert summary.counts["3"] == int((out["gi_bin"] == 3).sum())
    assert summary.weights["type"] == "queen" and summary.weights["transform"] == "B"


def test_islands_get_null_statistics_and_are_named(tokyo: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(tokyo, "smr", permutations=PERMS)
    w = libpysal.weights.Queen.from_dataframe(tokyo, use_index=False, silence_warnings=True)
    assert sorted(summary.islands) == sorted(w.islands) and summary.n_islands == 10
    ref = esda_gi(tokyo["smr"].to_numpy(float), w)
    keep = np.array([w.cardinalities[i] > 0 for i in range(len(tokyo))])
    z = as_float(out["gi_zscore"])
    assert np.isnan(z[~keep]).all() and out["gi_bin"][~keep].isna().all()
    assert (out["n_neighbors"][~keep] == 0).all()
    assert np.abs(z[keep] - ref.Zs[keep]).max() < 1e-9
    assert (out["gi_bin"][keep].to_numpy() ==
            expected_bins(ref.Zs, 2 * ref.p_norm)[keep]).all()
    assert any("islands" in m for m in summary.warnings)


def test_points_with_default_distance_band(baltimore: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(baltimore, "PRICE", permutations=PERMS)
    xy = np.column_stack([baltimore.geometry.x, baltimore.geometry.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    threshold = d.min(axis=1).max()
    neighbours = {i: np.flatnonzero(d[i] <= threshold * (1 + 1e-9)).tolist()
                  for i in range(len(xy))}
    ref = esda_gi(baltimore["PRICE"].to_numpy(float), libpysal.weights.W(neighbours))
    assert summary.weights["type"] == "distance_band"
    assert summary.weights["threshold"] == pytest.approx(threshold, rel=1e-12)
    assert summary.n_islands == 0
    assert np.abs(as_float(out["gi_zscore"]) - ref.Zs).max() < 1e-9
    assert np.abs(as_float(out["gi_psim"]) - ref.p_sim).max() < 1e-6
    assert (out["gi_bin"].to_numpy() == expected_bins(ref.Zs, 2 * ref.p_norm)).all()


def test_geographic_crs_is_projected_and_reported(mexico: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(mexico, "PCGDP2000", weights={"type": "knn", "k": 5},
                           permutations=0)
    minx, _, maxx, _ = mexico.total_bounds
    epsg = 32600 + math.floor(((minx + maxx) / 2 + 180) / 6) + 1
    assert summary.crs == f"EPSG:{epsg}"
    assert out.crs == mexico.crs  # the features keep their own CRS
    c = mexico.to_crs(epsg).centroid
    w = libpysal.weights.KNN.from_array(np.column_stack([c.x, c.y]), k=5)
    ref = esda_gi(mexico["PCGDP2000"].to_numpy(float), w, permutations=0)
    assert np.abs(as_float(out["gi_zscore"]) - ref.Zs).max() < 1e-9
    assert out["gi_psim"].isna().all()  # no permutations, no pseudo p-value
    assert any("fewer than 30" in m for m in summary.warnings) is False


def test_seed_makes_pseudo_p_reproducible(columbus: gpd.GeoDataFrame) -> None:
    a, _ = hotspot(columbus, "CRIME", permutations=PERMS, seed=7)
    b, _ = hotspot(columbus, "CRIME", permutations=PERMS, seed=7)
    c, _ = hotspot(columbus, "CRIME", permutations=PERMS, seed=8)
    assert (as_float(a["gi_psim"]) == as_float(b["gi_psim"])).all()
    assert (as_float(a["gi_psim"]) != as_float(c["gi_psim"])).any()
    ref = esda_gi(columbus["CRIME"].to_numpy(float),
                  libpysal.weights.Queen.from_dataframe(columbus, use_index=False), seed=8)
    assert np.abs(as_float(c["gi_psim"]) - ref.p_sim).max() < 1e-6
    # (m + 1) / (R + 1) exactly, with R = 199
    m = as_float(c["gi_psim"]) * (PERMS + 1)
    assert np.allclose(m, np.round(m), atol=1e-9) and (m >= 1).all()


def test_fdr_bins_against_scipy(tokyo: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(tokyo, "smr", permutations=0, fdr=True)
    z, p = as_float(out["gi_zscore"]), as_float(out["gi_pvalue"])
    tested = ~np.isnan(p)
    adjusted = stats.false_discovery_control(p[tested], method="bh")
    magnitude = np.select([adjusted <= 0.01, adjusted <= 0.05, adjusted <= 0.10], [3, 2, 1], 0)
    assert (out["gi_bin"][tested].to_numpy() == np.sign(z[tested]) * magnitude).all()
    plain, _ = hotspot(tokyo, "smr", permutations=0)
    assert (out["gi_bin"].abs().sum() < plain["gi_bin"].abs().sum())
    assert np.array_equal(as_float(out["gi_zscore"]), as_float(plain["gi_zscore"]),
                          equal_nan=True)
    assert set(summary.fdr_cutoffs) == {"0.01", "0.05", "0.1"}


def test_fdr_bins_hand_checked() -> None:
    # the hand-checked p-values of test_fdr, hot and cold alternately
    p = np.array([0.0009, 0.008, 0.020, 0.024, 0.025, 0.061, 0.074, 0.205, 0.212, 0.216])
    z = np.array([3.3, -2.6, 2.3, -2.3, 2.2, -1.9, 1.8, -1.3, 1.2, -1.2])
    bins, cutoffs = gi_bins(z, p, fdr=True)
    assert bins.tolist() == [3, -2, 2, -2, 2, 0, 0, 0, 0, 0]
    assert cutoffs == {"0.01": 0.0009, "0.05": 0.025, "0.1": 0.025}
    plain, _ = gi_bins(z, p)
    assert plain.tolist() == [3, -3, 2, -2, 2, -1, 1, 0, 0, 0]


def test_null_values_left_out_and_counted(columbus: gpd.GeoDataFrame) -> None:
    gdf = columbus.copy()
    gdf["CRIME"] = gdf["CRIME"].astype("Float64")
    gdf.loc[[3, 17, 30], "CRIME"] = pd.NA
    out, summary = hotspot(gdf, "CRIME", permutations=0)
    assert summary.n_null_values == 3 and summary.n_analysed == 46 and len(out) == 49
    assert out.loc[[3, 17, 30], "gi_zscore"].isna().all()
    assert out.loc[[3, 17, 30], "n_neighbors"].isna().all()
    rest = columbus.drop(index=[3, 17, 30])
    w = libpysal.weights.Queen.from_dataframe(rest, use_index=False)
    ref = esda_gi(rest["CRIME"].to_numpy(float), w, permutations=0)
    assert np.abs(as_float(out["gi_zscore"].drop(index=[3, 17, 30])) - ref.Zs).max() < 1e-9


def test_incident_grid_matches_esda_on_the_counts(burkitt: gpd.GeoDataFrame) -> None:
    out, summary = hotspot(burkitt, grid={"shape": "hexagon", "cell_size": 12},
                           permutations=PERMS)
    assert summary.grid["cell_size"] == 12 and out["count"].sum() == len(burkitt)
    assert (out["count"] == 0).any()
    c = out.centroid
    xy = np.column_stack([c.x, c.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    # adjacent hexagon centres are one cell size apart: that is the smallest threshold
    assert summary.weights["threshold"] == pytest.approx(12)
    neighbours = {i: np.flatnonzero(d[i] <= 12 * (1 + 1e-9)).tolist() for i in range(len(xy))}
    ref = esda_gi(out["count"].to_numpy(float), libpysal.weights.W(neighbours))
    assert np.abs(as_float(out["gi_zscore"]) - ref.Zs).max() < 1e-9
    assert (out["gi_bin"].to_numpy() == expected_bins(ref.Zs, 2 * ref.p_norm)).all()


def test_negative_mean_gives_the_shift_invariant_z(columbus: gpd.GeoDataFrame) -> None:
    gdf = columbus.assign(anomaly=columbus["CRIME"] - 100.0)
    out, summary = hotspot(gdf, "anomaly", permutations=0)
    ref = esda_gi(columbus["CRIME"].to_numpy(float),
                  libpysal.weights.Queen.from_dataframe(columbus, use_index=False),
                  permutations=0)
    assert np.abs(as_float(out["gi_zscore"]) - ref.Zs).max() < 1e-9
    assert any("mean <= 0" in m for m in summary.warnings)


def test_few_features(columbus: gpd.GeoDataFrame) -> None:
    _, summary = hotspot(columbus.iloc[:20], "CRIME", permutations=0)
    assert any("fewer than 30" in m for m in summary.warnings)
    with pytest.raises(TooFewFeatures) as err:
        hotspot(columbus.iloc[:2], "CRIME")
    assert err.value.field == "value_column"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"value_column": "NOPE"}, "value_column"),
        ({"value_column": "name"}, "value_column"),
        ({"value_column": "CRIME", "permutations": -1}, "permutations"),
        ({"value_column": "CRIME", "seed": "x"}, "seed"),
        ({"value_column": "CRIME", "weights": {"type": "knn", "k": 100}}, "weights.k"),
        ({"value_column": "CRIME", "weights": {"type": "distance_band", "threshold": 1e-6}},
         "weights.threshold"),
        ({"value_column": "CRIME", "geometry_column": "CRIME"}, "geometry_column"),
        ({"value_column": "CONST"}, "value_column"),
        ({"value_column": "CRIME", "grid": {"shape": "square"}}, "grid"),
    ],
)
def test_errors_name_the_field(columbus: gpd.GeoDataFrame, kwargs: dict, field: str) -> None:
    gdf = columbus.assign(name=[f"n{i}" for i in range(49)], CONST=1.0)
    with pytest.raises(AnalysisError) as err:
        hotspot(gdf, **kwargs)
    assert err.value.field == field
