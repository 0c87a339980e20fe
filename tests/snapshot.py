"""A snapshot of everything a job could change besides its own row: catalog, data and files.

Two snapshots taken around a run of bad jobs must be equal: no relation, view, function or
schema appeared or went, no table's content changed, no file was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["snapshot", "diff"]

_SYSTEM = ("pg_catalog", "information_schema", "pg_toast")

_RELATIONS = """
SELECT n.nspname, c.relname, c.relkind, c.relowner::regrole::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname <> ALL (%(system)s) AND n.nspname NOT LIKE 'pg_temp%%'
  AND n.nspname NOT LIKE 'pg_toast_temp%%'
ORDER BY 1, 2
"""
_NAMESPACES = "SELECT nspname, nspowner::regrole::text FROM pg_namespace ORDER BY 1"
_VIEWS = """
SELECT schemaname, viewname, definition FROM pg_views
WHERE schemaname <> ALL (%(system)s) ORDER BY 1, 2
"""
_FUNCTIONS = """
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname <> ALL (%(system)s) ORDER BY 1, 2, 3
"""
_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname <> ALL (%(system)s)
  AND n.nspname NOT LIKE 'pg_temp%%' AND NOT (n.nspname = 'public' AND c.relname = 'background_jobs')
ORDER BY 1, 2
"""
# Any INSERT, UPDATE or DELETE changes the row count or writes rows with a new xmin; TRUNCATE
# and rewrites change the file node. Cheaper than hashing every row, and as telling.
_CHECKSUM = sql.SQL(
    "SELECT count(*), coalesce(max(xmin::text::bigint), 0), pg_relation_filenode({name}::regclass) "
    "FROM {table}")


def _files(directories: Iterable[Path]) -> dict[str, str]:
    found = {}
    for directory in directories:
        for path in sorted(Path(directory).rglob("*")):
            found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                if path.is_file() else "dir")
    return found


def snapshot(conn: psycopg.Connection[Any], directories: Iterable[Path] = ()) -> dict[str, Any]:
    """Relations, schemas, views, functions, every user table's content fingerprint, and files."""
    params = {"system": list(_SYSTEM)}
    contents = {}
    for schema, name in conn.execute(_TABLES, params).fetchall():
        table = sql.Identifier(schema, name)
        row = conn.execute(_CHECKSUM.format(
            table=table, name=sql.Literal(table.as_string(conn)))).fetchone()
        contents[f"{schema}.{name}"] = tuple(row) if row else None
    return {
        "relations": conn.execute(_RELATIONS, params).fetchall(),
        "namespaces": conn.execute(_NAMESPACES).fetchall(),
        "views": conn.execute(_VIEWS, params).fetchall(),
        "functions": conn.execute(_FUNCTIONS, params).fetchall(),
        "contents": contents,
        "files": _files(directories),
    }


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two snapshots, per part (empty when nothing did)."""
    changes: dict[str, Any] = {}
    for part in before:
        old, new = before[part], after[part]
        if old == new:
            continue
        if isinstance(old, dict):
            keys = set(old) | set(new)
            changes[part] = {k: (old.get(k), new.get(k)) for k in sorted(keys)
                             if old.get(k) != new.get(k)}
        else:
            changes[part] = {"gone": sorted(set(old) - set(new), key=str),
                             "new": sorted(set(new) - set(old), key=str)}
    return changes
