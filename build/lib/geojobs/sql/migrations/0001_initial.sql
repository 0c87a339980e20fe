-- 0001: the job table, the results schema and the wake-up trigger.
CREATE EXTENSION IF NOT EXISTS postgis;

CREATE SCHEMA IF NOT EXISTS results;

CREATE TABLE IF NOT EXISTS background_jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_type      text        NOT NULL,
    params        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status        text        NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    priority      integer     NOT NULL DEFAULT 0,
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts  integer     NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    available_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    heartbeat_at  timestamptz,
    worker_id     text,
    progress      real        CHECK (progress IS NULL OR (progress >= 0 AND progress <= 1)),
    result        jsonb,
    error         text
);

COMMENT ON TABLE background_jobs IS
    'geojobs queue: insert (job_type, params); workers set everything else. See docs/jobs.md.';

-- Claiming reads only queued rows of one type, in claim order.
CREATE INDEX IF NOT EXISTS background_jobs_claim_idx
    ON background_jobs (job_type, priority DESC, available_at, id)
    WHERE status = 'queued';

-- Recovery of jobs whose worker died looks only at running rows.
CREATE INDEX IF NOT EXISTS background_jobs_running_idx
    ON background_jobs (heartbeat_at)
    WHERE status = 'running';

-- Wake idle workers of the job's type: channel geojobs, payload the job type.
CREATE OR REPLACE FUNCTION background_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geojobs', NEW.job_type);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_notify_insert ON background_jobs;
CREATE TRIGGER background_jobs_notify_insert
    AFTER INSERT ON background_jobs
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION background_jobs_notify();

DROP TRIGGER IF EXISTS background_jobs_notify_requeue ON background_jobs;
CREATE TRIGGER background_jobs_notify_requeue
    AFTER UPDATE OF status ON background_jobs
    FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM 'queued')
    EXECUTE FUNCTION background_jobs_notify();
