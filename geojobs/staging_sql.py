"""Named SQL of the staging tables of partitioned (Dask) jobs: see :mod:`geojobs.staging`.

Identifiers go through ``psycopg.sql.Identifier``; values are query parameters.
"""

from __future__ import annotations

from psycopg import sql

SCHEMA = "geojobs_staging"

# Taken shared by each Dask task around its write, exclusively by whoever drops the job's
# parts: a drop waits for the writes in flight, and a write after a drop finds the job no
# longer running with its attempt and writes nothing.
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('geojobs_staging', %(job_id)s))"
LOCK_EXCLUSIVE = "SELECT pg_advisory_xact_lock(hashtextextended('geojobs_staging', %(job_id)s))"

# Is this attempt of the job still the running one? (a task of a stale attempt must not write)
ATTEMPT_RUNNING = """
SELECT 1 FROM background_jobs
WHERE id = %(job_id)s AND status = 'running' AND attempts = %(attempt)s
"""

# The staging tables of a job (every attempt), in partition order.
JOB_PARTS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'geojobs_staging' AND c.relkind = 'r'
  AND c.relname ~ ('^j' || %(job_id)s::text || '_a[0-9]+_p[0-9]+$')
ORDER BY c.relname
"""

# Every staging table, for `geojobs janitor`-style checks and the tests.
ALL_PARTS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'geojobs_staging' AND c.relkind = 'r' ORDER BY c.relname
"""

DROP_TABLE = sql.SQL("DROP TABLE IF EXISTS {table}")

# The row count, geometry types and column types of one part, read when publishing.
INSERT_PART = sql.SQL("INSERT INTO {output} ({columns}) SELECT {values} FROM {part} ORDER BY {key}")

# -- partitioning ---------------------------------------------------------------------------

# Rows, then the extent (a box of the features' boxes, rounded outwards).
COUNT_ROWS = sql.SQL("SELECT count(*) FROM {table}")
EXTENT = sql.SQL("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
                 "FROM (SELECT ST_Extent({geom}) AS e FROM {table}) AS x")
SET_SEED = "SELECT setseed(0.25)"
# A sample of the lower-left corners of the features' boxes: the tiles are cut from it.
SAMPLE_CORNERS = sql.SQL(
    "SELECT ST_XMin({geom}), ST_YMin({geom}) FROM {table} "
    "WHERE {geom} IS NOT NULL AND NOT ST_IsEmpty({geom}) AND random() < %(fraction)s")
# One tile: the features whose box's lower-left corner lies in [x0, x1) x [y0, y1); the &&
# test lets a GiST index of the input find them. An open side has no bound.
TILE_BOX = sql.SQL("{geom} && ST_MakeEnvelope({x0}, {y0}, {x1}, {y1}, {srid})")
TILE_BOUND = sql.SQL("{fn}({geom}) {op} {value}")
TILE_NULLS = sql.SQL("({geom} IS NULL OR ST_IsEmpty({geom}))")
HAS_GIST_INDEX = """
SELECT EXISTS (
  SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam JOIN pg_attribute a ON a.attrelid = i.indrelid
  WHERE i.indrelid = to_regclass(%(table)s) AND am.amname = 'gist' AND a.attname = %(column)s
    AND a.attnum = ANY (i.indkey))
"""
# Point incidents: how many are not points, and the exact extent of those that are.
POINT_EXTENT = sql.SQL(
    "SELECT count(*) FILTER (WHERE GeometryType({geom}) NOT IN ('POINT')), "
    "array_agg(DISTINCT GeometryType({geom})) FILTER (WHERE GeometryType({geom}) <> 'POINT'), "
    "min(ST_X({geom})) FILTER (WHERE GeometryType({geom}) = 'POINT'), "
    "min(ST_Y({geom})) FILTER (WHERE GeometryType({geom}) = 'POINT'), "
    "max(ST_X({geom})) FILTER (WHERE GeometryType({geom}) = 'POINT'), "
    "max(ST_Y({geom})) FILTER (WHERE GeometryType({geom}) = 'POINT') "
    "FROM {table} WHERE {geom} IS NOT NULL AND NOT ST_IsEmpty({geom})")

# Which of these jobs are running, and with which attempt (the janitor keeps their parts).
RUNNING_ATTEMPTS = """
SELECT id, attempts FROM background_jobs WHERE id = ANY (%(ids)s) AND status = 'running'
"""
