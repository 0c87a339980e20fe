-- 0011: the schema where the Dask tasks of a partitioned job write their parts (docs/scale.md).
-- Each part is a table geojobs_staging.j<job id>_a<attempt>_p<partition>, owned by the worker
-- role; the job reads them into its result table and drops them in the transaction that
-- completes it. A cancelled, timed-out or failed attempt has them dropped by its worker.

CREATE SCHEMA IF NOT EXISTS geojobs_staging;
COMMENT ON SCHEMA geojobs_staging IS
    'geojobs: parts written by the Dask tasks of partitioned jobs; dropped with their job.';
GRANT USAGE, CREATE ON SCHEMA geojobs_staging TO geojobs_worker;
