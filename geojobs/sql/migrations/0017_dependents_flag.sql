-- 0017: a job that no other job depends on ends without running the dependency cascade.
-- has_dependents is set on a job's dependencies by the insert trigger, in the inserting
-- transaction, and gates the cascade trigger (a WHEN clause cannot look at other rows), so a job
-- without dependents pays nothing for pipelines when it completes.
-- A dependency completing while a dependent is inserted: the insert's UPDATE and the completion
-- wait on each other's row lock, so the completion either sees the flag (and the cascade finds
-- the committed dependent) or commits first (and the insert sees it completed).

ALTER TABLE background_jobs ADD COLUMN IF NOT EXISTS has_dependents boolean NOT NULL DEFAULT false;

UPDATE background_jobs SET has_dependents = true
WHERE NOT has_dependents
  AND id IN (SELECT unnest(depends_on) FROM background_jobs WHERE depends_on IS NOT NULL);

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
        -- Mark the dependencies first (row locks in id order, before the shares below, so two
        -- inserts never both hold a share and wait to upgrade it).
        UPDATE public.background_jobs AS j SET has_dependents = true
        WHERE j.id = ANY (NEW.depends_on) AND NOT j.has_dependents;
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

DROP TRIGGER IF EXISTS background_jobs_dependencies_cascade ON background_jobs;
CREATE TRIGGER background_jobs_dependencies_cascade
    AFTER UPDATE OF status ON background_jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND OLD.status IS DISTINCT FROM NEW.status
          AND (NEW.status IN ('completed', 'failed', 'cancelled')
               OR OLD.status IN ('failed', 'cancelled')))
    EXECUTE FUNCTION background_jobs_cascade();
