"""The I/O floor: the least code that moves a layer between PostGIS and a GeoDataFrame.

Binary COPY both ways, geometries as WKB, nothing else: no catalog lookups, no type
mapping, no Multi* promotion, no checks. The project's ``read_layer``/``write_layer`` are
measured against these (goal: within 1.2x), and every job's floor is
``copy_read + bare computation + copy_write``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql

__all__ = ["copy_read", "copy_write"]

_DDL = {"int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
        "float8": "double precision", "text": "text", "bool": "boolean"}


def copy_read(conn: psycopg.Connection[Any], table: str, columns: Mapping[str, str], *,
              geometry: str = "geom", srid: int = 3857) -> gpd.GeoDataFrame:
    """Read ``columns`` (name -> COPY type, e.g. ``{"id": "int8"}``) and the geometry."""
    schema, _, name = table.rpartition(".")
    names = [*columns, geometry]
    statement = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(schema, name))
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types([*columns.values(), "bytea"])
        rows = list(copy.rows())
    values = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    data = {c: np.asarray(v) if t != "text" else pd.array(v, dtype="str")
            for (c, t), v in zip(columns.items(), values, strict=False)}
    geoms = shapely.from_wkb(np.asarray(values[-1], dtype=object))
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=srid), crs=srid)


def copy_write(conn: psycopg.Connection[Any], gdf: gpd.GeoDataFrame, table: str,
               columns: Mapping[str, str], *, geometry_type: str = "Geometry",
               srid: int = 3857) -> int:
    """Create ``table`` with ``columns`` (name -> COPY type) and a typed geometry, by COPY.

    Adds the GiST index, as any result table needs. Returns the row count.
    """
    schema, _, name = table.rpartition(".")
    ident = sql.Identifier(schema, name)
    defs = [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_DDL[t]))
            for c, t in columns.items()]
    defs.append(sql.SQL("geom geometry({}, {})").format(sql.SQL(geometry_type),
                                                        sql.Literal(int(srid))))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(defs)))
    wkb = shapely.to_wkb(shapely.set_srid(gdf.geometry.to_numpy(), int(srid)), include_srid=True)
    cols = [gdf[c].tolist() for c in columns]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, [*columns, "geom"])))
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types([*columns.values(), "bytea"])
        for row in zip(*cols, wkb, strict=True):
            copy.write_row(row)
    conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(ident))
    return len(gdf)
