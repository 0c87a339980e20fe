"""``clip`` job type: the part of each input feature inside a clip layer (ArcGIS Clip).

Params: ``input_table``, ``clip_table``, optional ``clip_filter`` (structured filter, e.g. one
county), optional ``geometry_column`` / ``clip_geometry_column``, ``output_table``,
``overwrite``. Every input attribute is kept; see docs/job_types/clip.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.filters import FilterSpec
from geojobs.overlay_job import OverlayParams, run_overlay
from geojobs.params import ColumnName, InputTable

JOB_TYPE = "clip"


class Params(OverlayParams):
    """Parameters of ``clip``."""

    clip_table: InputTable = Field(description="Polygons (or lines, points) to clip by.")
    clip_geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of the clip table; default its first one."
    )
    clip_filter: FilterSpec | None = Field(
        default=None,
        description="Clip by a subset: [{column, op, value}, ...] joined by AND, or "
        "{where: [...], bbox: [xmin, ymin, xmax, ymax], bbox_srid}.",
    )


EXAMPLE: dict[str, Any] = {
    "input_table": "public.nc_counties",
    "clip_table": "public.us_states",
    "clip_filter": [{"column": "state_name", "op": "=", "value": "North Carolina"}],
}

DEMO: list[dict[str, Any]] = [
    {
        "input_table": "public.georgia_counties",
        "clip_table": "public.us_states",
        "clip_filter": [{"column": "state_name", "op": "=", "value": "Georgia"}],
        "output_table": "results.demo_clip_georgia",
        "overwrite": True,
    },
]


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Clip the input layer by the (filtered) clip layer and write the result table."""
    return run_overlay(
        ctx,
        "clip",
        params,
        other_table=params.clip_table,
        other_geometry_column=params.clip_geometry_column,
        other_filter=params.clip_filter,
    )


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
