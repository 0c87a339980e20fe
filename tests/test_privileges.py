"""Least privilege: the roles of geojobs/sql/migrations/0002_roles.sql, checked by logging in as them.

The worker role runs real jobs, yet even with validation bypassed (``write_layer`` called
directly, or a handler that ignores its params) it cannot create, change or drop anything
outside the output schema. The front-end role can only queue, read and cancel its own jobs.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import geopandas as gpd
import psycopg
import pytest
from psycopg import errors
from shapely.geometry import Point

from geojobs import db, queue
from geojobs.layers import write_layer
from geojobs.runner import Worker, WorkerSettings
from tests.conftest import _create, _drop
from tests.snapshot import diff, snapshot
from tests.support import FRONTEND_ROLE, WORKER_ROLE, as_role, job_row, run_worker

pytestmark = pytest.mark.db

MIGRATION = Path(db.MIGRATIONS_DIR) / "0002_roles.sql"


def _points() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"a": [1, 2]}, geometry=[Point(0, 0), Point(1, 1)], crs=4326)


@pytest.fixture
def worker_conn(db_url: str) -> Any:
    with psycopg.connect(as_role(db_url, WORKER_ROLE), autocommit=True) as connection:
        yield connection


@pytest.fixture
def frontend_conn(db_url: str) -> Any:
    with psycopg.connect(as_role(db_url, FRONTEND_ROLE), autocommit=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def shared(template_db: str) -> Any:
    """One database for the statements that must be refused (each checks nothing changed)."""
    name = f"geojobs_test_{uuid.uuid4().hex[:12]}"
    url = _create(name, template=template_db)
    try:
        with psycopg.connect(url, autocommit=True) as admin, \
                psycopg.connect(as_role(url, WORKER_ROLE), autocommit=True) as worker, \
                psycopg.connect(as_role(url, FRONTEND_ROLE), autocommit=True) as frontend:
            admin.execute("CREATE TABLE results.regions AS SELECT 1 AS a")
            queue.enqueue(admin, "noop", {})
            yield SimpleNamespace(admin=admin, worker=worker, frontend=frontend)
    finally:
        _drop(name)


def _refused(shared: Any, connection: psycopg.Connection[Any], statement: str) -> None:
    before = snapshot(shared.admin)
    jobs = shared.admin.execute("SELECT * FROM background_jobs").fetchall()
    with pytest.raises(errors.InsufficientPrivilege):
        connection.execute(statement)
    assert diff(before, snapshot(shared.admin)) == {}
    assert shared.admin.execute("SELECT * FROM background_jobs").fetchall() == jobs


def test_roles_are_plain_login_roles(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
        "rolcanlogin FROM pg_roles WHERE rolname IN (%s, %s) ORDER BY 1",
        (FRONTEND_ROLE, WORKER_ROLE)).fetchall()
    assert rows == [(FRONTEND_ROLE, False, False, False, False, False, True),
                    (WORKER_ROLE, False, False, False, False, False, True)]


def test_roles_migration_runs_again_over_existing_roles(conn: psycopg.Connection[Any]) -> None:
    """Roles exist cluster-wide already (the template made them): the migration still applies."""
    with conn.transaction():
        conn.execute(MIGRATION.read_text())
        conn.execute(MIGRATION.read_text())
    granted = conn.execute("SELECT has_schema_privilege(%s, 'results', 'CREATE'), "
                           "has_schema_privilege(%s, 'public', 'CREATE')",
                           (WORKER_ROLE, WORKER_ROLE)).fetchone()
    assert granted == (True, False)


def test_worker_role_runs_jobs_and_owns_its_results(db_url: str, conn: psycopg.Connection[Any]) -> None:
    params = {"input_table": "public.us_states", "by": ["sub_region"],
              "output_table": "results.regions"}
    first = queue.enqueue(conn, "dissolve", params)
    done = run_worker(as_role(db_url), "dissolve")
    assert done.returncode == 0, done.stderr
    again = queue.enqueue(conn, "dissolve", {**params, "overwrite": True})
    assert run_worker(as_role(db_url), "dissolve").returncode == 0
    assert [job_row(conn, j)["status"] for j in (first, again)] == ["completed", "completed"]
    owner = conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'results' "
                         "AND tablename = 'regions'").fetchone()
    assert owner == (WORKER_ROLE,)
    expected = conn.execute("SELECT count(DISTINCT sub_region) FROM public.us_states").fetchone()
    assert conn.execute("SELECT count(*) FROM results.regions").fetchone() == expected


@pytest.mark.parametrize("table", ["public.evil", "pg_catalog.evil", "information_schema.evil",
                                   "public.background_jobs", "public.us_states"])
def test_worker_role_cannot_write_outside_results(shared: Any, table: str) -> None:
    """``write_layer`` called directly, no validation at all: the database refuses."""
    before = snapshot(shared.admin)
    with pytest.raises(errors.InsufficientPrivilege), shared.worker.transaction():
        write_layer(shared.worker, _points(), table, srid=4326, overwrite=True)
    assert diff(before, snapshot(shared.admin)) == {}


def test_worker_role_writes_results(worker_conn: psycopg.Connection[Any]) -> None:
    with worker_conn.transaction():
        assert write_layer(worker_conn, _points(), "results.fine", srid=4326) == 2
    assert worker_conn.execute("SELECT count(*) FROM results.fine").fetchone() == (2,)


@pytest.mark.parametrize("statement", [
    "CREATE SCHEMA evil",
    "CREATE TABLE public.evil (a int)",
    "CREATE VIEW public.evil AS SELECT 1 AS a",
    "CREATE FUNCTION public.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "UPDATE public.us_states SET state_name = 'x'",
    "DELETE FROM public.us_states",
    "TRUNCATE public.georgia_counties",
    "DROP TABLE public.nc_counties",
    "ALTER TABLE public.us_states ADD COLUMN evil int",
    "INSERT INTO background_jobs (job_type) VALUES ('noop')",
    "DELETE FROM background_jobs",
    "UPDATE background_jobs SET params = '{}'",
    "UPDATE background_jobs SET job_type = 'dissolve'",
    "UPDATE background_jobs SET max_attempts = 100",
    "DROP TABLE background_jobs",
    "UPDATE geojobs_migrations SET version = 'x'",
    "SELECT geojobs_cancel(1)",
])
def test_worker_role_is_refused(shared: Any, statement: str) -> None:
    _refused(shared, shared.worker, statement)


def _writes_to(table: str) -> Callable[[Any, Any], dict[str, Any]]:
    def run(ctx: Any, params: Any) -> dict[str, Any]:
        rows = write_layer(ctx.conn, _points(), table, srid=4326, overwrite=True)
        return {"output_table": table, "rows": rows}
    return run


@pytest.mark.parametrize("table", ["public.evil", "public.us_states"])
def test_job_bypassing_validation_fails_at_once_and_writes_nothing(
    db_url: str, conn: psycopg.Connection[Any], table: str,
) -> None:
    """A handler that writes where it likes, as the worker role: refused, job failed, no retry."""
    job_id = queue.enqueue(conn, "noop", {})
    before = snapshot(conn)
    worker = Worker(WorkerSettings(job_type="noop", database_url=as_role(db_url)))
    worker.jobtype = dataclasses.replace(worker.jobtype, run=_writes_to(table))
    assert worker.run(drain=True) == 0
    row = job_row(conn, job_id)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith("InsufficientPrivilege: ")
    assert diff(before, snapshot(conn)) == {}


def test_input_the_worker_may_not_read_fails_naming_the_field(
    db_url: str, conn: psycopg.Connection[Any],
) -> None:
    conn.execute("CREATE SCHEMA private")
    conn.execute("CREATE TABLE private.states AS SELECT * FROM public.us_states")
    job_id = queue.enqueue(conn, "dissolve", {"input_table": "private.states"})
    assert run_worker(as_role(db_url), "dissolve").returncode == 0
    row = job_row(conn, job_id)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith("input_table: table private.states exists but")
    assert "GRANT" in row["error"]


def test_frontend_queues_reads_and_cancels_its_own(frontend_conn: psycopg.Connection[Any],
                                                   conn: psycopg.Connection[Any]) -> None:
    mine = queue.enqueue(frontend_conn, "noop", {"sleep_seconds": 1})
    theirs = queue.enqueue(conn, "noop", {})
    rows = dict(frontend_conn.execute("SELECT id, submitted_by FROM background_jobs").fetchall())
    assert rows == {mine: FRONTEND_ROLE, theirs: conn.info.user}
    cancel = "SELECT geojobs_cancel(%s)"
    assert frontend_conn.execute(cancel, (theirs,)).fetchone() == (False,)
    assert frontend_conn.execute(cancel, (mine,)).fetchone() == (True,)
    assert frontend_conn.execute(cancel, (mine,)).fetchone() == (False,)  # already cancelled
    assert job_row(conn, mine)["status"] == "cancelled"
    assert job_row(conn, theirs)["status"] == "queued"
    assert job_row(conn, mine)["error"] == f"cancelled by {FRONTEND_ROLE}"


@pytest.mark.parametrize("statement", [
    "INSERT INTO background_jobs (job_type, status) VALUES ('noop', 'completed')",
    "INSERT INTO background_jobs (job_type, submitted_by) VALUES ('noop', 'someone_else')",
    "INSERT INTO background_jobs (job_type, result) VALUES ('noop', '{}')",
    "UPDATE background_jobs SET status = 'cancelled'",
    "UPDATE background_jobs SET params = '{}'",
    "DELETE FROM background_jobs",
    "SELECT * FROM public.us_states",
    "CREATE TABLE results.evil (a int)",
    "CREATE TABLE public.evil (a int)",
    "SELECT * FROM results.regions",
])
def test_frontend_role_is_refused(shared: Any, statement: str) -> None:
    _refused(shared, shared.frontend, statement)
