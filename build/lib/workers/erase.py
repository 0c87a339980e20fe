"""``erase`` job type: the part of each input feature outside an erase layer (ArcGIS Erase).

Params: ``input_table``, ``erase_table``, optional ``erase_filter`` (structured filter, e.g. one
county), optional ``geometry_column`` / ``erase_geometry_column``, ``output_table``,
``overwrite``. Every input attribute is kept; see docs/job_types/erase.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from geojobs import worker_cli
from geojobs.context import JobContext
from geojobs.filters import FilterSpec
from geojobs.overlay_job import OverlayParams, run_overlay
from geojobs.params import ColumnName, InputTable

JOB_TYPE = "erase"


class Params(OverlayParams):
    """Parameters of ``erase``."""

    erase_table: InputTable = Field(description="Polygons (or lines, points) to erase.")
    erase_geometry_column: ColumnName | None = Field(
        default=None, description="Geometry column of the erase table; default its first one."
    )
    erase_filter: FilterSpec | None = Field(
        default=None,
        description="Erase only a subset: [{column, op, value}, ...] joined by AND, or "
        "{where: [...], bbox: [xmin, ymin, xmax, ymax], bbox_srid}.",
    )


EXAMPLE: dict[str, Any] = {
    "input_table": "public.nc_counties",
    "erase_table": "public.us_states",
    "erase_filter": [{"column": "state_name", "op": "=", "value": "North Carolina"}],
}

DEMO: list[dict[str, Any]] = [
    {
        "input_table": "public.us_states",
        "erase_table": "public.georgia_counties",
        "erase_filter": [{"column": "totpop90", "op": ">", "value": 100000}],
        "output_table": "results.demo_erase_states",
        "overwrite": True,
    },
]


def run(ctx: JobContext, params: Params) -> dict[str, Any]:
    """Erase the (filtered) erase layer from the input layer and write the result table."""
    return run_overlay(
        ctx,
        "erase",
        params,
        other_table=params.erase_table,
        other_geometry_column=params.erase_geometry_column,
        other_filter=params.erase_filter,
    )


if __name__ == "__main__":
    raise SystemExit(worker_cli.main(JOB_TYPE))
