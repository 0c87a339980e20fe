"""What Gi* and Local Moran share: checking the input, leaving out nulls, the weights, the summary.

Rows whose value or geometry is missing are left out before the weights are built and come
back with null statistics; islands (features with no neighbour) stay in the global mean and
variance, as in ArcGIS, but get null local statistics because there is no neighbourhood to
test. Fewer than 30 features give a warning, fewer than 3 a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from analysis.errors import AnalysisError, EmptyInput, TooFewFeatures
from analysis.jit import enable_esda_cache
from analysis.weights import SpatialWeights, WeightsSpec, build_weights

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "DEFAULT_SEED",
    "MIN_FEATURES",
    "WARN_FEATURES",
    "MAX_NAMED_ISLANDS",
    "LocalInput",
    "LocalSummary",
    "prepare_input",
    "check_inference",
    "exact_pseudo_p",
    "nullable",
    "Progress",
]

DEFAULT_PERMUTATIONS = 999
DEFAULT_SEED = 12345
MIN_FEATURES = 3
WARN_FEATURES = 30
MAX_NAMED_ISLANDS = 1000
MAX_PERMUTATIONS = 99_999

Progress = Callable[[float], None]
log = logging.getLogger("geojobs.analysis")
enable_esda_cache()


@dataclass
class LocalSummary:
    """What a local-statistic run did, for the job's ``result``."""

    statistic: str
    n_features: int
    n_analysed: int
    n_null_values: int
    n_null_geometries: int
    n_islands: int
    islands: list[Any]
    crs: str | None
    weights: dict[str, Any]
    permutations: int
    seed: int
    fdr: bool
    counts: dict[str, int] = field(default_factory=dict)
    fdr_cutoffs: dict[str, float | None] | None = None
    grid: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy scalars turned into Python ones)."""
        return _plain(asdict(self))


@dataclass
class LocalInput:
    """The rows that take part, their values, and their weights."""

    frame: gpd.GeoDataFrame
    analysed: np.ndarray
    y: np.ndarray
    weights: SpatialWeights
    n_null_values: int
    n_null_geometries: int
    warnings: list[str]

    @property
    def tested(self) -> np.ndarray:
        """Positions (in ``frame``) of analysed rows that have a neighbour."""
        return self.analysed[self.weights.n_neighbors > 0]

    def island_labels(self) -> list[Any]:
        labels = self.frame.index[self.analysed[self.weights.islands]]
        return list(labels[:MAX_NAMED_ISLANDS])


def check_inference(permutations: Any, seed: Any) -> tuple[int, int]:
    """Validate ``permutations`` and ``seed``; errors name the field."""
    if isinstance(permutations, bool) or not isinstance(permutations, int | np.integer) or not (
        0 <= permutations <= MAX_PERMUTATIONS
    ):
        raise AnalysisError(
            f"must be a whole number from 0 (no permutation test) to {MAX_PERMUTATIONS}",
            field="permutations",
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
        0 <= seed < 2**32
    ):
        raise AnalysisError("must be a whole number from 0 to 2**32 - 1", field="seed")
    return int(permutations), int(seed)


def prepare_input(
    gdf: gpd.GeoDataFrame,
    value_column: str,
    *,
    geometry_column: str | None,
    weights: WeightsSpec | Mapping[str, Any] | None,
    default_transform: str,
    default_type: str | None = None,
) -> LocalInput:
    """Check the input, leave out null rows and build the weights on the rest."""
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise AnalysisError("the input must be a GeoDataFrame", field="input_table")
    frame = gdf
    if geometry_column is not None:
        if geometry_column not in gdf.columns or not isinstance(
            gdf[geometry_column].dtype, gpd.array.GeometryDtype
        ):
            raise AnalysisError(f"{geometry_column!r} is not a geometry column of the input",
                                field="geometry_column")
        frame = gdf.set_geometry(geometry_column)
    if value_column not in frame.columns:
        raise AnalysisError(
            f"{value_column!r} is not a column of the input; columns: "
            f"{[c for c in frame.columns if c != frame.geometry.name]}",
            field="value_column",
        )
    series = frame[value_column]
    if not pd.api.types.is_numeric_dtype(series.dtype) or isinstance(
        series.dtype, gpd.array.GeometryDtype
    ):
        raise AnalysisError(f"{value_column!r} holds {series.dtype}, not numbers",
                            field="value_column")
    values = series.to_numpy(dtype=float, na_value=np.nan)
    if np.isinf(values).any():
        raise AnalysisError(f"{value_column!r} holds infinite values", field="value_column")
    geometry = frame.geometry
    arr = geometry.to_numpy()
    null_geometry = shapely.is_missing(arr) | shapely.is_empty(arr)
    null_value = np.isnan(values)
    analysed = np.flatnonzero(~null_value & ~null_geometry)
    warnings: list[str] = []
    n = len(analysed)
    if n == 0:
        raise EmptyInput(f"no feature has both a geometry and a value in {value_column!r}",
                         field="value_column")
    if n < MIN_FEATURES:
        raise TooFewFeatures(
            f"{n} feature(s) have a value; a local statistic needs at least {MIN_FEATURES} "
            f"(and at least {WARN_FEATURES} to be reliable)",
            field="value_column",
        )
    if n < WARN_FEATURES:
        warnings.append(
            f"only {n} features take part; local statistics are unreliable with fewer than "
            f"{WARN_FEATURES}"
        )
    y = values[analysed]
    if np.ptp(y) == 0:
        raise AnalysisError(f"{value_column!r} has the same value for every feature; there is "
                            "no pattern to test", field="value_column")
    sw = build_weights(geometry.iloc[analysed], weights, default_transform=default_transform,
                       default_type=default_type)
    warnings.extend(sw.warnings)
    if len(sw.islands):
        warnings.append(f"{len(sw.islands)} feature(s) have no neighbour (islands) and get null "
                        "statistics")
    return LocalInput(
        frame=frame,
        analysed=analysed,
        y=y,
        weights=sw,
        n_null_values=int((null_value & ~null_geometry).sum()),
        n_null_geometries=int(null_geometry.sum()),
        warnings=warnings,
    )


def exact_pseudo_p(p_sim: np.ndarray, permutations: int) -> np.ndarray:
    """esda's pseudo p-values, (m + 1) / (R + 1), without the float32 rounding of its kernel."""
    return np.rint(np.asarray(p_sim, dtype=float) * (permutations + 1)) / (permutations + 1)


def nullable(values: np.ndarray, positions: np.ndarray, n: int, dtype: str) -> pd.array:
    """A column of length ``n`` holding ``values`` at ``positions`` and nulls elsewhere."""
    out = np.full(n, np.nan)
    out[positions] = values
    if dtype == "Int64":
        arr = pd.array(np.zeros(n, dtype=np.int64), dtype="Int64")
        arr[positions] = np.asarray(values, dtype=np.int64)
        mask = np.ones(n, dtype=bool)
        mask[positions] = False
        arr[mask] = pd.NA
        return arr
    return pd.array(out, dtype=dtype)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
