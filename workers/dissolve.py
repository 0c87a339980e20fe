"""``dissolve`` job type: merge features by attribute values, with aggregates.

Params: ``input_table``, optional ``geometry_column``, ``by`` (columns; empty dissolves all),
``aggregates`` (``{"column": "sum"|"mean"|"min"|"max"|"count"|"first"}``),
``output_table``, ``overwrite``. See docs/jobs.md for the output columns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from analysis.dissolve import dissolve
from geojobs import distributed, worker_cli
from geojobs.context import JobContext
from geojobs.layers import check_output_free, describe_layer, read_layer, write_layer
from geojobs.params import ColumnName, DistributedParams, InputTable

JOB_TYPE = "dissolve"


class Params(DistributedParams):
    """Parameters of ``dissolve``."""

    input_table: InputTable = Field(description="Layer to dissolve, 'schema.table'.")
    geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column; default the table's first one.")
    by: list[ColumnName] = Field(default_factory=list, max_length=32,
                                 description="Columns whose equal values form one feature.")
    aggregates: dict[ColumnName, Literal["sum", "mean", "min", "max", "count", "first"]] = Field(
        default_factory=dict, max_length=100,
        description="Column -> aggregate; gives a column named <agg>_<column>.")


EXAMPLE: dict[str, Any] = {
    "input_table": "public.us_states",
    "by": ["sub_region"],
    "aggregates": {"area": "sum", "state_name": "first"},
}

DEMO: list[dict[str, Any]] = [
    {"input_table": "public.us_states", "by": ["sub_region"],
     "aggregates": {"area": "sum", "state_name": "first", "state_fips": "count"},
     "output_table": "results.demo_us_regions", "overwrite": True},
    {"input_table": "public.nc_counties", "aggregates": {"bir74": "sum", "sid74": "sum"},
     "output_table": "results.demo_north_carolina", "overwrite": True},
]


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Read the layer, dissolve it, write the result table."""
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    for column in params.by:
        layer.require_column(column, field="by")
    for column, how in params.aggregates.items():
        if how in ("sum", "mean"):
            layer.require_numeric(column, field=f"aggregates.{column}")
        else:
            layer.require_column(column, field="aggregates")
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)

    columns = list(dict.fromkeys([*params.by, *params.aggregates, *([layer.key] if layer.key else [])]))
    # `first` without a key means "in row order", which only one process reading the whole
    # table has: such a dissolve is not partitioned
    ordered = layer.key is not None or "first" not in params.aggregates.values()
    decision = distributed.decide(ctx, layer, params.scheduler) if ordered else None
    if decision is not None and decision.cluster is not None:
        with decision.cluster as cluster:
            return cluster.dissolve(params.by, dict(params.aggregates), layer.key, columns,
                                    output, overwrite=params.overwrite)
    gdf = read_layer(ctx.conn, layer, columns)
    ctx.progress(0.1)
    result, summary = dissolve(gdf, params.by, params.aggregates, key=layer.key,
                               progress=lambda f: ctx.progress(0.1 + 0.8 * f))
    rows = write_layer(ctx.conn, result, output, srid=layer.srid, overwrite=params.overwrite)
    return {
        "output_table": output,
        "rows": rows,
        "input_features": len(gdf),
        "srid": layer.srid,
        **summary.to_dict(),
        **({"warnings": [*decision.warnings, *summary.warnings]}
           if decision is not None and decision.warnings else {}),
    }


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
