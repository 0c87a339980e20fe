-- 0002: least privilege. Two roles, no superuser at run time (see docs/reliability.md):
--   geojobs_worker   claims and updates jobs, reads the input schema public, creates tables
--                    and views only in the output schema results;
--   geojobs_frontend inserts jobs, reads job rows and cancels the jobs it submitted.
-- Roles belong to the cluster, grants to one database: the roles are created only when
-- missing (several databases, or several concurrent upgrades, may share a cluster), the grants
-- are made in every database this migration runs in. No password is set; set one with
--   ALTER ROLE geojobs_worker PASSWORD '...';   (or \password geojobs_worker in psql)

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['geojobs_worker', 'geojobs_frontend'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                               'NOREPLICATION NOBYPASSRLS', name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by an upgrade of another database
            END;
        END IF;
    END LOOP;
END
$$;

-- Who submitted a job: the login role of the session that inserted it. Front ends never set it
-- (they have no INSERT privilege on it); inserts that leave it out keep working as before.
ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS submitted_by text DEFAULT session_user;

-- Nobody but the owner creates objects in public (the PostgreSQL 15 default, made explicit).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- The worker: the queue columns it writes, read access to inputs, CREATE only in results.
GRANT USAGE ON SCHEMA public TO geojobs_worker;
GRANT SELECT ON background_jobs TO geojobs_worker;
GRANT UPDATE (status, attempts, worker_id, started_at, heartbeat_at, finished_at, progress,
              available_at, result, error)
    ON background_jobs TO geojobs_worker;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO geojobs_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO geojobs_worker;
GRANT USAGE, CREATE ON SCHEMA results TO geojobs_worker;

-- The front end: insert (only the columns a front end sets), read, cancel its own jobs.
GRANT USAGE ON SCHEMA public TO geojobs_frontend;
GRANT SELECT ON background_jobs TO geojobs_frontend;
GRANT INSERT (job_type, params, priority, max_attempts, available_at)
    ON background_jobs TO geojobs_frontend;

CREATE OR REPLACE FUNCTION geojobs_cancel(job_id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH cancelled AS (
        UPDATE public.background_jobs
        SET status = 'cancelled', finished_at = now(), error = 'cancelled by ' || session_user
        WHERE id = job_id AND status IN ('queued', 'running') AND submitted_by = session_user
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM cancelled);
$$;

COMMENT ON FUNCTION geojobs_cancel(bigint) IS
    'Cancel a queued or running job submitted by the calling login role; true if cancelled.';

REVOKE ALL ON FUNCTION geojobs_cancel(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION geojobs_cancel(bigint) TO geojobs_frontend;
