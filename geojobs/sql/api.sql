-- The HTTP API's named queries (asyncpg in the API, psycopg in `geojobs keys`). Each query
-- starts with a "-- name: <name>" line and a one-line comment; parameters are named.

-- name: key_by_hash
-- The active user whose key has this hash (Bearer).
SELECT name, key_hash, admin FROM api_keys WHERE key_hash = %(key_hash)s AND revoked_at IS NULL;

-- name: key_by_name
-- The active user of this name (HTTP Basic).
SELECT name, key_hash, admin FROM api_keys WHERE name = %(name)s AND revoked_at IS NULL;

-- name: create_key
-- A new user with the hash of its key.
INSERT INTO api_keys (name, key_hash, admin) VALUES (%(name)s, %(key_hash)s, %(admin)s)
RETURNING name;

-- name: list_keys
-- Every user, active or revoked.
SELECT name, admin, created_at, revoked_at FROM api_keys ORDER BY name;

-- name: revoke_key
-- Revoke a user's key now.
UPDATE api_keys SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING name;

-- name: role_exists
-- Whether a database role has this name (API user names must not shadow login roles).
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(name)s);

-- name: submit_job
-- Insert a job for a user (or find the one of its idempotency key). now() is the transaction's
-- time, so it equals the new row's created_at.
SELECT job_id, created, now() AS created_at FROM geojobs_submit_as(%(username)s, %(job_type)s, %(params)s::jsonb,
    %(idempotency_key)s, %(max_queued)s, %(success_uri)s, %(in_progress_uri)s, %(failed_uri)s);

-- name: get_job
-- One job as the API shows it, if the user may see it (NULL user: any).
SELECT id, job_type, params, status, progress, error, result, created_at, started_at, finished_at,
       greatest(created_at, started_at, finished_at, heartbeat_at) AS updated_at, submitted_by
FROM background_jobs
WHERE id = %(id)s AND (%(username)s::text IS NULL OR submitted_by = %(username)s);

-- name: get_job_status
-- One job's statusInfo columns (get_job without params and result, which can be large).
SELECT id, job_type, status, progress, error, created_at, started_at, finished_at,
       greatest(created_at, started_at, finished_at, heartbeat_at) AS updated_at
FROM background_jobs
WHERE id = %(id)s AND (%(username)s::text IS NULL OR submitted_by = %(username)s);

-- name: list_jobs
-- A user's jobs (NULL user: all), newest first, keyset-paged on id, with the filters of /jobs.
SELECT id, job_type, status, progress, error, result, created_at, started_at, finished_at,
       greatest(created_at, started_at, finished_at, heartbeat_at) AS updated_at, submitted_by
FROM background_jobs
WHERE (%(username)s::text IS NULL OR submitted_by = %(username)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
  AND (%(types)s::text[] IS NULL OR job_type = ANY (%(types)s))
  AND (%(statuses)s::text[] IS NULL OR status = ANY (%(statuses)s))
  AND (%(created_from)s::timestamptz IS NULL OR created_at >= %(created_from)s)
  AND (%(created_to)s::timestamptz IS NULL OR created_at <= %(created_to)s)
  AND (%(min_duration)s::float8 IS NULL OR extract(epoch FROM coalesce(finished_at, now()) - started_at)
       >= %(min_duration)s)
  AND (%(max_duration)s::float8 IS NULL OR extract(epoch FROM coalesce(finished_at, now()) - started_at)
       <= %(max_duration)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: cancel_job
-- Cancel a user's queued or running job (NULL user: any).
SELECT geojobs_cancel_as(%(id)s, %(username)s);

-- name: dismiss_job
-- Drop a user's finished job's result table and delete its row; its result, or NULL.
SELECT geojobs_dismiss_as(%(id)s, %(username)s);

-- name: table_writer
-- Who submitted the newest completed job that wrote this table or view (NULL: no job did).
SELECT submitted_by FROM background_jobs
WHERE status = 'completed'
  AND coalesce(result ->> 'output_table', result ->> 'output_view') = %(table)s
ORDER BY id DESC LIMIT 1;

-- name: relation_exists
-- Whether a table or view of this name exists.
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: claim_deliveries
-- Callbacks due now, locked for this dispatcher (others skip them).
SELECT d.id, d.job_id, d.uri, d.state, d.attempts, d.created_at
FROM api_deliveries d
WHERE d.delivered_at IS NULL AND d.given_up_at IS NULL AND d.next_at <= now()
ORDER BY d.next_at
LIMIT 20
FOR UPDATE SKIP LOCKED;

-- name: delivery_done
-- A callback the receiver accepted.
UPDATE api_deliveries SET delivered_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = %(id)s;

-- name: delivery_retry
-- A callback that failed: try again later, or give up past the deadline.
UPDATE api_deliveries
SET attempts = attempts + 1, last_error = %(error)s,
    next_at = now() + make_interval(secs => %(delay)s),
    given_up_at = CASE WHEN now() + make_interval(secs => %(delay)s) > created_at + interval '1 hour'
                       THEN now() END
WHERE id = %(id)s;

-- name: next_delivery
-- Seconds until the next pending callback is due (NULL: none pending).
SELECT extract(epoch FROM min(next_at) - now())::float8 FROM api_deliveries
WHERE delivered_at IS NULL AND given_up_at IS NULL;

-- name: pipeline_queue_room
-- The user's jobs that count against GEOJOBS_API_MAX_QUEUED for a new pipeline (queued or
-- waiting), after taking a per-user lock held to the end of the transaction, so two pipelines
-- submitted at once by one user are counted one after the other.
SELECT count(*) FROM background_jobs, (SELECT pg_advisory_xact_lock(
    hashtextextended('geojobs pipeline queue ' || %(username)s, 0))) AS locked
WHERE submitted_by = %(username)s AND status IN ('queued', 'waiting');

-- name: pipeline_create_as
-- Record a pipeline run of an API user (its steps follow in the same transaction).
SELECT geojobs_pipeline_create_as(%(username)s, %(name)s, %(spec)s) AS id;

-- name: pipeline_step_as
-- Insert one step's job of the user's run and link it; the job id.
SELECT geojobs_pipeline_step_as(%(username)s, %(pipeline_id)s, %(step)s, %(position)s,
                                %(job_type)s, %(params)s, %(depends_on)s::bigint[],
                                %(priority)s, %(max_attempts)s) AS job_id;

-- name: get_pipeline
-- One pipeline run, if the user may see it (NULL user: any).
SELECT id, name, replaces, rerun_from, submitted_by, created_at
FROM pipelines
WHERE id = %(id)s AND (%(username)s::text IS NULL OR submitted_by = %(username)s);

-- name: pipeline_steps
-- The steps of a run in spec order with their jobs as the API shows them.
SELECT s.step, s.position, s.reused, j.id, j.job_type, j.status, j.progress, j.error, j.result,
       j.depends_on, j.created_at, j.started_at, j.finished_at,
       greatest(j.created_at, j.started_at, j.finished_at, j.heartbeat_at) AS updated_at
FROM pipeline_steps AS s JOIN background_jobs AS j ON j.id = s.job_id
WHERE s.pipeline_id = %(id)s
ORDER BY s.position;

-- name: layer_writers
-- For each table or view (schema.name) written by a completed job whose outputs were not dropped
-- by the janitor: the newest such job (NULL tables: every one; else only those tables).
SELECT DISTINCT ON (target) target, id, job_type, params, result, finished_at, submitted_by
FROM (SELECT coalesce(result ->> 'output_table', result ->> 'output_view') AS target, id,
             job_type, params, result, finished_at, submitted_by
      FROM background_jobs
      WHERE status = 'completed' AND NOT coalesce(result ? 'expired_at', false)) AS j
WHERE target IS NOT NULL AND (%(tables)s::text[] IS NULL OR target = ANY (%(tables)s))
ORDER BY target, id DESC;

-- name: layer_fingerprint
-- How many completed jobs name a table that is served as a layer, and the sum of their ids: it
-- changes when such a job completes, is dismissed, deleted or expires. The layer catalog's
-- polling fallback behind PgBouncer when no direct connection carries NOTIFY geojobs_jobs.
SELECT count(*) AS jobs, coalesce(sum(id), 0) AS ids
FROM background_jobs
WHERE status = 'completed' AND NOT coalesce(result ? 'expired_at', false)
  AND coalesce(result ->> 'output_table', result ->> 'output_view') IS NOT NULL;

-- name: job_layer
-- The table or view a job's result names (NULL: none, or no such job).
SELECT coalesce(result ->> 'output_table', result ->> 'output_view') FROM background_jobs
WHERE id = %(id)s;

-- name: job_changes
-- Status and progress of the jobs some request waits for: the API's polling fallback behind
-- PgBouncer when no direct connection (GEOJOBS_LISTEN_URL) carries NOTIFY geojobs_jobs.
SELECT id, status, progress FROM background_jobs WHERE id = ANY(%(ids)s::bigint[]);
