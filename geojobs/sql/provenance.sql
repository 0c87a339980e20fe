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

-- name: parallel_scan
-- Lets the planner share the fingerprint's scan among parallel workers: its cost is the text
-- and hash of every row, which the default costs do not count. Lasts until the transaction ends.
SELECT set_config('parallel_setup_cost', '0', true), set_config('parallel_tuple_cost', '0', true);

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
