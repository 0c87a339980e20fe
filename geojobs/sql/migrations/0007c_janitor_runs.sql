-- 0007c: one row per janitor run (when, where, what it dropped and deleted), so monitoring can
-- tell when retention last ran and what it did (metric geojobs_janitor_last_run_timestamp_seconds).

CREATE TABLE IF NOT EXISTS geojobs_janitor_runs (
    id              bigserial   PRIMARY KEY,
    host            text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    jobs_expired    integer     NOT NULL,
    tables_dropped  integer     NOT NULL,
    files_removed   integer     NOT NULL,
    jobs_deleted    integer     NOT NULL
);

CREATE INDEX IF NOT EXISTS geojobs_janitor_runs_finished_idx ON geojobs_janitor_runs (finished_at);

COMMENT ON TABLE geojobs_janitor_runs IS
    'geojobs janitor runs: one row per finished run of `geojobs janitor`; see docs/operations.md.';

GRANT SELECT ON geojobs_janitor_runs TO geojobs_api;
