"""``hotspot_timeseries`` job type: emerging hot spot analysis (ArcGIS Pro's 17 categories).

Space-time Getis-Ord Gi* per location and time step, the Mann-Kendall trend of each
location's z-scores and the category of each location; see :mod:`analysis.emerging` and
docs/job_types/hotspot_timeseries.md. Three input shapes: long (``location_column``,
``time_column``, ``value_column``), wide (``value_columns``) or point incidents
(``time_column``, ``time_step``, ``grid``).
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
from pydantic import Field

from analysis.emerging import emerging_hot_spots, input_shape, parse_time_step
from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.errors import InvalidInput, InvalidParams
from geojobs.layers import (
    check_output_free,
    describe_layer,
    output_srid,
    read_layer,
    write_layer,
)
from geojobs.params import (
    BinaryWeightsParams,
    ColumnName,
    GridParams,
    InputTable,
    OutputParams,
    OutputTable,
)

JOB_TYPE = "hotspot_timeseries"

_TIME_TYPES = {"timestamp", "timestamptz", "date"}


class Params(OutputParams):
    """Parameters of ``hotspot_timeseries``."""

    input_table: InputTable = Field(description="Layer to analyse, 'schema.table'.")
    geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column; default the table's first one."
    )
    location_column: ColumnName | None = Field(
        default=None, description="Long input: the column naming each location."
    )
    time_column: ColumnName | None = Field(
        default=None, description="Long input: the time step; incidents: when it happened."
    )
    value_column: ColumnName | None = Field(default=None, description="Long input: the value.")
    value_columns: list[ColumnName] | None = Field(
        default=None, min_length=1, max_length=1000,
        description="Wide input: one numeric column per time step, in time order.",
    )  # fmt: skip
    time_step: str | None = Field(
        default=None, max_length=40, description="Incidents: step length, e.g. '1 month'."
    )
    grid: GridParams | None = Field(default=None, description="Incidents: the cells.")
    weights: BinaryWeightsParams | None = Field(default=None, description="Spatial neighbours.")
    neighborhood_time_step: int = Field(
        default=1, ge=0, le=100, description="Previous time steps in each neighbourhood (k)."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level.")
    fdr: bool = Field(default=True, description="Benjamini-Hochberg correction per step.")
    min_time_steps: int = Field(
        default=10, ge=3, le=100_000, description="Fail with fewer time steps than this."
    )
    slices_table: OutputTable | None = Field(
        default=None, description="Also write one row per location and time step here."
    )


EXAMPLE: dict[str, Any] = {
    "input_table": "public.us_income",
    "value_columns": [f"y{year}" for year in range(1990, 2010)],
    "output_table": "results.us_income_trends",
}

DEMO: list[dict[str, Any]] = [
    {
        "input_table": "public.us_income",
        "value_columns": [f"y{year}" for year in range(1929, 2010)],
        "output_table": "results.demo_us_income_trends",
        "slices_table": "results.demo_us_income_slices",
        "overwrite": True,
    },
]


def _check_columns(layer: Any, params: Params, shape: str) -> None:
    if shape == "wide":
        for column in params.value_columns or []:
            layer.require_numeric(column, field="value_columns")
    elif shape == "long":
        assert params.location_column and params.time_column and params.value_column
        layer.require_column(params.location_column, field="location_column")
        layer.require_column(params.time_column, field="time_column")
        layer.require_numeric(params.value_column, field="value_column")
    else:
        assert params.time_column and params.time_step
        layer.require_column(params.time_column, field="time_column")
        if layer.columns[params.time_column] not in _TIME_TYPES:
            raise InvalidInput(
                f"column {params.time_column!r} of {layer.qualified_name} is "
                f"{layer.type_names[params.time_column]}, not a date or timestamp",
                field="time_column",
            )
        parse_time_step(params.time_step)
        if layer.geometry_type not in (None, "Point", "Geometry"):
            raise InvalidInput(
                f"incidents must be points; {layer.qualified_name} holds {layer.geometry_type}",
                field="input_table",
            )


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Read the layer, run the emerging hot spot analysis, write the result table(s)."""
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    shape = input_shape(
        location_column=params.location_column,
        time_column=params.time_column,
        value_column=params.value_column,
        value_columns=params.value_columns,
        time_step=params.time_step,
        grid=params.grid.model_dump() if params.grid else None,
    )
    _check_columns(layer, params, shape)
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)
    if params.slices_table is not None:
        if params.slices_table == output:
            raise InvalidParams("params.slices_table: must differ from output_table")
        check_output_free(
            ctx.conn, params.slices_table, overwrite=params.overwrite, field="slices_table"
        )

    columns = [params.time_column] if shape == "incidents" and params.time_column else None
    gdf = read_layer(ctx.conn, layer, columns)
    ctx.progress(0.1)
    weights = params.weights.model_dump(exclude_none=True) if params.weights else None
    result = emerging_hot_spots(
        gdf,
        location_column=params.location_column,
        time_column=params.time_column,
        value_column=params.value_column,
        value_columns=params.value_columns,
        time_step=params.time_step,
        grid=params.grid.model_dump(exclude_none=True) if params.grid else None,
        weights=weights,
        neighborhood_time_step=params.neighborhood_time_step,
        alpha=params.alpha,
        fdr=params.fdr,
        min_time_steps=params.min_time_steps,
        progress=lambda f: ctx.progress(0.1 + 0.75 * f),
    )
    locations, srid = output_srid(result.locations, layer, gdf.crs)
    rows = write_layer(ctx.conn, locations, output, srid=srid, overwrite=params.overwrite)
    ctx.progress(0.92)
    slice_rows = None
    if params.slices_table is not None:
        key = result.slices.columns[0]
        geometry = locations.set_index(key).geometry
        slices = gpd.GeoDataFrame(
            result.slices,
            geometry=geometry.reindex(result.slices[key]).to_numpy(),
            crs=locations.crs,
        )
        slice_rows = write_layer(
            ctx.conn,
            slices,
            params.slices_table,
            srid=srid,
            overwrite=params.overwrite,
            field="slices_table",
        )
    return {
        "output_table": output,
        "rows": rows,
        "slices_table": params.slices_table,
        "slice_rows": slice_rows,
        "input_shape": shape,
        "input_rows": len(gdf),
        "srid": srid,
        **result.summary.to_dict(),
    }


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
