-- Provenance of job results (geojobs/provenance.py). Each query starts with a "-- name: <name>"
-- line and a one-line comment; {table} and {relation} are filled with psycopg.sql.Identifier.

-- name: find_relation
-- An input or output relation by literal name (schema optional: the search path), its kind.
SELECT n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %(name)s
  AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND (n.nspname = %(schema)s OR (%(schema)s::text IS NULL AND n.nspname = ANY (current_schemas(false))))
ORDER BY array_position(current_schemas(false), n.nspname::name) NULLS LAST
LIMIT 1;

-- name: fingerprint
-- Row count and the sum of a 64-bit hash of each row's text form (every column, geometry as
-- hex EWKB): order-independent, one sequential scan, no sort. Python takes it modulo 2^64.
SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)
FROM {table} AS t;

-- name: fingerprint_settings
-- For the rest of the (sub)transaction: the settings a row's text form depends on, fixed so
-- that the same rows give the same signature on any session (the job's, the side connection's,
-- a psql); and the fingerprint's scan shared among parallel workers (its cost is the text and
-- hash of every row, which the default costs do not count).
SELECT set_config('DateStyle', 'ISO, MDY', true), set_config('IntervalStyle', 'postgres', true),
       set_config('TimeZone', 'UTC', true), set_config('extra_float_digits', '1', true),
       set_config('bytea_output', 'hex', true), set_config('lc_monetary', 'C', true),
       set_config('parallel_setup_cost', '0', true), set_config('parallel_tuple_cost', '0', true);

-- name: export_snapshot
-- The job's snapshot, for the side connection to import (valid until the job's transaction ends).
SELECT pg_export_snapshot();

-- name: begin_beside
-- The side connection's transaction: it reads the job's snapshot (set next), nothing else.
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: import_snapshot
-- The first statement of that transaction; bound client side (SET takes no parameters).
SET TRANSACTION SNAPSHOT %(snapshot)s;

-- name: beside_session
-- The server process of the side transaction (its blockers are watched), and the setting a job's
-- session has (a killed job process's backend notices at once), for the transaction. No parallel
-- workers: the scan runs while the handler works, and should take as little of its cores.
SELECT pg_backend_pid(), set_config('client_connection_check_interval', '1000', true),
       set_config('max_parallel_workers_per_gather', '0', true);

-- name: blocked_by_job
-- Whether the side transaction (%(side)s) waits, directly or through others, for a lock the job's
-- own transaction holds: the job then waits for it in turn, a wait PostgreSQL cannot see.
WITH RECURSIVE blockers(pid) AS (
    SELECT unnest(pg_blocking_pids(%(side)s))
  UNION
    SELECT unnest(pg_blocking_pids(b.pid)) FROM blockers AS b
)
SELECT pg_backend_pid() IN (SELECT pid FROM blockers);

-- name: pipeline_of_rerun
-- The pipeline run a re-run job belongs to (as a new, not reused, step), and the run it replaces.
SELECT p.id, p.replaces, p.rerun_from, s.step
FROM pipeline_steps AS s JOIN pipelines AS p ON p.id = s.pipeline_id
WHERE s.job_id = %(id)s AND NOT s.reused
ORDER BY p.id DESC
LIMIT 1;

-- name: comment_table
-- The provenance as the result's COMMENT (psql \dt+, \dv+, QGIS layer properties). {kind} is
-- TABLE, VIEW or MATERIALIZED VIEW; the text is bound client side (COMMENT takes no parameters).
COMMENT ON {kind} {relation} IS %(comment)s;
