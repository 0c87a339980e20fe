"""Emerging hot spot analysis: how hot and cold spots change over time.

What ArcGIS Pro's Emerging Hot Spot Analysis and R's sfdep
``emerging_hotspot_analysis`` do, on a GeoDataFrame:

1. a panel of one value per location and time step, from one of three input
   shapes: *long* (a row per location and step), *wide* (a column per step,
   census style) or *point incidents* counted per grid cell and time step
   (cells inside the points' extent that hold no incident count 0);
2. the space-time Getis-Ord Gi* of every location at every step, over its
   spatial neighbours and itself at this step and the k previous steps,
   with binary weights and the mean and standard deviation of the current
   step (see :mod:`analysis.spacetime_gi` for the formula); a step is a
   significant hot (cold) spot where its two-sided p-value is below
   ``alpha`` (with ``fdr``, at most the Benjamini-Hochberg cut-off at
   ``alpha`` within the step) and z > 0 (z < 0);
3. the Mann-Kendall trend test of each location's series of z-scores
   (pymannkendall);
4. one of the 17 ArcGIS categories per location
   (:mod:`analysis.emerging_categories` gives the exact rules).

References: Getis and Ord (1992), Ord and Getis (1995), Mann (1945), Kendall
(1975), Benjamini and Hochberg (1995); Esri, "How Emerging Hot Spot
Analysis works" (ArcGIS Pro); Parry, sfdep (2023).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd

from analysis.emerging_categories import CATEGORY_CODES, CATEGORY_NAMES, classify
from analysis.errors import AnalysisError, EmptyInput, GeometryTypeError, TooFewFeatures
from analysis.grid import GridSpec, derive_cell_size, make_grid, point_coordinates
from analysis.spacetime_gi import mann_kendall, significance_bins, spacetime_gistar
from analysis.weights import WeightsSpec, build_weights, working_geometry

__all__ = [
    "EmergingResult",
    "Panel",
    "emerging_hot_spots",
    "input_shape",
    "parse_time_step",
    "OUTPUT_COLUMNS",
]

#: Columns the analysis adds to each location.
OUTPUT_COLUMNS = (
    "category",
    "category_code",
    "trend_tau",
    "trend_pvalue",
    "n_time_steps",
    "hot_steps",
    "cold_steps",
    "last_gi_zscore",
    "last_gi_bin",
)

_UNITS = {
    "minute": "min",
    "hour": "h",
    "day": "D",
    "week": "W",
    "month": "M",
    "year": "Y",
}
_STEP_RE = re.compile(r"^\s*(\d+)?\s*([a-z]+?)s?\s*$")
_MAX_CELLS_X_STEPS = 50_000_000


@dataclass
class Panel:
    """Values of n locations over T time steps, ready for the analysis."""

    locations: gpd.GeoDataFrame
    values: npt.NDArray[np.float64]
    times: pd.Index
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    default_weights: str | None = None


class _Clock:
    """Seconds spent in each stage, for the job's result and the benchmark."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


@dataclass
class EmergingResult:
    """One row per location (``locations``), per location and step (``slices``), and counts."""

    locations: gpd.GeoDataFrame
    slices: pd.DataFrame
    summary: dict[str, Any]


def parse_time_step(time_step: str) -> tuple[int, str]:
    """``"1 month"``, ``"7 days"``, ``"week"`` -> (count, unit), unit one of minute..year."""
    match = _STEP_RE.match(str(time_step).lower())
    if not match or match.group(2) not in _UNITS:
        raise AnalysisError(
            f"cannot read {time_step!r}: write a count and a unit such as '1 month', "
            f"'7 days' or '6 hours' (units: {', '.join(_UNITS)})",
            field="time_step",
        )
    count = int(match.group(1) or 1)
    if count < 1:
        raise AnalysisError("the count must be at least 1", field="time_step")
    return count, match.group(2)


def _require_columns(gdf: pd.DataFrame, columns: Mapping[str, str]) -> None:
    for field_name, column in columns.items():
        if column not in gdf.columns:
            raise AnalysisError(f"no column {column!r} in the input", field=field_name)


def _require_numeric(gdf: pd.DataFrame, column: str, field_name: str) -> None:
    dtype = gdf[column].dtype
    if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        raise AnalysisError(f"column {column!r} is not numeric ({dtype})", field=field_name)
    nulls = int(gdf[column].isna().sum())
    if nulls:
        raise AnalysisError(
            f"column {column!r} has {nulls} null values; every location needs a value at "
            "every step (fill or drop them first)",
            field=field_name,
        )


def _long_panel(gdf: gpd.GeoDataFrame, location_column: str, time_column: str, value_column: str) -> Panel:
    _require_columns(
        gdf,
        {
            "location_column": location_column,
            "time_column": time_column,
            "value_column": value_column,
        },
    )
    _require_numeric(gdf, value_column, "value_column")
    for name, column in (("location_column", location_column), ("time_column", time_column)):
        if gdf[column].isna().any():
            raise AnalysisError(f"column {column!r} has null values", field=name)
    loc_codes, loc_keys = pd.factorize(gdf[location_column], sort=True)
    time_codes, times = pd.factorize(gdf[time_column], sort=True)
    n, n_steps = len(loc_keys), len(times)
    pair = loc_codes.astype(np.int64) * n_steps + time_codes
    if len(np.unique(pair)) != len(pair):
        dup = gdf.loc[pd.Series(pair).duplicated().to_numpy(), [location_column, time_column]]
        first = dup.iloc[0]
        raise AnalysisError(
            f"{len(dup)} rows repeat a location and time step, e.g. "
            f"{location_column}={first[location_column]!r}, {time_column}={first[time_column]!r}",
            field="time_column",
        )
    if len(pair) != n * n_steps:
        missing = n * n_steps - len(pair)
        raise AnalysisError(
            f"the panel is incomplete: {missing} of {n * n_steps} location and time step "
            f"pairs have no row ({n} locations x {n_steps} steps); every location needs a "
            "row at every step",
            field="time_column",
        )
    values = np.empty((n, n_steps), dtype=np.float64)
    values[loc_codes, time_codes] = gdf[value_column].to_numpy(dtype=np.float64)

    wkb = pd.Series(gdf.geometry.to_wkb(), index=gdf.index)
    if (wkb.groupby(loc_codes).nunique() > 1).any():
        raise AnalysisError(
            "some locations have different geometries in different rows; a location's "
            "geometry must be the same at every step",
            field="location_column",
        )
    first_rows = np.sort(np.unique(loc_codes, return_index=True)[1])
    locations = gdf.iloc[first_rows].drop(columns=[time_column, value_column])
    order = np.argsort(loc_codes[first_rows], kind="stable")
    locations = locations.iloc[order].reset_index(drop=True)
    return Panel(locations, values, pd.Index(times), key=location_column)


def _wide_panel(gdf: gpd.GeoDataFrame, value_columns: Sequence[str]) -> Panel:
    columns = list(value_columns)
    if not columns:
        raise AnalysisError("give the value columns in time order", field="value_columns")
    if len(set(columns)) != len(columns):
        raise AnalysisError("a column is listed twice", field="value_columns")
    for column in columns:
        _require_columns(gdf, {"value_columns": column})
        _require_numeric(gdf, column, "value_columns")
    if "location_id" in gdf.columns:
        raise AnalysisError(
            "the input already has a column named 'location_id'; rename it first",
            field="input_table",
        )
    values = gdf[columns].to_numpy(dtype=np.float64)
    locations = gdf.reset_index(drop=True)
    locations.insert(0, "location_id", np.arange(len(locations), dtype=np.int64))
    return Panel(locations, values, pd.Index(columns, dtype=object), key="location_id")


def _step_indices(times: pd.Series, count: int, unit: str) -> tuple[npt.NDArray[np.int64], pd.DatetimeIndex]:
    """Step of each time, steps starting at the earliest time floored to the unit."""
    if unit in ("month", "year"):
        months = count * (12 if unit == "year" else 1)
        serial = times.dt.year.to_numpy(np.int64) * 12 + times.dt.month.to_numpy(np.int64) - 1
        first = int(serial.min())
        if unit == "year":
            first -= first % 12
        index = (serial - first) // months
        start = pd.Timestamp(year=first // 12, month=first % 12 + 1, day=1, tz=times.dt.tz)
        starts = [start + pd.DateOffset(months=months * i) for i in range(int(index.max()) + 1)]
        return index, pd.DatetimeIndex(starts)
    freq = "D" if unit == "week" else _UNITS[unit]
    delta = pd.Timedelta(count * (7 if unit == "week" else 1), unit=freq)
    start = times.min().floor(freq)
    index = ((times - start) // delta).to_numpy(np.int64)
    return index, pd.DatetimeIndex([start + delta * i for i in range(int(index.max()) + 1)])


def _incident_panel(
    gdf: gpd.GeoDataFrame, time_column: str, time_step: str, grid: Mapping[str, Any]
) -> Panel:
    _require_columns(gdf, {"time_column": time_column})
    count, unit = parse_time_step(time_step)
    spec = GridSpec.parse(grid)
    times = gdf[time_column]
    if not pd.api.types.is_datetime64_any_dtype(times.dtype):
        try:
            times = pd.to_datetime(times)
        except (ValueError, TypeError) as exc:
            raise AnalysisError(
                f"column {time_column!r} does not hold dates or times ({gdf[time_column].dtype})",
                field="time_column",
            ) from exc
    geoms = gdf.geometry
    usable = times.notna().to_numpy() & ~(geoms.isna() | geoms.is_empty).to_numpy()
    if not usable.any():
        raise EmptyInput("no incident has both a point and a time", field="input_table")
    points, crs, warnings = working_geometry(geoms[usable])
    try:
        xy = point_coordinates(points)
    except GeometryTypeError as exc:
        raise GeometryTypeError(str(exc).split(": ", 1)[-1], field="input_table") from exc
    step_index, starts = _step_indices(times[usable].reset_index(drop=True), count, unit)
    n_steps = len(starts)
    derived = spec.cell_size is None
    cell_size = derive_cell_size(xy) if derived else float(spec.cell_size)  # type: ignore[arg-type]
    bounds = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
    cells_grid = make_grid(bounds, cell_size, spec.shape, crs=points.crs)
    if cells_grid.n_cells * n_steps > _MAX_CELLS_X_STEPS:
        raise AnalysisError(
            f"{cells_grid.n_cells} cells x {n_steps} steps is too large; use larger cells or longer steps",
            field="grid.cell_size",
        )
    counts = cells_grid.count(xy, step_index, n_steps)
    cells = cells_grid.cells[["cell_id", "geometry"]].copy()
    cells.insert(1, "count", counts.sum(axis=1))
    info: dict[str, Any] = {
        "incidents": int(usable.sum()),
        "incidents_dropped": int((~usable).sum()),
        "grid": {
            "shape": spec.shape,
            "cell_size": cell_size,
            "cell_size_derived": derived,
            "cells": cells_grid.n_cells,
        },
        "time_step": f"{count} {unit}",
        "crs": crs,
    }
    if warnings:
        info["warnings"] = warnings
    return Panel(
        cells,
        counts.astype(np.float64),
        pd.Index(starts),
        key="cell_id",
        info=info,
        default_weights="distance_band",
    )


def input_shape(
    *,
    location_column: str | None = None,
    time_column: str | None = None,
    value_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    time_step: str | None = None,
    grid: Mapping[str, Any] | None = None,
) -> str:
    """Which input shape the parameters describe: ``"wide"``, ``"incidents"`` or ``"long"``.

    Raises :class:`AnalysisError` naming the parameter that is missing or out of place, so a
    worker can check the parameters before reading any row.
    """
    if value_columns is not None:
        for name, given in (
            ("location_column", location_column),
            ("time_column", time_column),
            ("value_column", value_column),
            ("time_step", time_step),
            ("grid", grid),
        ):
            if given is not None:
                raise AnalysisError(f"wide input (value_columns) takes no {name}", field=name)
        return "wide"
    if grid is not None or time_step is not None:
        for name, given in (("location_column", location_column), ("value_column", value_column)):
            if given is not None:
                raise AnalysisError(f"point incidents are counted, so they take no {name}", field=name)
        for name, given in (("time_column", time_column), ("time_step", time_step)):
            if given is None:
                raise AnalysisError("point incidents need time_column and time_step (and a grid)", field=name)
        return "incidents"
    if location_column is None and time_column is None and value_column is None:
        raise AnalysisError(
            "say how time is laid out: value_columns (one column per step), "
            "location_column + time_column + value_column (one row per location and "
            "step), or time_column + time_step + grid (point incidents)",
            field="value_column",
        )
    for name, given in (
        ("location_column", location_column),
        ("time_column", time_column),
        ("value_column", value_column),
    ):
        if given is None:
            raise AnalysisError("long input needs location_column, time_column and value_column", field=name)
    return "long"


def _build_panel(
    gdf: gpd.GeoDataFrame,
    location_column: str | None,
    time_column: str | None,
    value_column: str | None,
    value_columns: Sequence[str] | None,
    time_step: str | None,
    grid: Mapping[str, Any] | None,
) -> Panel:
    shape = input_shape(
        location_column=location_column,
        time_column=time_column,
        value_column=value_column,
        value_columns=value_columns,
        time_step=time_step,
        grid=grid,
    )
    if shape == "wide":
        assert value_columns is not None
        return _wide_panel(gdf, value_columns)
    if shape == "incidents":
        assert time_column is not None and time_step is not None
        return _incident_panel(gdf, time_column, time_step, grid or {})
    assert location_column and time_column and value_column
    return _long_panel(gdf, location_column, time_column, value_column)


def _check_parameters(
    neighborhood_time_step: int,
    alpha: float,
    min_time_steps: int,
    weights: Mapping[str, Any] | None,
) -> None:
    if isinstance(neighborhood_time_step, bool) or int(neighborhood_time_step) < 0:
        raise AnalysisError("must be a whole number of steps, 0 or more", field="neighborhood_time_step")
    if not 0 < float(alpha) < 1:
        raise AnalysisError("must be between 0 and 1, e.g. 0.05", field="alpha")
    if int(min_time_steps) < 3:
        raise AnalysisError("the trend test needs at least 3 steps", field="min_time_steps")
    transform = WeightsSpec.parse(weights).transform
    if transform is not None and str(transform).upper() != "B":
        raise AnalysisError(
            "the space-time Gi* uses binary weights; leave transform out or set it to 'B'",
            field="weights.transform",
        )


def emerging_hot_spots(
    gdf: gpd.GeoDataFrame,
    *,
    location_column: str | None = None,
    time_column: str | None = None,
    value_column: str | None = None,
    value_columns: Sequence[str] | None = None,
    time_step: str | None = None,
    grid: Mapping[str, Any] | None = None,
    weights: Mapping[str, Any] | None = None,
    neighborhood_time_step: int = 1,
    alpha: float = 0.05,
    fdr: bool = True,
    min_time_steps: int = 10,
    progress: Callable[[float], None] | None = None,
) -> EmergingResult:
    """Emerging hot spot categories of every location (see the module docstring).

    Give ``value_columns`` (wide), or ``location_column``, ``time_column`` and
    ``value_column`` (long), or ``time_column``, ``time_step`` and ``grid``
    (point incidents). Raises :class:`~analysis.errors.AnalysisError` naming
    the parameter at fault. ``progress`` is called with the fraction done (0 to 1).
    """
    report = progress or (lambda fraction: None)
    clock = _Clock()
    _check_parameters(neighborhood_time_step, alpha, min_time_steps, weights)
    if len(gdf) == 0:
        raise EmptyInput("the input has no rows", field="input_table")
    panel = _build_panel(gdf, location_column, time_column, value_column, value_columns, time_step, grid)
    clock.lap("panel")
    n, n_steps = panel.values.shape
    time_field = (
        "value_columns"
        if value_columns is not None
        else "time_step"
        if time_step is not None
        else "time_column"
    )
    if n_steps < int(min_time_steps):
        raise AnalysisError(
            f"only {n_steps} time steps; the analysis needs at least {int(min_time_steps)} "
            "(as ArcGIS asks) for a meaningful trend: use shorter steps, more periods, or "
            "lower min_time_steps",
            field=time_field,
        )
    if n < 3:
        raise TooFewFeatures(f"only {n} locations; Gi* needs at least 3", field="input_table")
    clash = sorted(set(OUTPUT_COLUMNS) & set(panel.locations.columns))
    if clash:
        raise AnalysisError(
            f"the input already has columns named {clash}; rename them first",
            field="input_table",
        )
    k = int(neighborhood_time_step)
    if k >= n_steps:
        raise AnalysisError(
            f"must be smaller than the number of time steps ({n_steps})",
            field="neighborhood_time_step",
        )

    built = build_weights(panel.locations, weights, default_type=panel.default_weights)
    clock.lap("weights")
    report(0.3)
    z, p = spacetime_gistar(panel.values, built.graph.sparse, k)
    bins = significance_bins(z, p, alpha=float(alpha), fdr=bool(fdr))
    clock.lap("gistar")
    report(0.4)
    tau, trend_p, trend = mann_kendall(
        z, alpha=float(alpha), progress=lambda f: report(0.4 + 0.55 * f)
    )
    clock.lap("mann_kendall")
    codes = classify(bins, trend)

    locations = panel.locations.copy()
    locations["category"] = np.array([CATEGORY_NAMES[c] for c in codes], dtype=object)
    locations["category_code"] = codes.astype(np.int16)
    locations["trend_tau"] = tau
    locations["trend_pvalue"] = trend_p
    locations["n_time_steps"] = np.int32(n_steps)
    locations["hot_steps"] = (bins > 0).sum(axis=1).astype(np.int32)
    locations["cold_steps"] = (bins < 0).sum(axis=1).astype(np.int32)
    locations["last_gi_zscore"] = z[:, -1]
    locations["last_gi_bin"] = bins[:, -1].astype(np.int16)

    slices = pd.DataFrame(
        {
            panel.key: np.repeat(locations[panel.key].to_numpy(), n_steps),
            "time_index": np.tile(np.arange(n_steps, dtype=np.int32), n),
            "time": panel.times.take(np.tile(np.arange(n_steps), n)).array,
            "value": panel.values.ravel(),
            "gi_zscore": z.ravel(),
            "gi_pvalue": p.ravel(),
            "gi_bin": bins.ravel().astype(np.int16),
        }
    )

    clock.lap("classify_and_assemble")
    counts = pd.Series(codes).map(CATEGORY_NAMES).value_counts()
    summary: dict[str, Any] = {
        "categories": {name: int(counts.get(name, 0)) for name in CATEGORY_CODES},
        "locations": n,
        "time_steps": n_steps,
        "time_first": str(panel.times[0]),
        "time_last": str(panel.times[-1]),
        "neighborhood_time_step": k,
        "alpha": float(alpha),
        "fdr": bool(fdr),
        "weights": built.describe(),
        "islands": int(len(built.islands)),
        "constant_steps": int((panel.values.std(axis=0) == 0).sum()),
        "crs": built.crs,
        **panel.info,
        "timings_s": clock.laps,
    }
    warnings = [*panel.info.get("warnings", []), *built.warnings]
    if n < 30:
        warnings.append(f"only {n} locations: Gi* z-scores are unreliable below 30")
    if warnings:
        summary["warnings"] = list(dict.fromkeys(warnings))
    report(1.0)
    return EmergingResult(locations, slices, summary)
