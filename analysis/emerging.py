"""Emerging hot spot analysis: how hot and cold spots change over time.

What ArcGIS Pro's Emerging Hot Spot Analysis and R's sfdep
``emerging_hotspot_analysis`` do, on a GeoDataFrame:

1. a panel of one value per location and time step, from one of three input
   shapes: *long* (a row per location and step), *wide* (a column per step,
   census style) or *point incidents* counted per grid cell and time step
   (built by :mod:`analysis.emerging_panel`);
2. the space-time Getis-Ord Gi* of every location at every step, over its
   spatial neighbours and itself at this step and the k previous steps,
   with binary weights and the mean and standard deviation of the current
   step (see :mod:`analysis.spacetime_gi` for the formula); a step is a
   significant hot (cold) spot where its two-sided p-value is below
   ``alpha`` (with ``fdr``, at most the Benjamini-Hochberg cut-off at
   ``alpha`` within the step) and z > 0 (z < 0);
3. the Mann-Kendall trend test of each location's series of z-scores
   (:func:`analysis.spacetime_gi.mann_kendall`);
4. one of the 17 ArcGIS categories per location
   (:mod:`analysis.emerging_categories` gives the exact rules).

References: Getis and Ord (1992), Ord and Getis (1995), Mann (1945), Kendall
(1975), Benjamini and Hochberg (1995); Esri, "How Emerging Hot Spot
Analysis works" (ArcGIS Pro); Parry, sfdep (2023).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from analysis.emerging_categories import CATEGORY_CODES, CATEGORY_NAMES, classify
from analysis.emerging_panel import Panel, build_panel, input_shape, parse_time_step
from analysis.errors import AnalysisError, EmptyInput, TooFewFeatures
from analysis.spacetime_gi import mann_kendall, significance_bins, spacetime_gistar
from analysis.summary import FLATTEN, Summary
from analysis.weights import WeightsSpec, build_weights

__all__ = [
    "EmergingResult",
    "EmergingSummary",
    "Panel",
    "emerging_hot_spots",
    "emerging_statistic",
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
class EmergingSummary(Summary):
    """What an emerging hot spot run found and chose, for the job's ``result``."""

    categories: dict[str, int]
    locations: int
    time_steps: int
    time_first: str
    time_last: str
    neighborhood_time_step: int
    alpha: float
    fdr: bool
    weights: dict[str, Any]
    islands: int
    constant_steps: int
    crs: str | None
    panel: dict[str, Any] = field(default_factory=dict, metadata=FLATTEN)
    """How the panel was built (per input shape, e.g. ``grid``); its keys go to the top level."""
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class EmergingResult:
    """One row per location (``locations``), per location and step (``slices``), and counts."""

    locations: gpd.GeoDataFrame
    slices: pd.DataFrame
    summary: EmergingSummary


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
    clock = _Clock()
    _check_parameters(neighborhood_time_step, alpha, min_time_steps, weights)
    if len(gdf) == 0:
        raise EmptyInput("the input has no rows", field="input_table")
    panel = build_panel(gdf, location_column, time_column, value_column, value_columns, time_step, grid)
    clock.lap("panel")
    time_field = (
        "value_columns"
        if value_columns is not None
        else "time_step"
        if time_step is not None
        else "time_column"
    )
    return emerging_statistic(
        panel,
        weights=weights,
        neighborhood_time_step=neighborhood_time_step,
        alpha=alpha,
        fdr=fdr,
        min_time_steps=min_time_steps,
        time_field=time_field,
        progress=progress,
        timings=clock.laps,
    )


def emerging_statistic(
    panel: Panel,
    *,
    weights: Mapping[str, Any] | None = None,
    neighborhood_time_step: int = 1,
    alpha: float = 0.05,
    fdr: bool = True,
    min_time_steps: int = 10,
    time_field: str = "time_column",
    progress: Callable[[float], None] | None = None,
    timings: Mapping[str, float] | None = None,
) -> EmergingResult:
    """Space-time Gi*, Mann-Kendall trend and category of every location of ``panel``.

    ``time_field`` is the parameter named when there are too few steps; ``timings`` are
    seconds already spent (e.g. building the panel), reported first in ``timings_s``.
    """
    report = progress or (lambda fraction: None)
    clock = _Clock()
    clock.laps.update(timings or {})
    _check_parameters(neighborhood_time_step, alpha, min_time_steps, weights)
    n, n_steps = panel.values.shape
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
    warnings = [*panel.info.get("warnings", []), *built.warnings]
    if n < 30:
        warnings.append(f"only {n} locations: Gi* z-scores are unreliable below 30")
    summary = EmergingSummary(
        categories={name: int(counts.get(name, 0)) for name in CATEGORY_CODES},
        locations=n,
        time_steps=n_steps,
        time_first=str(panel.times[0]),
        time_last=str(panel.times[-1]),
        neighborhood_time_step=k,
        alpha=float(alpha),
        fdr=bool(fdr),
        weights=built.describe(),
        islands=int(len(built.islands)),
        constant_steps=int((panel.values.std(axis=0) == 0).sum()),
        crs=built.crs,
        panel={key: value for key, value in panel.info.items() if key != "warnings"},
        timings_s=clock.laps,
        warnings=list(dict.fromkeys(warnings)),
    )
    report(1.0)
    return EmergingResult(locations, slices, summary)
