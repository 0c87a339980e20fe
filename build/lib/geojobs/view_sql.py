"""Named SQL of the ``create_view`` job: views, materialised views, their indexes, refresh.

Identifiers go in through ``psycopg.sql.Identifier`` placeholders; the WHERE clause is a
``Composed`` of identifiers and literals from :mod:`geojobs.filters`; catalog look-ups take
values as query parameters.
"""

from __future__ import annotations

from psycopg import sql

CREATE_VIEW = sql.SQL("CREATE VIEW {view} AS SELECT {columns} FROM {table} WHERE {where}")
CREATE_MATERIALIZED = sql.SQL(
    "CREATE MATERIALIZED VIEW {view} AS SELECT {columns} FROM {table} WHERE {where} WITH DATA"
)
DROP = {
    "v": sql.SQL("DROP VIEW {view}"),
    "m": sql.SQL("DROP MATERIALIZED VIEW {view}"),
}
GIST_INDEX = sql.SQL("CREATE INDEX {name} ON {view} USING gist ({geom})")
UNIQUE_INDEX = sql.SQL("CREATE UNIQUE INDEX {name} ON {view} ({key})")
REFRESH = sql.SQL("REFRESH MATERIALIZED VIEW {view}")
REFRESH_CONCURRENTLY = sql.SQL("REFRESH MATERIALIZED VIEW CONCURRENTLY {view}")
COUNT_ROWS = sql.SQL("SELECT count(*) FROM {view}")

# A geometry column cast to its type and SRID, so geometry_columns (and QGIS) know them.
TYPED_GEOMETRY = sql.SQL("{geom}::geometry({type}, {srid}) AS {geom}")
MULTI_GEOMETRY = sql.SQL("ST_Multi({geom})::geometry({type}, {srid}) AS {geom}")

# The geometry types and SRIDs present in an untyped geometry column (one scan).
GEOMETRY_PROFILE = sql.SQL(
    "SELECT array_agg(DISTINCT upper(GeometryType({geom}))), array_agg(DISTINCT ST_SRID({geom}))"
    " FROM {table} WHERE {geom} IS NOT NULL"
)

# Whether a relation has a unique index without a predicate (REFRESH ... CONCURRENTLY needs one).
HAS_UNIQUE_INDEX = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND i.indisunique
      AND i.indpred IS NULL)
"""
