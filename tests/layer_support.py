"""Result layers made the way a worker makes them, for the layer tests: a table in ``results``
created by the worker role and a job row that goes ``running`` -> ``completed`` (so the API hears
the NOTIFY a worker's completion sends)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.support import WORKER_ROLE

__all__ = ["make_layer", "complete_job"]


def complete_job(conn: psycopg.Connection[Any], table: str, owner: str,
                 job_type: str = "dissolve") -> int:
    """A job of ``owner`` that wrote ``table``: inserted running, then completed (NOTIFY)."""
    row = conn.execute(
        "INSERT INTO background_jobs (job_type, params, submitted_by, status, started_at) "
        "VALUES (%s, %s, %s, 'running', now()) RETURNING id",
        (job_type, Jsonb({"output_table": table}), owner)).fetchone()
    assert row is not None
    conn.execute("UPDATE background_jobs SET status = 'completed', finished_at = now(), progress = 1,"
                 " result = %s WHERE id = %s", (Jsonb({"output_table": table, "rows": 0}), row[0]))
    return int(row[0])


def make_layer(conn: psycopg.Connection[Any], table: str, owner: str, *, cells: int = 5) -> int:
    """A ``cells`` x ``cells`` grid of 1-degree squares (fid, name, v, when, geom 4326) in
    ``table``, owned by the worker role, and the completed job of ``owner`` that wrote it."""
    schema, name = table.split(".")
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(WORKER_ROLE)))
    try:
        conn.execute(sql.SQL(
            "CREATE TABLE {t} (fid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text, "
            "v double precision, flag boolean, geom geometry(Polygon, 4326))").format(
                t=sql.Identifier(schema, name)))
        conn.execute(sql.SQL(
            "INSERT INTO {t} (name, v, flag, geom) "
            "SELECT 'cell ' || i || '-' || j, i * 10 + j + 0.5, (i + j) %% 2 = 0, "
            "ST_MakeEnvelope(i, 40 + j, i + 1, 41 + j, 4326) "
            "FROM generate_series(0, %(n)s - 1) i, generate_series(0, %(n)s - 1) j "
            "ORDER BY i, j").format(t=sql.Identifier(schema, name)), {"n": cells})
        conn.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(schema, name)))
    finally:
        conn.execute("RESET ROLE")
    return complete_job(conn, table, owner)
