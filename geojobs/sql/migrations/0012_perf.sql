-- 0012: what the HTTP API needs to answer without extra round trips.
--
-- 1. The job-change NOTIFY (geojobs_jobs) carries everything a statusInfo document shows:
--    besides id, status, progress and submitted_by (0003) also job_type, error and the four
--    timestamps (updated_at = greatest of created, started, finished, heartbeat, as the API's
--    get_job computes it). An SSE stream then sends each event straight from the notification,
--    without reading the row again. An error longer than 2,000 characters is left out
--    ("partial": true): the API reads the row for that event (a NOTIFY payload is limited
--    to 8,000 bytes).
-- 2. NOTIFY geojobs_keys (payload: the user's name) whenever an API key is revoked, changed or
--    deleted, so that API processes drop the keys they verified recently at once.

CREATE OR REPLACE FUNCTION background_jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    sub api_subscribers;
    new_state text;
    target text;
    long_error boolean := length(NEW.error) > 2000;
BEGIN
    PERFORM pg_notify('geojobs_jobs', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'progress', NEW.progress,
        'submitted_by', NEW.submitted_by, 'job_type', NEW.job_type,
        'error', CASE WHEN long_error THEN NULL ELSE NEW.error END,
        'partial', coalesce(long_error, false),
        'created_at', NEW.created_at, 'started_at', NEW.started_at,
        'finished_at', NEW.finished_at,
        'updated_at', greatest(NEW.created_at, NEW.started_at, NEW.finished_at,
                               NEW.heartbeat_at))::text);
    IF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status THEN
        SELECT * INTO sub FROM api_subscribers s WHERE s.job_id = NEW.id;
        IF FOUND THEN
            new_state := CASE NEW.status WHEN 'running' THEN 'running'
                                         WHEN 'completed' THEN 'successful'
                                         WHEN 'failed' THEN 'failed' END;
            target := CASE new_state WHEN 'running' THEN sub.in_progress_uri
                                     WHEN 'successful' THEN sub.success_uri
                                     WHEN 'failed' THEN sub.failed_uri END;
            IF target IS NOT NULL THEN
                BEGIN  -- a callback must never stop a job's own update
                    INSERT INTO api_deliveries AS d (job_id, uri, state)
                    VALUES (NEW.id, target, new_state)
                    ON CONFLICT (job_id, uri, state) DO NOTHING;
                    PERFORM pg_notify('geojobs_callbacks', NEW.id::text);
                EXCEPTION WHEN OTHERS THEN
                    RAISE WARNING 'geojobs: callback of job % not recorded: %', NEW.id, SQLERRM;
                END;
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION api_keys_notify() RETURNS trigger
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('geojobs_keys', '');
    ELSE
        PERFORM pg_notify('geojobs_keys', OLD.name);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();
DROP TRIGGER IF EXISTS api_keys_notify_truncate ON api_keys;
CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_keys_notify();

-- 3. A worker completes a job and commits in one round trip (the COMMIT is pipelined behind the
--    completing UPDATE), so the compare-and-set must fail the transaction itself when the
--    job is no longer this worker's: complete_job_or_raise calls this, which raises
--    SQLSTATE GJ409, and the job's writes roll back with it.
CREATE OR REPLACE FUNCTION geojobs_lease_lost(job_id bigint) RETURNS bigint
LANGUAGE plpgsql
SET search_path = public, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'job % is no longer held by this worker (cancelled or taken back)', job_id
        USING ERRCODE = 'GJ409';
END;
$$;
