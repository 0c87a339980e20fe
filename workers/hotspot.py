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
from pyproj import CRS

from analysis.grid import GridSpec
from analysis.hotspot import hotspot
from geojobs import distributed, worker_cli
from geojobs.context import JobContext
from geojobs.errors import InvalidParams
from geojobs.layers import check_output_free, describe_layer, output_srid, write_layer
from geojobs.local_stats import LocalParams, run_local, warm_up_worker
from geojobs.params import ColumnName, DistributedParams, GridParams

JOB_TYPE = "hotspot"


class Params(LocalParams, DistributedParams):
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
    if grid is not None and grid.get("cell_size") is not None:
        result = run_partitioned(ctx, params, grid)
        if result is not None:
            return result
    return run_local(ctx, params, hotspot, value_column=params.value_column, grid=grid)


def run_partitioned(ctx: JobContext, params: Params, grid: dict[str, Any]) -> dict[str, Any] | None:
    """Incidents counted per cell on the Dask cluster, Gi* on the cell table here; None when
    the job does not run partitioned (no scheduler, a small or geographic input)."""
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    if CRS.from_user_input(layer.srid).is_geographic:
        return None  # the cells are made in UTM: the single path projects every point first
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)
    decision = distributed.decide(ctx, layer, params.scheduler)
    if decision.cluster is None:
        return None
    with decision.cluster as cluster:
        counted, _ = cluster.count_points(GridSpec.parse(grid))
        out, summary = hotspot(
            counted.cells, None, weights=params.weights.model_dump(exclude_none=True),
            permutations=params.permutations, seed=params.seed, fdr=params.fdr, grid=grid,
            counted=counted, progress=lambda f: ctx.progress(0.5 + 0.4 * f))
        out, srid = output_srid(out, layer, counted.cells.crs)
        rows = write_layer(ctx.conn, out, output, srid=srid, overwrite=params.overwrite)
        result = {"output_table": output, "rows": rows, "srid": srid, **summary.to_dict(),
                  "dask": {"scheduler": cluster.address, "workers": len(cluster.workers),
                           "partitions": len(cluster.tiles), "seconds": dict(cluster.timings)}}
        result["warnings"] = [*cluster.warnings, *result.get("warnings", [])]
        return result


def warm_up() -> None:
    """Compile esda's Gi* permutation kernels before the first job."""
    warm_up_worker("hotspot")


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
