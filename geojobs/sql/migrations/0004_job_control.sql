-- 0004: job control. Per-job limits, retention, idempotency, the cancel wake-up and the
-- registry of live workers. Every statement is safe to meet a column or index another
-- migration created first (IF NOT EXISTS, same names).

ALTER TABLE background_jobs
    ADD COLUMN IF NOT EXISTS timeout_seconds integer,
    ADD COLUMN IF NOT EXISTS memory_limit_mb integer,
    ADD COLUMN IF NOT EXISTS expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS pinned boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS idempotency_key text,
    ADD COLUMN IF NOT EXISTS rerun_of bigint;

-- Named checks, so the error names the column a front end got wrong.
ALTER TABLE background_jobs DROP CONSTRAINT IF EXISTS background_jobs_timeout_seconds_check;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_timeout_seconds_check
    CHECK (timeout_seconds IS NULL OR timeout_seconds BETWEEN 1 AND 604800);
ALTER TABLE background_jobs DROP CONSTRAINT IF EXISTS background_jobs_memory_limit_mb_check;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_memory_limit_mb_check
    CHECK (memory_limit_mb IS NULL OR memory_limit_mb BETWEEN 64 AND 262144);
ALTER TABLE background_jobs DROP CONSTRAINT IF EXISTS background_jobs_idempotency_key_check;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_idempotency_key_check
    CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255);

-- One job per (submitter, key) among the rows still in the table: the janitor deletes a job
-- row once its TTL has passed, which frees its key.
CREATE UNIQUE INDEX IF NOT EXISTS background_jobs_idempotency
    ON background_jobs (submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The janitor reads only finished rows, oldest first.
CREATE INDEX IF NOT EXISTS background_jobs_finished_idx
    ON background_jobs (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- The hot rows (queued, running) are updated in place: leave room on each page for HOT
-- updates, and vacuum the table after 1 % of it changed instead of 20 %, so a history of a
-- million finished rows does not fill the claim path with dead tuples.
ALTER TABLE background_jobs SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01,
                                 autovacuum_analyze_scale_factor = 0.02);

-- A cancelled running job: its worker is told at once (channel geojobs_cancel, payload the id).
CREATE OR REPLACE FUNCTION background_jobs_notify_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geojobs_cancel', NEW.id::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_notify_cancel ON background_jobs;
CREATE TRIGGER background_jobs_notify_cancel
    AFTER UPDATE OF status ON background_jobs
    FOR EACH ROW WHEN (NEW.status = 'cancelled' AND OLD.status = 'running')
    EXECUTE FUNCTION background_jobs_notify_cancel();

-- Live workers: each worker process upserts its row at start and refreshes last_seen while
-- it runs (idle too); rows unseen for longer than the lease are pruned by the other workers.
CREATE TABLE IF NOT EXISTS geojobs_workers (
    worker_id    text        PRIMARY KEY,
    job_type     text        NOT NULL,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    current_job  bigint,
    jobs_run     bigint      NOT NULL DEFAULT 0,
    rss_mb       real
);

CREATE INDEX IF NOT EXISTS geojobs_workers_type_idx ON geojobs_workers (job_type, last_seen);

COMMENT ON TABLE geojobs_workers IS
    'geojobs worker registry: one row per running worker process; see docs/jobs.md.';

GRANT SELECT, INSERT, UPDATE, DELETE ON geojobs_workers TO geojobs_worker;
GRANT SELECT ON geojobs_workers TO geojobs_frontend;
GRANT INSERT (timeout_seconds, memory_limit_mb, expires_at, idempotency_key)
    ON background_jobs TO geojobs_frontend;
