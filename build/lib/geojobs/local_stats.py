"""What the ``hotspot`` and ``outlier`` job types share: parameters and the read-run-write step.

Parameters are validated by pydantic before any work (errors name ``params.<field>``); the
analysis then checks what needs the data (a knn ``k`` below the number of features, a distance
band that leaves every feature alone) and raises :class:`~analysis.errors.AnalysisError` naming
the field. Features are named by the input table's primary key in ``result.islands``.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import geopandas as gpd
import pandas as pd
from pydantic import Field

from analysis.local_input import DEFAULT_PERMUTATIONS, DEFAULT_SEED, MAX_PERMUTATIONS, LocalSummary
from analysis.warmup import warm_up
from geojobs.context import JobContext
from geojobs.layers import check_output_free, describe_layer, read_layer, write_layer
from geojobs.params import ColumnName, InputTable, JobParams, OutputParams

__all__ = ["WeightsParams", "GridParams", "LocalParams", "run_local", "warm_up_worker"]


class WeightsParams(JobParams):
    """``weights``: how neighbours are defined; every key optional (defaults per geometry)."""

    type: Literal["queen", "rook", "knn", "distance_band"] | None = Field(
        default=None, description="Default: queen for polygons, distance_band otherwise.")
    k: int | None = Field(default=None, ge=1, le=1000, description="knn: neighbours (8).")
    threshold: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="distance_band: distance in the projected CRS's units; default the "
                    "smallest that gives every feature a neighbour.")
    transform: Literal["B", "R"] | None = Field(
        default=None, description="B binary (hotspot default) or R row-standardised "
                                  "(outlier default).")


class GridParams(JobParams):
    """``grid``: count point incidents per cell and analyse the counts."""

    shape: Literal["square", "hexagon"] = "square"
    cell_size: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="Distance between adjacent cell centres; default derived from the "
                    "points' spacing and recorded in result.grid.")


class LocalParams(OutputParams):
    """Parameters of both local statistics."""

    input_table: InputTable = Field(description="Layer to analyse, 'schema.table'.")
    geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column; default the table's first one.")
    value_column: ColumnName = Field(description="Numeric column to analyse.")
    weights: WeightsParams = Field(default_factory=WeightsParams)
    permutations: int = Field(default=DEFAULT_PERMUTATIONS, ge=0, le=MAX_PERMUTATIONS,
                              description="Conditional permutations; 0 turns them off.")
    seed: int = Field(default=DEFAULT_SEED, ge=0, lt=2**32,
                      description="Seed of the permutations: a re-run gives the same numbers.")
    fdr: bool = Field(default=False, description="Benjamini-Hochberg false discovery rate.")


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: the rows of a COPY (tuples of numbers and bytes)
    hold no reference cycle, and rescanning a million of them costs a third of the read."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


Analysis = Callable[..., tuple[gpd.GeoDataFrame, LocalSummary]]


def run_local(ctx: JobContext, params: LocalParams, analysis: Analysis, *,
              value_column: str | None, **options: Any) -> dict[str, Any]:
    """Read the layer, run ``analysis`` on it, write the result table; return the result."""
    layer = describe_layer(ctx.conn, params.input_table, geometry_column=params.geometry_column)
    if value_column is not None:
        layer.require_numeric(value_column, field="value_column")
    output = ctx.output_table(params.output_table)
    check_output_free(ctx.conn, output, overwrite=params.overwrite)

    # incidents counted on a grid need their points only; features keep every attribute
    with _no_gc():
        gdf = read_layer(ctx.conn, layer, [] if value_column is None else None)
    if layer.key is not None and value_column is not None:
        # islands are named by the table's key in the result
        gdf.index = pd.Index(gdf[layer.key].to_numpy(), name=None)
    ctx.progress(0.1)
    out, summary = analysis(
        gdf, value_column,
        weights=params.weights.model_dump(exclude_none=True),
        permutations=params.permutations, seed=params.seed, fdr=params.fdr,
        progress=lambda f: ctx.progress(0.1 + 0.8 * f), **options,
    )
    for message in summary.warnings:
        ctx.log.warning("job %s: %s", ctx.job_id, message)
    srid = layer.srid
    if out.crs is not None and not out.crs.equals(gdf.crs):
        # grid cells are made in the projected CRS the distances were measured in
        epsg = out.crs.to_epsg()
        if epsg is None:
            out = out.to_crs(gdf.crs)
        else:
            srid = epsg
    with _no_gc():
        rows = write_layer(ctx.conn, out, output, srid=srid, overwrite=params.overwrite)
    ctx.progress(1.0)
    return {"output_table": output, "rows": rows, "srid": srid, **summary.to_dict()}


def warm_up_worker(job_type: Literal["hotspot", "outlier"]) -> None:
    """Compile esda's permutation kernels before claiming jobs (then freeze what is loaded
    out of the garbage collector's scans), unless
    ``GEOJOBS_JIT_WARMUP=0`` (e.g. a worker that will only see ``permutations: 0``)."""
    if os.environ.get("GEOJOBS_JIT_WARMUP", "1") == "0":
        return
    seconds = warm_up(job_type)
    logging.getLogger("geojobs.worker").info("%s: numba kernels ready in %.1f s", job_type,
                                            seconds)
    # what is loaded now lives as long as the worker: keep the collector from rescanning it
    gc.collect()
    gc.freeze()
