-- 0008: provenance and rerun. background_jobs.rerun_of (added, reserved, by 0004) now names
-- the job a job re-runs (geojobs jobs rerun, geojobs pipeline rerun); see docs/jobs.md#provenance.

-- A re-run names an existing job; when the janitor deletes that job's row, the re-run keeps
-- its own row and forgets the link (its result.provenance still names the job).
ALTER TABLE background_jobs DROP CONSTRAINT IF EXISTS background_jobs_rerun_of_fkey;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_rerun_of_fkey
    FOREIGN KEY (rerun_of) REFERENCES background_jobs (id) ON DELETE SET NULL;

-- The foreign key's ON DELETE action looks re-runs up by rerun_of: without this index every
-- deleted job row would scan the whole table. Partial: most jobs are no re-run.
CREATE INDEX IF NOT EXISTS background_jobs_rerun_of_idx
    ON background_jobs (rerun_of) WHERE rerun_of IS NOT NULL;

-- SQL front ends may queue re-runs themselves.
GRANT INSERT (rerun_of) ON background_jobs TO geojobs_frontend;
