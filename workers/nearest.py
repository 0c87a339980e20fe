"""``nearest`` job type: the k nearest features of one layer to each feature of another.

Params: ``input_table``, ``near_table`` (may be the same table: a feature is then never its own
neighbour), ``k``, ``search_radius``, ``method`` (``planar``/``geodesic``), ``near_filter``
(structured filter), ``lines``, ``output_table``, ``overwrite``. Output: every input attribute
and geometry, one row per input feature and neighbour rank, with ``near_id``, ``near_rank``,
``near_dist``, ``near_angle`` (and ``near_line``); see docs/job_types/nearest.md.

Engine: Shapely's STRtree in the worker (``analysis.nearest``; a KD-tree when both layers are
points); bench/README.md has the measurement against PostGIS ``LATERAL ... ORDER BY <-> LIMIT
k``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from analysis.nearest import default_method, nearest
from geojobs import distributed, worker_cli
from geojobs.context import JobContext
from geojobs.errors import InvalidInput
from geojobs.filters import FilterSpec, filter_clause
from geojobs.layers import Layer, check_output_free, describe_layer, read_layer, write_layer
from geojobs.params import ColumnName, DistributedParams, InputTable

JOB_TYPE = "nearest"


class Params(DistributedParams):
    """Parameters of ``nearest``."""

    input_table: InputTable = Field(description="Features to find neighbours for.")
    near_table: InputTable = Field(description="Candidate neighbours; may be input_table.")
    geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of input_table; default its first one.")
    near_geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of near_table; default its first one.")
    near_key: ColumnName | None = Field(
        default=None, description="Unique column of near_table reported as near_id; default "
                                  "its primary key.")
    k: int = Field(default=1, ge=1, le=1000, description="Neighbours per input feature.")
    search_radius: float | None = Field(
        default=None, ge=0, description="Only neighbours this close: CRS units (planar) or "
                                        "metres (geodesic).")
    method: Literal["planar", "geodesic"] | None = Field(
        default=None, description="Default: geodesic for longitude/latitude, else planar.")
    near_filter: FilterSpec | None = Field(
        default=None, description="Only these features of near_table: [{column, op, value}, "
                                  "...] joined by AND, or {where: [...], bbox, bbox_srid}.")
    lines: bool = Field(default=False, description="Also write near_line, the shortest line.")

    @field_validator("search_radius")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite distance")
        return value


EXAMPLE: dict[str, Any] = {
    "input_table": "public.georgia_counties",
    "near_table": "public.georgia_counties",
    "k": 3,
    "lines": True,
}

DEMO: list[dict[str, Any]] = [
    {"input_table": "public.georgia_counties", "near_table": "public.georgia_counties", "k": 3,
     "lines": True, "output_table": "results.demo_georgia_neighbours", "overwrite": True},
    {"input_table": "public.nc_counties", "near_table": "public.us_states", "k": 2,
     "near_filter": [{"column": "state_name", "op": "!=", "value": "North Carolina"}],
     "output_table": "results.demo_nc_nearest_states", "overwrite": True},
]


def _near_key(layer: Layer, requested: str | None) -> str:
    if requested is not None:
        return layer.require_column(requested, field="near_key")
    if layer.key is None:
        raise InvalidInput(
            f"{layer.qualified_name} has no single-column primary key to report as near_id; "
            "name a unique column in near_key", field="near_key")
    return layer.key


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Read both layers, find the neighbours, write the result table."""
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    near_layer = describe_layer(ctx.conn, params.near_table, field="near_table",
                                geometry_column=params.near_geometry_column,
                                geometry_field="near_geometry_column")
    key = _near_key(near_layer, params.near_key)
    same = (layer.qualified_name, layer.geometry_column) == (
        near_layer.qualified_name, near_layer.geometry_column)
    where = filter_clause(ctx.conn, params.near_filter, near_layer, field="near_filter")
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)

    decision = distributed.decide(ctx, layer, params.scheduler)
    if decision.cluster is not None:
        with decision.cluster as cluster:
            near = read_layer(ctx.conn, near_layer, [key], where=where)
            ctx.progress(0.3)
            method = params.method or default_method(near.crs)
            options = {"k": params.k, "search_radius": params.search_radius, "method": method,
                       "near_key": key, "input_key": key if same else None,
                       "same_table": same, "lines": params.lines}
            summary = cluster.nearest(near, options, output, overwrite=params.overwrite)
            return {**summary, "k": params.k, "method": method,
                    "units": "metres" if method == "geodesic" else "CRS units",
                    "same_table": same, "engine": "strtree", "srid": layer.srid}

    inputs = read_layer(ctx.conn, layer)
    ctx.progress(0.2)
    near = read_layer(ctx.conn, near_layer, [key], where=where)
    ctx.progress(0.3)
    method = params.method or default_method(inputs.crs)
    result = nearest(inputs, near, k=params.k, search_radius=params.search_radius,
                     method=method, near_key=key, input_key=key if same else None,
                     same_table=same, lines=params.lines)
    ctx.progress(0.7)
    input_features, near_features = len(inputs), len(near)
    del inputs, near  # the result holds what it needs: their memory is the write's
    rows = write_layer(ctx.conn, result, output, srid=layer.srid, overwrite=params.overwrite)
    matched = result["near_rank"].notna()
    dist = result["near_dist"].dropna()
    return {
        "output_table": output,
        "rows": rows,
        "input_features": input_features,
        "near_features": near_features,
        "without_neighbour": int((~matched).sum()),
        "k": params.k,
        "method": method,
        "units": "metres" if method == "geodesic" else "CRS units",
        "same_table": same,
        "max_near_dist": float(dist.max()) if len(dist) else None,
        "engine": "strtree",
        "srid": layer.srid,
        "warnings": decision.warnings,
    }


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
