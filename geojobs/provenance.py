"""Where a result came from: recorded in ``result.provenance`` and as the result's COMMENT.

:func:`record` runs in the job process, inside the job's transaction, after the handler and
before the completion (:mod:`geojobs.jobprocess`): it collects the fingerprints of the job's
input tables, the versions of the libraries, and writes the same document as the COMMENT of
the result table or view, so psql (``\\dt+``) and QGIS show it. The SQL is in
``geojobs/sql/provenance.sql``.

The fingerprint of an input table is its row count and a content signature: the sum modulo
2^64 of PostgreSQL's 64-bit ``hashtextextended`` of each row's text form (all columns, the
geometry as hex EWKB, under fixed text settings). It changes when a row is added, removed or
changed in any column; it does not change when rows are only reordered or rewritten
identically (VACUUM FULL, CLUSTER), nor for a change of a column's type that prints the same
text, and two different contents collide with a chance of about 2^-64. It costs one
sequential scan of the input in the database (no sort, nothing sent to the worker), shared
among parallel workers where the server allows them (the sum does not depend on which rows
each one saw; not beside the handler, below).

That scan runs beside the handler: the job's transaction exports its snapshot first
(:meth:`SideConnection.start`), a thread reads the fingerprints in it on a second connection
of the job process while the handler works, and :func:`record` collects them
(:meth:`Fingerprints.collect`), reading in the job's own transaction whatever the side could
not. See docs/jobs.md#provenance-and-rerun.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import threading
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
from geojobs.db import connect
from geojobs.params import InputTable, JobParams

__all__ = ["PACKAGES", "versions", "input_tables", "fingerprint", "record", "comment_text",
           "SideConnection", "Fingerprints", "AT_START", "AFTER_HANDLER"]

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
    """``{"table", "rows", "signature"}`` of one table or view as ``conn``'s transaction (or a new
    one) sees it (see the module docstring); ``rows`` and ``signature`` null and ``error`` the
    reason when it cannot be read (not found, no privilege on a column, ...).

    Runs in a savepoint rolled back afterwards, so its settings do not outlive it and an error
    leaves the caller's transaction usable; only a broken connection raises.
    """
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(_q("fingerprint_settings"))
            found = _find(conn, table)
            if found is None:
                return {"table": table, "rows": None, "signature": None, "error": "not found"}
            schema, name, _ = found
            query = sql.SQL(_q("fingerprint")).format(table=sql.Identifier(schema, name))
            row = conn.execute(query).fetchone()
    except psycopg.Error as exc:
        if conn.broken:
            raise
        return {"table": table, "rows": None, "signature": None, "error": _reason(exc)}
    assert row is not None
    return {"table": f"{schema}.{name}", "rows": int(row[0]),
            "signature": f"{int(row[1]) % 2**64:016x}"}


AT_START = "job start"
"""``as_of`` of a fingerprint read beside the job, in the snapshot its transaction began with."""
AFTER_HANDLER = "after the handler"
"""``as_of`` of a fingerprint read in the job's own transaction once the handler returned."""

IMPORT_GRACE_SECONDS = 5.0
"""How long after the job's start the side connection may take to import the job's snapshot
before the job fingerprints in its own transaction instead (a PgBouncer pool with no free
server connection, a database refusing one more connection)."""
CANCEL_WAIT_SECONDS = 2.0
"""How long a stopped side computation may take to end before its connection is given up."""
_BLOCK_CHECK_SECONDS = 0.5
APPLICATION_NAME = "geojobs fingerprints"
"""The side connection's ``application_name`` (``pg_stat_activity``)."""


class SideConnection:
    """The job process's second connection, on which the input tables of each job are
    fingerprinted in the job's snapshot while its handler runs (:meth:`start`).

    Opened by the first job that has input tables, then kept for the next ones; a connection
    that broke, or that a stopped computation still held, is closed and the next job opens
    another. Each computation takes the connection for its duration (one at a time).
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._last: Fingerprints | None = None

    def start(self, conn: psycopg.Connection[Any], params: BaseModel) -> Fingerprints | None:
        """Export the snapshot of the job's transaction (``conn``, just begun: call this before
        any other statement of the job) and fingerprint ``params``' input tables in it on the
        side connection, in a thread; None when the job has no input table.

        If the snapshot cannot be exported, the job's transaction is rolled back and begun
        again (it held nothing yet) and :meth:`Fingerprints.collect` fingerprints in it.
        """
        tables = list(input_tables(params))
        if not tables:
            return None
        if self._last is not None:
            self._last.stop("a new job began")  # normally long finished
        try:
            row = conn.execute(_q("export_snapshot")).fetchone()
        except psycopg.Error as exc:
            if conn.broken:
                raise
            queue.rollback(conn)
            queue.begin(conn)
            run = Fingerprints(self, tables, None,
                               f"the job's snapshot could not be exported: {_reason(exc)}")
        else:
            assert row is not None
            run = Fingerprints(self, tables, str(row[0]), None)
        self._last = run
        return run

    def _take(self) -> tuple[psycopg.Connection[Any], bool]:
        """The kept connection (now the caller's alone), or a new one; and whether it is new."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        return connect(self._url, connect_timeout=10, application_name=APPLICATION_NAME), True

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        """Keep ``conn`` (idle, outside any transaction) for the next job."""
        with self._lock:
            kept = self._conn is None
            if kept:
                self._conn = conn
        if not kept:
            conn.close()


class Fingerprints:
    """One job's input fingerprints, computed beside it (:meth:`SideConnection.start`) and
    collected into its provenance by :func:`record` (:meth:`collect`), or stopped when the job
    fails (:meth:`stop`)."""

    def __init__(self, side: SideConnection, tables: list[tuple[str, str]], snapshot: str | None,
                 reason: str | None) -> None:
        self.tables = tables
        self.seconds: float | None = None  # the side computation's duration, once it ended
        self.wait_seconds = 0.0  # how long collect() waited for it
        self._side = side
        self._snapshot = snapshot
        self._reason = reason  # why (some) fingerprints were not read beside the job
        self._found: dict[int, dict[str, Any]] = {}  # index in tables -> fingerprint
        self._lock = threading.Lock()
        self._stopped = False  # no more results taken from the side; its query cancelled
        self._abandoned = False  # the side connection is closed, not kept, when it ends
        self._conn: psycopg.Connection[Any] | None = None
        self._backend = 0  # the side transaction's server process
        self._begun = time.perf_counter()
        self._imported = threading.Event()  # the snapshot is imported, or the side ended
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if snapshot is not None:
            self._thread = threading.Thread(target=self._work, name="geojobs-fingerprint",
                                            daemon=True)
            self._thread.start()
        else:
            self._imported.set()
            self._done.set()

    # -- the side thread -----------------------------------------------------------------

    def _work(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            conn, new = self._side._take()
            while True:
                with self._lock:
                    if self._stopped:
                        return
                    self._conn = conn
                try:
                    self._import(conn)
                    break
                except psycopg.OperationalError:
                    if new or not conn.broken:
                        raise
                    # The kept connection died while idle (a database restart): once more.
                    conn.close()
                    conn, new = self._side._take()
            self._imported.set()
            for i, (_, table) in enumerate(self.tables):
                if self._stopped:
                    break
                found = fingerprint(conn, table)
                with self._lock:
                    if self._stopped:
                        break
                    self._found[i] = {**found, "as_of": AT_START}
        except Exception as exc:  # noqa: BLE001 - the job fingerprints in its own transaction
            with self._lock:
                if self._reason is None:
                    self._reason = f"the side connection failed: {_reason(exc)}"
        finally:
            self.seconds = time.perf_counter() - self._begun
            self._end(conn)
            self._imported.set()
            self._done.set()

    def _import(self, conn: psycopg.Connection[Any]) -> None:
        """Begin the side transaction in the job's snapshot; note its server process."""
        conn.execute(_q("begin_beside"))
        with psycopg.ClientCursor(conn) as cur:  # SET takes no server-side parameters
            cur.execute(_q("import_snapshot"), {"snapshot": self._snapshot})
        row = conn.execute(_q("beside_session")).fetchone()
        assert row is not None
        self._backend = int(row[0])

    def _end(self, conn: psycopg.Connection[Any] | None) -> None:
        """Roll back the side transaction; keep the connection unless it broke or was given up."""
        if conn is None:
            return
        try:
            if not conn.broken and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            pass
        with self._lock:
            self._conn = None
            keep = not self._abandoned and not conn.broken and not conn.closed
        if keep:
            self._side._give_back(conn)
        else:
            conn.close()

    # -- the job's side ------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Take no more results from the side, cancel its query, and wait for it to end (at most
        :data:`CANCEL_WAIT_SECONDS`: after that its connection is closed when it ends)."""
        with self._lock:
            if self._stopped or self._done.is_set():
                self._stopped = True
                return
            self._stopped = True
            if self._reason is None:
                self._reason = reason
            conn = self._conn
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while conn is not None and time.monotonic() < deadline:
            # Again until it ends: a cancel that reaches the side between two statements
            # is ignored by the server.
            try:
                conn.cancel_safe(timeout=CANCEL_WAIT_SECONDS)
            except psycopg.Error:
                pass
            if self._done.wait(min(0.25, max(deadline - time.monotonic(), 0.0))):
                return
        if not self._done.wait(max(deadline - time.monotonic(), 0.0)):
            with self._lock:
                self._abandoned = True

    def collect(self, conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        """``{"param", "table", "rows", "signature", "as_of"[, "note"]}`` per input table: read
        beside the job where the side computation did, else now in the job's transaction
        (``conn``), with the reason as ``note``."""
        waited_from = time.perf_counter()
        self._wait(conn)
        self.wait_seconds = time.perf_counter() - waited_from
        with self._lock:
            self._stopped = True
            found = dict(self._found)
            reason = self._reason
        inputs = []
        for i, (param, table) in enumerate(self.tables):
            entry = found.get(i)
            if entry is None:
                entry = {**fingerprint(conn, table), "as_of": AFTER_HANDLER}
                if reason is not None:
                    entry["note"] = reason
            inputs.append({"param": param, **entry})
        return inputs

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        """Until the side ends; stopped instead when it has not imported the job's snapshot
        :data:`IMPORT_GRACE_SECONDS` after the job's start, or when it waits for a lock the
        job's own transaction holds."""
        if self._thread is None:
            return
        grace = IMPORT_GRACE_SECONDS - (time.perf_counter() - self._begun)
        if not self._imported.wait(max(grace, 0.0)):
            self.stop(f"the side connection had not imported the job's snapshot "
                      f"{IMPORT_GRACE_SECONDS:g} s after the job's start")
            return
        while not self._done.wait(_BLOCK_CHECK_SECONDS):
            row = conn.execute(_q("blocked_by_job"), {"side": self._backend}).fetchone()
            if row is not None and row[0]:
                self.stop("the side connection waited for a lock the job's transaction holds")
                return


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()}"


def record(conn: psycopg.Connection[Any], job: queue.ClaimedJob, params: JobParams,
           result: dict[str, Any], *, started_at: datetime, run_seconds: float,
           fingerprints: Fingerprints | None = None) -> dict[str, Any]:
    """The job's provenance; also written as the COMMENT of its output table or view.

    Runs in the job's transaction (``conn``), before the completion. ``fingerprints``: those
    begun beside the job (:meth:`SideConnection.start`), collected here; without them the
    inputs are fingerprinted now, in the job's transaction.
    """
    begun = time.perf_counter()
    if fingerprints is None:
        inputs = [{"param": path, **fingerprint(conn, table), "as_of": AFTER_HANDLER}
                  for path, table in input_tables(params)]
    else:
        inputs = fingerprints.collect(conn)
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
    timings: dict[str, Any] = {"started_at": started_at.isoformat(timespec="milliseconds"),
                               "run_seconds": round(run_seconds, 4)}
    if fingerprints is not None and fingerprints.seconds is not None:
        timings["fingerprint_seconds"] = round(fingerprints.seconds, 4)
        timings["fingerprint_wait_seconds"] = round(fingerprints.wait_seconds, 4)
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
