-- The queue's named queries. Loaded once by workers/queue.py, the only module that runs them.
-- Each query starts with a "-- name: <name>" line and a one-line comment.

-- name: claim_job
-- Take the next ready job of one type and mark it running (one statement, SKIP LOCKED).
-- Jobs with dependencies get their {"output_of": id} parameters resolved to those jobs'
-- output tables (their dependencies are completed, or they would still be waiting).
-- statement_timestamp(), not now(): a job process claims its next job at the end of the
-- transaction of the job it completes, which began when that job began.
UPDATE background_jobs AS j
SET status = 'running',
    attempts = j.attempts + 1,
    worker_id = %(worker_id)s,
    started_at = statement_timestamp(),
    heartbeat_at = statement_timestamp(),
    finished_at = NULL,
    progress = 0
WHERE j.id = (
    SELECT id FROM background_jobs
    WHERE status = 'queued' AND job_type = %(job_type)s
      AND available_at <= statement_timestamp()
    ORDER BY priority DESC, available_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.job_type,
          CASE WHEN j.depends_on IS NULL THEN j.params ELSE geojobs_resolve_outputs(j.params) END,
          j.attempts, j.max_attempts, j.timeout_seconds, j.memory_limit_mb, j.rerun_of;

-- name: complete_job
-- Record success, only if this worker still holds this attempt (compare-and-set).
UPDATE background_jobs
SET status = 'completed', finished_at = clock_timestamp(), progress = 1, result = %(result)s, error = NULL
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING id;

-- name: complete_job_or_raise
-- complete_job for a transaction whose COMMIT is already on its way (pipelined): when this
-- worker no longer holds the attempt, raise (SQLSTATE GJ409) so the transaction, the job's
-- writes included, rolls back instead of committing.
WITH done AS (
    UPDATE background_jobs
    SET status = 'completed', finished_at = clock_timestamp(), progress = 1, result = %(result)s,
        error = NULL
    WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
    RETURNING id
)
SELECT id FROM done
UNION ALL
SELECT geojobs_lease_lost(%(id)s) WHERE NOT EXISTS (SELECT 1 FROM done);

-- name: fail_job
-- Record a failure: back to queued after a delay while attempts remain and the error is
-- retryable, otherwise failed. Compare-and-set like complete_job.
UPDATE background_jobs
SET status = CASE WHEN %(retry)s AND attempts < max_attempts THEN 'queued' ELSE 'failed' END,
    available_at = CASE WHEN %(retry)s AND attempts < max_attempts
                        THEN now() + make_interval(secs => %(delay_seconds)s)
                        ELSE available_at END,
    finished_at = CASE WHEN %(retry)s AND attempts < max_attempts THEN NULL ELSE now() END,
    worker_id = CASE WHEN %(retry)s AND attempts < max_attempts THEN NULL ELSE worker_id END,
    error = %(error)s
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING status, available_at;

-- name: release_job
-- Give a job back without spending its attempt (graceful shutdown).
UPDATE background_jobs
SET status = 'queued', attempts = attempts - 1, worker_id = NULL, heartbeat_at = NULL,
    started_at = NULL, progress = NULL
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING id;

-- name: heartbeat
-- Prove this worker still holds the job; also records progress when given. Returns no row
-- when the lease was lost or the job was cancelled.
UPDATE background_jobs
SET heartbeat_at = now(), progress = COALESCE(%(progress)s, progress)
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING id;

-- name: requeue_stale
-- Take back running jobs whose heartbeat is older than the lease: queued again, or failed
-- once their attempts are spent.
UPDATE background_jobs AS j
SET status = CASE WHEN j.attempts < j.max_attempts THEN 'queued' ELSE 'failed' END,
    finished_at = CASE WHEN j.attempts < j.max_attempts THEN NULL ELSE now() END,
    error = 'worker ' || coalesce(j.worker_id, '?') || ' stopped sending heartbeats during attempt '
            || j.attempts || '; the job was taken back',
    worker_id = NULL
WHERE j.id IN (
    SELECT id FROM background_jobs
    WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %(lease_seconds)s)
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.status;

-- name: enqueue_job
-- Insert a job, as any front end would (depends_on NULL for an independent job; rerun_of the
-- job it re-runs, or NULL).
INSERT INTO background_jobs (job_type, params, priority, max_attempts, depends_on, rerun_of)
VALUES (%(job_type)s, %(params)s, %(priority)s, %(max_attempts)s, %(depends_on)s::bigint[],
        %(rerun_of)s::bigint)
RETURNING id;

-- name: get_job
-- One job row.
SELECT id, job_type, params, status, priority, attempts, max_attempts, available_at, created_at,
       started_at, finished_at, heartbeat_at, worker_id, progress, result, error, depends_on,
       timeout_seconds, memory_limit_mb, expires_at, pinned, idempotency_key, rerun_of,
       submitted_by
FROM background_jobs WHERE id = %(id)s;

-- name: list_jobs
-- Recent jobs, newest first, optionally of one status and type.
SELECT id, job_type, status, attempts, max_attempts, created_at, started_at, finished_at,
       progress, result, error
FROM background_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: cancel_job
-- Cancel a waiting, queued or running job; the worker of a running one is told by NOTIFY
-- and stops it.
UPDATE background_jobs
SET status = 'cancelled', finished_at = now(), error = 'cancelled by request'
WHERE id = %(id)s AND status IN ('waiting', 'queued', 'running')
RETURNING id, status;

-- name: retry_job
-- Queue a failed or cancelled job again now, with a fresh set of attempts.
UPDATE background_jobs
SET status = 'queued', attempts = 0, available_at = now(), finished_at = NULL, started_at = NULL,
    worker_id = NULL, error = NULL, result = NULL, progress = NULL
WHERE id = %(id)s AND status IN ('failed', 'cancelled')
RETURNING id;

-- name: running_of_worker
-- The jobs one worker holds as running: after its job process was killed, the database says
-- which jobs that process had claimed (one may not have been announced yet).
SELECT id, job_type, attempts, max_attempts FROM background_jobs
WHERE worker_id = %(worker_id)s AND status = 'running'
ORDER BY id;

-- name: job_state
-- Status and holder of one job: why a heartbeat was refused (cancelled, or the lease lost).
SELECT status, worker_id, attempts FROM background_jobs WHERE id = %(id)s;

-- name: pin_transaction
-- Through a transaction pooler: set the job transaction's settings (application_name: its tag)
-- for this transaction alone, and name the server process that runs it.
SELECT pg_backend_pid(),
       (SELECT count(set_config(s.name, s.value, true))
        FROM unnest(%(names)s::text[], %(values)s::text[]) AS s(name, value));

-- name: terminate_backend
-- End the database session of a killed job process at once (its transaction rolls back),
-- waiting up to one second for it to be gone; with a tag, only while the session's
-- application_name is that tag (behind PgBouncer: only while it runs the job's transaction).
SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity
WHERE pid = %(pid)s AND (%(tag)s::text IS NULL OR application_name = %(tag)s::text);

-- name: register_worker
-- A worker process announces itself (or again, after a reconnection).
INSERT INTO geojobs_workers (worker_id, job_type, host, pid, version, rss_mb)
VALUES (%(worker_id)s, %(job_type)s, %(host)s, %(pid)s, %(version)s, %(rss_mb)s)
ON CONFLICT (worker_id) DO UPDATE
SET last_seen = now(), current_job = NULL, rss_mb = EXCLUDED.rss_mb;

-- name: touch_worker
-- A worker is alive: its current job, jobs run and resident memory.
UPDATE geojobs_workers
SET last_seen = now(), current_job = %(current_job)s, jobs_run = %(jobs_run)s, rss_mb = %(rss_mb)s
WHERE worker_id = %(worker_id)s
RETURNING worker_id;

-- name: unregister_worker
-- A worker stops.
DELETE FROM geojobs_workers WHERE worker_id = %(worker_id)s;

-- name: prune_workers
-- Forget workers not seen for longer than the lease.
DELETE FROM geojobs_workers WHERE last_seen < now() - make_interval(secs => %(lease_seconds)s)
RETURNING worker_id;

-- name: list_workers
-- Every registered worker, with the seconds since it was last seen.
SELECT worker_id, job_type, host, pid, version, started_at, last_seen, current_job, jobs_run,
       rss_mb, extract(epoch FROM now() - last_seen)::float8 AS seen_seconds_ago
FROM geojobs_workers
ORDER BY job_type, started_at;

-- name: live_workers
-- How many workers of one type were seen within the given seconds.
SELECT count(*) FROM geojobs_workers
WHERE job_type = %(job_type)s AND last_seen >= now() - make_interval(secs => %(seconds)s);


-- name: claim_quiet
-- For one job: how long it has been queued, and how long since a worker of its type last showed
-- life (claimed a job, or sent a heartbeat for a job it is running) after this job was queued
-- (null when none did), both in seconds of the database's clock. Only jobs running, finished
-- since, or claimed and queued again are read (each through a partial index), so a long history
-- costs nothing; a claim before this job was queued would count for more than queued_for anyway.
SELECT EXTRACT(epoch FROM now() - j.created_at)::float8 AS queued_for,
       EXTRACT(epoch FROM now() - GREATEST(
           (SELECT max(GREATEST(o.started_at, o.heartbeat_at)) FROM background_jobs AS o
            WHERE o.status = 'running' AND o.job_type = j.job_type),
           (SELECT max(o.started_at) FROM background_jobs AS o
            WHERE o.status IN ('completed', 'failed', 'cancelled') AND o.job_type = j.job_type
              AND o.finished_at >= j.created_at),
           (SELECT max(o.started_at) FROM background_jobs AS o
            WHERE o.status = 'queued' AND o.job_type = j.job_type AND o.started_at >= j.created_at)
       ))::float8 AS since_claim
FROM background_jobs AS j WHERE j.id = %(id)s;

-- name: cancel_own_job
-- Cancel a queued or running job the calling login role submitted (geojobs_cancel, migration
-- 0002): what a front end logged in as geojobs_frontend may do.
SELECT geojobs_cancel(%(id)s);

-- name: insert_pipeline
-- Record a pipeline run (its steps' jobs are inserted in the same transaction).
INSERT INTO pipelines (name, spec, replaces, rerun_from)
VALUES (%(name)s, %(spec)s, %(replaces)s, %(rerun_from)s)
RETURNING id;

-- name: insert_pipeline_step
-- Link a step of a pipeline run to its job (a new one, or a reused upstream one on a rerun).
INSERT INTO pipeline_steps (pipeline_id, step, position, job_id, reused)
VALUES (%(pipeline_id)s, %(step)s, %(position)s, %(job_id)s, %(reused)s);

-- name: get_pipeline
-- One pipeline run.
SELECT id, name, spec, replaces, rerun_from, submitted_by, created_at
FROM pipelines WHERE id = %(id)s;

-- name: pipeline_steps
-- The steps of a pipeline run in spec order, with their jobs' state.
SELECT s.step, s.position, s.reused, j.id AS job_id, j.job_type, j.status, j.progress,
       j.depends_on, j.attempts, j.max_attempts, j.result, j.error, j.started_at, j.finished_at
FROM pipeline_steps AS s JOIN background_jobs AS j ON j.id = s.job_id
WHERE s.pipeline_id = %(id)s
ORDER BY s.position;

-- name: cancel_pipeline
-- Cancel every step of a pipeline run that has not finished (reused upstream jobs have).
UPDATE background_jobs
SET status = 'cancelled', finished_at = now(), error = 'cancelled by request'
WHERE id IN (SELECT job_id FROM pipeline_steps WHERE pipeline_id = %(id)s AND NOT reused)
  AND status IN ('waiting', 'queued', 'running')
RETURNING id;

-- name: enqueue_job_controlled
-- Insert a job with limits and an idempotency key; a key already used by this submitter
-- returns the first job instead (inserted = false).
WITH inserted AS (
    INSERT INTO background_jobs (job_type, params, priority, max_attempts, timeout_seconds,
                                 memory_limit_mb, idempotency_key)
    VALUES (%(job_type)s, %(params)s, %(priority)s, %(max_attempts)s, %(timeout_seconds)s,
            %(memory_limit_mb)s, %(idempotency_key)s)
    ON CONFLICT (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, true FROM inserted
UNION ALL
SELECT id, false FROM background_jobs
WHERE submitted_by = session_user AND idempotency_key = %(idempotency_key)s
  AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: insert_rerun
-- Queue a copy of a job with new params (geojobs jobs rerun): same type, priority, attempts,
-- limits and dependencies; rerun_of names the job it re-runs.
INSERT INTO background_jobs (job_type, params, priority, max_attempts, timeout_seconds,
                             memory_limit_mb, depends_on, rerun_of)
SELECT job_type, %(params)s, priority, max_attempts, timeout_seconds, memory_limit_mb,
       depends_on, id
FROM background_jobs WHERE id = %(id)s
RETURNING id;

-- name: pin_job
-- Keep (or stop keeping) a finished job's outputs past their expiry.
UPDATE background_jobs SET pinned = %(pinned)s WHERE id = %(id)s RETURNING id;

-- name: worker_of_job
-- The registry row of the worker holding or last holding a job, if it is still registered.
SELECT w.worker_id, w.host, w.pid, w.version, w.last_seen
FROM background_jobs AS j JOIN geojobs_workers AS w ON w.worker_id = j.worker_id
WHERE j.id = %(id)s;

-- name: janitor_expired_outputs
-- Finished jobs whose outputs are past their expiry, not pinned, not yet dropped, and read by no
-- unfinished job (by name in its params, or as a dependency). A job outside pipelines expires
-- at expires_at, else finished_at + the result TTL (or with its row, past the job TTL). A step
-- of a pipeline run expires with its run(s): once every final step (one no other step of the
-- run depends on) of every run it belongs to is finished, not pinned and past its own expiry.
-- An output a newer, unexpired pipeline step wrote again (a re-run's overwrite) is held until
-- that step expires. Locked, skipping rows another janitor holds.
WITH ttl AS (
    SELECT make_interval(secs => %(result_ttl_days)s * 86400) AS result_ttl,
           make_interval(secs => %(job_ttl_days)s * 86400) AS job_ttl
),
final_step AS (
    SELECT s.pipeline_id, f.id, f.status, f.pinned, f.expires_at, f.finished_at
    FROM pipeline_steps AS s JOIN background_jobs AS f ON f.id = s.job_id
    WHERE NOT EXISTS (SELECT 1 FROM pipeline_steps AS d JOIN background_jobs AS dj ON dj.id = d.job_id
                      WHERE d.pipeline_id = s.pipeline_id AND dj.depends_on @> ARRAY[f.id])
),
live_run AS (
    SELECT DISTINCT f.pipeline_id FROM final_step AS f, ttl
    WHERE f.status NOT IN ('completed', 'failed', 'cancelled') OR f.pinned
       OR COALESCE(f.expires_at, f.finished_at + ttl.result_ttl) >= now()
),
newest_writer AS (
    SELECT n.result->>'output_table' AS output_table, max(n.id) AS id
    FROM pipeline_steps AS s JOIN background_jobs AS n ON n.id = s.job_id
    WHERE n.status = 'completed' AND n.result ? 'output_table' AND NOT n.result ? 'expired_at'
    GROUP BY 1
)
SELECT j.id, j.result
FROM background_jobs AS j, ttl
WHERE j.status IN ('completed', 'failed', 'cancelled') AND NOT j.pinned
  AND j.result IS NOT NULL AND NOT j.result ? 'expired_at'
  AND CASE WHEN j.id IN (SELECT job_id FROM pipeline_steps)
           THEN j.id NOT IN (SELECT s.job_id FROM pipeline_steps AS s
                             WHERE s.pipeline_id IN (SELECT pipeline_id FROM live_run))
           ELSE COALESCE(j.expires_at, j.finished_at + ttl.result_ttl) < now()
                OR j.finished_at < now() - ttl.job_ttl
      END
  AND NOT EXISTS (
      SELECT 1 FROM background_jobs AS o
      WHERE o.status IN ('waiting', 'queued', 'running')
        AND (o.depends_on @> ARRAY[j.id]
             OR strpos(o.params::text, COALESCE(j.result->>'output_table',
                                                j.result->>'output_view', '\0')) > 0))
  AND NOT EXISTS (SELECT 1 FROM newest_writer AS w
                  WHERE w.output_table = j.result->>'output_table' AND w.id > j.id)
ORDER BY j.finished_at
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED;

-- name: janitor_mark_expired
-- Record that a job's outputs were dropped.
UPDATE background_jobs
SET result = result || jsonb_build_object('expired_at', now())
WHERE id = %(id)s;

-- name: janitor_delete_jobs
-- Delete finished job rows past the job TTL whose outputs are gone (or never existed), not
-- pinned and needed by no unfinished job.
DELETE FROM background_jobs AS j
WHERE j.id IN (
    SELECT id FROM background_jobs
    WHERE status IN ('completed', 'failed', 'cancelled') AND NOT pinned
      AND finished_at < now() - make_interval(secs => %(job_ttl_days)s * 86400)
      AND (result IS NULL OR result ? 'expired_at'
           OR NOT (result ?| ARRAY['output_table', 'output_view', 'output_raster']))
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
AND NOT EXISTS (SELECT 1 FROM background_jobs AS o
                WHERE o.status IN ('waiting', 'queued', 'running') AND o.depends_on @> ARRAY[j.id])
AND NOT EXISTS (SELECT 1 FROM pipeline_steps AS s WHERE s.job_id = j.id)
RETURNING j.id;

-- name: janitor_record_run
-- Record one finished janitor run (what it did, on which host).
INSERT INTO geojobs_janitor_runs (host, started_at, jobs_expired, tables_dropped, files_removed,
                                  jobs_deleted)
VALUES (%(host)s, %(started_at)s, %(jobs_expired)s, %(tables_dropped)s, %(files_removed)s,
        %(jobs_deleted)s);

-- name: janitor_lock_idle_jobs
-- Of the given job ids, lock those not running now (SKIP LOCKED: a row being claimed or ended
-- this instant is left for the next run); their scratch directories can go. Ids with no row
-- are returned by janitor_missing_jobs.
SELECT id FROM background_jobs
WHERE id = ANY (%(ids)s) AND status <> 'running'
FOR UPDATE SKIP LOCKED;

-- name: janitor_missing_jobs
-- Of the given job ids, those with no row (deleted): nothing can run them again.
SELECT i FROM unnest(%(ids)s::bigint[]) AS i
WHERE NOT EXISTS (SELECT 1 FROM background_jobs WHERE id = i);
