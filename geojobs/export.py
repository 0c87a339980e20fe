"""Export a result table to a file (GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, CSV), streaming.

Shared by ``GET /jobs/{id}/results?f=...`` and ``geojobs export``. Rows leave PostGIS through one
binary COPY read in chunks (:func:`geojobs.layers.iter_layer`); each chunk becomes an Arrow
record batch handed to the format's own writer: GDAL through ``pyogrio.write_arrow`` for the OGR
formats, pyarrow's ``ParquetWriter`` fed by geopandas' GeoParquet 1.1 encoder for Parquet.
Only one chunk is in memory at a time, so memory stays flat with the table's size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
from geopandas.io.arrow import _geopandas_to_arrow
from psycopg import sql

from geojobs import layer_sql as q
from geojobs.errors import InvalidInput
from geojobs.layers import Layer, describe_layer, iter_layer

__all__ = ["FORMATS", "ExportFormat", "export_table", "provenance", "result_table", "check_format"]


@dataclass(frozen=True)
class ExportFormat:
    """A download format: its GDAL driver (None: Parquet via pyarrow), media type and suffix."""

    key: str
    driver: str | None
    media_type: str
    suffix: str
    layer_options: tuple[tuple[str, str], ...] = ()


FORMATS: dict[str, ExportFormat] = {
    "gpkg": ExportFormat("gpkg", "GPKG", "application/geopackage+sqlite3", ".gpkg"),
    "parquet": ExportFormat("parquet", None, "application/vnd.apache.parquet", ".parquet"),
    "fgb": ExportFormat("fgb", "FlatGeobuf", "application/flatgeobuf", ".fgb",
                        (("SPATIAL_INDEX", "YES"),)),
    "geojson": ExportFormat("geojson", "GeoJSON", "application/geo+json", ".geojson",
                            (("RFC7946", "NO"),)),
    "csv": ExportFormat("csv", "CSV", "text/csv", ".csv", (("GEOMETRY", "AS_WKT"),)),
}
"""Every format, by the name ``f`` / ``--format`` takes."""

CHUNK_ROWS = 50_000


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


def _batches(conn: psycopg.Connection[Any], layer: Layer, chunk_rows: int,
             parquet: bool) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The Arrow schema of the export and its record batches, read chunk by chunk."""
    chunks = iter_layer(conn, layer, chunk_rows)
    first = next(chunks)

    def encode(frame: gpd.GeoDataFrame) -> pa.Table:
        if parquet:
            return _geopandas_to_arrow(frame, index=False, schema_version="1.1.0",
                                       write_covering_bbox=True)
        return pa.table(frame.to_arrow(index=False, geometry_encoding="WKB"))

    head = encode(first)
    schema = head.schema

    def rest() -> Iterator[pa.RecordBatch]:
        yield from head.to_batches()
        for frame in chunks:
            yield from encode(frame).cast(schema).to_batches()

    return schema, rest()


def _geo_metadata(schema: pa.Schema, bbox: list[float] | None) -> dict[bytes, bytes]:
    """The schema's metadata with the ``geo`` bbox of the whole table, not the first chunk."""
    meta = dict(schema.metadata or {})
    geo = json.loads(meta[b"geo"])
    for column in geo["columns"].values():
        if bbox is not None:
            column["bbox"] = bbox
        else:
            column.pop("bbox", None)
    meta[b"geo"] = json.dumps(geo).encode()
    return meta


def export_table(conn: psycopg.Connection[Any], table: str, fmt: ExportFormat, path: Path,
                 metadata: Mapping[str, str] | None = None, *, field: str = "table",
                 chunk_rows: int = CHUNK_ROWS) -> int:
    """Write every row of ``table`` to ``path`` in ``fmt``; return the number of features.

    ``metadata`` (provenance) goes into the GeoPackage's dataset metadata, the Parquet footer's
    key-value metadata, or the layer metadata of the other formats where GDAL keeps it.
    """
    layer = describe_layer(conn, table, field=field)
    assert layer.geometry_column is not None
    metadata = dict(metadata or {})
    bbox = _bbox(conn, layer) if fmt.driver is None else None  # before the COPY holds conn
    schema, batches = _batches(conn, layer, chunk_rows, fmt.driver is None)
    count = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in batches:
            count += batch.num_rows
            yield batch

    if fmt.driver is None:
        meta = _geo_metadata(schema, bbox)
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        with pq.ParquetWriter(path, schema.with_metadata(meta), compression="zstd") as writer:
            for batch in counted():
                writer.write_batch(batch)
        return count
    reader = pa.RecordBatchReader.from_batches(schema, counted())
    geometry_type = layer.geometry_type or "Unknown"
    kwargs: dict[str, Any] = {}
    if fmt.driver == "GPKG":
        kwargs["dataset_metadata"] = metadata
    pyogrio.write_arrow(reader, str(path), layer=layer.name, driver=fmt.driver,
                        geometry_name=layer.geometry_column, geometry_type=geometry_type,
                        crs=f"EPSG:{layer.srid}", layer_options=dict(fmt.layer_options), **kwargs)
    return count


def _bbox(conn: psycopg.Connection[Any], layer: Layer) -> list[float] | None:
    """The table's extent (xmin, ymin, xmax, ymax), or None when it has no geometries."""
    row = conn.execute(q.EXTENT.format(
        geom=sql.Identifier(layer.geometry_column or ""),
        table=layer.identifier)).fetchone()
    if row is None or row[0] is None:
        return None
    return [float(v) for v in row]
