"""The job table as SQLAlchemy 2 models, for Python front ends that speak SQLAlchemy.

The migrations in ``geojobs/sql/migrations`` own the schema; these classes describe it
(``tests/test_models.py`` fails when they drift) and never create it: run ``geojobs db upgrade``.
A front end may read and insert jobs through them::

    with Session(engine) as session:
        session.add(BackgroundJob(job_type="dissolve", params={"input_table": "public.us_states"}))
        session.commit()

Result tables have columns that depend on the job type, so they are reflected, not declared:
:func:`result_table` returns one with GeoAlchemy2 ``Geometry`` types for its geometry columns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import geoalchemy2
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BackgroundJob", "GeojobsMigration", "GeojobsWorker", "STATUSES", "result_table",
           "geometry_columns"]

STATUSES = ("waiting", "queued", "running", "completed", "failed", "cancelled")
"""The values of ``background_jobs.status``."""

_TIMESTAMPTZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    """Declarative base of the geojobs models."""


class BackgroundJob(Base):
    """One job: a front end inserts ``job_type`` and ``params``; the worker sets the rest."""

    __tablename__ = "background_jobs"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'queued', 'running', 'completed', 'failed', 'cancelled')",
                        name="background_jobs_status_check"),
        CheckConstraint("attempts >= 0"),
        CheckConstraint("max_attempts >= 1"),
        CheckConstraint("progress IS NULL OR (progress >= 0 AND progress <= 1)"),
        CheckConstraint("timeout_seconds IS NULL OR timeout_seconds BETWEEN 1 AND 604800",
                        name="background_jobs_timeout_seconds_check"),
        CheckConstraint("memory_limit_mb IS NULL OR memory_limit_mb BETWEEN 64 AND 262144",
                        name="background_jobs_memory_limit_mb_check"),
        CheckConstraint("idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255",
                        name="background_jobs_idempotency_key_check"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    job_type: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer, server_default=text("4"))
    available_at: Mapped[datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))
    created_at: Mapped[datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))
    started_at: Mapped[datetime | None] = mapped_column(_TIMESTAMPTZ)
    finished_at: Mapped[datetime | None] = mapped_column(_TIMESTAMPTZ)
    heartbeat_at: Mapped[datetime | None] = mapped_column(_TIMESTAMPTZ)
    worker_id: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float | None] = mapped_column(REAL)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    submitted_by: Mapped[str | None] = mapped_column(Text, server_default=text("SESSION_USER"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    timeout_seconds: Mapped[int | None] = mapped_column(Integer)
    memory_limit_mb: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column(_TIMESTAMPTZ)
    pinned: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    rerun_of: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("background_jobs.id", ondelete="SET NULL",
                               name="background_jobs_rerun_of_fkey"))
    """The job this one re-runs (migration 0008; ``geojobs jobs rerun``)."""
    depends_on: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))
    has_dependents: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    """Some job depends on this one (migration 0017; set by the dependent's insert)."""

    def __repr__(self) -> str:
        return f"<BackgroundJob {self.id} {self.job_type} {self.status}>"


class GeojobsWorker(Base):
    """A running worker process (migration 0004): refreshed while it lives, pruned after the lease."""

    __tablename__ = "geojobs_workers"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    job_type: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))
    last_seen: Mapped[datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))
    current_job: Mapped[int | None] = mapped_column(BigInteger)
    jobs_run: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    rss_mb: Mapped[float | None] = mapped_column(REAL)


class GeojobsMigration(Base):
    """A migration applied by ``geojobs db upgrade``."""

    __tablename__ = "geojobs_migrations"

    version: Mapped[str] = mapped_column(Text, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(_TIMESTAMPTZ, server_default=text("now()"))


def result_table(engine: Engine, name: str) -> Table:
    """Reflect a job's result table (``schema.table`` or ``table``, as in ``result["output_table"]``).

    Geometry columns come back as :class:`geoalchemy2.types.Geometry` with their type and SRID.
    """
    schema, _, table = name.rpartition(".")
    return Table(table, MetaData(), schema=schema or None, autoload_with=engine)


def geometry_columns(table: Table) -> list[str]:
    """Names of the table's geometry columns, in column order."""
    return [c.name for c in table.columns if isinstance(c.type, geoalchemy2.types.Geometry)]
