"""A Python client for notebooks and Python front ends: submit a job, watch it, read its result.

::

    from geojobs.client import Jobs

    jobs = Jobs("postgresql://127.0.0.1:5432/geojobs")
    job = jobs.submit("hotspot", {"input_table": "public.georgia_counties", "value_column": "pctpov"})
    job.wait(progress=True)      # a progress bar; raises JobFailed if the job fails
    job.result                   # the result dict
    job.frame()                  # the result table as a GeoDataFrame

    pipeline = jobs.submit_pipeline({"steps": [...]})   # see docs/jobs.md, Pipelines
    pipeline.wait()              # raises JobFailed naming the first step that failed
    pipeline.frame()             # the last step's result table

Parameters are validated with the job type's ``Params`` before anything is inserted. Waiting is
woken by the database (LISTEN on ``geojobs_jobs``, sent when a job's status or progress
changes), not by polling; while the job sits in the queue with no worker of its type claiming
anything, the wait says so once, after ``stall_seconds``.

Through PgBouncer in transaction pooling mode (``database_url`` pointing at it), LISTEN goes over
a direct connection to ``listen_url`` (default ``GEOJOBS_LISTEN_URL``); without one, waiting
reads the job row every ``GEOJOBS_POOLED_POLL_INTERVAL`` (0.5 s) instead.
"""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import Any

import geopandas as gpd
import psycopg
import sqlalchemy
from tqdm.auto import tqdm

from geojobs import db, pipelines, queue, registry
from geojobs.config import database_url as default_database_url
from geojobs.config import lease_seconds, pooled_poll_interval
from geojobs.config import listen_url as default_listen_url
from geojobs.errors import GeojobsError, JobCancelled, JobFailed, JobNotFinished
from geojobs.models import geometry_columns, result_table
from geojobs.params import validate_params

__all__ = ["Jobs", "Job", "DEFAULT_STALL_SECONDS", "FINISHED"]

DEFAULT_STALL_SECONDS = 30.0
"""How long a job may wait with no worker of its type claiming anything before the client says so."""
FINISHED = frozenset({"completed", "failed", "cancelled"})


def no_worker_message(job_type: str) -> str:
    """What the client and ``geojobs enqueue --wait`` say when no live worker of ``job_type`` exists."""
    return f"no {job_type} worker is running: start {job_type}_worker"


def stall_message(job_type: str, seconds: float) -> str:
    """What the client says when no worker of ``job_type`` has claimed a job for ``seconds``."""
    return (f"no {job_type} worker has claimed a job in {seconds:g} s: "
            f"is {job_type}_worker running?")


class Jobs:
    """The job queue of one geojobs database.

    ``database_url`` is a libpq URI or conninfo string (default ``DATABASE_URL``); the client needs
    no more than the ``geojobs_frontend`` role: insert and read jobs, cancel its own. When
    ``database_url`` goes through PgBouncer, ``listen_url`` (default ``GEOJOBS_LISTEN_URL``) is a
    direct one used only to LISTEN; without it, :meth:`Job.wait` polls.
    """

    def __init__(self, database_url: str | None = None, *,
                 stall_seconds: float = DEFAULT_STALL_SECONDS,
                 listen_url: str | None = None) -> None:
        self.database_url = database_url or default_database_url()
        self.listen_url = listen_url or default_listen_url()
        self.stall_seconds = stall_seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._engine: sqlalchemy.Engine | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The client's autocommit connection (opened on first use, reopened when broken)."""
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.database_url)
        return self._conn

    def listener(self) -> psycopg.Connection[Any] | None:
        """The connection that LISTENs for job events: :attr:`conn` itself when it is direct, a
        direct connection to ``listen_url`` when :attr:`conn` goes through a transaction pooler,
        None (poll) when it does and there is no ``listen_url``."""
        if not db.pooled(self.conn):
            return self.conn
        if self.listen_url is None:
            return None
        if self._listener is None or self._listener.closed or self._listener.broken:
            self._listener = db.connect(self.listen_url)
        return self._listener

    @property
    def engine(self) -> sqlalchemy.Engine:
        """A SQLAlchemy engine on the same database (psycopg 3 driver), for pandas and geopandas."""
        if self._engine is None:
            url = self.database_url
            self._engine = sqlalchemy.create_engine(
                "postgresql+psycopg://", creator=lambda: db.connect(url, autocommit=False))
        return self._engine

    def submit(self, job_type: str, params: dict[str, Any] | None = None, *, priority: int = 0,
               max_attempts: int = 4) -> Job:
        """Validate ``params`` with the job type's ``Params`` and queue the job.

        Raises :class:`~geojobs.errors.InvalidParams` naming the field (``params.<field>: ...``)
        and inserts nothing when the parameters are invalid or the job type is unknown.
        """
        module = registry.load(job_type)
        validate_params(module.Params, params)
        job_id = queue.enqueue(self.conn, job_type, params or {}, priority=priority,
                               max_attempts=max_attempts)
        return Job(self, job_id, job_type)

    def submit_pipeline(self, spec: dict[str, Any], sets: list[str] | tuple[str, ...] = ()
                        ) -> Pipeline:
        """Check a pipeline spec and submit every step in one transaction (docs/jobs.md).

        ``sets`` are ``step.key=value`` overrides, as ``geojobs pipeline submit --set``. Raises
        :class:`~geojobs.errors.InvalidParams` naming the field and inserts nothing when the spec
        is invalid.
        """
        pipeline_id, ids = pipelines.submit(self.conn, spec, sets)
        steps = {s["name"]: s["job_type"] for s in spec["steps"]}
        return Pipeline(self, pipeline_id, {name: Job(self, job_id, steps[name])
                                            for name, job_id in ids.items()})

    def get(self, job_id: int) -> Job:
        """The job with this id (:class:`KeyError` if there is none)."""
        row = queue.get(self.conn, job_id)
        if row is None:
            raise KeyError(f"no job {job_id}")
        job = Job(self, job_id, row["job_type"])
        job.row = row
        return job

    def close(self) -> None:
        """Close the connection and dispose of the engine."""
        for conn in (self._listener, self._conn):
            if conn is not None:
                conn.close()
        if self._engine is not None:
            self._engine.dispose()

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Job:
    """One submitted job; ``row`` is the job row as last read."""

    def __init__(self, jobs: Jobs, job_id: int, job_type: str) -> None:
        self.jobs, self.id, self.job_type = jobs, job_id, job_type
        self.row: dict[str, Any] = {}
        self.messages: list[str] = []
        """What :meth:`wait` said about missing workers."""

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.job_type} {self.row.get('status', '?')}>"

    def refresh(self) -> dict[str, Any]:
        """Read the job row again."""
        row = queue.get(self.jobs.conn, self.id)
        if row is None:
            raise KeyError(f"job {self.id} no longer exists")
        self.row = row
        return row

    @property
    def status(self) -> str:
        """The job's status, read now."""
        return str(self.refresh()["status"])

    @property
    def result(self) -> dict[str, Any]:
        """The result dict of a completed job.

        Raises :class:`JobFailed` / :class:`JobCancelled` for a job that ended without one and
        :class:`JobNotFinished` while it is queued or running.
        """
        row = self.refresh()
        self._raise_if_unsuccessful(row)
        if row["status"] != "completed":
            raise JobNotFinished(f"job {self.id} is {row['status']}: call job.wait() first")
        return dict(row["result"] or {})

    def wait(self, progress: bool = False, *, timeout: float | None = None,
             stall_seconds: float | None = None) -> Job:
        """Block until the job completes; return the job, or raise if it failed or was cancelled.

        ``progress`` shows a progress bar (terminal or Jupyter). Woken by the job's own
        notifications; it reads the row only when one arrives (or, through PgBouncer without a
        listening connection, every ``GEOJOBS_POOLED_POLL_INTERVAL``). While the job is queued and no
        worker of its type has claimed any job for ``stall_seconds`` (default: the client's),
        it says so once, on the bar or on stderr; at once when the worker registry shows no
        live worker of its type. ``timeout`` raises :class:`TimeoutError`.
        """
        stall = self.jobs.stall_seconds if stall_seconds is None else stall_seconds
        conn = self.jobs.conn
        listener = self.jobs.listener()
        if listener is not None:
            queue.listen_job_events(listener)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=100, desc=f"job {self.id} {self.job_type}", unit="%",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") if progress else None
        next_check = time.monotonic()
        warned = False
        try:
            row = self.refresh()
            if row["status"] == "queued" and not queue.live_workers(conn, self.job_type,
                                                                    lease_seconds()):
                self._say(no_worker_message(self.job_type), bar)
            while True:
                if bar is not None:
                    bar.n = round(100 * float(row["progress"] or 0))
                    bar.set_description_str(f"job {self.id} {self.job_type} {row['status']}", refresh=False)
                    bar.refresh()
                if row["status"] in FINISHED:
                    break
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"job {self.id} still {row['status']} after {timeout:g} s")
                if not warned and row["status"] == "queued" and now >= next_check:
                    quiet_for = self._quiet_for()
                    if quiet_for >= stall:
                        self._say(stall_message(self.job_type, stall), bar)
                        warned = True
                    else:
                        next_check = now + stall - quiet_for
                wake_at = deadline if warned or row["status"] != "queued" else min(deadline, next_check)
                if listener is None:
                    time.sleep(max(0.0, min(wake_at - time.monotonic(), pooled_poll_interval())))
                    row = self.refresh()
                elif self.id in queue.job_events(listener, timeout=wake_at - time.monotonic()):
                    row = self.refresh()
        finally:
            if bar is not None:
                bar.close()
        self._raise_if_unsuccessful(row)
        return self

    def frame(self, geom_col: str | None = None) -> gpd.GeoDataFrame:
        """The result table as a GeoDataFrame, read through the client's SQLAlchemy engine.

        ``geom_col`` picks the geometry when the table has several (default ``geom``, else the first).
        """
        name = self.result.get("output_table")
        if not name:
            raise GeojobsError(f"job {self.id} ({self.job_type}) wrote no result table")
        engine = self.jobs.engine
        table = result_table(engine, str(name))
        geometries = geometry_columns(table)
        if not geometries:
            raise GeojobsError(f"result table {name} has no geometry column")
        active = geom_col or ("geom" if "geom" in geometries else geometries[0])
        if active not in geometries:
            raise GeojobsError(f"geom_col: {active!r} is not a geometry column of {name}; "
                               f"those are {geometries}")
        # Geometry read as EWKB bytes (SRID included), so geopandas sets the CRS itself.
        columns = [sqlalchemy.func.ST_AsEWKB(c, type_=sqlalchemy.LargeBinary).label(c.name)
                   if c.name in geometries else c for c in table.columns]
        return gpd.read_postgis(sqlalchemy.select(*columns), engine, geom_col=active)

    def cancel(self) -> bool:
        """Cancel the job if it is queued or running and was submitted by this login role."""
        return queue.cancel_own(self.jobs.conn, self.id)

    def _quiet_for(self) -> float:
        """Seconds since this job was queued or a worker of its type last showed life, whichever is less."""
        quiet = queue.claim_quiet(self.jobs.conn, self.id)
        if quiet is None:
            return 0.0
        queued_for, since_claim = quiet
        return queued_for if since_claim is None else min(queued_for, since_claim)

    def _say(self, message: str, bar: Any) -> None:
        """Tell the user once per job (a later wait does not repeat it)."""
        if message in self.messages:
            return
        self.messages.append(message)
        if bar is not None:
            bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _raise_if_unsuccessful(self, row: dict[str, Any]) -> None:
        if row["status"] == "failed":
            raise JobFailed(self.id, self.job_type, row["error"])
        if row["status"] == "cancelled":
            raise JobCancelled(self.id, self.job_type, row["error"])


class Pipeline:
    """One submitted pipeline run; ``steps`` maps each step name to its :class:`Job`."""

    def __init__(self, jobs: Jobs, pipeline_id: int, steps: dict[str, Job]) -> None:
        self.jobs, self.id, self.steps = jobs, pipeline_id, steps

    def __repr__(self) -> str:
        return f"<Pipeline {self.id} {list(self.steps)}>"

    def wait(self, progress: bool = False, *, timeout: float | None = None) -> Pipeline:
        """Block until every step has completed; raise as :meth:`Job.wait` for the first step
        (in spec order) that failed or was cancelled, and :class:`TimeoutError` after ``timeout``."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        for job in self.steps.values():
            remaining = None if timeout is None else max(deadline - time.monotonic(), 0.0)
            job.wait(progress, timeout=remaining)
        return self

    def show(self) -> str:
        """The run as a tree of steps with status and progress (``geojobs pipeline show``)."""
        return pipelines.format_tree(pipelines.show(self.jobs.conn, self.id))

    def frame(self, step: str | None = None, geom_col: str | None = None) -> gpd.GeoDataFrame:
        """A step's result table (default the last step) as a GeoDataFrame."""
        name = step or list(self.steps)[-1]
        if name not in self.steps:
            raise KeyError(f"no step {name!r}; the steps are {list(self.steps)}")
        return self.steps[name].frame(geom_col)

    def cancel(self) -> list[int]:
        """Cancel every step not yet finished (submitted by this login role); their ids.

        Downstream steps first, so that each is cancelled rather than failed by the cascade.
        """
        return [job.id for job in reversed(list(self.steps.values())) if job.cancel()]
