"""Reading PostGIS layers into GeoDataFrames and writing result tables, for every job type.

Both directions use binary COPY with (E)WKB geometries: no hex text, no row-by-row INSERT.
Input tables and columns are looked up in the catalog first; a missing one raises
:class:`InputLayerMissing` naming the parameter at fault.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql

from analysis.multi import ewkb, multi_type_name, to_multi
from geojobs import layer_sql as q
from geojobs.copy_binary import (
    FIXED_TYPES,
    CopyColumn,
    bytes_column,
    copy_order,
    encode,
    fixed_column,
)
from geojobs.errors import InputLayerMissing, InvalidInput, OutputExists

__all__ = ["Layer", "describe_layer", "read_layer", "iter_layer", "write_layer", "split_name",
           "output_exists", "check_output_free", "multi_geometry_type", "to_multi",
           "output_srid", "geometry_type_names", "type_fitting", "pg_type"]

_READ_BLOCK_ROWS = 65_536
"""COPY rows :func:`read_layer` holds at once before turning them into columns."""

# Column types read as they are; anything else is read as text (numeric as double precision).
_NATIVE = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "date", "timestamp",
           "timestamptz"}


def split_name(name: str) -> tuple[str | None, str]:
    """Split ``schema.table`` (or ``table``) into its parts."""
    schema, _, table = name.rpartition(".")
    return (schema or None), table


@dataclass(frozen=True)
class Layer:
    """An input table or view as the catalog describes it."""

    schema: str
    name: str
    columns: dict[str, str]  # column name -> pg_type.typname
    type_names: dict[str, str]  # column name -> format_type(), e.g. 'numeric(10,2)'
    geometry_column: str | None
    srid: int
    geometry_type: str | None
    key: str | None  # single-column primary key, if any
    geometry_columns: tuple[str, ...] = field(default=())
    source_field: str = "input_table"  # the parameter that named this layer, for errors

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def attributes(self) -> list[str]:
        """Every column but the geometry columns."""
        return [c for c in self.columns if c not in self.geometry_columns]

    def require_column(self, column: str, *, field: str) -> str:
        """Return ``column`` if the layer has it, else fail naming the parameter."""
        if column not in self.columns:
            raise InputLayerMissing(
                f"column {column!r} does not exist in {self.qualified_name}; "
                f"columns are {self.attributes}", field=field)
        return column

    def require_numeric(self, column: str, *, field: str) -> str:
        """Return ``column`` if it exists and holds numbers, else fail naming the parameter."""
        self.require_column(column, field=field)
        if self.columns[column] not in {"int2", "int4", "int8", "float4", "float8", "numeric"}:
            raise InvalidInput(
                f"column {column!r} of {self.qualified_name} is {self.type_names[column]}, "
                "not a number", field=field)
        return column


def describe_layer(
    conn: psycopg.Connection[Any], table: str, *, field: str = "input_table",
    geometry_column: str | None = None, geometry_field: str = "geometry_column",
    require_geometry: bool = True,
) -> Layer:
    """Look ``table`` up in the catalog: its columns, key, geometry column, SRID and type."""
    schema, name = split_name(table)
    row = conn.execute(q.FIND_RELATION, {"schema": schema, "name": name}).fetchone()
    if row is None:
        where = f"schema {schema!r}" if schema else "the search path"
        raise InputLayerMissing(f"table {table!r} does not exist in {where}", field=field)
    schema, name = row[0], row[1]
    if not row[3]:
        raise InvalidInput(
            f"table {schema}.{name} exists but this worker's role may not read it: "
            f"GRANT USAGE ON SCHEMA {schema} and SELECT ON {schema}.{name} to the worker role",
            field=field)
    rows = conn.execute(q.RELATION_COLUMNS, {"schema": schema, "name": name}).fetchall()
    columns = {r[0]: r[2] for r in rows}
    type_names = {r[0]: r[1] for r in rows}
    geoms = tuple(r[0] for r in rows if r[2] == "geometry")
    key = next((r[0] for r in rows if r[5]), None)
    if geometry_column is not None:
        if geometry_column not in geoms:
            raise InputLayerMissing(
                f"{table!r} has no geometry column {geometry_column!r}; geometry columns are "
                f"{list(geoms)}", field=geometry_field)
        geom = geometry_column
    elif geoms:
        geom = geoms[0]
    elif require_geometry:
        raise InvalidInput(f"table {table!r} has no geometry column", field=field)
    else:
        return Layer(schema, name, columns, type_names, None, 0, None, key, geoms, field)
    info = next(r for r in rows if r[0] == geom)
    srid, gtype = info[3] or 0, info[4]
    if not srid:
        sample = conn.execute(q.SAMPLE_SRID.format(
            geom=sql.Identifier(geom), table=sql.Identifier(schema, name))).fetchone()
        if sample is not None:
            srid, gtype = sample[0], gtype or sample[1]
    if not srid:
        raise InvalidInput(
            f"table {table!r} has no SRID (0) on {geom!r}: set one with "
            "UpdateGeometrySRID or ST_SetSRID before queueing the job", field=field)
    return Layer(schema, name, columns, type_names, geom, int(srid),
                 _normalise_type(gtype), key, geoms, field)


def _normalise_type(gtype: str | None) -> str | None:
    if gtype is None:
        return None
    names = {n.upper(): n for n in ("Point", "LineString", "Polygon", "MultiPoint",
                                     "MultiLineString", "MultiPolygon", "GeometryCollection",
                                     "Geometry")}
    return names.get(gtype.upper(), gtype)


def read_layer(
    conn: psycopg.Connection[Any], layer: Layer, columns: Sequence[str] | None = None, *,
    where: sql.Composable | None = None,
) -> gpd.GeoDataFrame:
    """Read ``columns`` (default: every attribute) and the geometry into a GeoDataFrame.

    Binary COPY streams rows; geometries arrive as EWKB and are parsed by ``shapely.from_wkb``,
    one vectorised call per block of rows. ``numeric`` columns become floats; types without a natural
    pandas equivalent (json, arrays, uuid...) become text.
    """
    names, statement, types = _copy_out(layer, columns, where)
    values: list[list[Any]] = [[] for _ in names]
    parts: list[np.ndarray] = []
    # Rows are turned into columns and geometries a block at a time, so the COPY rows and
    # their WKB bytes are held for one block only, never for the whole layer.
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        stream = copy.rows()
        while block := list(itertools.islice(stream, _READ_BLOCK_ROWS)):
            columns_of_block = list(zip(*block, strict=True))
            del block
            for column, vals in zip(values, columns_of_block, strict=False):
                column.extend(vals)
            parts.append(_geometries(layer, columns_of_block[-1]))
            del columns_of_block
    geometry = np.concatenate(parts) if parts else np.empty(0, dtype=object)
    return _assemble(layer, names, types, values, geometry)


def iter_layer(
    conn: psycopg.Connection[Any], layer: Layer, chunk_rows: int = 50_000,
) -> Iterator[gpd.GeoDataFrame]:
    """Every attribute and the geometry, as GeoDataFrames of at most ``chunk_rows`` rows.

    One binary COPY streams the whole table; only one chunk is held in memory at a time, so
    memory stays flat however large the table is. An empty table yields one empty frame.
    """
    names, statement, types = _copy_out(layer, None, None)
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        rows: list[tuple[Any, ...]] = []
        sent = False
        for row in copy.rows():
            rows.append(row)
            if len(rows) >= chunk_rows:
                yield _frame(layer, names, types, rows)
                rows, sent = [], True
        if rows or not sent:
            yield _frame(layer, names, types, rows)


def _copy_out(layer: Layer, columns: Sequence[str] | None,
              where: sql.Composable | None) -> tuple[list[str], sql.Composed, list[str]]:
    """The COPY statement reading ``columns`` and the geometry, and the types it returns."""
    names = list(layer.attributes if columns is None else columns)
    select: list[sql.Composable] = []
    types: list[str] = []
    for name in names:
        typ = layer.columns[name]
        ident = sql.Identifier(name)
        if typ in _NATIVE:
            select.append(ident)
            types.append(typ)
        elif typ == "numeric":
            select.append(sql.SQL("{}::float8 AS {}").format(ident, ident))
            types.append("float8")
        else:
            select.append(sql.SQL("{}::text AS {}").format(ident, ident))
            types.append("text")
    assert layer.geometry_column is not None
    select.append(sql.Identifier(layer.geometry_column))
    types.append("bytea")  # geometry_send is EWKB: take the bytes as they come
    statement = q.COPY_OUT.format(
        columns=sql.SQL(", ").join(select), table=layer.identifier,
        where=sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL(""))
    return names, statement, types


def _frame(layer: Layer, names: list[str], types: list[str],
           rows: list[tuple[Any, ...]]) -> gpd.GeoDataFrame:
    """COPY rows (attributes, then EWKB) as a GeoDataFrame in the layer's CRS."""
    values = list(zip(*rows, strict=True)) if rows else [()] * len(types)
    return _assemble(layer, names, types, values, _geometries(layer, values[-1]))


def _geometries(layer: Layer, wkb: Sequence[bytes | None]) -> np.ndarray:
    """Shapely geometries from the EWKB values of one COPY geometry column."""
    try:
        return shapely.from_wkb(np.array(wkb, dtype=object))
    except shapely.errors.GEOSException as exc:  # e.g. a ring left unclosed by NaN coordinates
        raise InvalidInput(f"a geometry of {layer.qualified_name} cannot be read ({exc}); find it "
                           "with ST_IsValidReason and fix or remove it", field=layer.source_field
                           ) from None


def _assemble(layer: Layer, names: list[str], types: list[str], values: Sequence[Sequence[Any]],
              geometry: np.ndarray) -> gpd.GeoDataFrame:
    """Attribute columns (COPY values, by column) and parsed geometries as a GeoDataFrame."""
    data = {name: _column(vals, typ) for name, vals, typ in zip(names, values, types, strict=False)}
    _require_finite(layer, geometry, data)
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geometry, crs=layer.srid),
                            crs=layer.srid)


def _require_finite(layer: Layer, geometry: np.ndarray, data: dict[str, Any]) -> None:
    """Fail naming the parameter when a geometry has NaN or infinite coordinates (GEOS cannot
    compute with them, and would fail the same way on every retry)."""
    if np.isfinite(shapely.get_coordinates(geometry)).all():
        return
    coords, index = shapely.get_coordinates(geometry, return_index=True)
    bad = np.unique(index[~np.isfinite(coords).all(axis=1)])
    first = (f"; the first has {layer.key} = {data[layer.key][bad[0]]!r}"
             if layer.key in data else "")
    raise InvalidInput(
        f"{len(bad)} feature(s) of {layer.qualified_name} have NaN or infinite coordinates"
        f"{first}; fix or remove them before queueing the job", field=layer.source_field)


def _column(values: Sequence[Any], pg_type: str) -> Any:
    """Turn one column of COPY values into a pandas array with a fitting dtype."""
    if pg_type in {"int2", "int4", "int8"}:
        return pd.array(values, dtype={"int2": "Int16", "int4": "Int32", "int8": "Int64"}[pg_type])
    if pg_type in {"float4", "float8"}:
        return np.array([np.nan if v is None else v for v in values], dtype="float64")
    if pg_type == "bool":
        return pd.array(values, dtype="boolean")
    if pg_type in {"timestamp", "timestamptz"}:
        return pd.to_datetime(pd.Series(values, dtype=object))
    return pd.array(values, dtype=object) if pg_type == "date" else pd.array(values, dtype="str")


# -- writing ---------------------------------------------------------------------------------


_TYPE_NAMES = {0: "Point", 1: "LineString", 2: "LineString", 3: "Polygon", 4: "MultiPoint",
               5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}


def geometry_type_names(geometries: Any) -> set[str]:
    """The geometry types present (``Point``, ``MultiPolygon``...), nulls left out."""
    return {_TYPE_NAMES[k] for k in shapely.get_type_id(geometries).tolist() if k >= 0}


def multi_geometry_type(geometries: Any) -> str:
    """The typed-column type fitting every geometry: Multi* when parts and multis mix."""
    return type_fitting(geometry_type_names(geometries))


def type_fitting(names: set[str]) -> str:
    """The column type fitting geometries of these types (see :func:`multi_geometry_type`)."""
    names = set(names)
    if len(names) == 1:
        return names.pop()
    multis = {multi_type_name(n) for n in names}
    return multis.pop() if len(multis) == 1 else "Geometry"


def _typed(geometries: Any) -> str:
    """The column type of an extra geometry column (only one kind, else Geometry)."""
    kinds = {_TYPE_NAMES[k] for k in shapely.get_type_id(geometries).tolist() if k >= 0}
    return kinds.pop() if len(kinds) == 1 else "Geometry"


def output_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    """Whether a relation named ``schema.table`` exists."""
    schema, name = split_name(table)
    return conn.execute(q.RELATION_EXISTS, {"schema": schema, "name": name}).fetchone() is not None


def check_output_free(conn: psycopg.Connection[Any], table: str, *, overwrite: bool,
                      field: str = "output_table") -> None:
    """Fail before any work when the output exists and ``overwrite`` is false."""
    if not overwrite and output_exists(conn, table):
        raise OutputExists(f"{table!r} already exists; set overwrite to true to replace it",
                           field=field)


def pg_type(series: pd.Series) -> str:
    """The column type :func:`write_layer` gives ``series``."""
    return _pg_type(series)


def _pg_type(series: pd.Series) -> str:
    dtype = series.dtype
    if isinstance(dtype, gpd.array.GeometryDtype):
        return "geometry"
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return {1: "smallint", 2: "smallint", 4: "integer"}.get(dtype.itemsize, "bigint")
    if pd.api.types.is_float_dtype(dtype):
        return "real" if dtype.itemsize == 4 else "double precision"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "timestamptz"
    if pd.api.types.is_datetime64_dtype(dtype):
        return "timestamp"
    sample = series.dropna()
    first = sample.iloc[0] if len(sample) else None
    if isinstance(first, bool | np.bool_):
        return "boolean"
    if isinstance(first, dt.datetime):
        return "timestamptz" if first.tzinfo else "timestamp"
    if isinstance(first, dt.date):
        return "date"
    if isinstance(first, decimal.Decimal):
        return "numeric"
    return "text"


_COPY_TYPE = {"boolean": "bool", "smallint": "int2", "integer": "int4", "bigint": "int8",
              "real": "float4", "double precision": "float8", "timestamptz": "timestamptz",
              "timestamp": "timestamp", "date": "date", "numeric": "numeric", "text": "text",
              "geometry": "bytea"}


def _python_values(series: pd.Series, pg_type: str, srid: int = 0) -> list[Any]:
    """Column values as Python objects for COPY: missing values (NaN, NA, NaT) become None."""
    missing = series.isna().to_numpy()
    if pg_type == "geometry":  # a second geometry column (e.g. nearest's near_line), as EWKB
        values: list[Any] = ewkb(series.to_numpy(), srid)
    elif pg_type in {"timestamp", "timestamptz"}:
        values = [v.to_pydatetime() if hasattr(v, "to_pydatetime") else v for v in series]
    elif pg_type == "text":
        values = [v if isinstance(v, str) else str(v) for v in series.astype(object)]
    else:
        values = series.astype(object).tolist()
    if missing.any():
        values = [None if m else v for v, m in zip(values, missing, strict=True)]
    return values


class _Ewkb(Sequence[bytes | None]):
    """The EWKB of ``geometries`` (:func:`analysis.multi.ewkb`), made only for the rows asked
    for: the COPY encoder takes one block of rows at a time, so the bytes of the whole layer
    are never held at once."""

    def __init__(self, geometries: np.ndarray, srid: int, promote: bool) -> None:
        self.geometries, self.srid, self.promote = geometries, srid, promote

    def __len__(self) -> int:
        return len(self.geometries)

    @overload
    def __getitem__(self, index: int) -> bytes | None: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes | None]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return ewkb(self.geometries[index], self.srid, promote=self.promote)
        return ewkb(self.geometries[index:index + 1 or None], self.srid, promote=self.promote)[0]


def _copy_columns(gdf: gpd.GeoDataFrame, attrs: list[str], pg_types: dict[str, str],
                  geoms_ewkb: Sequence[bytes | None], srid: int) -> list[CopyColumn] | None:
    """The key, ``attrs`` and the geometry as column-encoder columns; None when a column's
    type (date, timestamp, numeric) or values (e.g. uint64) need psycopg's own dumpers."""
    columns = [fixed_column("int8", np.arange(1, len(gdf) + 1, dtype=np.int64))]
    for c in attrs:
        series, copy_type = gdf[c], _COPY_TYPE[pg_types[c]]
        missing = series.isna().to_numpy()
        if pg_types[c] == "geometry":
            columns.append(bytes_column("bytea", _Ewkb(series.to_numpy(), srid, promote=False)))
        elif copy_type == "text":
            values = series.to_numpy(dtype=object)
            columns.append(bytes_column("text", [
                None if m else (v if isinstance(v, str) else str(v)).encode()
                for v, m in zip(values.tolist(), missing.tolist(), strict=True)]))
        elif copy_type in FIXED_TYPES:
            fill: Any = False if copy_type == "bool" else 0
            try:
                values = series.to_numpy(dtype=getattr(series.dtype, "numpy_dtype", None),
                                         na_value=fill) if missing.any() else series.to_numpy()
                columns.append(fixed_column(copy_type, values, missing))
            except (TypeError, ValueError):
                return None
        else:
            return None
    columns.append(bytes_column("bytea", geoms_ewkb))
    return columns


def output_srid(
    frame: gpd.GeoDataFrame, layer: Layer, input_crs: Any
) -> tuple[gpd.GeoDataFrame, int]:
    """The result ``frame`` and the SRID to write it with.

    The layer's SRID while the analysis kept the CRS it read (``input_crs``). An analysis that
    made new geometries in another CRS (grid cells in UTM for geographic input) keeps that
    CRS when it has an EPSG code, so the cells stay true squares and hexagons; otherwise the
    frame goes back to the layer's CRS, as no SRID could name its own.
    """
    if frame.crs is None or frame.crs.equals(input_crs):
        return frame, layer.srid
    epsg = frame.crs.to_epsg()
    if epsg is None:
        return frame.to_crs(input_crs), layer.srid
    return frame, int(epsg)


def write_layer(
    conn: psycopg.Connection[Any], gdf: gpd.GeoDataFrame, table: str, *, srid: int,
    overwrite: bool = False, geometry_type: str | None = None, geometry_name: str = "geom",
    field: str = "output_table", index: bool = True,
) -> int:
    """Create ``table`` (``schema.name``) from ``gdf`` by binary COPY; return the row count.

    The table gets a ``fid`` identity primary key (or ``fid_1``... when the data has a
    ``fid``), a geometry column typed with ``srid`` and a GiST index, so QGIS opens it as it
    is. Run this inside the job's transaction: the table appears only if the job completes.
    ``index=False`` (a staging part) leaves out the primary key, the GiST index and ANALYZE.
    """
    schema, name = split_name(table)
    assert schema is not None, "output tables are schema-qualified"
    ident = sql.Identifier(schema, name)
    if output_exists(conn, table):
        if not overwrite:
            raise OutputExists(f"{table!r} already exists; set overwrite to true to replace it",
                               field=field)
        conn.execute(q.DROP_TABLE.format(table=ident))
    attrs = [c for c in gdf.columns if c != gdf.geometry.name]
    if geometry_name in attrs:
        raise InvalidInput(f"the result has an attribute named {geometry_name!r}, the name of "
                           "its geometry column; rename that attribute", field=field)
    key = next(k for k in ("fid", "fid_1", "fid_2", "fid_3", "result_fid") if k not in attrs)
    geoms = gdf.geometry.to_numpy()
    gtype = geometry_type or (multi_geometry_type(geoms) if len(gdf) else "Geometry")
    pg_types = {c: _pg_type(gdf[c]) for c in attrs}
    column_defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_types[c]))
                   if pg_types[c] != "geometry" else sql.SQL("{} geometry({}, {})").format(
                       sql.Identifier(c), sql.SQL(_typed(gdf[c].to_numpy())), sql.Literal(int(srid)))
                   for c in attrs]
    column_defs.append(sql.SQL("{} geometry({}, {})").format(
        sql.Identifier(geometry_name), sql.SQL(gtype), sql.Literal(int(srid))))
    conn.execute(q.CREATE_TABLE.format(table=ident, key=sql.Identifier(key),
                                       columns=sql.SQL(", ").join(column_defs)))
    # singles are promoted in the EWKB itself when the column is Multi*: no geometry is copied
    geoms_ewkb = _Ewkb(geoms, int(srid), promote=gtype.startswith("Multi"))
    names = [key, *attrs, geometry_name]
    blocks = _copy_columns(gdf, attrs, pg_types, geoms_ewkb, int(srid))
    if blocks is not None:  # whole columns at once (geojobs.copy_binary)
        order = copy_order(blocks)
        statement = q.COPY_IN.format(table=ident, columns=sql.SQL(", ").join(
            sql.Identifier(names[i]) for i in order))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            for data in encode([blocks[i] for i in order], len(gdf)):
                copy.write(data)
    else:  # a column type the column encoder does not know: psycopg row by row
        columns = [range(1, len(gdf) + 1),
                   *(_python_values(gdf[c], pg_types[c], int(srid)) for c in attrs)]
        columns.append(geoms_ewkb[:])
        statement = q.COPY_IN.format(table=ident, columns=sql.SQL(", ").join(
            map(sql.Identifier, names)))
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int8", *(_COPY_TYPE[pg_types[c]] for c in attrs), "bytea"])
            for row in zip(*columns, strict=True):
                copy.write_row(row)
    if not index:
        return len(gdf)
    conn.execute(q.ADD_PRIMARY_KEY.format(table=ident, key=sql.Identifier(key)))
    conn.execute(q.SYNC_IDENTITY, {"table": ident.as_string(conn), "key": key, "n": len(gdf)})
    conn.execute(q.GIST_INDEX.format(name=sql.Identifier(f"{name[:55]}_geom_gix"), table=ident,
                                     geom=sql.Identifier(geometry_name)))
    conn.execute(q.ANALYZE.format(table=ident))
    return len(gdf)
