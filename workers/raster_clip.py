"""``raster_clip`` job type: clip a raster file to polygons of a table into a COG.

Params: ``raster`` (relative to ``GEOJOBS_RASTER_DIR``), ``clip_table``, ``clip_filter``,
``output_raster`` (relative to ``GEOJOBS_OUTPUT_DIR``; default ``raster_clip_<job id>.tif``),
``crop``, ``all_touched``, ``nodata``, ``overwrite``. Paths that are absolute, hold ``..`` or
lead outside the two directories through a symbolic link fail at once. See
docs/job_types/raster_clip.md.
"""

from __future__ import annotations

import math
import shutil
from typing import Any

from pydantic import Field, field_validator

from analysis.raster_clip import clip_raster
from analysis.safe_paths import resolve_input, resolve_output
from geojobs import worker_cli
from geojobs.config import output_dir, raster_dir
from geojobs.context import JobContext
from geojobs.errors import InvalidInput
from geojobs.filters import FilterSpec, filter_clause
from geojobs.layers import describe_layer, read_layer
from geojobs.params import ColumnName, InputTable, JobParams

JOB_TYPE = "raster_clip"


class Params(JobParams):
    """Parameters of ``raster_clip``."""

    raster: str = Field(max_length=1024, description="Raster file, relative to the raster "
                                                     "directory (GEOJOBS_RASTER_DIR).")
    clip_table: InputTable = Field(description="Polygons to clip to.")
    clip_geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of clip_table; default its first one.")
    clip_filter: FilterSpec | None = Field(
        default=None, description="Only these features of clip_table: [{column, op, value}, "
                                  "...] joined by AND, or {where: [...], bbox, bbox_srid}.")
    output_raster: str | None = Field(
        default=None, max_length=1024, description="Output file relative to the output "
                                                   "directory; default raster_clip_<job id>.tif.")
    crop: bool = Field(default=True, description="Shrink the output to the polygons' extent.")
    all_touched: bool = Field(default=False, description="Keep every pixel a polygon touches.")
    nodata: float | None = Field(
        default=None, allow_inf_nan=True,  # NaN is a valid nodata; infinities are refused below
        description="Default: the source's, else NaN (float) or a value "
                                  "outside the clipped data's range (integers).")
    overwrite: bool = Field(default=False, description="Replace the output file if it exists.")

    @field_validator("nodata")
    @classmethod
    def _not_infinite(cls, value: float | None) -> float | None:
        if value is not None and math.isinf(value):
            raise ValueError("must be a finite number or NaN")
        return value


EXAMPLE: dict[str, Any] = {
    "raster": "georgia_dem.tif",
    "clip_table": "public.georgia_counties",
    "clip_filter": [{"column": "name", "op": "=", "value": "Fulton"}],
    "output_raster": "fulton.tif",
}

DEMO: list[dict[str, Any]] = []  # needs a raster in GEOJOBS_RASTER_DIR; see the notebook


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Resolve both paths safely, read the polygons, clip, return the output's description."""
    source = resolve_input(raster_dir(), params.raster, field="raster")
    relative = params.output_raster or f"raster_clip_{ctx.job_id}.tif"
    target = resolve_output(output_dir(), relative, field="output_raster",
                            overwrite=params.overwrite)
    layer = describe_layer(ctx.conn, params.clip_table, field="clip_table",
                           geometry_column=params.clip_geometry_column,
                           geometry_field="clip_geometry_column")
    where = filter_clause(ctx.conn, params.clip_filter, layer, field="clip_filter")
    shapes = read_layer(ctx.conn, layer, [], where=where)
    if not len(shapes):
        raise InvalidInput(f"no feature of {layer.qualified_name} passes clip_filter",
                           field="clip_filter" if where is not None else "clip_table")
    ctx.progress(0.05)
    scratch = ctx.scratch_dir()  # removed with what it holds if the job is stopped
    result = clip_raster(source, shapes, target, crop=params.crop,
                         all_touched=params.all_touched, nodata=params.nodata,
                         overwrite=params.overwrite,
                         progress=lambda f: ctx.progress(0.05 + 0.9 * f),
                         workdir=scratch, on_written=ctx.wrote_file)
    shutil.rmtree(scratch, ignore_errors=True)  # clip_raster removed its own files already
    return {
        **result.to_dict(),
        "output_raster": str(target.relative_to(output_dir().resolve())),
        "clip_features": len(shapes),
        "clip_srid": layer.srid,
    }


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
