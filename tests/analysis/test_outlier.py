"""Local Moran clusters and outliers compared feature by feature with esda computed here."""

from __future__ import annotations

import warnings

import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pytest
from esda.moran import Moran_Local
from scipy import stats
from scipy.spatial.distance import cdist

from analysis.errors import AnalysisError
from analysis.outlier import outlier

PERMS = 199
LABELS = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}


def esda_lisa(y: np.ndarray, w: libpysal.weights.W, seed: int = 12345,
              permutations: int = PERMS) -> Moran_Local:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Moran_Local(y, w, transformation="r", permutations=permutations, seed=seed)


def as_float(column: pd.Series) -> np.ndarray:
    return column.to_numpy(dtype=float, na_value=np.nan)


def expected_types(ref: Moran_Local, p: np.ndarray) -> list[str | None]:
    return [LABELS[int(q)] if pv <= 0.05 else None for q, pv in zip(ref.q, p, strict=True)]


def co_types(out: gpd.GeoDataFrame) -> list[str | None]:
    return [None if pd.isna(v) else v for v in out["co_type"]]


def test_columbus_matches_esda(columbus: gpd.GeoDataFrame) -> None:
    out, summary = outlier(columbus, "CRIME", permutations=PERMS)
    w = libpysal.weights.Queen.from_dataframe(columbus, use_index=False)
    ref = esda_lisa(columbus["CRIME"].to_numpy(float), w)
    assert np.abs(as_float(out["lmi_index"]) - ref.Is).max() < 1e-9
    z = (ref.Is - ref.EI) / np.sqrt(ref.VI)
    assert np.abs(as_float(out["lmi_zscore"]) - z).max() < 1e-9
    assert np.abs(as_float(out["lmi_pvalue"]) - ref.p_sim).max() < 1e-12
    assert co_types(out) == expected_types(ref, ref.p_sim)
    assert {"HH", "LL"} <= set(out["co_type"].dropna())
    assert summary.counts["HH"] == int((out["co_type"] == "HH").sum())
    assert summary.weights["transform"] == "R"
    assert (out["n_neighbors"].to_numpy() == [w.cardinalities[i] for i in range(49)]).all()


def test_islands_get_null_statistics(tokyo: gpd.GeoDataFrame) -> None:
    out, summary = outlier(tokyo, "smr", permutations=PERMS)
    w = libpysal.weights.Queen.from_dataframe(tokyo, use_index=False, silence_warnings=True)
    ref = esda_lisa(tokyo["smr"].to_numpy(float), w)
    keep = np.array([w.cardinalities[i] > 0 for i in range(len(tokyo))])
    assert sorted(summary.islands) == sorted(w.islands)
    idx = as_float(out["lmi_index"])
    assert np.isnan(idx[~keep]).all() and out["co_type"][~keep].isna().all()
    assert np.abs(idx[keep] - ref.Is[keep]).max() < 1e-9
    assert np.abs(as_float(out["lmi_pvalue"])[keep] - ref.p_sim[keep]).max() < 1e-12
    assert co_types(out.loc[keep]) == [t for t, k in
                                       zip(expected_types(ref, ref.p_sim), keep, strict=True)
                                       if k]


def test_without_permutations_the_p_value_is_normal(baltimore: gpd.GeoDataFrame) -> None:
    out, summary = outlier(baltimore, "PRICE", permutations=0)
    xy = np.column_stack([baltimore.geometry.x, baltimore.geometry.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    threshold = d.min(axis=1).max()
    w = libpysal.weights.W({i: np.flatnonzero(d[i] <= threshold * (1 + 1e-9)).tolist()
                            for i in range(len(xy))})
    ref = esda_lisa(baltimore["PRICE"].to_numpy(float), w, permutations=0)
    z = (ref.Is - ref.EI) / np.sqrt(ref.VI)
    p = 2 * stats.norm.sf(np.abs(z))
    assert summary.weights["type"] == "distance_band"
    assert np.abs(as_float(out["lmi_index"]) - ref.Is).max() < 1e-9
    assert np.abs(as_float(out["lmi_pvalue"]) - p).max() < 1e-12
    assert co_types(out) == expected_types(ref, p)


def test_geographic_input(mexico: gpd.GeoDataFrame) -> None:
    out, summary = outlier(mexico, "PCGDP1940", weights={"type": "distance_band"},
                           permutations=PERMS, seed=3)
    assert summary.crs is not None and summary.crs.startswith("EPSG:326")
    c = mexico.to_crs(summary.crs).centroid
    xy = np.column_stack([c.x, c.y])
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    threshold = d.min(axis=1).max()
    w = libpysal.weights.W({i: np.flatnonzero(d[i] <= threshold * (1 + 1e-9)).tolist()
                            for i in range(len(xy))})
    ref = esda_lisa(mexico["PCGDP1940"].to_numpy(float), w, seed=3)
    assert np.abs(as_float(out["lmi_index"]) - ref.Is).max() < 1e-9
    assert np.abs(as_float(out["lmi_pvalue"]) - ref.p_sim).max() < 1e-12


def test_seed_reproducible_and_smallest_p(columbus: gpd.GeoDataFrame) -> None:
    a, _ = outlier(columbus, "CRIME", permutations=499, seed=1)
    b, _ = outlier(columbus, "CRIME", permutations=499, seed=1)
    c, _ = outlier(columbus, "CRIME", permutations=499, seed=2)
    pa = as_float(a["lmi_pvalue"])
    assert (pa == as_float(b["lmi_pvalue"])).all()
    assert (pa != as_float(c["lmi_pvalue"])).any()
    assert pa.min() >= 1 / 500 and (pa == 1 / 500).any()


def test_fdr_uses_the_bh_cutoff(tokyo: gpd.GeoDataFrame) -> None:
    out, summary = outlier(tokyo, "smr", permutations=PERMS, fdr=True)
    plain, _ = outlier(tokyo, "smr", permutations=PERMS)
    p = as_float(out["lmi_pvalue"])
    tested = ~np.isnan(p)
    adjusted = np.full(len(p), np.nan)
    adjusted[tested] = stats.false_discovery_control(p[tested], method="bh")
    significant = np.zeros(len(p), dtype=bool)
    significant[tested] = adjusted[tested] <= 0.05
    assert (out["co_type"].notna().to_numpy() == significant).all()
    assert out["co_type"].notna().sum() < plain["co_type"].notna().sum()
    agree = out["co_type"].notna()
    assert (out["co_type"][agree] == plain["co_type"][agree]).all()
    assert summary.fdr_cutoffs is not None


def test_errors(columbus: gpd.GeoDataFrame) -> None:
    with pytest.raises(AnalysisError) as err:
        outlier(columbus, "CRIME", weights={"type": "rook", "transform": "X"})
    assert err.value.field == "weights.transform"
    with pytest.raises(AnalysisError) as err:
        outlier(columbus.assign(s=columbus["CRIME"].astype("str")), "s")
    assert err.value.field == "value_column"
