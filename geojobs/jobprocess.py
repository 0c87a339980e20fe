"""The job process: a child forked from the warmed worker that runs job after job, claiming
the next one itself.

The worker (the parent, :mod:`geojobs.runner`) hands the child a job it claimed while the
child was idle. The child runs the handler on its own database connection in one transaction
with the job's completion, and claims its next job in that same transaction: the completing
``UPDATE``, the claim, the ``COMMIT`` and the next job's ``BEGIN`` go to the database as one
pipelined round trip, with one durable commit for both. It then runs that next job without
waiting for the parent. Only when nothing is queued (or the parent asked it to stop claiming)
does it tell the parent it is idle and wait on the pipe again.

What the child is doing is published in a :class:`JobSlot` (shared memory) that the parent
reads on its own tick: the current job, its start and limits, its progress, the jobs run and
the database backend of the job's session. So the common path wakes neither process for the
other. The parent can stop the child whatever it is doing with SIGKILL: the child's connection
dies with it and PostgreSQL rolls the job's transaction back, result table included.

Messages from the child (rare): ``("file", job_id, path)`` (a file output now exists: the
parent removes it if the job is killed), ``("idle",)`` (nothing more to claim: the parent
claims and hands over the next job) and ``("db_down", message)`` (its connection broke: the
lease brings its job back).
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import os
import shutil
import signal
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any, Protocol

import psycopg

from geojobs import logs, provenance, queue, staging
from geojobs.config import job_scratch_dir, output_dir
from geojobs.context import JobContext
from geojobs.db import connect, pooled
from geojobs.errors import GeojobsError
from geojobs.jobtype import JobType
from geojobs.params import validate_params

__all__ = ["ChildSettings", "JobProcess", "JobSlot", "SlotState", "classify_failure", "remove_job_files",
           "backend_tag"]

log = logging.getLogger("geojobs.worker")

_PR_SET_PDEATHSIG = 1
# Objects of the parent (its connections) the child must never finalise: closing a copied
# libpq connection would end the parent's session. Kept here for the child's life.
_INHERITED: list[Any] = []
# The backend notices a vanished client (a killed child, or PgBouncer closing the server
# connection behind it) within a second, even in the middle of a long statement.
_SESSION = {"client_connection_check_interval": "1000"}


class ChildSettings(Protocol):
    """What the job process reads of the worker's settings (``runner.WorkerSettings``)."""

    database_url: str
    memory_cap_mb: float

    def retry_delay(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt ``attempt``."""


def record_failure(conn: psycopg.Connection[Any], job: queue.ClaimedJob, message: str, *,
                   retry: bool, tb: str, label: str, elapsed: float,
                   delay_seconds: float) -> None:
    """Fail the attempt (compare-and-set: queued again after ``delay_seconds`` when ``retry`` and
    attempts remain) and log the outcome, the traceback ``tb`` with it unless the error is a
    parameter error (not retried)."""
    outcome = queue.fail(conn, job, message, retry=retry, delay_seconds=delay_seconds)
    if outcome is None:
        log.warning("%s failed after %.2f s but was no longer ours: %s", label, elapsed, message)
    elif outcome[0] == "queued":
        log.error("%s failed after %.2f s, retry at %s: %s\n%s", label, elapsed,
                  outcome[1].isoformat(timespec="seconds"), message, tb)
    else:
        log.error("%s failed after %.2f s: %s\n%s", label, elapsed, message, tb if retry else "")


def classify_failure(exc: BaseException) -> tuple[str, bool]:
    """The error text recorded on the job, and whether a retry may help."""
    if isinstance(exc, GeojobsError):
        return str(exc), exc.retryable
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return f"{type(exc).__name__}: {exc}", False  # refused the same way next time
    return f"{type(exc).__name__}: {exc}", True


def backend_tag(job_id: int, attempt: int, child_pid: int) -> str:
    """The ``application_name`` a job transaction carries behind PgBouncer (see
    :func:`_pin_transaction`): the parent ends that server process only while it has it."""
    return f"geojobs job {job_id}.{attempt} {child_pid}"


def remove_job_files(job_id: int, files: list[str]) -> None:
    """Remove what a job that did not complete left on disk: the file outputs it announced
    (only inside ``GEOJOBS_OUTPUT_DIR``) and its scratch directory."""
    root = output_dir().resolve()
    for name in files:
        path = Path(name).resolve()
        if path.is_relative_to(root) and path.is_file():
            path.unlink(missing_ok=True)
            log.info("job %s: removed %s (the job did not complete)", job_id, path)
    shutil.rmtree(job_scratch_dir(job_id), ignore_errors=True)


@dataclass(frozen=True)
class SlotState:
    """One consistent reading of a :class:`JobSlot`'s job (``job_id`` 0: none)."""

    job_id: int
    attempt: int
    max_attempts: int
    started: float  # time.monotonic() of the child when it began the job (system-wide clock)
    timeout: float
    memory_limit_mb: float

    def job(self, job_type: str, worker_id: str) -> queue.ClaimedJob:
        """The lease this reading names."""
        return queue.ClaimedJob(self.job_id, job_type, None, self.attempt, self.max_attempts,
                                worker_id)


_NO_JOB = SlotState(0, 0, 0, 0.0, 0.0, 0.0)


class JobSlot:
    """What the job process is doing, in anonymous shared memory (inherited by every child).

    The job fields are written by the child only, under a sequence lock (odd while it writes),
    so the parent never reads half a job. Progress, jobs run and the backend pid are single
    8-byte words written by the child; ``stop`` is written by the parent only.
    """

    _JOB = struct.Struct("<qiiddd")
    _SEQ, _JOB_AT, _PROGRESS, _RUN, _BACKEND, _STOP, _PARENT_RSS = 0, 8, 48, 56, 64, 72, 80
    SIZE = 88

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, self.SIZE)  # MAP_SHARED | MAP_ANONYMOUS: shared across fork
        self._u64 = struct.Struct("<Q")
        self._f64 = struct.Struct("<d")
        self._i64 = struct.Struct("<q")
        self.set_progress(None)

    # -- the child's side --------------------------------------------------------------

    def publish(self, job: queue.ClaimedJob | None, timeout: float = 0.0,
                memory_limit_mb: float = 0.0, since: float | None = None) -> None:
        """Name the job now running (None: no job), with its effective limits; its time limit
        counts from ``since`` (``time.monotonic()``, default now)."""
        seq = self._u64.unpack_from(self._mem, self._SEQ)[0]
        self._u64.pack_into(self._mem, self._SEQ, seq + 1)
        if job is None:
            self._JOB.pack_into(self._mem, self._JOB_AT, 0, 0, 0, 0.0, 0.0, 0.0)
        else:
            self._JOB.pack_into(self._mem, self._JOB_AT, job.id, job.attempt, job.max_attempts,
                                time.monotonic() if since is None else since, timeout,
                                memory_limit_mb)
        self.set_progress(None)
        self._u64.pack_into(self._mem, self._SEQ, seq + 2)

    def set_progress(self, fraction: float | None) -> None:
        """The current job's progress (None: not reported)."""
        self._f64.pack_into(self._mem, self._PROGRESS, math.nan if fraction is None else fraction)

    def count_job(self) -> None:
        """One more job run (whatever its outcome)."""
        self._i64.pack_into(self._mem, self._RUN, self.jobs_run() + 1)

    def set_backend(self, pid: int) -> None:
        """The database server process running the child's session (or job transaction)."""
        self._i64.pack_into(self._mem, self._BACKEND, pid)

    # -- the parent's side -------------------------------------------------------------

    def read(self, *, dead: bool = False) -> SlotState:
        """The job now running. ``dead``: the child is gone, so a write it left half done (an
        odd sequence) means it had not begun that job: no job."""
        while True:
            before = self._u64.unpack_from(self._mem, self._SEQ)[0]
            if before % 2:
                if dead:
                    return _NO_JOB
                time.sleep(0)
                continue
            fields = self._JOB.unpack_from(self._mem, self._JOB_AT)
            if self._u64.unpack_from(self._mem, self._SEQ)[0] == before:
                return SlotState(*fields) if fields[0] else _NO_JOB

    def progress(self) -> float | None:
        """The current job's last reported progress."""
        value = self._f64.unpack_from(self._mem, self._PROGRESS)[0]
        return None if math.isnan(value) else float(value)

    def jobs_run(self) -> int:
        """Jobs the job processes have run (completed, failed or refused)."""
        return int(self._i64.unpack_from(self._mem, self._RUN)[0])

    def backend(self) -> int:
        """The database server process of the child's session (0: not connected)."""
        return int(self._i64.unpack_from(self._mem, self._BACKEND)[0])

    def clear(self) -> None:
        """After the child is gone: no job, no backend (the parent alone writes now)."""
        seq = self._u64.unpack_from(self._mem, self._SEQ)[0]
        self._u64.pack_into(self._mem, self._SEQ, seq + (2 if seq % 2 == 0 else 1))
        self._JOB.pack_into(self._mem, self._JOB_AT, 0, 0, 0, 0.0, 0.0, 0.0)
        self.set_progress(None)
        self.set_backend(0)

    def request_stop(self, stop: bool = True) -> None:
        """Tell the child not to claim another job (it finishes the one it runs)."""
        self._i64.pack_into(self._mem, self._STOP, int(stop))

    def stopping(self) -> bool:
        """True once the parent asked the child to claim no more."""
        return bool(self._i64.unpack_from(self._mem, self._STOP)[0])

    def set_parent_rss(self, mb: float) -> None:
        """The parent's resident memory (MB), which counts towards the worker's cap."""
        self._f64.pack_into(self._mem, self._PARENT_RSS, mb)

    def parent_rss(self) -> float:
        """The parent's resident memory as it last wrote it (MB)."""
        return float(self._f64.unpack_from(self._mem, self._PARENT_RSS)[0])


class JobProcess:
    """One forked child and the parent's end of its pipe."""

    def __init__(self, module: JobType, settings: ChildSettings, worker_id: str, slot: JobSlot,
                 limits: Callable[[queue.ClaimedJob], tuple[float, float]],
                 keep: list[Any]) -> None:
        self.module = module
        provenance.versions()  # read the package metadata once, in the parent, before forking
        parent_end, child_end = Pipe(duplex=True)
        pid = os.fork()
        if pid == 0:  # the child
            parent_end.close()
            _INHERITED.extend(keep)
            try:
                _Child(child_end, module, settings, worker_id, slot, limits).main()
            finally:
                logging.shutdown()
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


class _Child:
    """The child's side: run the job handed over, then every job it claims after it."""

    def __init__(self, pipe: Connection, module: JobType, settings: ChildSettings,
                 worker_id: str, slot: JobSlot,
                 limits: Callable[[queue.ClaimedJob], tuple[float, float]]) -> None:
        self.pipe = pipe
        self.module = module
        self.settings = settings
        self.worker_id = worker_id
        self.slot = slot
        self.limits = limits
        self.conn: psycopg.Connection[Any] | None = None
        self.files: list[str] = []
        self.tried_claim = False  # the completing transaction claimed (or found nothing)
        self.claim_sent = 0.0  # time.monotonic() when the last claim's statement was sent
        self.over_cap: float | None = None  # resident MB of worker + child, once past the cap
        self._statm = os.open("/proc/self/statm", os.O_RDONLY)  # kept open: read per job
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def main(self) -> None:
        """A job in from the parent; jobs claimed here after it; "idle" out; until EOF."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)  # the parent decides: grace, then SIGKILL
        try:  # die with the parent, even one killed by SIGKILL
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:
            return
        while True:
            try:
                job: queue.ClaimedJob | None = self.pipe.recv()
            except (EOFError, OSError):
                return
            since: float | None = None  # handed over: the parent published it
            try:
                while job is not None:
                    conn = self._connection()
                    job = self._run(job, conn, since)
                    since = self.claim_sent
            except psycopg.OperationalError as exc:
                # The connection broke: the job's transaction is gone; its row stays running
                # until the lease takes it back.
                self.slot.publish(None)
                self._drop_connection()
                self.pipe.send(("db_down", str(exc).strip()))
                continue
            self.pipe.send(("idle", self.over_cap))

    # -- the connection ----------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self.conn
        if conn is None or conn.closed or conn.broken:
            self._drop_connection()
            conn = connect(self.settings.database_url, connect_timeout=10, session=_SESSION)
            if not pooled(conn):
                self.slot.set_backend(conn.info.backend_pid)
            self.conn = conn
        return conn

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self.conn = None

    # -- one job -----------------------------------------------------------------------

    def _claim_next(self) -> bool:
        """Whether to claim a next job: not when the parent asked to stop, nor when the
        worker (parent and child) is over ``GEOJOBS_MEMORY_CAP_MB``: it exits between jobs."""
        if self.slot.stopping() or self.over_cap is not None:
            return False
        rss_mb = int(os.pread(self._statm, 64, 0).split()[1]) * self._page_mb
        total = rss_mb + self.slot.parent_rss()
        if total > self.settings.memory_cap_mb:
            self.over_cap = total
            return False
        return True

    def _report(self, fraction: float) -> None:
        self.slot.set_progress(fraction)

    def _announce(self, job_id: int, path: str) -> None:
        self.files.append(path)
        self.pipe.send(("file", job_id, path))

    def _run(self, job: queue.ClaimedJob, conn: psycopg.Connection[Any],
             claimed: float | None) -> queue.ClaimedJob | None:
        """Run one job in one transaction with its completion; the next job it claimed.
        ``claimed``: when its claim was sent (``time.monotonic()``); its time limit runs from
        there, as its ``started_at`` does. None: the parent claimed it, published it and
        logged its start."""
        timeout, limit = self.limits(job)
        handed = claimed is None
        if not handed:
            self.slot.publish(job, timeout, limit, since=claimed)
        label = f"job {job.id} {job.job_type} attempt {job.attempt}/{job.max_attempts}"
        with logs.job_fields(job.id, job.job_type, job.attempt, job.worker_id):
            if not handed:
                log.info("%s started", label)
            begun = time.monotonic()
            self.files = []
            self.tried_claim = False
            try:
                nxt = self._attempt(job, conn, label, begun)
            finally:
                self.slot.publish(None)
                self.slot.count_job()
        if nxt is not None and self.slot.stopping():
            # Asked to stop while the claim was on its way: give the job back unspent.
            queue.rollback(conn)
            queue.release(conn, nxt)
            log.info("job %s %s: given back, the worker is stopping", nxt.id, nxt.job_type)
            return None
        if nxt is None:
            queue.rollback(conn)  # the empty transaction begun for a next job, if any
            if not self.tried_claim and self._claim_next():
                self.claim_sent = time.monotonic()
                nxt = queue.claim(conn, self.module.JOB_TYPE, self.worker_id)
        return nxt

    def _attempt(self, job: queue.ClaimedJob, conn: psycopg.Connection[Any], label: str,
                 begun: float) -> queue.ClaimedJob | None:
        behind_pooler = pooled(conn)
        try:
            params = validate_params(self.module.Params, job.params)
            ctx = JobContext(job_id=job.id, job_type=job.job_type, attempt=job.attempt,
                             worker_id=job.worker_id, conn=conn, report=self._report,
                             announce_file=lambda path: self._announce(job.id, path))
            started_at = datetime.now(UTC)
            run_from = time.perf_counter()
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                queue.begin(conn)  # else begun with the claim, in its round trip
            if behind_pooler:
                self._pin_transaction(job, conn)
            result = dict(self.module.run(ctx, params) or {})
            result.setdefault("warnings", [])
            result["provenance"] = provenance.record(
                conn, job, params, result, started_at=started_at,
                run_seconds=time.perf_counter() - run_from)
            # The completion, the next claim, the COMMIT and the next BEGIN: one round trip.
            claim = self._claim_next()
            self.claim_sent = time.monotonic()
            done, nxt = queue.complete_and_commit(
                conn, job, result, claim_next=self.module.JOB_TYPE if claim else None)
            self.tried_claim = claim and done
        except BaseException as exc:  # noqa: BLE001 - a job's failure never ends the child's loop
            if isinstance(exc, psycopg.OperationalError) and conn.broken:
                raise
            queue.rollback(conn)  # the job's writes never outlive its failure
            message, retry = classify_failure(exc)
            self._fail(conn, job, label, message, retry,
                       "".join(traceback.format_exception(exc)).rstrip(), begun)
            return None
        if not done:
            log.warning("%s stopped after %.2f s: the job was cancelled or taken back before "
                        "it completed", label, time.monotonic() - begun)
            self._discard(conn, job)
            return None
        summary = {k: result[k] for k in ("output_table", "rows") if k in result}
        log.info("%s completed in %.2f s: %s", label, time.monotonic() - begun, summary)
        return nxt

    def _pin_transaction(self, job: queue.ClaimedJob, conn: psycopg.Connection[Any]) -> None:
        """Through PgBouncer: publish which server process runs this job's transaction.

        The transaction holds one server connection until it ends, so its pid is the process to
        end on a cancel; the ``application_name`` set for the transaction alone
        (:func:`backend_tag`) lets the parent end it only while it still runs this job
        (afterwards the server connection serves others). The session settings a direct
        connection gets at login are set here for the transaction.
        """
        tag = backend_tag(job.id, job.attempt, os.getpid())
        self.slot.set_backend(queue.pin_transaction(conn, {**_SESSION, "application_name": tag}))

    def _fail(self, conn: psycopg.Connection[Any], job: queue.ClaimedJob, label: str,
              message: str, retry: bool, tb: str, begun: float) -> None:
        """Record a failure (compare-and-set) and clean up after the attempt."""
        record_failure(conn, job, message, retry=retry, tb=tb, label=label,
                       elapsed=time.monotonic() - begun,
                       delay_seconds=self.settings.retry_delay(job.attempt))
        self._discard(conn, job)

    def _discard(self, conn: psycopg.Connection[Any], job: queue.ClaimedJob) -> None:
        """An attempt that did not complete: its files and staging tables go."""
        remove_job_files(job.id, self.files)
        self.files = []
        try:
            dropped = staging.drop_parts(conn, job.id, attempt=job.attempt)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and conn.broken:
                raise
            log.warning("job %s: could not drop its staging tables: %s", job.id, exc)
            return
        if dropped:
            log.info("job %s: dropped %d staging table(s) of attempt %d", job.id, dropped,
                     job.attempt)
