"""The worker (the supervisor): hand jobs to its job process, watch it, stop it when needed.

One worker runs one job type, one job at a time. Each job runs in a child forked from the
warmed worker (:mod:`geojobs.jobprocess`). When the child is idle the worker claims a job and
hands it over; from then on the child claims its next jobs itself, in the transaction that
completes the one before, until nothing is queued. The worker keeps the control connection,
LISTENs (on the control connection, or through PgBouncer on a direct ``GEOJOBS_LISTEN_URL``
one, or polls when there is none), heartbeats the job the child publishes in shared memory,
registers itself in ``geojobs_workers`` and stops the child with SIGKILL when the job is
cancelled, times out or passes its memory limit; then the database says which jobs the child
held, and each is failed or given back. A handler's writes and the job's completion are one
transaction in the child, so a result table exists exactly when its job is completed; a killed
child's transaction rolls back.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from geojobs import __version__, logs, queue, registry, sdnotify, staging
from geojobs.config import database_url, listen_url, pooled_poll_interval
from geojobs.db import connect, pooled
from geojobs.jobprocess import JobProcess, JobSlot, SlotState, backend_tag, record_failure, remove_job_files
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
        self._slot = JobSlot()  # what the job process is doing; shared with every child
        self._busy = False  # from a hand-over to the child's "idle": it holds or claims jobs
        self._stopping = threading.Event()
        self._abandoning = threading.Event()
        self._last_stale_check = 0.0
        self._last_touch = 0.0
        self._last_cap_check = 0.0
        self._cap_exceeded = False
        self._killed = 0  # jobs stopped with their process (the slot counts the others)
        self._process = psutil.Process()
        self._files: dict[int, list[str]] = {}  # file outputs announced, by job
        self._cancels: dict[int, float] = {}  # cancelled job ids noted, and when
        # A stopped job process whose jobs are not yet failed or given back: (the job it was
        # stopped for, why, the job it was running when it died).
        self._unsettled: tuple[SlotState, tuple[Any, ...], SlotState] | None = None

    @property
    def jobs_run(self) -> int:
        """Jobs this worker has run, whatever their outcome."""
        return self._slot.jobs_run() + self._killed

    def job_limits(self, job: queue.ClaimedJob) -> tuple[float, float]:
        """(time limit in s, memory limit in MB) of a job: its own or the defaults."""
        return (float(job.timeout_seconds or default_timeout(self.jobtype)),
                self.settings.job_memory_limit(job))

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

    def _touch(self, control: psycopg.Connection[Any], *, force: bool = False) -> None:
        """Refresh this worker's registry row, at most once per heartbeat interval."""
        now = time.monotonic()
        if not force and now - self._last_touch < self.settings.heartbeat_seconds:
            return
        self._last_touch = now
        current = self._slot.read().job_id or None
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
            busy = self._busy
            if self._stopping.is_set() and busy:
                log.warning("second signal %s: giving the job back now", signum)
                self._abandon()
            self._stopping.set()
            self._slot.request_stop()  # the job process finishes its job and claims no other
            sdnotify.notify("STOPPING=1")
            if not busy:
                log.info("signal %s: stopping (no job running)", signum)
                continue
            log.info("signal %s: job %s has %.0f s to finish", signum,
                     self._slot.read().job_id or "(starting)", self.settings.grace_seconds)
            deadline = time.monotonic() + self.settings.grace_seconds
            while time.monotonic() < deadline:
                if not self._busy:
                    break
                time.sleep(0.05)
            else:
                self._abandon()

    def _abandon(self) -> None:
        """Past the grace period: kill the job process, give its jobs back unspent, exit."""
        self._abandoning.set()  # the main loop must not record the child's death as a failure
        child = self._child
        try:
            if child is not None:
                os.kill(child.pid, signal.SIGKILL)
            if child is not None:
                child.reap(timeout=2.0)  # dead, so it claims and writes no more
            state = self._slot.read(dead=True)
            with connect(self.settings.database_url, connect_timeout=5) as conn:
                if child is not None:
                    self._end_session(conn, child, state)
                held = queue.running_of_worker(conn, self.worker_id)
                released = [job for job in held if queue.release(conn, job)]
                queue.unregister_worker(conn, self.worker_id)
            for job_id in {state.job_id, *self._files} - {0}:
                remove_job_files(job_id, self._files.get(job_id, []))
            for job in released:
                log.warning("job %s %s: grace period over; put back in the queue", job.id,
                            job.job_type)
            if state.job_id and state.job_id not in {job.id for job in released}:
                log.warning("job %s %s: grace period over; already finished elsewhere",
                            state.job_id, self.settings.job_type)
        except Exception:  # noqa: BLE001 - the lease will expire and the job be taken back
            log.exception("could not give the running job back; its lease will expire")
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
            while not self._stopping.is_set() and not self._cap_exceeded:
                sdnotify.watchdog()
                try:
                    control = self._connections()
                    if self._unsettled is not None:
                        self._settle(control)
                    self._requeue_stale(control)
                    self._touch(control)
                    asked = time.monotonic()  # the job's started_at is this statement's
                    job = queue.claim(control, self.settings.job_type, self.worker_id)
                    failures = 0
                    if job is None:
                        if drain or once:
                            break
                        self._wait(control)
                        continue
                    self._hand_over(job, asked, once=once)
                    if once:
                        break
                    self._check_cap(time.monotonic())
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

    def _check_cap(self, now: float) -> None:
        """At most once a second: past ``GEOJOBS_MEMORY_CAP_MB`` the worker stops claiming and
        exits between jobs, so the service restarts with a clean heap."""
        if now - self._last_cap_check < 1.0 or self._cap_exceeded:
            return
        self._last_cap_check = now
        self._slot.set_parent_rss(self._process.memory_info().rss / 2**20)
        rss_mb = self._rss_mb()
        if rss_mb > self.settings.memory_cap_mb:
            self._over_cap(rss_mb)

    def _over_cap(self, rss_mb: float) -> None:
        """Stop claiming; exit once the job process is idle."""
        if self._cap_exceeded:
            return
        log.warning("resident memory %.0f MB is over the cap of %.0f MB: exiting so the "
                    "service restarts with a clean heap", rss_mb, self.settings.memory_cap_mb)
        self._cap_exceeded = True
        self._slot.request_stop()

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
            self._touch(control)
            if listener is None:
                self._stopping.wait(min(remaining, 0.5))
                continue
            for note in listener.notifies(timeout=min(remaining, 0.5), stop_after=1):
                if note.channel == queue.NOTIFY_CHANNEL and note.payload == self.settings.job_type:
                    return

    # -- the job process -----------------------------------------------------------------

    def _job_process(self) -> JobProcess:
        """The live child, forked now if there is none."""
        if self._child is not None and not self._child.alive():
            self._child.reap()
            self._child = None
        if self._child is None:
            self._child = JobProcess(self.jobtype, self.settings, self.worker_id, self._slot,
                                     self.job_limits, keep=[self._control, self._listener])
        return self._child

    def _hand_over(self, job: queue.ClaimedJob, claimed: float, *, once: bool) -> None:
        """Give a job claimed here (by a statement sent at ``claimed``, ``time.monotonic()``)
        to the job process and watch it (and the jobs it claims after it) until it is idle
        again or stopped."""
        with logs.job_fields(job.id, job.job_type, job.attempt, job.worker_id):
            log.info("job %s %s attempt %s/%s started", job.id, job.job_type, job.attempt,
                     job.max_attempts)
        if once or self._stopping.is_set():
            self._slot.request_stop()
        self._slot.set_parent_rss(self._process.memory_info().rss / 2**20)
        self._busy = True
        try:
            child = self._job_process()
            # Published here too, so its time limit runs even while the child is slow to
            # take it (a fresh fork connecting on a loaded host); the child is idle, so the
            # slot has one writer at a time.
            self._slot.publish(job, *self.job_limits(job), since=claimed)
            try:
                child.pipe.send(job)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self._slot.publish(None)  # it never began: given back, not failed
                self._child_died(child, job)
                return
            try:
                self._supervise(child)
            except psycopg.OperationalError:
                raise
            except BaseException:
                if self._child is child:  # never leave a child working on jobs nobody watches
                    self._stop(child, self._slot.read(), ("interrupted", "the worker failed"))
                raise
        finally:
            self._busy = False

    def _child_died(self, child: JobProcess, handed: queue.ClaimedJob | None = None) -> None:
        """The job process exited on its own (a crash, SIGKILL from outside): a failed attempt
        of the job it was running."""
        while self._abandoning.is_set():  # the signal thread is giving the job back: wait
            time.sleep(1)
        status = child.reap()
        self._child = None
        how = ""
        if status is not None and os.WIFSIGNALED(status):
            how = f" (killed by {signal.Signals(os.WTERMSIG(status)).name})"
        elif status is not None and os.WIFEXITED(status):
            how = f" (exit status {os.WEXITSTATUS(status)})"
        state = self._slot.read(dead=True)
        self._after_kill(child, state, ("failed", f"the job process died{how}", True, ""), state)

    def _stop(self, child: JobProcess, target: SlotState, outcome: tuple[Any, ...]) -> None:
        """SIGKILL the job process (stopping ``target``), end its database session, and settle
        the jobs the database says it held."""
        child.kill()
        self._after_kill(child, target, outcome, self._slot.read(dead=True))

    def _after_kill(self, child: JobProcess, target: SlotState, outcome: tuple[Any, ...],
                    final: SlotState) -> None:
        self._child = None
        if final.job_id:
            self._killed += 1
        control = self._control
        if control is not None and not control.broken:
            self._end_session(control, child, final)
        self._slot.clear()
        self._unsettled = (target, outcome, final)
        self._settle(self._connections())

    def _end_session(self, conn: psycopg.Connection[Any], child: JobProcess,
                     final: SlotState) -> None:
        """End the killed child's database session now (its transaction rolls back). Through
        PgBouncer only while the server process still runs that job's transaction."""
        backend = self._slot.backend()
        if not backend:
            return
        tag = None
        if pooled(conn):
            if not final.job_id:
                return  # the server connection serves other clients now
            tag = backend_tag(final.job_id, final.attempt, child.pid)
        try:
            queue.terminate_backend(conn, backend, tag)
        except psycopg.Error as exc:
            log.warning("could not end the killed job's session %s: %s", backend, exc)

    def _settle(self, control: psycopg.Connection[Any]) -> None:
        """After a job process was stopped: the database says which jobs it held. The one it was
        running gets the outcome (failed, cancelled, or given back when it was stopped for
        another job); a job it had claimed and not begun is given back unspent."""
        assert self._unsettled is not None
        target, outcome, final = self._unsettled
        held = queue.running_of_worker(control, self.worker_id)
        if final.job_id and final.job_id != target.job_id:
            outcome = ("interrupted", f"its job process was stopped for job {target.job_id}")
        elapsed = time.monotonic() - final.started if final.job_id else 0.0
        for job in held:
            label = f"job {job.id} {job.job_type} attempt {job.attempt}/{job.max_attempts}"
            with logs.job_fields(job.id, job.job_type, job.attempt, job.worker_id):
                if (job.id, job.attempt) != (final.job_id, final.attempt):
                    queue.release(control, job)
                    log.info("job %s %s: claimed by the stopped job process before it began; put "
                             "back in the queue", job.id, job.job_type)
                elif outcome[0] == "failed":
                    _, message, retry, tb = outcome
                    record_failure(control, job, message, retry=retry, tb=tb, label=label,
                                   elapsed=elapsed,
                                   delay_seconds=self.settings.retry_delay(job.attempt))
                else:
                    queue.release(control, job)
                    log.warning("%s stopped after %.2f s: %s; put back in the queue", label,
                                elapsed, outcome[1] if len(outcome) > 1 else outcome[0])
        if final.job_id and (final.job_id, final.attempt) not in {(j.id, j.attempt) for j in held}:
            label = (f"job {final.job_id} {self.settings.job_type} attempt "
                     f"{final.attempt}/{final.max_attempts}")
            with logs.job_fields(final.job_id, self.settings.job_type, final.attempt,
                                 self.worker_id):
                now = queue.job_state(control, final.job_id)
                if outcome[0] == "cancelled":
                    log.warning("%s stopped after %.2f s: the job was cancelled", label, elapsed)
                elif now is not None and now[0] == "completed" and now[1:] == (self.worker_id,
                                                                               final.attempt):
                    log.info("%s completed before its job process was stopped (%s)", label,
                             outcome[1])
                else:
                    log.warning("%s stopped after %.2f s: %s (the job was no longer ours)", label,
                                elapsed, outcome[1])
        for state in {target, final}:
            if state.job_id:
                remove_job_files(state.job_id, self._files.get(state.job_id, []))
                self._drop_staging(control, state)
        self._files.clear()
        self._unsettled = None

    def _drop_staging(self, control: psycopg.Connection[Any], state: SlotState) -> None:
        """Drop the parts this attempt's Dask tasks wrote (none unless it ran partitioned):
        the attempt is over, so a task still running elsewhere will not write again."""
        try:
            dropped = staging.drop_parts(control, state.job_id, attempt=state.attempt)
        except psycopg.Error as exc:
            log.warning("job %s: could not drop its staging tables: %s", state.job_id, exc)
            return
        if dropped:
            log.info("job %s: dropped %d staging table(s) of attempt %d", state.job_id, dropped,
                     state.attempt)

    # -- watching ------------------------------------------------------------------------

    def _supervise(self, child: JobProcess) -> None:
        """Watch the job process until it is idle: read its slot every
        ``memory_check_seconds``; stop it on cancel, timeout, memory or a lost lease."""
        settings = self.settings
        child_ps: psutil.Process | None = None
        beat_job = (0, 0)  # the job the lease clock below belongs to
        last_write = last_beat = time.monotonic()
        written_progress: float | None = None
        next_cancel_poll = last_write + settings.pooled_poll_interval  # without a listener
        pipe_fd = child.pipe.fileno()
        while True:
            listener = self._listener
            up = listener is not None and not listener.closed
            fds = [pipe_fd, listener.fileno()] if up and listener is not None else [pipe_fd]
            ready, _, _ = select.select(fds, [], [], settings.memory_check_seconds)
            if pipe_fd in ready:
                try:
                    message = child.pipe.recv()
                except (EOFError, OSError):
                    self._child_died(child)
                    return
                if message[0] == "idle":
                    if message[1] is not None:
                        self._over_cap(message[1])
                    return
                if message[0] == "db_down":
                    raise psycopg.OperationalError(message[1])  # reconnect; the lease brings
                if message[0] == "file":                      # the job back
                    self._files.setdefault(message[1], []).append(message[2])
            if listener is not None and up and listener.fileno() in ready:
                self._note_cancels(listener)
            now = time.monotonic()
            sdnotify.watchdog()
            self._check_cap(now)
            state = self._slot.read()
            if not state.job_id:
                continue
            if (state.job_id, state.attempt) != beat_job:
                beat_job = (state.job_id, state.attempt)
                last_beat = max(last_beat, state.started)
                written_progress = None
            if self._cancels:
                if self._cancels.pop(state.job_id, None) is not None:
                    self._stop(child, state, ("cancelled",))
                    return
                for job_id, noted in list(self._cancels.items()):
                    if now - noted > settings.lease_seconds:
                        del self._cancels[job_id]
            if listener is None and now >= next_cancel_poll:
                next_cancel_poll = now + settings.pooled_poll_interval
                if self._cancel_polled(state.job_id):
                    self._stop(child, state, ("cancelled",))
                    return
            try:
                child_ps = child_ps or psutil.Process(child.pid)
                rss_mb = child_ps.memory_info().rss / 2**20
            except psutil.Error:
                rss_mb = 0.0
            if rss_mb > state.memory_limit_mb:
                self._stop(child, state, ("failed", f"used more than {state.memory_limit_mb:.0f} MB",
                                          False, f"resident memory {rss_mb:.0f} MB"))
                return
            if now >= state.started + state.timeout:
                self._stop(child, state, ("failed", f"timed out after {state.timeout:.0f} s",
                                          self.jobtype.TIMEOUTS_ARE_TRANSIENT, ""))
                return
            progress = self._slot.progress()
            due = now - last_write >= settings.heartbeat_seconds * 0.9 or (
                progress != written_progress and now - last_write >= 0.5)
            if not due:
                continue
            last_write = now
            job = state.job(self.settings.job_type, self.worker_id)
            try:
                control = self._connections()  # again, if the database dropped it
                held = queue.heartbeat(control, job, progress)
                self._touch(control)
                self._requeue_stale(control)
            except psycopg.OperationalError as exc:
                log.warning("job %s: heartbeat failed (%s); will retry", job.id,
                            str(exc).strip().splitlines()[0] if str(exc) else exc)
                self._drop_connections()
                if now - last_beat > settings.lease_seconds * 0.75:
                    # Fence ourselves off before the lease runs out and another worker takes
                    # the job: its work must never run twice at the same time.
                    self._stop(child, state, ("interrupted", f"could not renew the lease for "
                                                             f"{now - last_beat:.1f} s"))
                    return
                continue
            last_beat = now
            written_progress = progress
            if not held:
                current = queue.job_state(control, job.id)
                if current is not None and current[0] == "completed":
                    continue  # completed meanwhile by the job process: it has moved on
                if self._slot.read().job_id != job.id:
                    continue  # finished meanwhile (failed, refused): not ours to stop
                if current is not None and current[0] == "cancelled":
                    self._stop(child, state, ("cancelled",))
                else:
                    self._stop(child, state, ("interrupted",
                                              "the lease was lost (another worker holds the job)"))
                return

    def _note_cancels(self, listener: psycopg.Connection[Any]) -> None:
        """Drain the listening connection's notifications, noting the cancelled job ids."""
        try:
            notes = list(listener.notifies(timeout=0))
        except psycopg.OperationalError as exc:
            log.warning("control connection lost (%s)", exc)
            self._drop_connections()
            return
        now = time.monotonic()
        for note in notes:
            if note.channel != queue.CANCEL_CHANNEL or not note.payload.isdigit():
                continue
            job_id = int(note.payload)
            if self._slot.read().job_id == job_id or self._holds(job_id):
                self._cancels[job_id] = now

    def _holds(self, job_id: int) -> bool:
        """Whether this worker held the (cancelled) job: its job process may have claimed it
        and not yet published it. Another worker's job is not ours to watch for."""
        control = self._control
        if control is None or control.closed or control.broken:
            return False
        try:
            state = queue.job_state(control, job_id)
        except psycopg.OperationalError:
            return False
        return state is not None and state[1] == self.worker_id

    def _cancel_polled(self, job_id: int) -> bool:
        """Without notifications: read the job's status; True when it was cancelled."""
        control = self._control
        if control is None or control.closed or control.broken:
            return False
        try:
            state = queue.job_state(control, job_id)
        except psycopg.OperationalError as exc:
            log.warning("job %s: control connection lost (%s)", job_id, exc)
            return False
        return state is not None and state[0] == "cancelled"

