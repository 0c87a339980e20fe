"""Connections and schema migrations."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping

import psycopg

from geojobs.config import SQL_DIR, database_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"
# Serialises concurrent `db upgrade` runs (any constant unique to geojobs).
_MIGRATION_LOCK_KEY = 727_202_611


# Connections that reach PostgreSQL through a pooler in transaction (or statement) mode.
_POOLED: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()


def connect(url: str | None = None, *, autocommit: bool = True,
            session: Mapping[str, str] | None = None, **kwargs: object) -> psycopg.Connection:
    """Open a connection to the geojobs database (``DATABASE_URL`` unless ``url`` is given).

    Works directly and through PgBouncer in transaction pooling mode: a connection whose server
    session is not its own (:func:`pooled`) gets psycopg's automatic prepared statements turned
    off (``prepare_threshold=None``: a statement prepared on one server connection does not
    exist on the next). ``session`` settings (name: value) are set for the session on a direct
    connection only; a pooled connection has no session of its own, so a caller that needs them
    sets them per transaction (``set_config(name, value, true)``).
    """
    conn = psycopg.connect(url or database_url(), autocommit=autocommit, **kwargs)  # type: ignore[arg-type]
    try:
        _detect_pooler(conn)
        if session and not pooled(conn):
            for name, value in session.items():
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            if not autocommit:
                conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def _detect_pooler(conn: psycopg.Connection) -> None:
    """Mark ``conn`` as pooled when the server process answering is not the one the connection
    was given at login (PgBouncer sends a key of its own; PostgreSQL sends its backend's pid)."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    if not conn.autocommit:
        conn.rollback()
    if row is not None and row[0] != conn.info.backend_pid:
        _POOLED.add(conn)
        conn.prepare_threshold = None


def pooled(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` (opened by :func:`connect`) goes through a transaction-pooling proxy such as
    PgBouncer: no LISTEN, no session settings, no prepared statements kept across transactions."""
    return conn in _POOLED


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
