-- 0009: result layers (OGC API - Features and Tiles). The API keeps a catalog of the layers it
-- serves and refreshes it when a job's result table appears or goes away, woken by NOTIFY
-- geojobs_jobs (no timer). A completed job already notifies (the status trigger of 0003); this
-- adds the two ways a result table goes away without a status change:
--   a job row deleted (dismissed over HTTP, deleted by the janitor)  -> "event": "deleted"
--   a job's outputs dropped by the janitor (result gets expired_at)   -> "event": "expired"
-- The payload has the fields of 0003's ({"id", "status", "progress", "submitted_by"}), so every
-- listener that reads the id and re-reads the row keeps working.

CREATE OR REPLACE FUNCTION background_jobs_notify_layer() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
DECLARE
    job background_jobs;
BEGIN
    IF TG_OP = 'DELETE' THEN
        job := OLD;
    ELSE
        job := NEW;
    END IF;
    PERFORM pg_notify('geojobs_jobs', json_build_object(
        'id', job.id, 'status', job.status, 'progress', job.progress,
        'submitted_by', job.submitted_by,
        'event', CASE WHEN TG_OP = 'DELETE' THEN 'deleted' ELSE 'expired' END)::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_notify_deleted ON background_jobs;
CREATE TRIGGER background_jobs_notify_deleted
    AFTER DELETE ON background_jobs
    FOR EACH ROW WHEN (OLD.status = 'completed')
    EXECUTE FUNCTION background_jobs_notify_layer();

DROP TRIGGER IF EXISTS background_jobs_notify_expired ON background_jobs;
CREATE TRIGGER background_jobs_notify_expired
    AFTER UPDATE OF result ON background_jobs
    FOR EACH ROW WHEN (NEW.result ? 'expired_at' AND NOT coalesce(OLD.result ? 'expired_at', false))
    EXECUTE FUNCTION background_jobs_notify_layer();
