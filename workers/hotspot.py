"""``hotspot`` job type: Getis-Ord Gi* hot and cold spots (ArcGIS's Hot Spot Analysis).

Params: ``input_table``, optional ``geometry_column``, ``value_column`` (numeric) or ``grid``
(``{"shape": "square" | "hexagon", "cell_size": number}``: count point incidents per cell),
``weights``, ``permutations`` (999), ``seed``, ``fdr``, ``output_table``, ``overwrite``.
Output: the input's rows (or the grid's cells with ``count``) plus ``gi_zscore``,
``gi_pvalue``, ``gi_psim``, ``gi_bin``, ``n_neighbors``. See docs/job_types/hotspot.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from analysis.hotspot import hotspot
from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.errors import InvalidParams
from geojobs.local_stats import LocalParams, run_local, warm_up_worker
from geojobs.params import ColumnName, GridParams

JOB_TYPE = "hotspot"


class Params(LocalParams):
    """Parameters of ``hotspot``: a value column, or a grid over point incidents."""

    value_column: ColumnName | None = Field(  # type: ignore[assignment]
        default=None, description="Numeric column to analyse; omit it with grid.")
    grid: GridParams | None = Field(
        default=None, description="Count point incidents per cell and analyse the counts.")


EXAMPLE: dict[str, Any] = {
    "input_table": "public.georgia_counties",
    "value_column": "pctpov",
    "weights": {"type": "queen"},
    "permutations": 999,
    "fdr": True,
}

DEMO: list[dict[str, Any]] = [
    {"input_table": "public.georgia_counties", "value_column": "pctpov", "fdr": True,
     "output_table": "results.demo_georgia_poverty_hotspots", "overwrite": True},
]


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Gi* on the layer's values, or on its points counted per grid cell."""
    if (params.value_column is None) == (params.grid is None):
        field = "value_column" if params.value_column is None else "grid"
        raise InvalidParams("give value_column, or grid to count point incidents, not both",
                            field=field)
    grid = params.grid.model_dump(exclude_none=True) if params.grid is not None else None
    return run_local(ctx, params, hotspot, value_column=params.value_column, grid=grid)


def warm_up() -> None:
    """Compile esda's Gi* permutation kernels before the first job."""
    warm_up_worker("hotspot")


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
