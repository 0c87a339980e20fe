-- 0003b: the job-change trigger of 0003 named its PL/pgSQL variables like the columns of
-- api_deliveries, so recording a callback failed (ambiguous reference) and with it the job's
-- own update. The variables are renamed, and a callback that cannot be recorded now only
-- warns: it never stops a job's update. Dismissing over HTTP also cancels jobs that wait for
-- others (the waiting status of migration 0005).

CREATE OR REPLACE FUNCTION background_jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    sub api_subscribers;
    new_state text;
    target text;
BEGIN
    PERFORM pg_notify('geojobs_jobs', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'progress', NEW.progress,
        'submitted_by', NEW.submitted_by)::text);
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

CREATE OR REPLACE FUNCTION geojobs_cancel_as(job_id bigint, username text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH cancelled AS (
        UPDATE public.background_jobs
        SET status = 'cancelled', finished_at = now(), error = 'dismissed by ' || username
        WHERE id = job_id AND status IN ('waiting', 'queued', 'running')
          AND (submitted_by = username OR username IS NULL)
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM cancelled);
$$;
