"""The worker loop: claim, run, record; heartbeats, signals, memory cap and reconnection.

One process runs one job type, one job at a time. The runner alone writes job status:
handlers return a result dict or raise. A handler's writes and the job's completion are one
transaction, so a result table exists exactly when its job is completed.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from analysis.errors import AnalysisError
from geojobs import queue, registry, sdnotify
from geojobs.config import database_url
from geojobs.context import JobContext
from geojobs.db import connect
from geojobs.errors import GeojobsError, JobInterrupted
from geojobs.jobtype import JobType
from geojobs.params import validate_params

__all__ = ["WorkerSettings", "Worker"]

log = logging.getLogger("geojobs.worker")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def _env_delays() -> tuple[float, ...]:
    raw = os.environ.get("GEOJOBS_RETRY_DELAYS")
    return tuple(float(x) for x in raw.split(",")) if raw else (300.0, 900.0, 3600.0)


@dataclass
class WorkerSettings:
    """How a worker behaves; every field has an environment variable (see docs/jobs.md)."""

    job_type: str
    database_url: str = field(default_factory=database_url)
    poll_interval: float = field(default_factory=lambda: _env_float("GEOJOBS_POLL_INTERVAL", 5.0))
    lease_seconds: float = field(default_factory=lambda: _env_float("GEOJOBS_LEASE_SECONDS", 60.0))
    heartbeat_seconds: float = field(
        default_factory=lambda: _env_float("GEOJOBS_HEARTBEAT_SECONDS", 10.0))
    memory_cap_mb: float = field(default_factory=lambda: _env_float("GEOJOBS_MEMORY_CAP_MB", 1024.0))
    grace_seconds: float = field(default_factory=lambda: _env_float("GEOJOBS_GRACE_SECONDS", 30.0))
    retry_delays: tuple[float, ...] = field(default_factory=_env_delays)

    def retry_delay(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt ``attempt`` (1-based)."""
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]


class _Heartbeat:
    """Renews the current job's lease from its own thread and connection; relays progress.

    One per worker, kept across jobs: the connection opens on the first beat a job needs, so a
    job shorter than the heartbeat interval costs no extra round trip.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._job: queue.ClaimedJob | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._started = 0.0
        self._last_write = 0.0
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, job: queue.ClaimedJob) -> None:
        if self._thread is None:  # started here, after the runner has blocked signals
            self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
            self._thread.start()
        with self._lock:
            self._job = job
            self.lost.clear()
            self._started = self._last_write = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._job = None
            self._wake.notify()

    def _beat(self, job: queue.ClaimedJob, progress: float | None) -> None:
        """Renew the lease; the caller holds the lock."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._settings.database_url, connect_timeout=5)
            if not queue.heartbeat(self._conn, job, progress):
                self.lost.set()
        except psycopg.OperationalError as exc:
            log.warning("job %s: heartbeat failed (%s); will retry", job.id, exc)
            self._conn = None
        self._last_write = time.monotonic()

    def _loop(self) -> None:
        with self._lock:
            while True:
                self._wake.wait(self._settings.heartbeat_seconds)
                job = self._job
                if job is not None:
                    sdnotify.watchdog()  # during a job; the main loop pets between jobs
                if job is not None and time.monotonic() - self._last_write >= (
                        self._settings.heartbeat_seconds * 0.9):
                    self._beat(job, None)

    def report(self, fraction: float) -> None:
        """Record progress (at most every half second) and stop the job if it must stop."""
        with self._lock:
            job = self._job
            if job is not None and time.monotonic() - self._last_write >= 0.5:
                self._beat(job, fraction)
        if self.lost.is_set():
            raise JobInterrupted("the job was cancelled or its lease was lost")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Worker:
    """A long-running worker for one job type."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobtype: JobType = registry.load(settings.job_type)
        self._control: psycopg.Connection[Any] | None = None
        self._job_conn: psycopg.Connection[Any] | None = None
        self._stopping = threading.Event()
        self._current: queue.ClaimedJob | None = None
        self._current_lock = threading.Lock()
        self._last_stale_check = 0.0
        self._heartbeat = _Heartbeat(settings)
        self.jobs_run = 0
        self._process = psutil.Process()

    # -- connections ---------------------------------------------------------------------

    def _connections(self) -> tuple[psycopg.Connection[Any], psycopg.Connection[Any]]:
        if self._control is None or self._control.closed:
            self._control = connect(self.settings.database_url, connect_timeout=10)
            # Claims, failures and stale requeues need not wait for the WAL flush: a crash
            # that loses one also aborts the job's own transaction, so the job is simply
            # queued again. Completions stay durable: they commit on the job connection.
            self._control.execute("SET synchronous_commit = off")
            self._control.execute("LISTEN geojobs")
        if self._job_conn is None or self._job_conn.closed:
            self._job_conn = connect(self.settings.database_url, connect_timeout=10)
        return self._control, self._job_conn

    def _drop_connections(self) -> None:
        for conn in (self._control, self._job_conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._control = self._job_conn = None
        self._heartbeat.close()

    # -- signals -------------------------------------------------------------------------

    def _install_signal_handling(self) -> None:
        """SIGTERM/SIGINT are taken by a thread, so they act even while a job is in C code.

        Not by blocking them and ``sigwait``: threads that C libraries start at import (numpy's
        BLAS pool) do not block them, and the kernel may deliver the signal there. Instead the
        signal's C-level handler, on whichever thread it lands, writes its number to a wake-up
        socket that the signal thread reads at once.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)  # the wake-up socket does the work
        self._signal_sockets = (reader, writer)  # keep them open for the process's life
        threading.Thread(target=self._signal_loop, args=(reader,), name="signals",
                         daemon=True).start()

    def _signal_loop(self, reader: socket.socket) -> None:
        while True:
            data = reader.recv(1)
            if not data or data[0] not in (signal.SIGTERM, signal.SIGINT):
                continue
            signum = data[0]
            with self._current_lock:
                job = self._current
            if self._stopping.is_set() and job is not None:
                log.warning("second signal %s: giving job %s back now", signum, job.id)
                self._abandon(job)
            self._stopping.set()
            sdnotify.notify("STOPPING=1")
            if job is None:
                log.info("signal %s: stopping (no job running)", signum)
                continue
            log.info("signal %s: job %s has %.0f s to finish", signum, job.id,
                     self.settings.grace_seconds)
            deadline = time.monotonic() + self.settings.grace_seconds
            while time.monotonic() < deadline:
                with self._current_lock:
                    if self._current is not job:
                        break
                time.sleep(0.05)
            else:
                self._abandon(job)

    def _abandon(self, job: queue.ClaimedJob) -> None:
        """Past the grace period: give the job back unspent and exit at once."""
        try:
            if self._job_conn is not None:
                self._job_conn.cancel()
            with connect(self.settings.database_url, connect_timeout=5) as conn:
                released = queue.release(conn, job)
            log.warning("job %s %s: grace period over; %s", job.id, job.job_type,
                        "put back in the queue" if released else "already finished elsewhere")
        except Exception:  # noqa: BLE001 - the lease will expire and the job be taken back
            log.exception("job %s: could not give it back; its lease will expire", job.id)
        logging.shutdown()
        os._exit(0)

    # -- the loop ------------------------------------------------------------------------

    def run(self, *, drain: bool = False, once: bool = False, handle_signals: bool = False) -> int:
        """Work until stopped (or, with ``drain``, until no job is ready); return the exit code.

        ``handle_signals`` (for a worker process, not a worker embedded in a test or notebook)
        turns SIGTERM/SIGINT into a graceful stop.
        """
        if handle_signals:
            self._install_signal_handling()
        log.info("worker %s for %s started", self.worker_id, self.settings.job_type)
        sdnotify.notify("READY=1", f"STATUS=worker for {self.settings.job_type}")
        failures = 0
        while not self._stopping.is_set():
            sdnotify.watchdog()
            try:
                control, _ = self._connections()
                self._requeue_stale(control)
                job = queue.claim(control, self.settings.job_type, self.worker_id)
                failures = 0
                if job is None:
                    if drain or once:
                        break
                    self._wait(control)
                    continue
                self._run_job(job)
                if once:
                    break
                rss_mb = self._process.memory_info().rss / 2**20
                if rss_mb > self.settings.memory_cap_mb:
                    log.warning("resident memory %.0f MB is over the cap of %.0f MB: exiting so "
                                "the service restarts with a clean heap", rss_mb,
                                self.settings.memory_cap_mb)
                    break
            except psycopg.OperationalError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.8, 1.2)
                log.warning("database unavailable (%s); reconnecting in %.1f s",
                            str(exc).strip().splitlines()[0] if str(exc) else exc, delay)
                self._drop_connections()
                self._stopping.wait(delay)
        log.info("worker %s stopped after %d job(s)", self.worker_id, self.jobs_run)
        sdnotify.notify("STOPPING=1")
        self._drop_connections()
        return 0

    def _requeue_stale(self, control: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._last_stale_check < min(self.settings.lease_seconds / 2, 30.0):
            return
        self._last_stale_check = now
        for job_id, status in queue.requeue_stale(control, self.settings.lease_seconds):
            log.warning("job %s: its worker stopped sending heartbeats; now %s", job_id, status)

    def _wait(self, control: psycopg.Connection[Any]) -> None:
        """Sleep until a job of this type is announced, the poll interval passes, or a stop."""
        deadline = time.monotonic() + self.settings.poll_interval
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sdnotify.watchdog()
            for note in control.notifies(timeout=min(remaining, 0.5), stop_after=1):
                if note.payload == self.settings.job_type:
                    return

    # -- one job -------------------------------------------------------------------------

    def _run_job(self, job: queue.ClaimedJob) -> None:
        control, job_conn = self._connections()
        with self._current_lock:
            self._current = job
        started = time.monotonic()
        label = f"job {job.id} {job.job_type} attempt {job.attempt}/{job.max_attempts}"
        log.info("%s started", label)
        heartbeat = self._heartbeat
        heartbeat.begin(job)
        try:
            result = self._execute(job, job_conn, heartbeat)
            log.info("%s completed in %.2f s: %s", label, time.monotonic() - started,
                     {k: result[k] for k in ("output_table", "rows") if k in result})
        except JobInterrupted as exc:
            log.warning("%s stopped after %.2f s: %s", label, time.monotonic() - started, exc)
        except BaseException as exc:  # noqa: BLE001 - a job's failure never kills the worker
            if isinstance(exc, psycopg.OperationalError) and (job_conn.broken or control.broken):
                raise  # the database went away: reconnect; the lease brings the job back
            self._record_failure(control, job, exc, label, time.monotonic() - started)
        finally:
            heartbeat.end()
            self.jobs_run += 1
            with self._current_lock:
                self._current = None

    def _execute(
        self, job: queue.ClaimedJob, job_conn: psycopg.Connection[Any], heartbeat: _Heartbeat
    ) -> dict[str, Any]:
        params = validate_params(self.jobtype.Params, job.params)
        ctx = JobContext(job_id=job.id, job_type=job.job_type, attempt=job.attempt,
                         worker_id=job.worker_id, conn=job_conn, report=heartbeat.report)
        with job_conn.transaction():
            result = dict(self.jobtype.run(ctx, params) or {})
            result.setdefault("warnings", [])
            if heartbeat.lost.is_set() or not queue.complete(job_conn, job, result):
                raise JobInterrupted("the job was cancelled or taken back before it completed")
        return result

    def _record_failure(
        self, control: psycopg.Connection[Any], job: queue.ClaimedJob, exc: BaseException,
        label: str, elapsed: float,
    ) -> None:
        if isinstance(exc, GeojobsError | AnalysisError):
            message = str(exc)
            retry = getattr(exc, "retryable", False)
        elif isinstance(exc, psycopg.errors.InsufficientPrivilege):
            message = f"{type(exc).__name__}: {exc}"  # the worker role may not do this; a retry
            retry = False                               # would be refused the same way
        else:
            message = f"{type(exc).__name__}: {exc}"
            retry = True
        delay = self.settings.retry_delay(job.attempt)
        outcome = queue.fail(control, job, message, retry=retry, delay_seconds=delay)
        tb = "".join(traceback.format_exception(exc)).rstrip()
        if outcome is None:
            log.warning("%s failed after %.2f s but was no longer ours: %s", label, elapsed, message)
        elif outcome[0] == "queued":
            log.error("%s failed after %.2f s, retry at %s: %s\n%s", label, elapsed,
                      outcome[1].isoformat(timespec="seconds"), message, tb)
        else:
            log.error("%s failed after %.2f s: %s\n%s", label, elapsed, message,
                      tb if retry else "")
