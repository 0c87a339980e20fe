"""Throwaway benchmark databases: created with PostGIS and the geojobs schema, dropped after.

Every benchmark runs in its own database so that a run never touches ``geojobs`` itself and
leaves nothing behind, even when it fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from geojobs import db
from geojobs.config import database_url

__all__ = ["bench_database", "connect", "server_versions", "as_uri", "sqlalchemy_engine"]


def as_uri(conninfo: str) -> str:
    """A ``postgresql://`` URI for any libpq conninfo (asyncpg takes only URIs)."""
    if conninfo.startswith(("postgresql://", "postgres://")):
        return conninfo
    info = conninfo_to_dict(conninfo)
    user = quote(str(info.pop("user", "")), safe="")
    password = info.pop("password", None)
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = str(info.pop("host", "")) or "localhost"
    port = info.pop("port", None)
    dbname = quote(str(info.pop("dbname", "")), safe="")
    query = urlencode({k: str(v) for k, v in info.items()})
    return (f"postgresql://{auth}{host}{':' + str(port) if port else ''}/{dbname}"
            + (f"?{query}" if query else ""))


def _admin(base_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(base_url, dbname="postgres"), autocommit=True)


@contextmanager
def bench_database(base_url: str | None = None, *, prefix: str = "geojobs_bench",
                   keep: bool = False, migrate: bool = True) -> Iterator[str]:
    """Create a database with PostGIS and the migrations applied; yield its URL; drop it.

    ``base_url`` names the server (its database name is ignored; default ``DATABASE_URL``).
    With ``keep`` the database is left for inspection and its name is printed. Without
    ``migrate`` the schema is left to the caller (an older checkout's migrations).
    """
    base = base_url or database_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _admin(base) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = as_uri(make_conninfo(base, dbname=name))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            if migrate:
                db.upgrade(conn)
        yield url
    finally:
        if keep:
            print(f"kept benchmark database {name}")
        else:
            with _admin(base) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(sql.Identifier(name)))


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A plain psycopg connection to a benchmark database."""
    return psycopg.connect(url, autocommit=autocommit)


def server_versions(url: str) -> dict[str, str]:
    """PostgreSQL and PostGIS versions of the server behind ``url``, for the README."""
    with psycopg.connect(url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
        gis = conn.execute("SELECT postgis_lib_version(), postgis_geos_version()").fetchone()
    assert pg is not None and gis is not None
    return {"postgresql": str(pg[0]), "postgis": str(gis[0]), "postgis_geos": str(gis[1]),
            "database": str(conninfo_to_dict(url).get("dbname", ""))}


def sqlalchemy_engine(url: str) -> Any:
    """A SQLAlchemy engine (psycopg 3 driver) for GeoPandas' ``read_postgis``/``to_postgis``."""
    from sqlalchemy import create_engine

    return create_engine(as_uri(url).replace("postgresql://", "postgresql+psycopg://", 1))
