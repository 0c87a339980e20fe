"""The worker (the supervisor): claim, hand the job to its job process, watch it, record.

One worker runs one job type, one job at a time. Each job runs in a child forked from the
warmed worker (:mod:`geojobs.jobprocess`); the worker keeps the control connection, LISTENs
(on the control connection, or through PgBouncer on a direct ``GEOJOBS_LISTEN_URL`` one, or
polls when there is none), heartbeats, registers itself in ``geojobs_workers`` and stops the
child with SIGKILL when the job is cancelled, times out or passes its memory limit. A
handler's writes and the job's completion are one transaction in the child, so a result table
exists exactly when its job is completed; a killed child's transaction rolls back.
"""

from __future__ import annotations

import logging
import os
import random
import select
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg

from geojobs import __version__, logs, queue, registry, sdnotify, staging
from geojobs.config import database_url, job_scratch_dir, listen_url, output_dir, pooled_poll_interval
from geojobs.db import connect, pooled
from geojobs.jobprocess import JobProcess
from geojobs.jobtype import JobType

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
    listen_url: str | None = field(default_factory=listen_url)
    pooled_poll_interval: float = field(default_factory=pooled_poll_interval)
    job_memory_mb: float | None = field(
        default_factory=lambda: _env_float("GEOJOBS_JOB_MEMORY_MB", 0.0) or None)
    memory_check_seconds: float = 0.1

    def retry_delay(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt ``attempt`` (1-based)."""
        return self.retry_delays[min(attempt, len(self.retry_delays)) - 1]

    def job_memory_limit(self, job: queue.ClaimedJob) -> float:
        """The job's memory limit in MB: its own, ``GEOJOBS_JOB_MEMORY_MB``, or the worker's cap."""
        return float(job.memory_limit_mb or self.job_memory_mb or self.memory_cap_mb)


DEFAULT_TIMEOUT_SECONDS = 6 * 3600
"""Time limit of a job whose row and job type name none."""


def default_timeout(jobtype: JobType) -> float:
    """``GEOJOBS_TIMEOUT_<TYPE>``, else the job type's ``DEFAULT_TIMEOUT_SECONDS``, else 6 h."""
    raw = os.environ.get(f"GEOJOBS_TIMEOUT_{jobtype.JOB_TYPE.upper()}")
    if raw:
        return float(raw)
    return float(jobtype.DEFAULT_TIMEOUT_SECONDS or DEFAULT_TIMEOUT_SECONDS)


class Worker:
    """A long-running worker for one job type: the supervisor of its job process."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.jobtype: JobType = registry.load(settings.job_type)
        self._control: psycopg.Connection[Any] | None = None
        # Where notifications arrive: the control connection itself when it is direct; behind
        # PgBouncer a direct connection to GEOJOBS_LISTEN_URL, or None (then the worker polls).
        self._listener: psycopg.Connection[Any] | None = None
        self._child: JobProcess | None = None
        self._stopping = threading.Event()
        self._abandoning = threading.Event()
        self._current: queue.ClaimedJob | None = None
        self._current_lock = threading.Lock()
        self._last_stale_check = 0.0
        self._last_touch = 0.0
        self._last_cap_check = 0.0
        self.jobs_run = 0
        self._process = psutil.Process()
        self._job_files: list[str] = []  # file outputs the current job announced

    # -- connections and the registry ----------------------------------------------------

    def _connections(self) -> psycopg.Connection[Any]:
        listener = self._listener
        if listener is not None and (listener.closed or listener.broken):
            self._drop_connections()  # start again with both
        if self._control is None or self._control.closed or self._control.broken:
            self._drop_connections()
            # Claims, failures and stale requeues need not wait for the WAL flush: a crash
            # that loses one also aborts the job's own transaction, so the job is simply
            # queued again. Completions stay durable: they commit on the job's connection.
            # (Through PgBouncer there is no session to set it on: claims commit durably.)
            self._control = connect(self.settings.database_url, connect_timeout=10,
                                    session={"synchronous_commit": "off"})
            if not pooled(self._control):
                self._listener = self._control
            elif self.settings.listen_url:
                self._listener = connect(self.settings.listen_url, connect_timeout=10)
            if self._listener is not None:
                queue.listen(self._listener)
                queue.listen(self._listener, queue.CANCEL_CHANNEL)
            else:
                log.info("connected through a transaction pooler and no GEOJOBS_LISTEN_URL: "
                         "polling every %.2f s for jobs and cancels",
                         self.settings.pooled_poll_interval)
            queue.register_worker(self._control, worker_id=self.worker_id,
                                  job_type=self.settings.job_type, host=self.host,
                                  pid=os.getpid(), version=__version__, rss_mb=self._rss_mb())
            self._last_touch = time.monotonic()
        return self._control

    def _drop_connections(self) -> None:
        for conn in (self._listener, self._control):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        self._control = self._listener = None

    def _rss_mb(self) -> float:
        """Resident memory of the worker and its job process, MB."""
        rss = self._process.memory_info().rss
        if self._child is not None:
            try:
                rss += psutil.Process(self._child.pid).memory_info().rss
            except psutil.Error:
                pass
        return rss / 2**20

    def _touch(self, control: psycopg.Connection[Any], current: int | None, *,
               force: bool = False) -> None:
        """Refresh this worker's registry row, at most once per heartbeat interval."""
        now = time.monotonic()
        if not force and now - self._last_touch < self.settings.heartbeat_seconds:
            return
        self._last_touch = now
        if not queue.touch_worker(control, self.worker_id, current_job=current,
                                  jobs_run=self.jobs_run, rss_mb=self._rss_mb()):
            queue.register_worker(control, worker_id=self.worker_id,
                                  job_type=self.settings.job_type, host=self.host,
                                  pid=os.getpid(), version=__version__, rss_mb=self._rss_mb())

    # -- signals -------------------------------------------------------------------------

    def _install_signal_handling(self) -> None:
        """SIGTERM/SIGINT are taken by a thread, so they act whatever the main thread does.

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
        """Past the grace period: kill the job process, give the job back unspent, exit."""
        self._abandoning.set()  # the main loop must not record the child's death as a failure
        child = self._child
        try:
            if child is not None:
                os.kill(child.pid, signal.SIGKILL)
            with connect(self.settings.database_url, connect_timeout=5) as conn:
                if child is not None and child.backend_pid:
                    queue.terminate_backend(conn, child.backend_pid, child.backend_tag)
                released = queue.release(conn, job)
                queue.unregister_worker(conn, self.worker_id)
            if child is not None:
                child.reap(timeout=2.0)  # dead, so it writes no more files
            self._remove_files(job)
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
        logs.set_worker(self.worker_id, self.settings.job_type)
        log.info("worker %s for %s started", self.worker_id, self.settings.job_type)
        sdnotify.notify("READY=1", f"STATUS=worker for {self.settings.job_type}")
        failures = 0
        try:
            while not self._stopping.is_set():
                sdnotify.watchdog()
                try:
                    control = self._connections()
                    self._requeue_stale(control)
                    self._touch(control, None)
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
                    if time.monotonic() - self._last_cap_check < 1.0:
                        continue  # at most once a second: a /proc read per job costs throughput
                    self._last_cap_check = time.monotonic()
                    rss_mb = self._rss_mb()
                    if rss_mb > self.settings.memory_cap_mb:
                        log.warning("resident memory %.0f MB is over the cap of %.0f MB: exiting "
                                    "so the service restarts with a clean heap", rss_mb,
                                    self.settings.memory_cap_mb)
                        break
                except psycopg.OperationalError as exc:
                    failures += 1
                    delay = min(30.0, 0.5 * 2 ** min(failures, 6)) * random.uniform(0.8, 1.2)
                    log.warning("database unavailable (%s); reconnecting in %.1f s",
                                str(exc).strip().splitlines()[0] if str(exc) else exc, delay)
                    self._drop_connections()
                    self._stopping.wait(delay)
        finally:
            if self._child is not None:
                self._child.stop()
                self._child = None
        log.info("worker %s stopped after %d job(s)", self.worker_id, self.jobs_run)
        sdnotify.notify("STOPPING=1")
        try:
            if self._control is not None and not self._control.broken:
                queue.unregister_worker(self._control, self.worker_id)
        except psycopg.Error:
            pass
        self._drop_connections()
        return 0

    def _requeue_stale(self, control: psycopg.Connection[Any]) -> None:
        now = time.monotonic()
        if now - self._last_stale_check < min(self.settings.lease_seconds / 2, 30.0):
            return
        self._last_stale_check = now
        for job_id, status in queue.requeue_stale(control, self.settings.lease_seconds):
            log.warning("job %s: its worker stopped sending heartbeats; now %s", job_id, status)
        for worker_id in queue.prune_workers(control, self.settings.lease_seconds):
            log.info("worker %s not seen for %.0f s: removed from the registry", worker_id,
                     self.settings.lease_seconds)

    def _wait(self, control: psycopg.Connection[Any]) -> None:
        """Sleep until a job of this type is announced, the poll interval passes, or a stop.

        Without a listening connection (through PgBouncer, no ``GEOJOBS_LISTEN_URL``) nothing is
        announced: the interval is then ``GEOJOBS_POOLED_POLL_INTERVAL`` if that is shorter.
        """
        listener = self._listener
        interval = self.settings.poll_interval
        if listener is None:
            interval = min(interval, self.settings.pooled_poll_interval)
        deadline = time.monotonic() + interval
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sdnotify.watchdog()
            self._touch(control, None)
            if listener is None:
                self._stopping.wait(min(remaining, 0.5))
                continue
            for note in listener.notifies(timeout=min(remaining, 0.5), stop_after=1):
                if note.channel == queue.NOTIFY_CHANNEL and note.payload == self.settings.job_type:
                    return

    # -- one job -------------------------------------------------------------------------

    def _job_process(self) -> JobProcess:
        """The live child, forked now if there is none."""
        if self._child is not None and not self._child.alive():
            self._child.reap()
            self._child = None
        if self._child is None:
            self._child = JobProcess(self.jobtype, self.settings.database_url,
                                     keep=[self._control])
        return self._child

    def _run_job(self, job: queue.ClaimedJob) -> None:
        with logs.job_fields(job.id, job.job_type, job.attempt, job.worker_id):
            self._run_job_logged(job)

    def _run_job_logged(self, job: queue.ClaimedJob) -> None:
        control = self._connections()
        with self._current_lock:
            self._current = job
        started = time.monotonic()
        label = f"job {job.id} {job.job_type} attempt {job.attempt}/{job.max_attempts}"
        log.info("%s started", label)
        self._job_files = []
        try:
            child = self._job_process()
            try:
                child.pipe.send(job)
                outcome = self._supervise(job, child, started)
            except (BrokenPipeError, EOFError, ConnectionResetError):
                outcome = self._child_died(child)
            except BaseException:
                self._kill(child)  # never leave a child working on a job nobody watches
                raise
        finally:
            self.jobs_run += 1
            with self._current_lock:
                self._current = None
        if outcome[0] != "completed":
            self._remove_files(job)
        self._record(control, job, outcome, label, time.monotonic() - started)

    def _remove_files(self, job: queue.ClaimedJob) -> None:
        """Remove what a job that did not complete left on disk: the file outputs it announced
        (only inside ``GEOJOBS_OUTPUT_DIR``) and its scratch directory."""
        root = output_dir().resolve()
        for name in self._job_files:
            path = Path(name).resolve()
            if path.is_relative_to(root) and path.is_file():
                path.unlink(missing_ok=True)
                log.info("job %s: removed %s (the job did not complete)", job.id, path)
        self._job_files = []
        shutil.rmtree(job_scratch_dir(job.id), ignore_errors=True)

    def _child_died(self, child: JobProcess) -> tuple[Any, ...]:
        while self._abandoning.is_set():  # the signal thread is giving the job back: wait
            time.sleep(1)
        status = child.reap()
        self._child = None
        how = ""
        if status is not None and os.WIFSIGNALED(status):
            how = f" (killed by {signal.Signals(os.WTERMSIG(status)).name})"
        elif status is not None and os.WIFEXITED(status):
            how = f" (exit status {os.WEXITSTATUS(status)})"
        return ("failed", f"the job process died{how}", True, "")

    def _kill(self, child: JobProcess) -> None:
        """SIGKILL the job process and end its database session now."""
        child.kill()
        self._child = None
        if child.backend_pid and self._control is not None and not self._control.broken:
            try:
                queue.terminate_backend(self._control, child.backend_pid, child.backend_tag)
            except psycopg.Error as exc:
                log.warning("could not end the killed job's session %s: %s", child.backend_pid,
                            exc)

    def _supervise(self, job: queue.ClaimedJob, child: JobProcess,
                   started: float) -> tuple[Any, ...]:
        """Wait for the child's outcome; stop it on cancel, timeout, memory or a lost lease."""
        settings = self.settings
        timeout = float(job.timeout_seconds or default_timeout(self.jobtype))
        deadline = started + timeout
        limit_mb = settings.job_memory_limit(job)
        child_ps: psutil.Process | None = None  # made at the first check: most jobs end before
        progress: float | None = None
        last_write = last_beat = started
        next_memory_check = started + settings.memory_check_seconds
        next_cancel_poll = started + settings.pooled_poll_interval  # without a listener only
        pipe_fd = child.pipe.fileno()
        while True:
            now = time.monotonic()
            wait = min(deadline, next_memory_check,
                       last_write + settings.heartbeat_seconds * 0.9) - now
            listener = self._listener
            up = listener is not None and not listener.closed
            fds = [pipe_fd, listener.fileno()] if up and listener is not None else [pipe_fd]
            ready, _, _ = select.select(fds, [], [], max(wait, 0.0))
            if pipe_fd in ready:
                message = child.pipe.recv()
                if message[0] == "backend":
                    child.backend_pid, child.backend_tag = message[1], message[2]
                elif message[0] == "file":
                    self._job_files.append(message[1])
                elif message[0] == "progress":
                    progress = message[1]
                    if time.monotonic() - last_write >= 0.5:
                        last_write = started - settings.heartbeat_seconds  # beat below, now
                else:
                    return message
            now = time.monotonic()
            if listener is not None and (len(ready) > 1 or (pipe_fd not in ready and ready)):
                if self._cancel_noted(listener, job):
                    self._kill(child)
                    return ("cancelled",)
            elif listener is None and now >= next_cancel_poll:
                next_cancel_poll = now + settings.pooled_poll_interval
                if self._cancel_polled(job):
                    self._kill(child)
                    return ("cancelled",)
            if now >= next_memory_check:
                next_memory_check = now + settings.memory_check_seconds
                try:
                    child_ps = child_ps or psutil.Process(child.pid)
                    rss_mb = child_ps.memory_info().rss / 2**20
                except psutil.Error:
                    rss_mb = 0.0
                if rss_mb > limit_mb:
                    self._kill(child)
                    return ("failed", f"used more than {limit_mb:.0f} MB", False,
                            f"resident memory {rss_mb:.0f} MB")
            if now >= deadline:
                self._kill(child)
                retry = self.jobtype.TIMEOUTS_ARE_TRANSIENT
                return ("failed", f"timed out after {timeout:.0f} s", retry, "")
            if now - last_write >= settings.heartbeat_seconds * 0.9:
                last_write = now
                sdnotify.watchdog()
                try:
                    control = self._connections()  # again, if the database dropped it
                    held = queue.heartbeat(control, job, progress)
                    self._touch(control, job.id)
                except psycopg.OperationalError as exc:
                    log.warning("job %s: heartbeat failed (%s); will retry", job.id,
                                str(exc).strip().splitlines()[0] if str(exc) else exc)
                    self._drop_connections()
                    if now - last_beat > settings.lease_seconds * 0.75:
                        # Fence ourselves off before the lease runs out and another worker
                        # takes the job: its work must never run twice at the same time.
                        self._kill(child)
                        return ("interrupted", f"could not renew the lease for "
                                               f"{now - last_beat:.1f} s")
                    continue
                last_beat = now
                if not held:
                    state = queue.job_state(control, job.id)
                    if state == ("completed", job.worker_id, job.attempt):
                        # The job process completed it while this heartbeat waited for the
                        # row lock of its completing transaction: its outcome is on the way.
                        continue
                    self._kill(child)
                    if state is not None and state[0] == "cancelled":
                        return ("cancelled",)
                    return ("interrupted", "the lease was lost (another worker holds the job)")

    def _cancel_polled(self, job: queue.ClaimedJob) -> bool:
        """Without notifications: read the job's status; True when it was cancelled."""
        control = self._control
        if control is None or control.closed or control.broken:
            return False
        try:
            state = queue.job_state(control, job.id)
        except psycopg.OperationalError as exc:
            log.warning("job %s: control connection lost (%s)", job.id, exc)
            return False
        return state is not None and state[0] == "cancelled"

    def _cancel_noted(self, listener: psycopg.Connection[Any], job: queue.ClaimedJob) -> bool:
        """Drain the listening connection's notifications; True when this job was cancelled."""
        try:
            notes = list(listener.notifies(timeout=0))
        except psycopg.OperationalError as exc:
            log.warning("job %s: control connection lost (%s)", job.id, exc)
            return False
        return any(n.channel == queue.CANCEL_CHANNEL and n.payload == str(job.id) for n in notes)

    def _record(self, control: psycopg.Connection[Any], job: queue.ClaimedJob,
                outcome: tuple[Any, ...], label: str, elapsed: float) -> None:
        """Log the outcome and, for a failure, record it on the job (compare-and-set)."""
        kind = outcome[0]
        if kind == "completed":
            log.info("%s completed in %.2f s: %s", label, elapsed, outcome[1])
        elif kind == "cancelled":
            log.warning("%s stopped after %.2f s: the job was cancelled", label, elapsed)
        elif kind == "interrupted":
            log.warning("%s stopped after %.2f s: %s", label, elapsed, outcome[1])
        elif kind == "db_down":
            log.warning("%s stopped after %.2f s: its connection was lost", label, elapsed)
            raise psycopg.OperationalError(outcome[1])  # reconnect; the lease brings it back
        else:
            _, message, retry, tb = outcome
            self._record_failure(control, job, message, retry, tb, label, elapsed)
        if kind != "completed":
            self._drop_staging(control, job)

    def _drop_staging(self, control: psycopg.Connection[Any], job: queue.ClaimedJob) -> None:
        """Drop the parts this attempt's Dask tasks wrote (none unless it ran partitioned):
        the attempt is over, so a task still running elsewhere will not write again."""
        try:
            dropped = staging.drop_parts(control, job.id, attempt=job.attempt)
        except psycopg.Error as exc:
            log.warning("job %s: could not drop its staging tables: %s", job.id, exc)
            return
        if dropped:
            log.info("job %s: dropped %d staging table(s) of attempt %d", job.id, dropped,
                     job.attempt)

    def _record_failure(
        self, control: psycopg.Connection[Any], job: queue.ClaimedJob, message: str, retry: bool,
        tb: str, label: str, elapsed: float,
    ) -> None:
        delay = self.settings.retry_delay(job.attempt)
        outcome = queue.fail(control, job, message, retry=retry, delay_seconds=delay)
        if outcome is None:
            log.warning("%s failed after %.2f s but was no longer ours: %s", label, elapsed, message)
        elif outcome[0] == "queued":
            log.error("%s failed after %.2f s, retry at %s: %s\n%s", label, elapsed,
                      outcome[1].isoformat(timespec="seconds"), message, tb)
        else:
            log.error("%s failed after %.2f s: %s\n%s", label, elapsed, message,
                      tb if retry else "")
