"""The in-database engine for clip and erase, measured against the Shapely engine the jobs use.

Same semantics as :mod:`analysis.overlay`: the overlay layer is transformed, repaired and
reduced to polygons; invalid inputs are repaired; a GiST-indexed join finds for each input
feature the overlay features it meets (the overlay side is the outer loop, so PostGIS caches
each prepared overlay polygon); an input covered by one of them is copied, any other is cut by
the union of its neighbours (each distinct set of neighbours unioned once); lower-dimension
slivers are dropped and empty results left out.  The statements are written as a user tuning
PostGIS would; nothing here runs in the jobs.
"""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import sql

__all__ = ["overlay_in_database"]

_MASK = sql.SQL(
    """
    CREATE TEMP TABLE _mask ON COMMIT DROP AS
    SELECT row_number() OVER () AS mid, g FROM (
        SELECT ST_CollectionExtract(ST_MakeValid(ST_Transform(geom, {srid})), 3) AS g
        FROM {overlay} WHERE geom IS NOT NULL AND NOT ST_IsEmpty(geom)) s
    WHERE NOT ST_IsEmpty(g);
    CREATE INDEX ON _mask USING gist (g);
    ANALYZE _mask;
    CREATE TEMP TABLE _pairs ON COMMIT DROP AS
    SELECT i.{key} AS k, array_agg(m.mid ORDER BY m.mid) AS mids,
           bool_or(ST_Covers(m.g, i.{geom})) AS covered
    FROM _mask m JOIN {input} i ON ST_Intersects(m.g, i.{geom})
    GROUP BY i.{key};
    CREATE TEMP TABLE _unions ON COMMIT DROP AS
    SELECT mids, (SELECT ST_Union(g) FROM _mask WHERE mid = ANY (s.mids)) AS g
    FROM (SELECT DISTINCT mids FROM _pairs WHERE NOT covered) s;
    """
)

_REPAIRED = sql.SQL(
    "CASE WHEN ST_IsValid(i.{geom}) THEN i.{geom} ELSE ST_CollectionExtract(ST_MakeValid(i.{geom}), 3) END"
)

_CLIP = sql.SQL(
    """
    CREATE TABLE {output} AS SELECT * FROM (
        SELECT {attrs}, CASE WHEN p.covered THEN ST_Multi({repaired})
            ELSE ST_Multi(ST_CollectionExtract(ST_Intersection({repaired}, u.g), 3)) END AS geom
        FROM _pairs p JOIN {input} i ON i.{key} = p.k
        LEFT JOIN _unions u ON u.mids = p.mids AND NOT p.covered) r
    WHERE NOT ST_IsEmpty(geom);
    CREATE INDEX ON {output} USING gist (geom);
    """
)

_ERASE = sql.SQL(
    """
    CREATE TABLE {output} AS SELECT * FROM (
        SELECT {attrs}, CASE WHEN p.k IS NULL THEN ST_Multi({repaired})
            ELSE ST_Multi(ST_CollectionExtract(ST_Difference({repaired}, u.g), 3)) END AS geom
        FROM {input} i LEFT JOIN _pairs p ON p.k = i.{key}
        LEFT JOIN _unions u ON u.mids = p.mids
        WHERE p.covered IS NOT TRUE AND i.{geom} IS NOT NULL AND NOT ST_IsEmpty(i.{geom})) r
    WHERE NOT ST_IsEmpty(geom);
    CREATE INDEX ON {output} USING gist (geom);
    """
)


def overlay_in_database(
    conn: psycopg.Connection[Any],
    how: Literal["clip", "erase"],
    *,
    input_table: str,
    overlay_table: str,
    output_table: str,
    key: str,
    attributes: list[str],
    srid: int,
    geometry: str = "geom",
) -> int:
    """Clip or erase polygons in PostGIS into ``output_table``; return its row count.

    Runs in the caller's transaction (the temporary tables drop at commit or rollback).
    """
    names = {
        "input": sql.Identifier(*input_table.split(".")),
        "overlay": sql.Identifier(*overlay_table.split(".")),
        "output": sql.Identifier(*output_table.split(".")),
        "key": sql.Identifier(key),
        "geom": sql.Identifier(geometry),
        "srid": sql.Literal(srid),
    }
    attrs = sql.SQL(", ").join(sql.Identifier("i", a) for a in attributes)
    repaired = _REPAIRED.format(geom=names["geom"])
    conn.execute(_MASK.format(**names))
    statement = _CLIP if how == "clip" else _ERASE
    conn.execute(statement.format(attrs=attrs, repaired=repaired, **names))
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(names["output"])).fetchone()
    return int(count[0]) if count else 0
