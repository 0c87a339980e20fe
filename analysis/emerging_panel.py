"""The panel of an emerging hot spot analysis: one value per location and time step.

It is built from one of three input shapes: *long* (a row per location and step), *wide* (a
column per step, census style) or *point incidents* counted per grid cell and time step with
:func:`analysis.grid.count_points` (cells inside the points' extent that hold no incident
count 0). :mod:`analysis.emerging` computes the statistic on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pandas as pd

from analysis.errors import AnalysisError, EmptyInput, GeometryTypeError
from analysis.grid import GridSpec, count_points

__all__ = ["Panel", "build_panel", "input_shape", "parse_time_step"]

_UNITS = {
    "minute": "min",
    "hour": "h",
    "day": "D",
    "week": "W",
    "month": "M",
    "year": "Y",
}
_STEP_RE = re.compile(r"^\s*(\d+)?\s*([a-z]+?)s?\s*$")



@dataclass
class Panel:
    """Values of n locations over T time steps, ready for the analysis."""

    locations: gpd.GeoDataFrame
    values: npt.NDArray[np.float64]
    times: pd.Index
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    default_weights: str | None = None


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
    step_index, starts = _step_indices(times[usable].reset_index(drop=True), count, unit)
    try:
        counted = count_points(geoms[usable], spec, step_index, len(starts))
    except GeometryTypeError as exc:
        raise GeometryTypeError(str(exc).split(": ", 1)[-1], field="input_table") from exc
    grid_info = counted.info
    info: dict[str, Any] = {
        "incidents": int(usable.sum()),
        "incidents_dropped": int((~usable).sum()),
        "grid": {
            "shape": grid_info["shape"],
            "cell_size": grid_info["cell_size"],
            "cell_size_derived": grid_info["cell_size_derived"],
            "cells": grid_info["n_cells"],
        },
        "time_step": f"{count} {unit}",
        "crs": grid_info["crs"],
    }
    if grid_info["warnings"]:
        info["warnings"] = grid_info["warnings"]
    return Panel(
        counted.cells,
        counted.counts.astype(np.float64),
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


def build_panel(
    gdf: gpd.GeoDataFrame,
    location_column: str | None,
    time_column: str | None,
    value_column: str | None,
    value_columns: Sequence[str] | None,
    time_step: str | None,
    grid: Mapping[str, Any] | None,
) -> Panel:
    """The (locations, steps) panel of one of the three input shapes (see :func:`input_shape`)."""
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
