-- Pipelines over the HTTP API: the API (role geojobs_api) records a run and inserts its steps'
-- jobs as the authenticated API user, in the caller's transaction, through these SECURITY
-- DEFINER functions (as geojobs_submit_as does for one job). The dependency trigger of 0005
-- checks each step's depends_on and output_of against that user.

-- Record a pipeline run of an API user; returns its id.
CREATE OR REPLACE FUNCTION geojobs_pipeline_create_as(a_username text, a_name text, a_spec jsonb)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    INSERT INTO public.pipelines (name, spec, submitted_by)
    VALUES (a_name, a_spec, a_username)
    RETURNING id;
$$;

-- Insert one step's job of a run of the same API user and link it to the run; returns the job id.
CREATE OR REPLACE FUNCTION geojobs_pipeline_step_as(
    a_username text, a_pipeline_id bigint, a_step text, a_position integer, a_job_type text,
    a_params jsonb, a_depends_on bigint[], a_priority integer, a_max_attempts integer)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM 1 FROM public.pipelines AS p WHERE p.id = a_pipeline_id AND p.submitted_by = a_username;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline: no pipeline % of user %', a_pipeline_id, a_username
            USING ERRCODE = 'data_exception';
    END IF;
    INSERT INTO public.background_jobs (job_type, params, priority, max_attempts, depends_on,
                                        submitted_by)
    VALUES (a_job_type, a_params, a_priority, a_max_attempts, nullif(a_depends_on, '{}'),
            a_username)
    RETURNING id INTO new_id;
    INSERT INTO public.pipeline_steps (pipeline_id, step, position, job_id, reused)
    VALUES (a_pipeline_id, a_step, a_position, new_id, false);
    RETURN new_id;
END;
$$;

REVOKE ALL ON FUNCTION geojobs_pipeline_create_as(text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION geojobs_pipeline_step_as(text, bigint, text, integer, text, jsonb,
                                                 bigint[], integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION geojobs_pipeline_create_as(text, text, jsonb) TO geojobs_api;
GRANT EXECUTE ON FUNCTION geojobs_pipeline_step_as(text, bigint, text, integer, text, jsonb,
                                                    bigint[], integer, integer) TO geojobs_api;
GRANT SELECT ON pipelines, pipeline_steps TO geojobs_api;
