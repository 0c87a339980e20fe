-- 0007: operations. What a Prometheus scrape reads besides the hot rows: finished jobs folded
-- into per-type counts and duration buckets, so a scrape stays cheap with millions of finished
-- rows and the counts survive the rows' deletion (retention) and the API's restarts.

-- Finished rows by time: the scrape aggregates only those finished since the last fold. The
-- same index (same name, same definition) may already exist from job control's migration.
CREATE INDEX IF NOT EXISTS background_jobs_finished_idx
    ON background_jobs (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- The last failures, newest first (`geojobs top`), without walking the completed rows.
CREATE INDEX IF NOT EXISTS background_jobs_failed_idx
    ON background_jobs (finished_at)
    WHERE status = 'failed';

-- Job outcomes folded so far: one row per (type, final status, duration bucket). bucket is the
-- index of the first upper bound in geojobs_metrics_state.buckets that the duration does not
-- exceed (cardinality(buckets) past the last one); -1 for a job that never started.
CREATE TABLE IF NOT EXISTS geojobs_metrics_finished (
    job_type text             NOT NULL,
    status   text             NOT NULL,
    bucket   integer          NOT NULL,
    jobs     bigint           NOT NULL,
    seconds  double precision NOT NULL,
    PRIMARY KEY (job_type, status, bucket)
);

-- One row: every job that finished at or before folded_until is in geojobs_metrics_finished.
-- buckets are the duration histogram's upper bounds, in seconds, ascending.
CREATE TABLE IF NOT EXISTS geojobs_metrics_state (
    singleton    boolean                PRIMARY KEY DEFAULT true CHECK (singleton),
    folded_until timestamptz            NOT NULL DEFAULT '-infinity',
    buckets      double precision[]     NOT NULL
);

INSERT INTO geojobs_metrics_state (buckets)
VALUES ('{0.1,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600}')
ON CONFLICT DO NOTHING;

-- The duration bucket of a job (see geojobs_metrics_finished.bucket).
CREATE OR REPLACE FUNCTION geojobs_metrics_bucket(
    started timestamptz, finished timestamptz, buckets double precision[]) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN started IS NULL OR finished IS NULL THEN -1
                ELSE (SELECT count(*)::integer FROM unnest(buckets) AS b
                      WHERE b < extract(epoch FROM finished - started)) END
$$;

-- Fold the jobs that finished more than settle_seconds ago and after the last fold into the
-- counts; returns how many were folded. The delay lets late commits land first (a job's
-- finished_at is set just before its transaction commits). Concurrent calls (two API
-- processes) take turns on the state row; SECURITY DEFINER, so a read-only scraping role can
-- fold too (it can only add what the table already says). No JIT: compiling the plan would
-- cost more than running it.
CREATE OR REPLACE FUNCTION geojobs_metrics_fold(settle_seconds double precision DEFAULT 60)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET jit = off AS $$
DECLARE
    state geojobs_metrics_state;
    until timestamptz := now() - make_interval(secs => settle_seconds);
    folded bigint;
BEGIN
    SELECT * INTO state FROM geojobs_metrics_state FOR UPDATE;
    IF until <= state.folded_until THEN
        RETURN 0;
    END IF;
    WITH outcome AS (
        SELECT j.job_type, j.status,
               geojobs_metrics_bucket(j.started_at, j.finished_at, state.buckets) AS bucket,
               coalesce(extract(epoch FROM j.finished_at - j.started_at), 0) AS seconds
        FROM background_jobs j
        WHERE j.status IN ('completed', 'failed', 'cancelled')
          AND j.finished_at > state.folded_until AND j.finished_at <= until
    ), grouped AS (
        SELECT job_type, status, bucket, count(*) AS jobs, sum(seconds) AS seconds
        FROM outcome GROUP BY job_type, status, bucket
    ), added AS (
        INSERT INTO geojobs_metrics_finished AS m (job_type, status, bucket, jobs, seconds)
        SELECT job_type, status, bucket, jobs, seconds FROM grouped
        ON CONFLICT (job_type, status, bucket)
        DO UPDATE SET jobs = m.jobs + excluded.jobs, seconds = m.seconds + excluded.seconds
    )
    SELECT coalesce(sum(jobs), 0) INTO folded FROM grouped;
    UPDATE geojobs_metrics_state SET folded_until = until;
    RETURN folded;
END;
$$;

REVOKE ALL ON FUNCTION geojobs_metrics_fold(double precision) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION geojobs_metrics_fold(double precision) TO geojobs_frontend, geojobs_worker;

COMMENT ON TABLE geojobs_metrics_finished IS
    'geojobs metrics: finished jobs folded by type, status and duration bucket; see docs/operations.md.';

GRANT SELECT ON geojobs_metrics_finished, geojobs_metrics_state TO geojobs_frontend;

-- The HTTP API's role, when its migration made one, scrapes too.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'geojobs_api') THEN
        GRANT SELECT ON geojobs_metrics_finished, geojobs_metrics_state TO geojobs_api;
        GRANT EXECUTE ON FUNCTION geojobs_metrics_fold(double precision) TO geojobs_api;
        IF to_regclass('geojobs_workers') IS NOT NULL THEN
            GRANT SELECT ON geojobs_workers TO geojobs_api;
        END IF;
    END IF;
END
$$;
