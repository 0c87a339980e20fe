"""Export a result table to a file (GeoPackage, GeoParquet, FlatGeobuf, GeoJSON, CSV), streaming.

Shared by ``GET /jobs/{id}/results?f=...`` and ``geojobs export``. Rows leave PostGIS as Arrow
record batches: the ADBC PostgreSQL driver runs the ``SELECT`` as a binary ``COPY`` and decodes
it in C++ into batches of a few MB, never one Python object per row. Geometries come as WKB
(``ST_AsBinary``), and for GeoParquet the bbox covering columns come from PostGIS too
(``ST_XMin``...). Each batch goes straight to the format's own writer: GDAL through
``pyogrio.write_arrow`` for the OGR formats, pyarrow's ``ParquetWriter`` (with geopandas'
GeoParquet 1.1 ``geo`` metadata) for Parquet. Only one batch is in memory at a time, so memory
stays flat with the table's size (FlatGeobuf's spatial index keeps about 160 bytes per feature
until the file is closed: the packed R-tree needs every bbox).

Formats whose writer only appends (GeoJSON, CSV, GeoParquet) can also be streamed:
``python -m geojobs.export FORMAT TABLE FIELD`` writes the file to standard output as the rows
come (GDAL streams only to ``/vsistdout/``, the process's own standard output), which is how
the API sends them. GeoPackage (SQLite) and FlatGeobuf with its spatial index (the index comes
before the features) need the whole file first.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO, cast

import adbc_driver_postgresql.dbapi as adbc
import geopandas as gpd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyogrio
from geopandas.io.arrow import _geopandas_to_arrow
from psycopg import sql
from psycopg.conninfo import make_conninfo

from geojobs import layer_sql as q
from geojobs.db import connect
from geojobs.errors import GeojobsError
from geojobs.formats import FORMATS, METADATA_ENV, ExportFormat, check_format, provenance, result_table
from geojobs.layers import _NATIVE, Layer, describe_layer

__all__ = ["FORMATS", "ExportFormat", "export_table", "provenance", "result_table", "check_format",
           "METADATA_ENV", "main"]


CHUNK_ROWS = 65_536
"""Most rows in one record batch handed to a writer (batches are also capped at BATCH_BYTES)."""
BATCH_BYTES = 8 << 20
"""Size hint for the ADBC driver's record batches, in bytes."""
_BBOX = ("xmin", "ymin", "xmax", "ymax")
_WKB = {b"ARROW:extension:name": b"geoarrow.wkb"}


def _conninfo(conn: psycopg.Connection[Any]) -> str:
    """The libpq connection string of ``conn``, password included, for a second connection."""
    params = conn.info.get_parameters()
    if conn.info.password:
        params["password"] = conn.info.password
    return make_conninfo("", **params)


def _select(conn: psycopg.Connection[Any], layer: Layer, bbox: list[str] | None) -> str:
    """The SELECT of every attribute, the geometry as WKB and (Parquet) the bbox columns.

    ``numeric`` becomes float8 and types without a plain Arrow equivalent (json, arrays, uuid,
    ...) become text: the type rules of :func:`geojobs.layers.read_layer`.
    """
    geom = sql.Identifier(layer.geometry_column or "")
    select: list[sql.Composable] = []
    for name in layer.attributes:
        ident, typ = sql.Identifier(name), layer.columns[name]
        if typ in _NATIVE:
            select.append(ident)
        elif typ == "numeric":
            select.append(sql.SQL("{}::float8 AS {}").format(ident, ident))
        else:
            select.append(sql.SQL("{}::text AS {}").format(ident, ident))
    select.append(sql.SQL("ST_AsBinary({}) AS {}").format(geom, geom))
    for name, part in zip(bbox or [], _BBOX, strict=False):
        select.append(sql.SQL("{}({}) AS {}").format(sql.SQL("ST_" + part.capitalize()), geom,
                                                     sql.Identifier(name)))
    return q.EXPORT_SELECT.format(columns=sql.SQL(", ").join(select),
                                  table=layer.identifier).as_string(conn)


def _record_batches(conn: psycopg.Connection[Any], query: str,
                    chunk_rows: int) -> Generator[pa.RecordBatch | pa.Schema, None, None]:
    """The schema of ``query``, then its rows as record batches of at most ``chunk_rows``.

    A second connection (ADBC, same role and database) streams the result: the driver reads the
    binary COPY of the query into Arrow batches of about ``BATCH_BYTES``.
    """
    with adbc.connect(_conninfo(conn)) as aconn, aconn.cursor() as cur:
        cur.adbc_statement.set_options(
            **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
        cur.execute(query)
        reader = cur.fetch_record_batch()
        yield reader.schema
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows)


def _plain(schema: pa.Schema, geometry: str) -> pa.Schema:
    """The driver's schema without its field metadata; the geometry typed as WKB for GDAL."""
    return pa.schema([pa.field(f.name, f.type, f.nullable, _WKB if f.name == geometry else None)
                      for f in schema])


def _geo_metadata(layer: Layer, bbox: list[float] | None, covering: str) -> bytes:
    """GeoParquet 1.1 ``geo`` metadata, as geopandas writes it, for the whole table.

    geopandas encodes an empty frame in the layer's CRS (the PROJJSON, the covering); the bbox
    is the table's (``ST_Extent``) and the geometry type the column's, when it is constrained.
    """
    geom = layer.geometry_column or "geometry"
    empty = gpd.GeoDataFrame({geom: gpd.GeoSeries([], crs=layer.srid)}, geometry=geom)
    meta = json.loads(_geopandas_to_arrow(empty, index=False, schema_version="1.1.0",
                                          write_covering_bbox=True).schema.metadata[b"geo"])
    column = meta["columns"][geom]
    if bbox is not None:
        column["bbox"] = bbox
    else:
        column.pop("bbox", None)
    gtype = layer.geometry_type
    column["geometry_types"] = [gtype] if gtype and gtype != "Geometry" else []
    column["covering"] = {"bbox": {part: [covering, part] for part in _BBOX}}
    return json.dumps(meta).encode()


def _free_name(taken: list[str], name: str) -> str:
    while name in taken:
        name = f"{name}_"
    return name


def export_table(conn: psycopg.Connection[Any], table: str, fmt: ExportFormat,
                 path: Path | str | BinaryIO,
                 metadata: Mapping[str, str] | None = None, *, field: str = "table",
                 chunk_rows: int = CHUNK_ROWS) -> int:
    """Write every row of ``table`` to ``path`` in ``fmt``; return the number of features.

    ``path`` is a file name, a GDAL path (``/vsistdout/``) or, for Parquet, a binary file object.

    ``metadata`` (provenance) goes into the GeoPackage's dataset metadata or the Parquet
    footer's key-value metadata. ``conn`` looks the table up (the role must be able to read
    it); the rows are read by a second connection with the same connection parameters.
    """
    layer = describe_layer(conn, table, field=field)
    assert layer.geometry_column is not None
    covering = _free_name(list(layer.columns), "bbox")
    parts = ([_free_name(list(layer.columns), f"{covering}_{p}") for p in _BBOX]
             if fmt.driver is None else None)
    with closing(_record_batches(conn, _select(conn, layer, parts), chunk_rows)) as stream:
        return _write(conn, layer, fmt, path, dict(metadata or {}), stream, covering, parts)


def _write(conn: psycopg.Connection[Any], layer: Layer, fmt: ExportFormat,
           path: Path | str | BinaryIO,
           metadata: dict[str, str], stream: Iterator[pa.RecordBatch | pa.Schema], covering: str,
           parts: list[str] | None) -> int:
    """Write the batches of ``stream`` (its schema first) to ``path``; the number of rows."""
    geom = layer.geometry_column or ""
    parquet = fmt.driver is None
    source = next(stream)
    assert isinstance(source, pa.Schema)
    count = 0
    if parquet:
        assert parts is not None
        attrs = [f for f in source if f.name not in parts]
        box = pa.struct([(p, pa.float64()) for p in _BBOX])
        schema = pa.schema([pa.field(f.name, f.type, f.nullable) for f in attrs]
                           + [pa.field(covering, box)])
        meta = {b"geo": _geo_metadata(layer, _bbox(conn, layer), covering)}
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        with pq.ParquetWriter(path, schema.with_metadata(meta), compression="zstd") as writer:
            for batch in stream:
                assert isinstance(batch, pa.RecordBatch)
                columns = [batch.column(f.name) for f in attrs]
                corners = [batch.column(p).cast(pa.float64()) for p in parts]
                valid = batch.column(geom).is_valid()
                columns.append(pa.StructArray.from_arrays(corners, list(_BBOX),
                                                          mask=pc.invert(valid)))
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
                count += batch.num_rows
        return count

    schema = _plain(source, geom)

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in stream:
            assert isinstance(batch, pa.RecordBatch)
            count += batch.num_rows
            yield pa.RecordBatch.from_arrays(batch.columns, schema=schema)

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    geometry_type = layer.geometry_type if layer.geometry_type not in (None, "Geometry") else "Unknown"
    kwargs: dict[str, Any] = {}
    if fmt.driver == "GPKG":
        kwargs["dataset_metadata"] = metadata
    pyogrio.write_arrow(reader, os.fspath(cast(Path | str, path)), layer=layer.name, driver=fmt.driver,
                        geometry_name=geom, geometry_type=geometry_type,
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


def main(argv: list[str] | None = None) -> int:
    """``python -m geojobs.export FORMAT TABLE FIELD``: stream ``TABLE`` to standard output in a
    streaming format (``DATABASE_URL``; provenance from :data:`METADATA_ENV`). With ``--stdin``
    instead, the process loads its writers first, then reads that request as one JSON line
    (``format``, ``table``, ``field``, ``database_url``, ``metadata``) from standard input: a
    spare the API starts ahead of the next download. A :class:`GeojobsError` is written to
    standard error as one JSON object, exit status 2."""
    args = argv if argv is not None else sys.argv[1:]
    if args == ["--stdin"]:
        line = sys.stdin.readline()
        if not line:
            return 0  # the API went away before it needed this spare
        request = json.loads(line)
        os.environ["DATABASE_URL"] = request["database_url"]
        key, table, field = request["format"], request["table"], request["field"]
        metadata = request["metadata"]
    else:
        key, table, field = args
        metadata = json.loads(os.environ.get(METADATA_ENV) or "{}")
    fmt = FORMATS[key]
    if not fmt.streams:
        raise SystemExit(f"{key} cannot be streamed")
    try:
        with connect() as conn:
            export_table(conn, table, fmt, "/vsistdout/" if fmt.driver else sys.stdout.buffer,
                         metadata, field=field)
    except GeojobsError as exc:
        json.dump({"error": type(exc).__name__, "detail": Exception.__str__(exc),
                   "field": exc.field},
                  sys.stderr)
        return 2
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
