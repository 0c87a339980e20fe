"""Where a result came from: recorded in ``result.provenance`` and as the result's COMMENT.

:func:`record` runs in the job process, inside the job's transaction, after the handler and
before the completion (:mod:`geojobs.jobprocess`): it fingerprints the job's input tables,
collects the versions of the libraries, and writes the same document as the COMMENT of the
result table or view, so psql (``\\dt+``) and QGIS show it. The SQL is in
``geojobs/sql/provenance.sql``.

The fingerprint of an input table is its row count and a content signature: the sum modulo
2^64 of PostgreSQL's 64-bit ``hashtextextended`` of each row's text form (all columns, the
geometry as hex EWKB). It changes when a row is added, removed or changed in any column; it
does not change when rows are only reordered or rewritten identically (VACUUM FULL, CLUSTER),
nor for a change of a column's type that prints the same text, and two different contents
collide with a chance of about 2^-64. It costs one sequential scan of the input in the
database (no sort, nothing sent to the worker), shared among parallel workers where the
server allows them (the sum does not depend on which rows each one saw). See
docs/jobs.md#provenance.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time
import typing
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel

from geojobs import queue
from geojobs.config import raster_dir
from geojobs.params import InputTable, JobParams

__all__ = ["PACKAGES", "versions", "input_tables", "fingerprint", "record", "comment_text"]

PACKAGES = ("geojobs", "shapely", "pyproj", "geopandas", "esda", "libpysal", "rasterio", "numba")
"""Python packages whose installed version every provenance names."""

_QUERIES = "provenance.sql"
_RELATION_KINDS = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW",
                   "m": "MATERIALIZED VIEW"}


def _q(name: str) -> str:
    return queue.named_queries(_QUERIES)[name]


@cache
def _package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def versions() -> dict[str, str | None]:
    """Versions of Python, the packages of :data:`PACKAGES` and their C libraries.

    Package versions are read from the installed metadata once per process (the worker calls
    this before it forks its job process). GEOS, PROJ and GDAL are read from the loaded
    modules (shapely, pyproj, rasterio): a library the job type never loaded is ``null``, as
    it played no part in the result.
    """
    python = "{}.{}.{}".format(*sys.version_info[:3])
    found: dict[str, str | None] = {"python": python, **_package_versions()}
    shapely = sys.modules.get("shapely")
    pyproj = sys.modules.get("pyproj")
    rasterio = sys.modules.get("rasterio")
    found["geos"] = getattr(shapely, "geos_version_string", None)
    found["proj"] = getattr(pyproj, "proj_version_str", None)
    found["gdal"] = getattr(rasterio, "__gdal_version__", None)
    return found


_INPUT_MARK = InputTable.__metadata__[0]  # type: ignore[attr-defined]


def _mentions_input(annotation: Any) -> bool:
    return any(arg is _INPUT_MARK or _mentions_input(arg) for arg in typing.get_args(annotation))


def _is_input_table(field: Any) -> bool:
    """Whether a field's type is :data:`~geojobs.params.InputTable` (or an optional or a list
    of it): pydantic keeps a top-level ``Annotated`` in ``metadata``, a nested one in the type."""
    return any(m is _INPUT_MARK for m in field.metadata) or _mentions_input(field.annotation)


def input_tables(params: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(parameter path, table name)`` of every input table in validated ``params``."""
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        path = f"{prefix}{name}"
        if isinstance(value, str) and _is_input_table(field):
            yield path, value
        elif isinstance(value, BaseModel):
            yield from input_tables(value, f"{path}.")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from input_tables(item, f"{path}[{i}].")
                elif isinstance(item, str) and _is_input_table(field):
                    yield f"{path}[{i}]", item


def _find(conn: psycopg.Connection[Any], name: str) -> tuple[str, str, str] | None:
    schema, _, table = name.rpartition(".")
    row = conn.execute(_q("find_relation"), {"schema": schema or None, "name": table}).fetchone()
    return (row[0], row[1], row[2]) if row else None


def fingerprint(conn: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """``{"table", "rows", "signature"}`` of one table or view (see the module docstring)."""
    found = _find(conn, table)
    if found is None:
        return {"table": table, "rows": None, "signature": None, "error": "not found"}
    schema, name, _ = found
    query = sql.SQL(_q("fingerprint")).format(table=sql.Identifier(schema, name))
    with conn.transaction():  # a savepoint in the job's transaction
        conn.execute(_q("parallel_scan"))
        row = conn.execute(query).fetchone()
    assert row is not None
    return {"table": f"{schema}.{name}", "rows": int(row[0]),
            "signature": f"{int(row[1]) % 2**64:016x}"}


def record(conn: psycopg.Connection[Any], job: queue.ClaimedJob, params: JobParams,
           result: dict[str, Any], *, started_at: datetime, run_seconds: float) -> dict[str, Any]:
    """The job's provenance; also written as the COMMENT of its output table or view.

    Runs in the job's transaction (``conn``), before the completion.
    """
    begun = time.perf_counter()
    inputs = [{"param": path, **fingerprint(conn, table)} for path, table in input_tables(params)]
    raster = getattr(params, "raster", None)
    if isinstance(raster, str):  # raster_clip's input file, relative to GEOJOBS_RASTER_DIR
        inputs.append({"param": "raster", **_file_fingerprint(raster_dir() / raster)})
    doc: dict[str, Any] = {
        "job_id": job.id,
        "job_type": job.job_type,
        "attempt": job.attempt,
        "params": params.model_dump(mode="json"),
        "inputs": inputs,
        "versions": versions(),
        "worker_id": job.worker_id,
    }
    if job.rerun_of is not None:
        doc["rerun_of"] = job.rerun_of
        row = conn.execute(_q("pipeline_of_rerun"), {"id": job.id}).fetchone()
        if row is not None:
            doc["pipeline"] = {"id": row[0], "replaces": row[1], "rerun_from": row[2],
                               "step": row[3]}
    output = result.get("output_table")
    timings = {"started_at": started_at.isoformat(timespec="milliseconds"),
               "run_seconds": round(run_seconds, 4)}
    doc["timings"] = timings
    if isinstance(output, str):
        found = _find(conn, output)
        if found is not None:
            schema, name, kind = found
            doc["output"] = f"{schema}.{name}"
            timings["provenance_seconds"] = round(time.perf_counter() - begun, 4)
            statement = sql.SQL(_q("comment_table")).format(
                kind=sql.SQL(_RELATION_KINDS[kind]), relation=sql.Identifier(schema, name))
            with psycopg.ClientCursor(conn) as cur:  # COMMENT takes no server-side parameters
                cur.execute(statement, {"comment": comment_text(doc)})
            return doc
    timings["provenance_seconds"] = round(time.perf_counter() - begun, 4)
    return doc


def comment_text(doc: dict[str, Any]) -> str:
    """The COMMENT of a result: one line saying what made it, then the provenance as JSON."""
    head = f"geojobs job {doc['job_id']} ({doc['job_type']})"
    if doc.get("rerun_of"):
        head += f", re-run of job {doc['rerun_of']}"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return f"{head}, written {stamp} by worker {doc['worker_id']}\n" + json.dumps(
        doc, sort_keys=True, separators=(",", ":"))


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """An input file's size and modification time (no content hash: rasters are large)."""
    try:
        stat = path.stat()
    except OSError:
        return {"file": str(path), "bytes": None, "mtime": None, "error": "not found"}
    return {"file": str(path), "bytes": stat.st_size,
            "mtime": datetime.fromtimestamp(stat.st_mtime, UTC).isoformat(timespec="microseconds")}
