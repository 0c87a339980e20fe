"""Wall time and peak memory: of a whole job run as a worker process, of a call, of a statement.

A job is measured as a user pays for it: enqueued, then one worker process started with
``--once`` claims, runs and completes it. The child's peak resident set is the kernel's
high-water mark (``VmHWM``), so sampling cannot miss a short peak before the last sample. In-process
calls and SQL statements are timed with ``perf_counter``; their memory is sampled (every
10 ms) from this process or from the PostgreSQL backend serving the statement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
import psycopg

from geojobs import queue

__all__ = ["Measurement", "Timing", "BenchError", "measure_job", "worker_env", "time_call",
           "time_sql", "RssSampler", "growth_exponent", "percentiles"]

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a job failed, a process hung)."""


@dataclass
class Measurement:
    """One job run as a worker process, queue to completed."""

    wall_s: float  # process start to exit: imports, connection, claim, run, commit
    peak_rss_mb: float  # the worker process's peak resident set
    job_row: dict[str, Any]  # the job's row after the run

    @property
    def job_s(self) -> float:
        """Claim to completion as the job row records it (no interpreter start-up)."""
        started, finished = self.job_row.get("started_at"), self.job_row.get("finished_at")
        if started is None or finished is None:
            return float("nan")
        return float((finished - started).total_seconds())


@dataclass
class Timing:
    """One in-process call or SQL statement."""

    wall_s: float
    peak_rss_mb: float  # peak resident set sampled during the call (see the caller's note)
    value: Any = field(default=None, repr=False)
    start_rss_mb: float = 0.0  # resident set when the measurement began

    @property
    def added_rss_mb(self) -> float:
        """How far the resident set rose above where it started."""
        return max(0.0, self.peak_rss_mb - self.start_rss_mb)


def worker_env(database_url: str, **settings: str) -> dict[str, str]:
    """Environment of a benchmark worker: the database, no memory cap, no log file."""
    env = dict(os.environ, DATABASE_URL=database_url, GEOJOBS_MEMORY_CAP_MB="1000000",
               PYTHONPATH=str(ROOT))
    env.update(settings)
    return env


def _hwm_kb(pid: int) -> int | None:
    """The process's peak resident set so far (``VmHWM``, kB), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _wait_peak(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for ``proc``; return (exit code, peak RSS in MB of it and its job process).

    ``VmHWM`` is the kernel's high-water mark of the process's resident set since its
    ``exec``: sampled every 5 ms until exit, its last value misses only a peak reached in the
    last few milliseconds. (``wait4``'s ``ru_maxrss`` cannot be used: on Linux it also counts
    the parent's memory image from before the ``exec``.)
    """
    deadline = time.monotonic() + timeout
    peak_kb = 0
    while proc.poll() is None:
        # The job runs in a process forked from the worker: the worker's high-water mark plus
        # its job process's, an upper bound (pages the fork still shares are counted twice).
        try:
            pids = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children())]
        except psutil.Error:
            pids = [proc.pid]
        peak_kb = max(peak_kb, sum((_hwm_kb(pid) or 0) for pid in pids))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise BenchError(f"worker process {proc.args!r} did not finish within {timeout:.0f} s")
        time.sleep(0.005)
    return int(proc.returncode), peak_kb / 1024


def measure_job(
    database_url: str, job_type: str, params: Mapping[str, Any], *, timeout: float = 3600,
    require_completed: bool = True, env: Mapping[str, str] | None = None,
) -> Measurement:
    """Enqueue one job, run ``python -m workers.<job_type> --once`` and measure the process.

    Raises :class:`BenchError` when the job does not complete (unless ``require_completed``
    is false), with the job's recorded error, so a broken benchmark never reports a time.
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        job_id = queue.enqueue(conn, job_type, dict(params), max_attempts=1)
    args = [sys.executable, "-m", f"workers.{job_type}", "--once"]
    started = time.perf_counter()
    proc = subprocess.Popen(args, env={**worker_env(database_url), **(env or {})}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    code, peak_mb = _wait_peak(proc, timeout)
    wall = time.perf_counter() - started
    reader.join(timeout=5)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = queue.get(conn, job_id) or {}
    if require_completed and row.get("status") != "completed":
        tail = b"".join(stderr_chunks).decode(errors="replace")[-2000:]
        raise BenchError(f"{job_type} job {job_id} ended {row.get('status')!r} (exit {code}): "
                         f"{row.get('error')}\n{tail}")
    return Measurement(wall_s=wall, peak_rss_mb=peak_mb, job_row=row)


class RssSampler:
    """Samples a process's resident set in a thread; ``peak_mb`` is the highest seen.

    ``private`` subtracts shared pages: for a PostgreSQL backend, whose RSS otherwise counts
    every shared buffer it touched. ``children`` adds the resident sets of its child processes
    (the API's streamed downloads are written by a child).
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.01,
                 private: bool = False, children: bool = False) -> None:
        self._proc = psutil.Process(pid)
        self._children = children
        self._interval = interval
        self._private = private
        self._stop = threading.Event()
        self.peak_bytes = 0
        self.start_bytes = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        try:
            procs = [self._proc, *(self._proc.children(recursive=True) if self._children else [])]
            infos = [proc.memory_info() for proc in procs]
        except psutil.Error:
            return
        rss = sum(info.rss - (info.shared if self._private else 0) for info in infos)
        self.peak_bytes = max(self.peak_bytes, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self.start_bytes = self.peak_bytes
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def time_call(fn: Callable[..., T], *args: Any, repeat: int = 1, **kwargs: Any) -> Timing:
    """Run ``fn(*args, **kwargs)`` ``repeat`` times in this process; keep the fastest.

    The peak RSS is this whole process's, sampled during the calls.
    """
    best = float("inf")
    value: Any = None
    with RssSampler() as sampler:
        for _ in range(repeat):
            started = time.perf_counter()
            value = fn(*args, **kwargs)
            best = min(best, time.perf_counter() - started)
    return Timing(wall_s=best, peak_rss_mb=sampler.peak_mb, value=value,
                  start_rss_mb=sampler.start_bytes / 2**20)


def time_sql(
    database_url: str, statement: Any, params: Sequence[Any] | Mapping[str, Any] | None = None,
    *, rollback: bool = True, fetch: bool = False,
) -> Timing:
    """Time one statement on a fresh connection, inside a transaction rolled back by default.

    The peak RSS is the serving backend's private memory (shared buffers excluded), sampled
    during the statement. With ``fetch`` the rows are fetched (and timed) and returned.
    """
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        with RssSampler(int(row[0]), private=True) as sampler:
            started = time.perf_counter()
            cur = conn.execute(statement, params)
            value = cur.fetchall() if fetch else cur.rowcount
            wall = time.perf_counter() - started
        if rollback:
            conn.rollback()
        else:
            conn.commit()
    return Timing(wall_s=wall, peak_rss_mb=sampler.peak_mb, value=value,
                  start_rss_mb=sampler.start_bytes / 2**20)


def growth_exponent(sizes: Sequence[float], times: Sequence[float]) -> float:
    """The exponent ``b`` of ``time = a * size**b``, least squares on the log-log points."""
    x, y = np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(times, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> list[float]:
    """Percentiles of ``values`` (linear interpolation), NaN when there are none."""
    if not len(values):
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]
