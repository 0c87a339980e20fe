-- 0003: the HTTP API (OGC API - Processes). One login role, geojobs_api, that acts for API
-- users through SECURITY DEFINER functions: it submits, reads, cancels and dismisses jobs on
-- behalf of a user it names, and reads result tables. API users are rows of api_keys (only a
-- hash of each key is stored); submitted_by of a job submitted over HTTP is the user's name.
-- No password is set; set one with  ALTER ROLE geojobs_api PASSWORD '...';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'geojobs_api') THEN
        BEGIN
            CREATE ROLE geojobs_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
                NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by an upgrade of another database
        END;
    END IF;
END
$$;

-- API users and their keys: sha256 of the key, never the key.
CREATE TABLE IF NOT EXISTS api_keys (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.@-]{1,63}$'),
    key_hash    bytea       NOT NULL UNIQUE,
    admin       boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
COMMENT ON TABLE api_keys IS 'HTTP API users: name, sha256 of the key, admin flag (geojobs keys).';

-- Idempotency-Key: one job per (user, key). Migration 0004 may add the same column and index.
ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS idempotency_key text;
CREATE UNIQUE INDEX IF NOT EXISTS background_jobs_idempotency
    ON background_jobs (submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Listing a user's jobs newest first.
CREATE INDEX IF NOT EXISTS background_jobs_submitter_idx ON background_jobs (submitted_by, id);

-- Callbacks (OGC subscriber): the URIs of a job, and the deliveries owed, which survive restarts.
CREATE TABLE IF NOT EXISTS api_subscribers (
    job_id           bigint PRIMARY KEY REFERENCES background_jobs (id) ON DELETE CASCADE,
    success_uri      text,
    in_progress_uri  text,
    failed_uri       text
);

CREATE TABLE IF NOT EXISTS api_deliveries (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        bigint      NOT NULL,
    uri           text        NOT NULL,
    state         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    next_at       timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 0,
    delivered_at  timestamptz,
    given_up_at   timestamptz,
    last_error    text,
    UNIQUE (job_id, uri, state)
);
CREATE INDEX IF NOT EXISTS api_deliveries_pending_idx ON api_deliveries (next_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;

-- Every change of a job's status or progress: NOTIFY geojobs_jobs with a JSON payload
-- {"id", "status", "progress", "submitted_by"}, for live progress (SSE) and Prefer: wait. When
-- the job has subscribers, the delivery owed for the new state is recorded in the same
-- transaction and NOTIFY geojobs_callbacks wakes the dispatcher.
CREATE OR REPLACE FUNCTION background_jobs_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    sub api_subscribers;
    state text;
    uri text;
BEGIN
    PERFORM pg_notify('geojobs_jobs', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'progress', NEW.progress,
        'submitted_by', NEW.submitted_by)::text);
    IF TG_OP = 'UPDATE' AND NEW.status IS DISTINCT FROM OLD.status THEN
        SELECT * INTO sub FROM api_subscribers WHERE job_id = NEW.id;
        IF FOUND THEN
            state := CASE NEW.status WHEN 'running' THEN 'running' WHEN 'completed' THEN 'successful'
                                     WHEN 'failed' THEN 'failed' ELSE NULL END;
            uri := CASE state WHEN 'running' THEN sub.in_progress_uri
                              WHEN 'successful' THEN sub.success_uri
                              WHEN 'failed' THEN sub.failed_uri ELSE NULL END;
            IF uri IS NOT NULL THEN
                INSERT INTO api_deliveries (job_id, uri, state) VALUES (NEW.id, uri, state)
                ON CONFLICT (job_id, uri, state) DO NOTHING;
                PERFORM pg_notify('geojobs_callbacks', NEW.id::text);
            END IF;
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_notify_change ON background_jobs;
CREATE TRIGGER background_jobs_notify_change
    AFTER UPDATE OF status, progress ON background_jobs
    FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status
                       OR NEW.progress IS DISTINCT FROM OLD.progress)
    EXECUTE FUNCTION background_jobs_notify_change();

-- Submit a job for an API user. Returns the job id and whether it is new: with an
-- idempotency key already used by this user, the existing job. Raises (SQLSTATE GJ429) when
-- the user already has max_queued queued jobs.
CREATE OR REPLACE FUNCTION geojobs_submit_as(
    username text, job_type text, params jsonb, idempotency_key text DEFAULT NULL,
    max_queued integer DEFAULT NULL, success_uri text DEFAULT NULL,
    in_progress_uri text DEFAULT NULL, failed_uri text DEFAULT NULL,
    OUT job_id bigint, OUT created boolean)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    queued integer;
BEGIN
    IF idempotency_key IS NOT NULL THEN
        -- Two requests with one key: the second waits for the first here, then finds its job.
        PERFORM pg_advisory_xact_lock(hashtextextended(username || E'\x1f' || idempotency_key, 0));
        SELECT j.id INTO job_id FROM background_jobs j
        WHERE j.submitted_by = username AND j.idempotency_key = geojobs_submit_as.idempotency_key;
        IF FOUND THEN
            created := false;
            RETURN;
        END IF;
    END IF;
    IF max_queued IS NOT NULL THEN
        SELECT count(*) INTO queued FROM background_jobs j
        WHERE j.submitted_by = username AND j.status = 'queued';
        IF queued >= max_queued THEN
            RAISE EXCEPTION 'user % has % queued jobs (the limit)', username, queued
                USING ERRCODE = 'GJ429';
        END IF;
    END IF;
    INSERT INTO background_jobs (job_type, params, submitted_by, idempotency_key)
    VALUES (job_type, params, username, geojobs_submit_as.idempotency_key)
    RETURNING id INTO job_id;
    IF coalesce(success_uri, in_progress_uri, failed_uri) IS NOT NULL THEN
        INSERT INTO api_subscribers VALUES (job_id, success_uri, in_progress_uri, failed_uri);
    END IF;
    created := true;
END;
$$;

-- Cancel a queued or running job of an API user; true if cancelled.
CREATE OR REPLACE FUNCTION geojobs_cancel_as(job_id bigint, username text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH cancelled AS (
        UPDATE public.background_jobs
        SET status = 'cancelled', finished_at = now(), error = 'dismissed by ' || username
        WHERE id = job_id AND status IN ('queued', 'running')
          AND (submitted_by = username OR username IS NULL)
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM cancelled);
$$;

-- Dismiss a finished job of an API user (NULL: any user, for admins): its result table or
-- view is dropped and its row deleted, in the caller's transaction. Returns the job's result
-- (for the caller to remove a file output), or NULL when there was no such finished job.
CREATE OR REPLACE FUNCTION geojobs_dismiss_as(job_id bigint, username text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    job background_jobs;
    target text;
    rel regclass;
    kind "char";
BEGIN
    SELECT * INTO job FROM background_jobs j
    WHERE j.id = job_id AND j.status IN ('completed', 'failed', 'cancelled')
      AND (j.submitted_by = username OR username IS NULL)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF job.status = 'completed' THEN
        target := coalesce(job.result ->> 'output_table', job.result ->> 'output_view');
        IF target IS NOT NULL THEN
            rel := to_regclass(target);
            IF rel IS NOT NULL THEN
                SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = rel;
                IF kind = 'v' THEN
                    EXECUTE format('DROP VIEW %s', rel);
                ELSIF kind = 'm' THEN
                    EXECUTE format('DROP MATERIALIZED VIEW %s', rel);
                ELSE
                    EXECUTE format('DROP TABLE %s', rel);
                END IF;
            END IF;
        END IF;
    END IF;
    DELETE FROM api_deliveries d WHERE d.job_id = job.id;
    DELETE FROM background_jobs j WHERE j.id = job.id;
    RETURN coalesce(job.result, '{}'::jsonb);
END;
$$;

REVOKE ALL ON FUNCTION geojobs_submit_as(text, text, jsonb, text, integer, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION geojobs_cancel_as(bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION geojobs_dismiss_as(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION geojobs_submit_as(text, text, jsonb, text, integer, text, text, text)
    TO geojobs_api;
GRANT EXECUTE ON FUNCTION geojobs_cancel_as(bigint, text) TO geojobs_api;
GRANT EXECUTE ON FUNCTION geojobs_dismiss_as(bigint, text) TO geojobs_api;

-- What the API reads: job rows, key hashes, result tables; it records callback deliveries.
GRANT USAGE ON SCHEMA public TO geojobs_api;
GRANT SELECT ON background_jobs, api_keys, api_subscribers TO geojobs_api;
GRANT SELECT, UPDATE (next_at, attempts, delivered_at, given_up_at, last_error)
    ON api_deliveries TO geojobs_api;
GRANT USAGE ON SCHEMA results TO geojobs_api;
GRANT SELECT ON ALL TABLES IN SCHEMA results TO geojobs_api;
