"""The three queues under test, behind one small interface: geojobs, procrastinate, PgQueuer.

Each :class:`QueueSystem` knows how to install itself in a database, fill its queue in one
statement, enqueue one job at a time, start a worker process that runs a no-op job, and read
back how many jobs are done and the time span they took (the system's own timestamps).

Peer workers run as ``python -m bench.peers <system> URL [--drain] [--report-starts]``.
With ``--report-starts`` the no-op handler prints ``START <job id> <unix time>`` as its first
act, the moment a job starts; geojobs' ``noop`` worker logs ``job <id> noop attempt ...
started`` with a millisecond timestamp just before it calls the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from bench.measure import worker_env
from geojobs import queue as gq

__all__ = ["QueueSystem", "GEOJOBS", "PROCRASTINATE", "PGQUEUER_ONE", "PGQUEUER_BATCHED",
           "SYSTEMS", "start_times"]

QUEUE = "bench"
_LOG_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO geojobs.worker(?: \[[^]]*\])?: "
                        r"job (\d+) noop attempt \d+/\d+ started", re.MULTILINE)
_PEER_START = re.compile(r"^START (\d+) ([\d.]+)$", re.MULTILINE)


@dataclass(frozen=True)
class QueueSystem:
    """One queue and the way it is run in the benchmark."""

    name: str
    label: str
    batch_size: int = 1

    # -- set-up and filling -------------------------------------------------------------

    def install(self, url: str) -> None:
        """Create the system's tables (geojobs': already there in a bench database)."""
        if self.name == "procrastinate":
            app = _procrastinate_app(url)
            with app.open():
                app.schema_manager.apply_schema()
        elif self.name == "pgqueuer":
            asyncio.run(_pgqueuer_install(url))

    def fill(self, url: str, n: int) -> None:
        """Queue ``n`` no-op jobs at once (one statement)."""
        if self.name == "geojobs":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO background_jobs (job_type, params) "
                             "SELECT 'noop', '{}'::jsonb FROM generate_series(1, %s)", (n,))
        elif self.name == "procrastinate":
            app = _procrastinate_app(url)
            with app.open():
                app.configure_task("noop", queue=QUEUE).batch_defer(*([{}] * n))
        else:
            asyncio.run(_pgqueuer_fill(url, n))

    def enqueue_paced(self, url: str, n: int, interval: float) -> dict[int, tuple[float, float]]:
        """Queue ``n`` jobs one by one, ``interval`` s apart, each in its own transaction.

        Returns ``{job id: (unix time before the call, unix time after its commit)}``.
        """
        if self.name == "pgqueuer":
            return asyncio.run(_pgqueuer_paced(url, n, interval))
        times: dict[int, tuple[float, float]] = {}
        if self.name == "geojobs":
            with psycopg.connect(url, autocommit=True) as conn:
                for slot in _slots(n, interval):
                    before = time.time()
                    job_id = gq.enqueue(conn, "noop", {})
                    times[job_id] = (before, time.time())
                    del slot
            return times
        app = _procrastinate_app(url)
        with app.open():
            deferrer = app.configure_task("noop", queue=QUEUE)
            for _ in _slots(n, interval):
                before = time.time()
                job_id = deferrer.defer()
                times[job_id] = (before, time.time())
        return times

    # -- workers ------------------------------------------------------------------------

    def worker_command(self, url: str, *, drain: bool, report_starts: bool = False) -> list[str]:
        """The command line of one worker process."""
        if self.name == "geojobs":
            return [sys.executable, "-m", "workers.noop", *(["--drain"] if drain else [])]
        return [sys.executable, "-m", "bench.peers", self.name, url,
                "--batch-size", str(self.batch_size), *(["--drain"] if drain else []),
                *(["--report-starts"] if report_starts else [])]

    def worker_env(self, url: str, **settings: str) -> dict[str, str]:
        return worker_env(url, **settings)

    # -- reading back -------------------------------------------------------------------

    def done(self, conn: psycopg.Connection[Any]) -> int:
        """Jobs completed successfully so far."""
        statement = {
            "geojobs": "SELECT count(*) FROM background_jobs WHERE status = 'completed'",
            "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
            "pgqueuer": "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
        }[self.name]
        row = conn.execute(statement).fetchone()
        return int(row[0]) if row else 0

    def span(self, conn: psycopg.Connection[Any]) -> float:
        """Seconds from the first job's claim to the last job's completion."""
        statement = {
            "geojobs": "SELECT min(started_at), max(finished_at) FROM background_jobs",
            "procrastinate": "SELECT min(at) FILTER (WHERE type = 'started'), "
                             "max(at) FILTER (WHERE type = 'succeeded') FROM procrastinate_events",
            "pgqueuer": "SELECT min(created) FILTER (WHERE status = 'picked'), "
                        "max(created) FILTER (WHERE status = 'successful') FROM pgqueuer_log",
        }[self.name]
        row = conn.execute(statement).fetchone()
        assert row is not None and row[0] is not None, f"{self.name}: no job ran"
        return float((row[1] - row[0]).total_seconds())


GEOJOBS = QueueSystem("geojobs", "geojobs (psycopg, one job at a time)")
PROCRASTINATE = QueueSystem("procrastinate", "procrastinate (concurrency 1)")
PGQUEUER_ONE = QueueSystem("pgqueuer", "PgQueuer (asyncpg, batch_size=1)")
PGQUEUER_BATCHED = QueueSystem("pgqueuer", "PgQueuer (asyncpg, default batched: batch_size=10)",
                               batch_size=10)
SYSTEMS = (GEOJOBS, PROCRASTINATE, PGQUEUER_ONE, PGQUEUER_BATCHED)


def start_times(system: QueueSystem, output: str) -> dict[int, float]:
    """``{job id: unix time its handler started}`` from a worker's output."""
    if system.name == "geojobs":  # log stamps are truncated to the ms: take its midpoint
        return {int(job): datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() + 0.0005
                for stamp, job in _LOG_START.findall(output)}
    return {int(job): float(t) for job, t in _PEER_START.findall(output)}


def _slots(n: int, interval: float) -> Any:
    """Yield ``n`` times, sleeping so that the i-th yield happens at ``start + i*interval``."""
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


# -- procrastinate --------------------------------------------------------------------------


def _procrastinate_app(url: str) -> Any:
    from procrastinate import App, PsycopgConnector

    return App(connector=PsycopgConnector(conninfo=url))


def _procrastinate_worker(url: str, *, drain: bool, report: bool) -> None:
    app = _procrastinate_app(url)

    @app.task(name="noop", queue=QUEUE, pass_context=True)
    async def noop(context: Any) -> None:
        if report:
            print(f"START {context.job.id} {time.time():.6f}", flush=True)

    app.run_worker(queues=[QUEUE], concurrency=1, wait=not drain, listen_notify=True)


# -- PgQueuer -------------------------------------------------------------------------------


async def _pgqueuer_queries(url: str) -> tuple[Any, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    return conn, Queries(AsyncpgDriver(conn))


async def _pgqueuer_install(url: str) -> None:
    conn, queries = await _pgqueuer_queries(url)
    try:
        await queries.install()
    finally:
        await conn.close()


async def _pgqueuer_fill(url: str, n: int) -> None:
    conn, queries = await _pgqueuer_queries(url)
    try:
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    finally:
        await conn.close()


async def _pgqueuer_paced(url: str, n: int, interval: float) -> dict[int, tuple[float, float]]:
    conn, queries = await _pgqueuer_queries(url)
    times: dict[int, tuple[float, float]] = {}
    try:
        start = time.perf_counter()
        for i in range(n):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            before = time.time()
            (job_id,) = await queries.enqueue("noop", None)
            times[int(job_id)] = (before, time.time())
    finally:
        await conn.close()
    return times


async def _pgqueuer_worker(url: str, *, drain: bool, report: bool, batch_size: int) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, PgQueuer
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Any) -> None:
        if report:
            print(f"START {job.id} {time.time():.6f}", flush=True)

    mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
    await pgq.run(batch_size=batch_size, mode=mode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers",
                                     description="Run a peer queue's no-op worker.")
    parser.add_argument("system", choices=["procrastinate", "pgqueuer"])
    parser.add_argument("url")
    parser.add_argument("--drain", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--report-starts", action="store_true",
                        help="print START <id> <time> when each job starts")
    parser.add_argument("--batch-size", type=int, default=1, help="PgQueuer's batch_size")
    args = parser.parse_args(argv)
    if args.system == "procrastinate":
        _procrastinate_worker(args.url, drain=args.drain, report=args.report_starts)
    else:
        asyncio.run(_pgqueuer_worker(args.url, drain=args.drain, report=args.report_starts,
                                     batch_size=args.batch_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
