-- The queue's named queries. Loaded once by workers/queue.py, the only module that runs them.
-- Each query starts with a "-- name: <name>" line and a one-line comment.

-- name: claim_job
-- Take the next ready job of one type and mark it running (one statement, SKIP LOCKED).
UPDATE background_jobs AS j
SET status = 'running',
    attempts = j.attempts + 1,
    worker_id = %(worker_id)s,
    started_at = now(),
    heartbeat_at = now(),
    finished_at = NULL,
    progress = 0
WHERE j.id = (
    SELECT id FROM background_jobs
    WHERE status = 'queued' AND job_type = %(job_type)s AND available_at <= now()
    ORDER BY priority DESC, available_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.job_type, j.params, j.attempts, j.max_attempts;

-- name: complete_job
-- Record success, only if this worker still holds this attempt (compare-and-set).
UPDATE background_jobs
SET status = 'completed', finished_at = clock_timestamp(), progress = 1, result = %(result)s, error = NULL
WHERE id = %(id)s AND worker_id = %(worker_id)s AND attempts = %(attempt)s AND status = 'running'
RETURNING id;

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
-- Insert a job, as any front end would.
INSERT INTO background_jobs (job_type, params, priority, max_attempts)
VALUES (%(job_type)s, %(params)s, %(priority)s, %(max_attempts)s)
RETURNING id;

-- name: get_job
-- One job row.
SELECT id, job_type, params, status, priority, attempts, max_attempts, available_at, created_at,
       started_at, finished_at, heartbeat_at, worker_id, progress, result, error
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
-- Cancel a queued or running job; a running one stops at its next progress check.
UPDATE background_jobs
SET status = 'cancelled', finished_at = now(), error = 'cancelled by request'
WHERE id = %(id)s AND status IN ('queued', 'running')
RETURNING id, status;

-- name: retry_job
-- Queue a failed or cancelled job again now, with a fresh set of attempts.
UPDATE background_jobs
SET status = 'queued', attempts = 0, available_at = now(), finished_at = NULL, started_at = NULL,
    worker_id = NULL, error = NULL, result = NULL, progress = NULL
WHERE id = %(id)s AND status IN ('failed', 'cancelled')
RETURNING id;

-- name: count_ready
-- How many jobs of one type are ready now.
SELECT count(*) FROM background_jobs
WHERE status = 'queued' AND job_type = %(job_type)s AND available_at <= now();
