-- What a metrics scrape, `geojobs health` and `geojobs top` read. Loaded by geojobs/metrics.py.
-- Each query starts with a "-- name: <name>" line and a one-line comment.

-- name: fold_finished
-- Fold jobs finished more than settle_seconds ago into geojobs_metrics_finished (at most
-- max_rows of them; migration 0007b).
SELECT geojobs_metrics_fold(%(settle_seconds)s, %(max_rows)s);

-- name: live_jobs
-- Queued and running jobs by type: counts, how many are ready now, how long the oldest ready one
-- has waited. One branch per status, so each reads its own partial index (claim, running).
SELECT job_type, 'queued' AS status, count(*) AS jobs,
       count(*) FILTER (WHERE available_at <= now()) AS ready,
       coalesce(extract(epoch FROM now() - min(available_at) FILTER (WHERE available_at <= now())),
                0)::float8 AS oldest_ready_seconds
FROM background_jobs
WHERE status = 'queued'
GROUP BY job_type
UNION ALL
SELECT job_type, 'running', count(*), 0, 0::float8
FROM background_jobs
WHERE status = 'running'
GROUP BY job_type;

-- name: finished_state
-- Up to when jobs are folded (NULL: none yet), and the duration histogram's upper bounds (seconds).
SELECT nullif(folded_until, '-infinity') AS folded_until, buckets FROM geojobs_metrics_state;

-- name: finished_jobs
-- Job outcomes by type, status and duration bucket: the folded counts plus the rows finished
-- since the last fold (run in the snapshot that read finished_state, so no job is counted twice
-- or missed). folded_until comes as a value, so the planner sees how few rows are that recent.
SELECT f.job_type, f.status, f.bucket, sum(f.jobs)::bigint AS jobs, sum(f.seconds)::float8 AS seconds
FROM (
    SELECT job_type, status, bucket, jobs, seconds FROM geojobs_metrics_finished
    UNION ALL
    SELECT j.job_type, j.status,
           geojobs_metrics_bucket(j.started_at, j.finished_at, %(buckets)s::float8[]), 1,
           coalesce(extract(epoch FROM j.finished_at - j.started_at), 0)
    FROM background_jobs j
    WHERE j.status IN ('completed', 'failed', 'cancelled') AND j.finished_at > coalesce(%(folded_until)s::timestamptz, '-infinity')
) AS f
GROUP BY f.job_type, f.status, f.bucket;

-- name: live_workers
-- Workers seen within the lease (the registry of migration 0004).
SELECT worker_id, job_type, host, pid, current_job, rss_mb, jobs_run,
       extract(epoch FROM started_at)::float8 AS started_at,
       extract(epoch FROM now() - last_seen)::float8 AS seen_seconds_ago
FROM geojobs_workers
WHERE last_seen > now() - make_interval(secs => %(lease_seconds)s)
ORDER BY job_type, host, worker_id;

-- name: running_jobs
-- Running jobs, longest running first, for `geojobs top`.
SELECT id, job_type, worker_id, attempts, max_attempts, progress,
       extract(epoch FROM now() - started_at)::float8 AS elapsed_seconds,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_seconds_ago
FROM background_jobs
WHERE status = 'running'
ORDER BY started_at, id
LIMIT %(limit)s;

-- name: recent_failures
-- The last failed jobs (newest first) with the first line of their errors, for `geojobs top`.
SELECT id, job_type, attempts, finished_at, split_part(coalesce(error, ''), E'\n', 1) AS error
FROM background_jobs
WHERE status = 'failed'
ORDER BY finished_at DESC NULLS LAST, id DESC
LIMIT %(limit)s;

-- name: last_janitor_run
-- The last finished janitor run (migration 0007c): when it ran and what it did.
SELECT extract(epoch FROM finished_at)::float8 AS finished_at,
       extract(epoch FROM finished_at - started_at)::float8 AS seconds,
       jobs_expired, tables_dropped, files_removed, jobs_deleted
FROM geojobs_janitor_runs
ORDER BY finished_at DESC, id DESC
LIMIT 1;
