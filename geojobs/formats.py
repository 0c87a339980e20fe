"""The download formats (GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, CSV) and the provenance a
file carries: what the API and the CLI need to name a format and describe a result, without the
writers (pyarrow, pyogrio, ADBC) that :mod:`geojobs.export` loads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geojobs.errors import InvalidInput

__all__ = ["FORMATS", "ExportFormat", "check_format", "result_table", "provenance", "METADATA_ENV"]


@dataclass(frozen=True)
class ExportFormat:
    """A download format: its GDAL driver (None: Parquet via pyarrow), media type and suffix;
    ``streams``: its writer only appends, so the file can be sent while it is written."""

    key: str
    driver: str | None
    media_type: str
    suffix: str
    layer_options: tuple[tuple[str, str], ...] = ()
    streams: bool = False


FORMATS: dict[str, ExportFormat] = {
    "gpkg": ExportFormat("gpkg", "GPKG", "application/geopackage+sqlite3", ".gpkg"),
    "parquet": ExportFormat("parquet", None, "application/vnd.apache.parquet", ".parquet",
                            streams=True),
    "fgb": ExportFormat("fgb", "FlatGeobuf", "application/flatgeobuf", ".fgb",
                        (("SPATIAL_INDEX", "YES"),)),
    "geojson": ExportFormat("geojson", "GeoJSON", "application/geo+json", ".geojson",
                            (("RFC7946", "NO"),), streams=True),
    "csv": ExportFormat("csv", "CSV", "text/csv", ".csv", (("GEOMETRY", "AS_WKT"),),
                        streams=True),
}
"""Every format, by the name ``f`` / ``--format`` takes."""

METADATA_ENV = "GEOJOBS_EXPORT_METADATA"
"""Environment variable with the provenance (a JSON object) that :func:`geojobs.export.main`
writes into the file."""


def check_format(name: str, *, field: str = "f") -> ExportFormat:
    """The format called ``name``, or an error naming ``field`` and listing the formats."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise InvalidInput(f"{field}: unknown format {name!r}; use one of {sorted(FORMATS)}",
                           field=field)
    return fmt


def result_table(result: Mapping[str, Any] | None) -> str | None:
    """The table or view a job's result names, if any."""
    result = result or {}
    table = result.get("output_table") or result.get("output_view")
    return str(table) if table else None


def provenance(job: Mapping[str, Any], params: Any = None) -> dict[str, str]:
    """Key-value provenance of a job's result: job id, type, parameters, finish time, table."""
    finished = job.get("finished_at")
    return {
        "geojobs_job_id": str(job["id"]),
        "geojobs_job_type": str(job["job_type"]),
        "geojobs_params": json.dumps(params if params is not None else job.get("params"),
                                     sort_keys=True, default=str),
        "geojobs_finished_at": finished.isoformat() if finished is not None else "",
        "geojobs_table": result_table(job.get("result")) or "",
    }
