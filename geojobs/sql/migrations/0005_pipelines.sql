-- 0005: jobs that wait for other jobs (depends_on, status waiting), references to a
-- dependency's output ({"output_of": <job id>}) and pipelines (named steps submitted as one unit).
-- See docs/jobs.md#dependencies-and-pipelines.

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS depends_on bigint[];

-- waiting: some dependency has not completed yet; never examined by a claim.
ALTER TABLE background_jobs DROP CONSTRAINT IF EXISTS background_jobs_status_check;
ALTER TABLE background_jobs ADD CONSTRAINT background_jobs_status_check
    CHECK (status IN ('waiting', 'queued', 'running', 'completed', 'failed', 'cancelled'));

-- Finding the dependents of a job that just finished (only rows that have dependencies).
CREATE INDEX IF NOT EXISTS background_jobs_depends_on_idx
    ON background_jobs USING gin (depends_on)
    WHERE depends_on IS NOT NULL;

-- Every {"output_of": ...} object in a job's parameters, with its path (params.a.b[0]).
CREATE OR REPLACE FUNCTION geojobs_output_refs(params jsonb)
RETURNS TABLE (path text, ref jsonb)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    WITH RECURSIVE walk(path, value) AS (
        SELECT 'params'::text, params
        UNION ALL
        SELECT w.path || x.step, x.value
        FROM walk AS w
        CROSS JOIN LATERAL (
            SELECT '.' || e.key AS step, e.value
            FROM jsonb_each(CASE WHEN jsonb_typeof(w.value) = 'object'
                                      AND NOT w.value ? 'output_of'
                                 THEN w.value ELSE '{}'::jsonb END) AS e
            UNION ALL
            SELECT '[' || (a.ord - 1) || ']', a.value
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(w.value) = 'array'
                                           THEN w.value ELSE '[]'::jsonb END)
                 WITH ORDINALITY AS a(value, ord)
        ) AS x
    )
    SELECT path, value -> 'output_of' FROM walk
    WHERE jsonb_typeof(value) = 'object' AND value ? 'output_of';
$$;

-- The parameters with every {"output_of": <id>} replaced by that job's result.output_table.
-- References whose job has no output_table are left as they are (the job type's parameter
-- validation then names the parameter).
CREATE OR REPLACE FUNCTION geojobs_resolve_outputs(doc jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    resolved jsonb;
BEGIN
    IF jsonb_typeof(doc) = 'object' THEN
        IF doc ? 'output_of' THEN
            IF jsonb_typeof(doc -> 'output_of') = 'number' THEN
                SELECT j.result -> 'output_table' INTO resolved
                FROM public.background_jobs AS j
                WHERE j.id = (doc ->> 'output_of')::bigint AND j.status = 'completed';
                IF jsonb_typeof(resolved) = 'string' THEN
                    RETURN resolved;
                END IF;
            END IF;
            RETURN doc;
        END IF;
        SELECT coalesce(jsonb_object_agg(e.key, geojobs_resolve_outputs(e.value)), '{}'::jsonb)
        INTO resolved FROM jsonb_each(doc) AS e;
        RETURN resolved;
    ELSIF jsonb_typeof(doc) = 'array' THEN
        SELECT coalesce(jsonb_agg(geojobs_resolve_outputs(a.value) ORDER BY a.ord), '[]'::jsonb)
        INTO resolved FROM jsonb_array_elements(doc) WITH ORDINALITY AS a(value, ord);
        RETURN resolved;
    END IF;
    RETURN doc;
END;
$$;

-- Whether a login role may depend on another role's jobs: superusers and members of
-- geojobs_admin (when that role exists).
CREATE OR REPLACE FUNCTION geojobs_is_admin(who text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = who), false)
        OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'geojobs_admin')
            AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = who)
            AND pg_has_role(who, 'geojobs_admin', 'MEMBER'));
$$;

-- On insert: check depends_on and output_of, then start the job waiting, queued or failed.
-- Dependencies are locked FOR SHARE so that one completing meanwhile waits for this insert to
-- commit, then finds this job among its dependents (no lost wake-up). SECURITY DEFINER: a front
-- end may read but not lock job rows.
CREATE OR REPLACE FUNCTION background_jobs_check_dependencies() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    dep record;
    ref record;
    missing bigint;
    pending boolean := false;
BEGIN
    IF NEW.depends_on IS NOT NULL AND cardinality(NEW.depends_on) = 0 THEN
        NEW.depends_on := NULL;
    END IF;
    IF NEW.depends_on IS NOT NULL THEN
        IF array_position(NEW.depends_on, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'depends_on: must not contain null' USING ERRCODE = '22023';
        END IF;
        IF NEW.id = ANY (NEW.depends_on) THEN
            RAISE EXCEPTION 'depends_on: job % cannot depend on itself', NEW.id
                USING ERRCODE = '22023';
        END IF;
        NEW.depends_on := ARRAY(SELECT DISTINCT d FROM unnest(NEW.depends_on) AS d ORDER BY d);
        SELECT d INTO missing FROM unnest(NEW.depends_on) AS d
        WHERE NOT EXISTS (SELECT 1 FROM public.background_jobs AS j WHERE j.id = d)
        LIMIT 1;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'depends_on: job % does not exist', missing USING ERRCODE = '22023';
        END IF;
        FOR dep IN
            SELECT j.id, j.status, j.error, j.submitted_by FROM public.background_jobs AS j
            WHERE j.id = ANY (NEW.depends_on) ORDER BY j.id FOR SHARE
        LOOP
            IF dep.submitted_by IS DISTINCT FROM NEW.submitted_by
               AND NOT geojobs_is_admin(NEW.submitted_by) THEN
                RAISE EXCEPTION 'depends_on: job % belongs to another submitter', dep.id
                    USING ERRCODE = '42501';
            END IF;
            IF dep.status IN ('failed', 'cancelled') AND NEW.status <> 'failed' THEN
                NEW.status := 'failed';
                NEW.finished_at := now();
                NEW.error := format('dependency %s failed: %s', dep.id,
                                    coalesce(dep.error, dep.status));
            ELSIF dep.status <> 'completed' THEN
                pending := true;
            END IF;
        END LOOP;
        IF pending AND NEW.status = 'queued' THEN
            NEW.status := 'waiting';
        END IF;
    END IF;
    FOR ref IN SELECT * FROM geojobs_output_refs(NEW.params) LOOP
        IF jsonb_typeof(ref.ref) <> 'number' THEN
            RAISE EXCEPTION '%: output_of must be a job id (step names are resolved when a '
                            'pipeline is submitted), got %', ref.path, ref.ref
                USING ERRCODE = '22023';
        END IF;
        IF NEW.depends_on IS NULL OR NOT (ref.ref::text::bigint = ANY (NEW.depends_on)) THEN
            RAISE EXCEPTION '%: output_of job % is not among depends_on', ref.path, ref.ref
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_dependencies_insert ON background_jobs;
CREATE TRIGGER background_jobs_dependencies_insert
    BEFORE INSERT ON background_jobs
    FOR EACH ROW
    WHEN (NEW.depends_on IS NOT NULL OR strpos(NEW.params::text, 'output_of') > 0)
    EXECUTE FUNCTION background_jobs_check_dependencies();

-- A job with dependencies set back to queued (a retry) waits while a dependency is not done,
-- and is refused while one has failed: retry that one first.
CREATE OR REPLACE FUNCTION background_jobs_requeue_dependent() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    dep record;
BEGIN
    SELECT j.id, j.status INTO dep FROM public.background_jobs AS j
    WHERE j.id = ANY (NEW.depends_on) AND j.status <> 'completed'
    ORDER BY (j.status IN ('failed', 'cancelled')) DESC, j.id
    LIMIT 1;
    IF dep.id IS NULL THEN
        RETURN NEW;
    END IF;
    IF dep.status IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'job %: dependency % is %; retry it first', NEW.id, dep.id, dep.status
            USING ERRCODE = '55000';
    END IF;
    NEW.status := 'waiting';
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_dependencies_requeue ON background_jobs;
CREATE TRIGGER background_jobs_dependencies_requeue
    BEFORE UPDATE OF status ON background_jobs
    FOR EACH ROW
    WHEN (NEW.depends_on IS NOT NULL AND NEW.status = 'queued'
          AND OLD.status IN ('failed', 'cancelled'))
    EXECUTE FUNCTION background_jobs_requeue_dependent();

-- When a job ends, in the same transaction: completed -> its waiting dependents whose every
-- dependency is now completed become queued (the requeue trigger of 0001 sends the NOTIFY);
-- failed or cancelled -> its waiting dependents fail at once, naming it (and theirs in turn);
-- failed/cancelled -> queued or waiting again (a retry) -> the dependents it had failed wait again.
-- Dependents are locked first, in id order, so two dependencies completing at once cannot
-- both miss the last step; the promotion then reads with a fresh snapshot.
-- SECURITY DEFINER: the cascade writes dependents' rows whoever ends the job.
CREATE OR REPLACE FUNCTION background_jobs_cascade() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.status = 'completed' THEN
        PERFORM 1 FROM public.background_jobs AS d
        WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[NEW.id]
          AND d.status = 'waiting'
        ORDER BY d.id FOR UPDATE;
        IF FOUND THEN
            UPDATE public.background_jobs AS d SET status = 'queued'
            WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[NEW.id]
              AND d.status = 'waiting'
              AND NOT EXISTS (SELECT 1 FROM public.background_jobs AS x
                              WHERE x.id = ANY (d.depends_on) AND x.status <> 'completed');
        END IF;
    ELSIF NEW.status IN ('failed', 'cancelled') THEN
        UPDATE public.background_jobs AS d
        SET status = 'failed', finished_at = now(),
            error = format('dependency %s failed: %s', NEW.id, coalesce(NEW.error, NEW.status))
        WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[NEW.id]
          AND d.status = 'waiting';
    ELSIF OLD.status IN ('failed', 'cancelled') THEN
        UPDATE public.background_jobs AS d
        SET status = 'waiting', finished_at = NULL, error = NULL
        WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[NEW.id]
          AND d.status = 'failed'
          AND starts_with(d.error, format('dependency %s failed: ', NEW.id));
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS background_jobs_dependencies_cascade ON background_jobs;
CREATE TRIGGER background_jobs_dependencies_cascade
    AFTER UPDATE OF status ON background_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND (NEW.status IN ('completed', 'failed', 'cancelled')
               OR OLD.status IN ('failed', 'cancelled')))
    EXECUTE FUNCTION background_jobs_cascade();

-- Pipelines: one row per submitted run; its steps map step names to jobs. A rerun is a new
-- run that names the run it replaces and reuses (links) the upstream steps' jobs. A job row
-- deleted (by retention) leaves its runs without that step.
CREATE TABLE IF NOT EXISTS pipelines (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL DEFAULT '',
    spec          jsonb       NOT NULL,
    replaces      bigint      REFERENCES pipelines (id),
    rerun_from    text,
    submitted_by  text        DEFAULT session_user,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline_steps (
    pipeline_id  bigint  NOT NULL REFERENCES pipelines (id) ON DELETE CASCADE,
    step         text    NOT NULL,
    position     integer NOT NULL,
    job_id       bigint  NOT NULL REFERENCES background_jobs (id) ON DELETE CASCADE,
    reused       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (pipeline_id, step)
);

CREATE INDEX IF NOT EXISTS pipeline_steps_job_idx ON pipeline_steps (job_id);

COMMENT ON TABLE pipelines IS
    'geojobs pipeline runs: named steps submitted as one unit (see docs/jobs.md).';

-- Front ends submit dependent jobs and pipelines; workers read them.
GRANT INSERT (depends_on) ON background_jobs TO geojobs_frontend;
GRANT SELECT, INSERT (name, spec, replaces, rerun_from) ON pipelines TO geojobs_frontend;
GRANT SELECT, INSERT ON pipeline_steps TO geojobs_frontend;
GRANT SELECT ON pipelines, pipeline_steps TO geojobs_worker;

-- geojobs_cancel also cancels waiting jobs.
CREATE OR REPLACE FUNCTION geojobs_cancel(job_id bigint) RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    WITH cancelled AS (
        UPDATE public.background_jobs
        SET status = 'cancelled', finished_at = now(), error = 'cancelled by ' || session_user
        WHERE id = job_id AND status IN ('waiting', 'queued', 'running')
          AND submitted_by = session_user
        RETURNING id
    )
    SELECT EXISTS (SELECT 1 FROM cancelled);
$$;

-- The HTTP API's cancel (migration 0003) also cancels waiting jobs.
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
