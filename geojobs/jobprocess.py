"""The job process: a child forked from the warmed worker that runs job after job.

The worker (the parent, :mod:`geojobs.runner`) sends it one :class:`~geojobs.queue.ClaimedJob`
at a time over a pipe; the child runs the handler on its own database connection, in one
transaction with the job's completion, and answers with one outcome message. Progress goes
up the same pipe. The parent can stop the child whatever it is doing with SIGKILL: the
child's connection dies with it and PostgreSQL rolls the job's transaction back, result
table included. A fresh child is then forked on the next job.

Messages from the child: ``("backend", pid, tag)`` when it (re)connects (directly: its
session's pid, tag None) or, through PgBouncer, when a job's transaction starts (the server
process running it, and the ``application_name`` the transaction carries, which ends with the
transaction: the parent's ``pg_terminate_backend`` then no longer matches); ``("progress", f)``,
``("file", path)`` (a file output now exists: the parent removes it unless the job completes),
``("completed", summary)``, ``("failed", message, retryable, traceback)``,
``("interrupted", message)`` (the completion's compare-and-set found the job no longer
ours) and ``("db_down", message)`` (its connection broke: the lease brings the job back).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from multiprocessing.connection import Connection, Pipe
from typing import Any

import psycopg

from geojobs import provenance, queue
from geojobs.context import JobContext
from geojobs.db import connect, pooled
from geojobs.errors import GeojobsError
from geojobs.jobtype import JobType
from geojobs.params import validate_params

__all__ = ["JobProcess", "classify_failure"]

_PR_SET_PDEATHSIG = 1
_PROGRESS_INTERVAL = 0.2
# Objects of the parent (its connections) the child must never finalise: closing a copied
# libpq connection would end the parent's session. Kept here for the child's life.
_INHERITED: list[Any] = []
# The backend notices a vanished client (a killed child, or PgBouncer closing the server
# connection behind it) within a second, even in the middle of a long statement.
_SESSION = {"client_connection_check_interval": "1000"}


def classify_failure(exc: BaseException) -> tuple[str, bool]:
    """The error text recorded on the job, and whether a retry may help."""
    if isinstance(exc, GeojobsError):
        return str(exc), exc.retryable
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"{type(exc).__name__}: {exc}", False  # refused the same way next time
    return f"{type(exc).__name__}: {exc}", True


class JobProcess:
    """One forked child and the parent's end of its pipe."""

    def __init__(self, module: JobType, database_url: str, keep: list[Any]) -> None:
        self.module = module
        self.database_url = database_url
        self.backend_pid: int | None = None
        provenance.versions()  # read the package metadata once, in the parent, before forking
        self.backend_tag: str | None = None  # through PgBouncer: the job transaction's tag
        parent_end, child_end = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child
            parent_end.close()
            _INHERITED.extend(keep)
            try:
                _child_main(child_end, module, database_url)
            finally:
                os._exit(0)
        child_end.close()
        self.pid = pid
        self.pipe: Connection = parent_end

    def alive(self) -> bool:
        """True while the child has not exited."""
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def kill(self) -> int | None:
        """SIGKILL the child and reap it; returns its wait status (None if already reaped)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pipe.close()
        return self.reap()

    def reap(self, timeout: float = 5.0) -> int | None:
        """Wait for the child to exit; its wait status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                return status
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.005)

    def stop(self) -> None:
        """Ask an idle child to exit (end of its pipe), then make sure it did."""
        self.pipe.close()
        self.reap(timeout=2.0)


def _child_main(pipe: Connection, module: JobType, database_url: str) -> None:
    """The child's loop: a job in, an outcome out, until the pipe closes."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # the parent decides: grace, then SIGKILL
    try:  # die with the parent, even one killed by SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:
        return
    conn: psycopg.Connection[Any] | None = None
    while True:
        try:
            job = pipe.recv()
        except (EOFError, OSError):
            return
        if conn is None or conn.closed or conn.broken:
            try:
                conn = connect(database_url, connect_timeout=10, session=_SESSION)
            except psycopg.OperationalError as exc:
                pipe.send(("db_down", str(exc).strip()))
                conn = None
                continue
            if not pooled(conn):
                pipe.send(("backend", conn.info.backend_pid, None))
        pipe.send(_run_one(job, conn, module, _reporter(pipe), pipe))


def _reporter(pipe: Connection) -> Callable[[float], None]:
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_INTERVAL or fraction >= 1.0:
            last[0] = now
            pipe.send(("progress", fraction))

    return report


def _pin_transaction(job: queue.ClaimedJob, conn: psycopg.Connection[Any],
                     pipe: Connection) -> None:
    """Through PgBouncer: tell the parent which server process runs this job's transaction.

    The transaction holds one server connection until it ends, so its pid is the process to
    end on a cancel; the ``application_name`` set for the transaction alone lets the parent end
    it only while it still runs this job (afterwards the server connection serves others). The
    session settings a direct connection gets at login are set here for the transaction.
    """
    tag = f"geojobs job {job.id}.{job.attempt} {os.getpid()}"
    backend = queue.pin_transaction(conn, {**_SESSION, "application_name": tag})
    pipe.send(("backend", backend, tag))


def _run_one(job: queue.ClaimedJob, conn: psycopg.Connection[Any], module: JobType,
             report: Callable[[float], None], pipe: Connection) -> tuple[Any, ...]:
    """Run one job in one transaction with its completion; the outcome message."""
    behind_pooler = pooled(conn)
    try:
        params = validate_params(module.Params, job.params)
        ctx = JobContext(job_id=job.id, job_type=job.job_type, attempt=job.attempt,
                         worker_id=job.worker_id, conn=conn, report=report,
                         announce_file=lambda path: pipe.send(("file", path)))
        started_at = datetime.now(UTC)
        begun = time.perf_counter()
        queue.begin(conn)
        if behind_pooler:
            _pin_transaction(job, conn, pipe)
        result = dict(module.run(ctx, params) or {})
        result.setdefault("warnings", [])
        result["provenance"] = provenance.record(
            conn, job, params, result, started_at=started_at,
            run_seconds=time.perf_counter() - begun)
        # The completion and the COMMIT go in one round trip; a lost lease rolls it all back.
        if not queue.complete_and_commit(conn, job, result):
            return ("interrupted", "the job was cancelled or taken back before it completed")
        return ("completed", {k: result[k] for k in ("output_table", "rows") if k in result})
    except BaseException as exc:  # noqa: BLE001 - a job's failure never ends the child's loop
        if isinstance(exc, psycopg.OperationalError) and conn.broken:
            return ("db_down", str(exc).strip())
        try:
            queue.rollback(conn)  # the job's writes never outlive its failure
        except psycopg.OperationalError as lost:
            if conn.broken:
                return ("db_down", str(lost).strip())
            raise
        message, retry = classify_failure(exc)
        return ("failed", message, retry, "".join(traceback.format_exception(exc)).rstrip())
