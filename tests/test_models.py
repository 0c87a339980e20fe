"""geojobs.models describes the tables the migrations create (SQLAlchemy inspection of a real database)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import geoalchemy2
import psycopg
import pytest
import sqlalchemy
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from geojobs import queue
from geojobs.models import STATUSES, BackgroundJob, Base, geometry_columns, result_table

pytestmark = pytest.mark.db

DIALECT = postgresql.dialect()


@pytest.fixture
def engine(db_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(db_url))
    yield engine
    engine.dispose()


def _describe(column: Any) -> tuple[str, bool]:
    if isinstance(column, dict):
        return column["type"].compile(dialect=DIALECT), bool(column["nullable"])
    return column.type.compile(dialect=DIALECT), bool(column.nullable)


@pytest.mark.parametrize("table", sorted(Base.metadata.tables))
def test_model_matches_migrated_table(engine: sqlalchemy.Engine, table: str) -> None:
    """Same columns in the same order, same types, nullability, primary key and server defaults."""
    inspector = sqlalchemy.inspect(engine)
    model = Base.metadata.tables[table]
    real = {c["name"]: c for c in inspector.get_columns(table)}
    assert list(real) == [c.name for c in model.columns]
    assert {n: _describe(c) for n, c in real.items()} == {c.name: _describe(c) for c in model.columns}
    assert inspector.get_pk_constraint(table)["constrained_columns"] == [
        c.name for c in model.primary_key.columns]
    for column in model.columns:
        has_default = real[column.name]["default"] is not None or bool(real[column.name].get("identity"))
        assert has_default == (column.server_default is not None or column.identity is not None), column.name
    real_checks = {c["name"]: c["sqltext"] for c in inspector.get_check_constraints(table)}
    assert len(real_checks) == len([c for c in model.constraints
                                    if isinstance(c, sqlalchemy.CheckConstraint)])
    if table == "background_jobs":
        allowed = set(re.findall(r"'(\w+)'", real_checks["background_jobs_status_check"]))
        assert allowed == set(STATUSES)


def test_model_inserts_a_job_the_queue_reads(engine: sqlalchemy.Engine,
                                             conn: psycopg.Connection[Any]) -> None:
    """A front end's ORM insert is an ordinary job: defaults from the table, readable by the queue."""
    with Session(engine) as session:
        job = BackgroundJob(job_type="noop", params={"sleep_seconds": 0})
        session.add(job)
        session.commit()
        job_id = job.id
        assert job.status == "queued" and job.attempts == 0
    row = queue.get(conn, job_id)
    assert row is not None and (row["job_type"], row["params"], row["status"]) == (
        "noop", {"sleep_seconds": 0}, "queued")
    claimed = queue.claim(conn, "noop", "w1")
    assert claimed is not None and claimed.id == job_id


def test_result_table_reflects_geoalchemy2_geometry(engine: sqlalchemy.Engine,
                                                    conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE results.shapes (fid integer PRIMARY KEY, label text, "
                 "geom geometry(MultiPolygon, 32617), centre geometry(Point, 4326))")
    table = result_table(engine, "results.shapes")
    assert geometry_columns(table) == ["geom", "centre"]
    geom = table.c["geom"].type
    assert isinstance(geom, geoalchemy2.Geometry)
    assert (geom.geometry_type, geom.srid) == ("MULTIPOLYGON", 32617)
    assert table.c["centre"].type.srid == 4326  # type: ignore[attr-defined]
