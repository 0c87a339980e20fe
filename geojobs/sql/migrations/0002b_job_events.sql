-- 0002b: tell whoever waits on a job that its status or progress changed.
-- Channel geojobs_job_events, payload the job id. geojobs.client LISTENs on it, so a notebook
-- or a front end waiting for a job is woken by the change itself instead of polling the row.
-- Heartbeats that leave the progress as it was send nothing.

CREATE OR REPLACE FUNCTION background_jobs_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geojobs_job_events', NEW.id::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_event_update ON background_jobs;
CREATE TRIGGER background_jobs_event_update
    AFTER UPDATE OF status, progress ON background_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION background_jobs_event();
