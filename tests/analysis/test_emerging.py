"""The whole emerging hot spot analysis on its three input shapes.

Oracles: esda's Gi* per year on the US state income panel (k = 0), the same
analysis from the long and the wide layout, counts per cell and month made
here with a geopandas spatial join and pandas periods, and incidents with
planted hot spots whose category is known by construction.
"""

from __future__ import annotations

import esda
import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pytest
import shapely

from analysis.emerging import OUTPUT_COLUMNS, emerging_hot_spots, parse_time_step
from analysis.emerging_categories import CATEGORY_CODES
from analysis.errors import AnalysisError, GeometryTypeError

YEARS = [str(y) for y in range(1929, 2010)]
CRS = 32617  # UTM 17N, metres


@pytest.fixture(scope="module")
def us_income() -> gpd.GeoDataFrame:
    states = gpd.read_file(libpysal.examples.get_path("us48.shp"))
    states["STATE_FIPS"] = states["STATE_FIPS"].astype(int)
    income = pd.read_csv(libpysal.examples.get_path("usjoin.csv")).drop(columns="Name")
    return states.merge(income, on="STATE_FIPS").set_crs(4269)


@pytest.fixture(scope="module")
def us_long(us_income: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    long = us_income.melt(
        id_vars=["STATE_FIPS", "STATE_NAME", "geometry"],
        value_vars=YEARS,
        var_name="year",
        value_name="income",
    )
    long["year"] = long["year"].astype(int)
    # shuffled rows: the analysis must not depend on the row order
    long = long.sample(frac=1.0, random_state=1).reset_index(drop=True)
    return gpd.GeoDataFrame(long, geometry="geometry", crs=us_income.crs)


def planted_incidents(seed: int = 7) -> tuple[gpd.GeoDataFrame, dict[str, tuple[float, float]]]:
    """Uniform background over 10 x 10 km and 24 months, plus two planted clusters.

    ``new``: 300 incidents only in the last month; ``intensifying``: incidents
    every month, their number rising from 10 to 148.
    """
    rng = np.random.default_rng(seed)
    n = 20_000
    start = pd.Timestamp("2023-01-01")
    xs = [rng.uniform(0, 10_000, n)]
    ys = [rng.uniform(0, 10_000, n)]
    ts = [start + pd.to_timedelta(rng.uniform(0, 730, n), unit="D")]
    centres = {"new": (3_250.0, 7_250.0), "intensifying": (7_250.0, 3_250.0)}
    m = 300
    xs.append(centres["new"][0] + rng.normal(0, 250, m))
    ys.append(centres["new"][1] + rng.normal(0, 250, m))
    ts.append(pd.Timestamp("2024-12-01") + pd.to_timedelta(rng.uniform(0, 30, m), unit="D"))
    for month in range(24):
        c = 10 + 6 * month
        xs.append(centres["intensifying"][0] + rng.normal(0, 250, c))
        ys.append(centres["intensifying"][1] + rng.normal(0, 250, c))
        first = start + pd.DateOffset(months=month)
        ts.append(first + pd.to_timedelta(rng.uniform(0, 27, c), unit="D"))
    gdf = gpd.GeoDataFrame(
        {"reported_at": pd.DatetimeIndex(np.concatenate([np.asarray(t) for t in ts]))},
        geometry=gpd.points_from_xy(np.concatenate(xs), np.concatenate(ys)),
        crs=CRS,
    )
    return gdf, centres


# --- real panel ------------------------------------------------------------


def test_wide_k0_equals_esda_per_year(us_income) -> None:
    result = emerging_hot_spots(us_income, value_columns=YEARS, neighborhood_time_step=0)
    w = libpysal.weights.Queen.from_dataframe(us_income, use_index=False, silence_warnings=True)
    slices = result.slices
    for year in YEARS[::10]:
        g = esda.G_Local(us_income[year].to_numpy(float), libpysal.weights.W(w.neighbors),
                         transform="B", star=True, permutations=0)  # fmt: skip
        got = slices.loc[slices["time"] == year].sort_values("location_id")
        np.testing.assert_allclose(got["gi_zscore"], g.Zs, atol=1e-9)
        np.testing.assert_allclose(got["gi_pvalue"], 2 * g.p_norm, atol=1e-12)
        np.testing.assert_array_equal(got["value"], us_income[year].to_numpy(float))
    assert result.summary.to_dict()["weights"]["type"] == "queen"


def test_long_and_wide_layouts_agree(us_income, us_long) -> None:
    wide = emerging_hot_spots(us_income, value_columns=YEARS)
    long = emerging_hot_spots(
        us_long, location_column="STATE_FIPS", time_column="year", value_column="income"
    )
    by_fips = wide.locations.set_index("STATE_FIPS").sort_index()
    got = long.locations.set_index("STATE_FIPS").sort_index()
    assert list(got.index) == sorted(us_income["STATE_FIPS"])
    for column in OUTPUT_COLUMNS:
        if by_fips[column].dtype.kind == "f":
            np.testing.assert_allclose(got[column], by_fips[column], atol=1e-12, equal_nan=True)
        else:
            assert (got[column] == by_fips[column]).all(), column
    assert (got["STATE_NAME"] == by_fips["STATE_NAME"]).all()
    assert got.geometry.geom_equals(by_fips.geometry).all()
    assert "income" not in got.columns and "year" not in got.columns
    assert long.summary.to_dict()["categories"] == wide.summary.to_dict()["categories"]
    assert len(long.slices) == 48 * 81
    assert long.slices["time"].iloc[0] == 1929


def test_output_columns_and_summary(us_income) -> None:
    seen: list[float] = []
    result = emerging_hot_spots(us_income, value_columns=YEARS, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 3
    out = result.locations
    assert len(out) == 48 and set(OUTPUT_COLUMNS) <= set(out.columns)
    assert set(out["category"]) <= set(CATEGORY_CODES)
    assert (out["category"].map(CATEGORY_CODES) == out["category_code"]).all()
    assert (out["n_time_steps"] == 81).all()
    assert (out["hot_steps"] + out["cold_steps"] <= 81).all()
    assert sum(result.summary.to_dict()["categories"].values()) == 48
    assert len(result.summary.to_dict()["categories"]) == 17
    last = result.slices.loc[result.slices["time_index"] == 80].sort_values("location_id")
    np.testing.assert_allclose(out["last_gi_zscore"], last["gi_zscore"])
    assert (out["last_gi_bin"].to_numpy() == last["gi_bin"].to_numpy()).all()
    # income is concentrated in the north-east: some state must be a hot spot of some kind
    assert (out["category_code"] > 0).any() and (out["category_code"] < 0).any()


def test_fdr_is_stricter(us_income) -> None:
    strict = emerging_hot_spots(us_income, value_columns=YEARS, fdr=True).locations
    loose = emerging_hot_spots(us_income, value_columns=YEARS, fdr=False).locations
    assert (strict["hot_steps"] <= loose["hot_steps"]).all()
    assert strict["hot_steps"].sum() < loose["hot_steps"].sum()


def test_too_few_time_steps_fails_with_the_field() -> None:
    mexico = gpd.read_file(libpysal.examples.get_path("mexicojoin.shp"))
    decades = [f"PCGDP{y}" for y in range(1940, 2001, 10)]
    with pytest.raises(AnalysisError, match="only 7 time steps") as err:
        emerging_hot_spots(mexico, value_columns=decades)
    assert err.value.field == "value_columns"
    result = emerging_hot_spots(mexico, value_columns=decades, min_time_steps=5)
    assert result.summary.to_dict()["time_steps"] == 7 and len(result.locations) == 32


# --- incidents --------------------------------------------------------------


@pytest.mark.parametrize("shape", ["square", "hexagon"])
def test_incident_counts_match_a_spatial_join(shape) -> None:
    incidents, _ = planted_incidents()
    result = emerging_hot_spots(
        incidents, time_column="reported_at", time_step="1 month",
        grid={"shape": shape, "cell_size": 500},
    )  # fmt: skip
    cells = result.locations
    joined = gpd.sjoin(incidents, cells[["cell_id", "geometry"]], predicate="intersects")
    assert not joined.index.duplicated().any()
    assert len(joined) == len(incidents)  # every incident falls in exactly one cell
    month = joined["reported_at"].dt.to_period("M").dt.to_timestamp()
    expected = joined.groupby(["cell_id", month]).size()
    slices = result.slices.set_index(["cell_id", "time"])["value"]
    got = slices.reindex(expected.index, fill_value=0)
    # a point a rounding error away from a cell edge may land on either side
    edge = cells.geometry.boundary.iloc[joined["cell_id"]].distance(joined.geometry, align=False)
    ambiguous = int((edge.to_numpy() < 1e-6).sum())
    assert np.abs(got.to_numpy() - expected.to_numpy()).sum() <= 2 * ambiguous
    assert slices.sum() == len(incidents)
    assert len(slices) == len(cells) * 24
    assert (slices == 0).any()  # empty cells in the extent count 0
    assert cells["count"].sum() == len(incidents)
    assert result.summary.to_dict()["weights"]["type"] == "distance_band"
    assert result.summary.to_dict()["islands"] == 0


@pytest.mark.parametrize("shape", ["square", "hexagon"])
def test_planted_hot_spots_are_found(shape) -> None:
    incidents, centres = planted_incidents()
    result = emerging_hot_spots(
        incidents, time_column="reported_at", time_step="1 month",
        grid={"shape": shape, "cell_size": 500},
    )  # fmt: skip
    cells = result.locations
    for name, expected in (("new", "New Hot Spot"), ("intensifying", "Intensifying Hot Spot")):
        holder = cells.loc[cells.contains(shapely.Point(centres[name]))]
        assert len(holder) == 1
        assert holder["category"].iloc[0] == expected, name
    far = np.ones(len(cells), dtype=bool)
    for centre in centres.values():
        far &= cells.centroid.distance(shapely.Point(centre)) > 1_500
    background = cells.loc[far, "category"]
    assert (background == "No Pattern Detected").mean() > 0.95
    intensifying = cells.loc[cells["category"] == "Intensifying Hot Spot"]
    assert (intensifying["trend_tau"] > 0).all() and (intensifying["trend_pvalue"] < 0.05).all()


def test_geographic_incidents_are_projected() -> None:
    incidents, centres = planted_incidents()
    geographic = incidents.to_crs(4326)
    result = emerging_hot_spots(
        geographic, time_column="reported_at", time_step="1 month",
        grid={"shape": "square", "cell_size": 500},
    )  # fmt: skip
    assert result.locations.crs.is_projected
    assert result.summary.to_dict()["crs"] == result.locations.crs.to_string()
    assert result.summary.to_dict()["categories"]["Intensifying Hot Spot"] >= 1


def test_weekly_steps_start_at_the_first_day() -> None:
    incidents, _ = planted_incidents()
    result = emerging_hot_spots(
        incidents, time_column="reported_at", time_step="7 days",
        grid={"shape": "square", "cell_size": 1000},
    )  # fmt: skip
    first = incidents["reported_at"].min().floor("D")
    step = ((incidents["reported_at"] - first) // pd.Timedelta(days=7)).to_numpy()
    totals = result.slices.groupby("time_index")["value"].sum()
    np.testing.assert_array_equal(totals.to_numpy(), np.bincount(step))
    assert result.slices["time"].min() == first


def test_time_zones_bin_in_their_own_zone() -> None:
    incidents, _ = planted_incidents()
    params = dict(time_column="reported_at", time_step="1 month",
                  grid={"shape": "square", "cell_size": 1000})  # fmt: skip
    naive = emerging_hot_spots(incidents, **params).slices
    # the same wall-clock times in Tokyo: the same months
    tokyo = incidents.assign(reported_at=incidents["reported_at"].dt.tz_localize("Asia/Tokyo"))
    aware = emerging_hot_spots(tokyo, **params).slices
    np.testing.assert_array_equal(aware["value"].to_numpy(), naive["value"].to_numpy())
    assert aware["time"].iloc[0] == pd.Timestamp("2023-01-01", tz="Asia/Tokyo")
    # seen from UTC, incidents in the first 9 hours of a Tokyo month fall in the month before
    utc = tokyo.assign(reported_at=tokyo["reported_at"].dt.tz_convert("UTC"))
    shifted = emerging_hot_spots(utc, **params).slices
    per_step = shifted.groupby("time_index")["value"].sum().to_numpy()
    assert len(per_step) == 25  # December 2022 (UTC) appears
    assert per_step.sum() == len(incidents)
    assert not np.array_equal(per_step[1:], naive.groupby("time_index")["value"].sum())


def test_cell_size_is_derived_when_missing() -> None:
    incidents, _ = planted_incidents()
    result = emerging_hot_spots(
        incidents, time_column="reported_at", time_step="1 month", grid={"shape": "hexagon"}
    )
    grid = result.summary.to_dict()["grid"]
    assert grid["cell_size_derived"] and grid["cell_size"] > 0
    assert grid["cells"] == len(result.locations)
    assert result.locations["count"].sum() == len(incidents)


def test_null_times_and_geometries_are_dropped_and_counted() -> None:
    incidents, _ = planted_incidents()
    incidents.loc[:9, "reported_at"] = pd.NaT
    incidents.loc[10:14, "geometry"] = None
    result = emerging_hot_spots(
        incidents, time_column="reported_at", time_step="1 month",
        grid={"shape": "square", "cell_size": 1000},
    )  # fmt: skip
    assert result.summary.to_dict()["incidents_dropped"] == 15
    assert result.locations["count"].sum() == len(incidents) - 15


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1 month", (1, "month")), ("7 days", (7, "day")), ("week", (1, "week")),
     ("2 Years", (2, "year")), ("6 hours", (6, "hour"))],
)  # fmt: skip
def test_parse_time_step(text, expected) -> None:
    assert parse_time_step(text) == expected


@pytest.mark.parametrize("text", ["monthly", "0 days", "1 fortnight", "-1 day", ""])
def test_bad_time_step(text) -> None:
    with pytest.raises(AnalysisError) as err:
        parse_time_step(text)
    assert err.value.field == "time_step"


def field_of(gdf: gpd.GeoDataFrame, **params) -> str | None:
    with pytest.raises(AnalysisError) as err:
        emerging_hot_spots(gdf, **params)
    return err.value.field


def test_long_panel_errors(us_long) -> None:
    long = dict(location_column="STATE_FIPS", time_column="year", value_column="income")
    assert field_of(us_long.iloc[1:], **long) == "time_column"  # incomplete
    assert field_of(pd.concat([us_long, us_long.iloc[:1]]), **long) == "time_column"  # repeat
    assert field_of(us_long, **{**long, "value_column": "nope"}) == "value_column"
    assert field_of(us_long, **{**long, "value_column": "STATE_NAME"}) == "value_column"
    with_null = us_long.copy()
    with_null.loc[3, "income"] = np.nan
    assert field_of(with_null, **long) == "value_column"
    moved = us_long.copy()
    moved.loc[0, "geometry"] = shapely.Point(0, 0)
    assert field_of(moved, **long) == "location_column"
    assert field_of(us_long, location_column="STATE_FIPS", value_column="income") == "time_column"


def test_parameter_errors(us_income) -> None:
    assert field_of(us_income) == "value_column"
    assert field_of(us_income, value_columns=YEARS, alpha=1.5) == "alpha"
    assert field_of(us_income, value_columns=YEARS, neighborhood_time_step=-1) == (
        "neighborhood_time_step"
    )
    assert field_of(us_income, value_columns=YEARS, neighborhood_time_step=81) == (
        "neighborhood_time_step"
    )
    assert field_of(us_income, value_columns=YEARS, weights={"transform": "R"}) == (
        "weights.transform"
    )
    assert field_of(us_income, value_columns=YEARS, weights={"type": "lattice"}) == "weights.type"
    assert field_of(us_income, value_columns=YEARS, time_step="1 month") == "time_step"
    assert field_of(us_income, value_columns=[*YEARS, "1929"]) == "value_columns"
    assert field_of(us_income, value_columns=YEARS, min_time_steps=2) == "min_time_steps"
    renamed = us_income.rename(columns={"SUB_REGION": "category"})
    assert field_of(renamed, value_columns=YEARS) == "input_table"


def test_incident_errors(us_income) -> None:
    incidents, _ = planted_incidents()
    grid = {"shape": "square", "cell_size": 500}
    base = dict(time_column="reported_at", time_step="1 month", grid=grid)
    assert field_of(incidents, **{**base, "grid": {"cell_size": -5}}) == "grid.cell_size"
    assert field_of(incidents, **{**base, "grid": {"shape": "circle", "cell_size": 5}}) == (
        "grid.shape"
    )
    assert field_of(incidents, time_column="reported_at", grid=grid) == "time_step"
    assert field_of(incidents, time_step="1 month", grid=grid) == "time_column"
    assert field_of(incidents, **{**base, "time_column": "when"}) == "time_column"
    assert field_of(incidents, **{**base, "time_step": "1 year"}) == "time_step"  # 2 steps
    polygons = us_income.assign(reported_at=pd.Timestamp("2020-01-01"))
    with pytest.raises(GeometryTypeError):
        emerging_hot_spots(polygons, **base)
