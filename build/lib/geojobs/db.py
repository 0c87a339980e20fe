"""Connections and schema migrations."""

from __future__ import annotations

import logging

import psycopg

from geojobs.config import SQL_DIR, database_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"
# Serialises concurrent `db upgrade` runs (any constant unique to geojobs).
_MIGRATION_LOCK_KEY = 727_202_611


def connect(url: str | None = None, *, autocommit: bool = True, **kwargs: object) -> psycopg.Connection:
    """Open a connection to the geojobs database (``DATABASE_URL`` unless ``url`` is given)."""
    return psycopg.connect(url or database_url(), autocommit=autocommit, **kwargs)  # type: ignore[arg-type]


def upgrade(conn: psycopg.Connection) -> list[str]:
    """Apply every migration in ``geojobs/sql/migrations`` not yet applied; return the ones applied.

    Safe to run again and from several processes at once: it takes an advisory lock and
    records each migration in ``geojobs_migrations``.
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS geojobs_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM geojobs_migrations")}
        for path in sorted(MIGRATIONS_DIR.iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".sql"):
                continue
            version = path.name.removesuffix(".sql")
            if version in done:
                continue
            log.info("applying migration %s", version)
            conn.execute(path.read_text())  # trusted file shipped with the code
            conn.execute("INSERT INTO geojobs_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


def ensure_database(url: str | None = None) -> bool:
    """Create the database named in ``url`` if it does not exist; True when created."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(url or database_url())
    name = str(info.get("dbname") or "")
    if not name:
        return False
    admin = make_conninfo(url or database_url(), dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True
