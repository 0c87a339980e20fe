"""What the ``clip`` and ``erase`` job types share: their parameters and their run.

Both read the input layer and the (optionally filtered) overlay layer by binary COPY, run
:func:`analysis.overlay.clip` or :func:`~analysis.overlay.erase` in the worker (the engine
chosen by measurement, see docs/job_types/clip.md) and write the result by binary COPY.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pydantic import Field

from analysis.overlay import OverlayResult, OverlaySummary, clip, combine_summaries, erase
from geojobs import distributed
from geojobs import layer_sql as q
from geojobs.context import JobContext
from geojobs.filters import FilterSpec, filter_clause
from geojobs.layers import (
    Layer,
    check_output_free,
    describe_layer,
    iter_layer,
    read_layer,
    write_layer,
)
from geojobs.params import ColumnName, DistributedParams, InputTable

__all__ = ["OverlayParams", "output_geometry_type", "run_overlay", "geometry_type_for", "overlay_warnings"]

_FAMILY = {0: "MultiPoint", 1: "MultiLineString", 2: "MultiPolygon"}
_DIMENSION = {
    "Point": 0,
    "MultiPoint": 0,
    "LineString": 1,
    "MultiLineString": 1,
    "Polygon": 2,
    "MultiPolygon": 2,
}
_BLOCK_ROWS = 65_536
"""Input rows overlaid at a time."""
_TYPE_NAMES = ("Point", "LineString", "LinearRing", "Polygon", "MultiPoint", "MultiLineString",
               "MultiPolygon", "GeometryCollection")
"""OGC names by shapely type id."""


class OverlayParams(DistributedParams):
    """Parameters common to clip and erase (the overlay layer's names differ per type)."""

    input_table: InputTable = Field(description="Layer to cut, 'schema.table'.")
    geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of the input; default its first one."
    )


def output_geometry_type(layer: Layer, result: OverlayResult) -> str:
    """The typed output column: the Multi* of the input's dimension, or Point for points.

    Clipping a polygon can split it, so a Polygon input needs a MultiPolygon column; a point
    is never split.  An input of mixed dimensions keeps an untyped ``Geometry`` column.
    """
    ids = np.unique(shapely.get_type_id(result.frame.geometry.array))  # one C pass, no strings
    return geometry_type_for(layer, {_TYPE_NAMES[i] for i in ids.tolist() if i >= 0})


def geometry_type_for(layer: Layer, types: set[str]) -> str:
    """:func:`output_geometry_type` from the set of geometry types of the result."""
    types = set(types)
    if not types and layer.geometry_type in _DIMENSION:
        types = {layer.geometry_type}
    if types == {"Point"} and layer.geometry_type in ("Point", "Geometry", None):
        return "Point"
    dims = {_DIMENSION.get(t, -1) for t in types}
    return _FAMILY.get(dims.pop(), "Geometry") if len(dims) == 1 else "Geometry"


def run_overlay(
    ctx: JobContext,
    how: Literal["clip", "erase"],
    params: OverlayParams,
    *,
    other_table: str,
    other_geometry_column: str | None,
    other_filter: FilterSpec | None,
) -> dict[str, Any]:
    """Read both layers, overlay them in the worker, write the result table."""
    table_field, column_field, filter_field = (
        f"{how}_table",
        f"{how}_geometry_column",
        f"{how}_filter",
    )
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    other = describe_layer(
        ctx.conn,
        other_table,
        field=table_field,
        geometry_column=other_geometry_column,
        geometry_field=column_field,
    )
    where = filter_clause(ctx.conn, other_filter, other, field=filter_field)
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)

    decision = distributed.decide(ctx, layer, params.scheduler)
    if decision.cluster is not None:
        with decision.cluster as cluster:
            rows, summary = cluster.overlay(
                how, other, where, output, overwrite=params.overwrite,
                geometry_type=lambda kinds: geometry_type_for(layer, kinds))
            return {"output_table": output, "rows": rows, "srid": layer.srid,
                    **summary.to_dict(), "engine": "shapely", "dask": cluster.about(),
                    "warnings": [*cluster.warnings,
                                 *overlay_warnings(how, summary, other_filter is not None)]}

    mask = read_layer(ctx.conn, other, columns=[], where=where)
    row = ctx.conn.execute(q.ROW_ESTIMATE, {"schema": layer.schema, "name": layer.name}).fetchone()
    expected = max(int(row[0]) if row else 0, 1)
    ctx.progress(0.05)
    operation = clip if how == "clip" else erase
    unions: dict[tuple[int, ...], Any] = {}
    frames: list[gpd.GeoDataFrame] = []
    summaries: list[OverlaySummary] = []
    done = 0

    def collect(future: Future[OverlayResult]) -> None:
        nonlocal done
        part = future.result()
        frames.append(part.frame)
        summaries.append(part.summary)
        done += part.summary.input_features
        ctx.progress(0.05 + 0.8 * min(done / expected, 1.0))

    # The input streams through the overlay a block at a time: the whole input is never held
    # beside the result, and one block is overlaid (GEOS, without the GIL) while the next is
    # read. One block at a time in the overlay thread, so the unions of overlay features,
    # made once and shared by the blocks, are never touched by two threads.
    with ThreadPoolExecutor(1) as overlay:
        pending: Future[OverlayResult] | None = None
        for block in iter_layer(ctx.conn, layer, chunk_rows=_BLOCK_ROWS):
            running = overlay.submit(operation, block, mask, field=table_field, unions=unions)
            del block
            if pending is not None:
                collect(pending)
            pending = running
        assert pending is not None  # iter_layer yields at least one (maybe empty) block
        collect(pending)
    result = OverlayResult(
        gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
        if len(frames) > 1 else frames[0], combine_summaries(summaries))
    frames.clear()  # the blocks' frames, now copied into the result
    rows = write_layer(
        ctx.conn,
        result.frame,
        output,
        srid=layer.srid,
        overwrite=params.overwrite,
        geometry_type=output_geometry_type(layer, result),
    )
    summary = result.summary
    return {
        "output_table": output,
        "rows": rows,
        "srid": layer.srid,
        **summary.to_dict(),
        "engine": "shapely",
        "warnings": [*decision.warnings,
                     *overlay_warnings(how, result.summary, other_filter is not None)],
    }


def overlay_warnings(how: str, s: OverlaySummary, filtered: bool) -> list[str]:
    """The warnings of a clip or erase result, from its summary."""
    notes = []
    if s.overlay_features == 0:
        selected = "the filter selected no feature of" if filtered else "there is no feature in"
        notes.append(f"{selected} the {how} layer")
    if s.repaired:
        notes.append(f"{s.repaired} invalid input geometries were repaired with make_valid")
    if s.collapsed:
        notes.append(f"{s.collapsed} invalid input geometries collapsed when repaired; skipped")
    if s.skipped_null or s.skipped_empty:
        notes.append(f"{s.skipped_null + s.skipped_empty} null or empty input geometries skipped")
    if s.overlay_repaired:
        notes.append(f"{s.overlay_repaired} invalid {how} geometries were repaired")
    return notes
