"""One job spread over a Dask cluster: clip, erase, nearest, dissolve and hotspot on points.

With a scheduler named (``GEOJOBS_DASK_SCHEDULER`` or the job's ``scheduler`` parameter) and
an input of more than ``GEOJOBS_DASK_MIN_ROWS`` rows (1,000,000), the job process (the
client) cuts the input into spatially compact tiles and submits one Dask task per tile. Each
task reads its tile straight from PostGIS (binary COPY, :func:`geojobs.layers.read_layer` with
the tile's ``WHERE``), runs the job type's pure analysis function on it and writes its part
into a staging table (:mod:`geojobs.staging`). The job then publishes the parts as its result
table inside its own transaction, the one that completes it, so the result table exists
exactly when the job is completed. See docs/scale.md for what is partitioned and how.

Tiles: rectangles of a k-d split (median cuts along the longer side) of a sample of the
features' lower-left box corners, so every tile holds about the same number of features; a
feature belongs to the tile holding its box's lower-left corner, found through the input's
GiST index (``geom && tile``). Null and empty geometries go to tile 0.

Credentials: a task carries the job's conninfo without its password (:func:`public_conninfo`);
the Dask worker adds its own (:func:`task_conninfo`: the password of its ``DATABASE_URL`` when
that names the same server, database and user, else whatever libpq finds in its environment:
``PGPASSWORD``, ``PGPASSFILE`` / ``~/.pgpass``, client certificates, or none for trust). So no
password travels through the scheduler, its logs or the task graph.

Dask is imported only when a job runs partitioned.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from analysis.dissolve import dissolve
from analysis.errors import EmptyInput, GeometryTypeError
from analysis.grid import Grid, GridSpec, make_grid, point_coordinates, point_counts
from analysis.nearest import nearest
from analysis.overlay import OverlaySummary, clip, erase
from analysis.weights import working_geometry
from geojobs import staging
from geojobs import staging_sql as q
from geojobs.context import JobContext
from geojobs.errors import DaskUnavailable, DaskWorkerLost
from geojobs.layers import (
    Layer,
    geometry_type_names,
    output_exists,
    pg_type,
    read_layer,
    split_name,
    type_fitting,
    write_layer,
)

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["ENV_SCHEDULER", "ENV_MIN_ROWS", "ENV_PARTITION_ROWS", "ENV_FALLBACK",
           "Decision", "Cluster", "Tile", "decide", "split_tiles", "min_rows"]

ENV_SCHEDULER = "GEOJOBS_DASK_SCHEDULER"
ENV_MIN_ROWS = "GEOJOBS_DASK_MIN_ROWS"
ENV_PARTITION_ROWS = "GEOJOBS_DASK_PARTITION_ROWS"
ENV_FALLBACK = "GEOJOBS_DASK_FALLBACK"
ENV_CONNECT_TIMEOUT = "GEOJOBS_DASK_CONNECT_TIMEOUT"
if os.environ.get(ENV_SCHEDULER):
    # a worker that will send its large jobs to a cluster imports Dask once, before it forks
    # its job process, rather than in every job process at its first partitioned job
    import distributed  # noqa: F401

DEFAULT_MIN_ROWS = 1_000_000
DEFAULT_PARTITION_ROWS = 250_000
SAMPLE_ROWS = 50_000
_WATCH_SECONDS = 0.2


def min_rows() -> int:
    """``GEOJOBS_DASK_MIN_ROWS``: inputs of at most this many rows run in the worker."""
    return int(os.environ.get(ENV_MIN_ROWS) or DEFAULT_MIN_ROWS)


def _partition_rows() -> int:
    return max(1, int(os.environ.get(ENV_PARTITION_ROWS) or DEFAULT_PARTITION_ROWS))


# -- tiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """A half-open rectangle [x0, x1) x [y0, y1) of lower-left corners (infinite at the edges)
    and the finite box the GiST index is asked for."""

    index: int
    x0: float
    y0: float
    x1: float
    y1: float
    box: tuple[float, float, float, float]

    def where(self, layer: Layer) -> sql.Composable:
        """The ``WHERE`` clause selecting this tile's features of ``layer``."""
        geom = sql.Identifier(layer.geometry_column or "geom")
        bx0, by0, bx1, by1 = self.box
        parts: list[sql.Composable] = [q.TILE_BOX.format(
            geom=geom, x0=sql.Literal(bx0), y0=sql.Literal(by0), x1=sql.Literal(bx1),
            y1=sql.Literal(by1), srid=sql.Literal(layer.srid))]
        for fn, op, value in (("ST_XMin", ">=", self.x0), ("ST_XMin", "<", self.x1),
                              ("ST_YMin", ">=", self.y0), ("ST_YMin", "<", self.y1)):
            if math.isfinite(value):
                parts.append(q.TILE_BOUND.format(fn=sql.SQL(fn), geom=geom, op=sql.SQL(op),
                                                 value=sql.Literal(value)))
        clause = sql.SQL("({})").format(sql.SQL(" AND ").join(parts))
        if self.index == 0:
            clause = sql.SQL("({} OR {})").format(clause, q.TILE_NULLS.format(geom=geom))
        return clause


def split_tiles(xy: np.ndarray, n: int, extent: tuple[float, float, float, float]) -> list[Tile]:
    """``n`` tiles covering the plane, each holding about as many of the points ``xy``.

    A k-d split: the points are cut at a quantile along the longer side of their spread,
    recursively, so tiles are compact rectangles. ``extent`` (the layer's) bounds the boxes
    handed to the index; the outer tiles reach to infinity for the ownership test.
    """
    ex0, ey0, ex1, ey1 = extent
    margin = max(ex1 - ex0, ey1 - ey0, 1.0) * 1e-6
    found: list[tuple[float, float, float, float]] = []

    def cut(points: np.ndarray, parts: int, bounds: tuple[float, float, float, float]) -> None:
        x0, y0, x1, y1 = bounds
        if parts <= 1 or len(points) < 2 or np.ptp(points, axis=0).max() == 0:
            found.append(bounds)  # too few distinct sample points: fewer, larger tiles
            return
        left = parts // 2
        spread = np.ptp(points, axis=0)
        axis = 0 if spread[0] >= spread[1] else 1
        value = float(np.quantile(points[:, axis], left / parts))
        low = points[points[:, axis] < value]
        high = points[points[:, axis] >= value]
        if axis == 0:
            cut(low, left, (x0, y0, value, y1))
            cut(high, parts - left, (value, y0, x1, y1))
        else:
            cut(low, left, (x0, y0, x1, value))
            cut(high, parts - left, (x0, value, x1, y1))

    inf = math.inf
    cut(np.asarray(xy, dtype=float).reshape(-1, 2), max(1, n), (-inf, -inf, inf, inf))
    tiles = []
    for i, (x0, y0, x1, y1) in enumerate(found):
        # a feature owned here starts in the tile, so its box meets the tile's box (the index
        # keeps float boxes rounded outwards, so && never misses one)
        box = (x0 if math.isfinite(x0) else ex0 - margin, y0 if math.isfinite(y0) else ey0 - margin,
               x1 if math.isfinite(x1) else ex1 + margin, y1 if math.isfinite(y1) else ey1 + margin)
        tiles.append(Tile(i, x0, y0, x1, y1, box))
    return tiles


# -- what a task receives, and the reading and writing it does --------------------------------


@dataclass(frozen=True)
class Part:
    """One partition of one attempt of one job: what every Dask task is given."""

    dsn: str
    job_id: int
    attempt: int
    layer: Layer
    tile: Tile
    columns: tuple[str, ...] | None = None  # None: every attribute

    @property
    def table(self) -> str:
        return staging.part_table(self.job_id, self.attempt, self.tile.index)


@dataclass(frozen=True)
class Written:
    """What a task wrote: rows, column types and geometry types, to publish from."""

    table: str | None  # None when the attempt was over and nothing was written
    rows: int = 0
    attributes: tuple[str, ...] = ()
    pg_types: dict[str, str] = field(default_factory=dict)
    geometry_types: dict[str, set[str]] = field(default_factory=dict)
    key: str = "fid"


_SAME = ("host", "hostaddr", "port", "dbname", "user")
"""Conninfo keys that must agree before a Dask worker's ``DATABASE_URL`` lends its password."""


def public_conninfo(conninfo: str) -> str:
    """``conninfo`` without its secrets (password, SSL key password): safe to send and log."""
    info = conninfo_to_dict(conninfo)
    for key in ("password", "sslpassword"):
        info.pop(key, None)
    return make_conninfo("", **info)


def task_conninfo(public: str, environ: dict[str, str] | None = None) -> str:
    """The conninfo a Dask task connects with: the job's ``public`` one, plus the password of
    the Dask worker's own ``DATABASE_URL`` when it names the same host, port, database and
    user; otherwise libpq looks in the worker's environment (``PGPASSWORD``, ``~/.pgpass``)."""
    env = os.environ if environ is None else environ
    info = conninfo_to_dict(public)
    try:
        own = conninfo_to_dict(env.get("DATABASE_URL") or "")
    except psycopg.ProgrammingError:
        return public
    if own.get("password") and all(own.get(k) == info.get(k) for k in _SAME):
        info["password"] = own["password"]
    return make_conninfo("", **info)


def _connect(part: Part) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(task_conninfo(part.dsn), autocommit=True,
                               application_name=f"geojobs-dask-{part.job_id}")
    except psycopg.OperationalError as exc:
        where = conninfo_to_dict(part.dsn)
        raise DaskUnavailable(
            f"a Dask worker cannot connect to database {where.get('dbname')!r} as "
            f"{where.get('user')!r}: give the Dask workers the credentials in their own "
            f"environment (DATABASE_URL, PGPASSWORD or ~/.pgpass; docs/scale.md); "
            f"{str(exc).strip().splitlines()[-1]}") from None


def _read(conn: psycopg.Connection[Any], part: Part) -> gpd.GeoDataFrame:
    return read_layer(conn, part.layer, part.columns, where=part.tile.where(part.layer))


def _write(conn: psycopg.Connection[Any], part: Part, frame: gpd.GeoDataFrame, srid: int,
           index: int | None = None) -> Written:
    """Write ``frame`` as the part's staging table if the attempt still runs."""
    table = part.table if index is None else staging.part_table(part.job_id, part.attempt, index)
    attrs = tuple(c for c in frame.columns if c != frame.geometry.name)
    types = {c: pg_type(frame[c]) for c in attrs}
    geoms = {"geom": geometry_type_names(frame.geometry.to_numpy())}
    geoms.update({c: geometry_type_names(frame[c].to_numpy()) for c in attrs
                  if types[c] == "geometry"})
    key = next(k for k in ("fid", "fid_1", "fid_2", "fid_3", "result_fid") if k not in attrs)

    def write(c: psycopg.Connection[Any]) -> int:
        return write_layer(c, frame, table, srid=srid, overwrite=True, geometry_type="Geometry",
                           index=False)

    rows = staging.guarded_write(conn, part.job_id, part.attempt, write)
    if rows is None:
        return Written(None)
    return Written(table, rows, attrs, types, geoms, key)


# -- the partition tasks (run on the Dask workers) --------------------------------------------


def _overlay_task(part: Part, how: str, mask: gpd.GeoDataFrame, field_name: str
                  ) -> tuple[Written, dict[str, int]]:
    with _connect(part) as conn:
        frame = _read(conn, part)
        operation = clip if how == "clip" else erase
        result = operation(frame, mask, field=field_name, threads=1)
        written = _write(conn, part, result.frame, part.layer.srid)
    return written, result.summary.to_dict()


def _nearest_task(part: Part, near: gpd.GeoDataFrame, options: dict[str, Any]
                  ) -> tuple[Written, dict[str, Any]]:
    with _connect(part) as conn:
        frame = _read(conn, part)
        if len(frame) == 0:
            return Written(None), {"inputs": 0, "without": 0, "max": None}
        result = nearest(frame, near, **options)
        written = _write(conn, part, result, part.layer.srid)
    dist = result["near_dist"].dropna()
    return written, {"inputs": len(frame), "without": int(result["near_rank"].isna().sum()),
                     "max": float(dist.max()) if len(dist) else None}


def _count_task(part: Part, grid: Grid) -> tuple[np.ndarray, int]:
    with _connect(part) as conn:
        frame = _read(conn, part)
    arr = frame.geometry.to_numpy()
    usable = ~(shapely.is_missing(arr) | shapely.is_empty(arr))
    xy = point_coordinates(frame.geometry[usable]) if usable.any() else np.empty((0, 2))
    return grid.count(xy), len(xy)


@dataclass(frozen=True)
class DissolvePlan:
    """How a dissolve is split: the partial aggregates per tile and how they merge."""

    by: tuple[str, ...]
    stage1: dict[str, str]  # partial column -> aggregate, on the tile
    stage2: dict[str, str]  # partial aggregate column -> how to merge them
    sources: dict[str, str]  # partial column -> input column
    outputs: list[tuple[str, str, str]]  # (output column, how, column) in the order asked
    key: str | None
    buckets: int


def _dissolve_task(part: Part, plan: DissolvePlan) -> tuple[list[gpd.GeoDataFrame], dict[str, int]]:
    """Dissolve one tile with partial aggregates; split the groups into buckets by key hash."""
    with _connect(part) as conn:
        frame = _read(conn, part)
    counts = {"rows": len(frame), "skipped_empty": 0, "repaired": 0}
    arr = frame.geometry.to_numpy()
    usable = ~(shapely.is_missing(arr) | shapely.is_empty(arr))
    counts["skipped_empty"] = int((~usable).sum())
    if not usable.any():
        return [frame.iloc[0:0] for _ in range(plan.buckets)], counts
    tile = frame.loc[usable, [*plan.by, *(c for c in [plan.key] if c and c not in plan.by)]].copy()
    for partial, source in plan.sources.items():
        tile[partial] = frame.loc[usable, source]
    tile = gpd.GeoDataFrame(tile, geometry=frame.geometry[usable], crs=frame.crs)
    out, summary = dissolve(tile, list(plan.by), plan.stage1, key=plan.key)
    counts["repaired"] = summary.repaired
    out = out.rename(columns={f"{how}_{c}": c for c, how in plan.stage1.items()})
    if plan.by and plan.buckets > 1:
        bucket = (pd.util.hash_pandas_object(out[list(plan.by)], index=False).to_numpy()
                  % np.uint64(plan.buckets)).astype(np.int64)
    else:
        bucket = np.zeros(len(out), dtype=np.int64)
    return [out.loc[bucket == b] for b in range(plan.buckets)], counts


def _pick(result: tuple[list[gpd.GeoDataFrame], dict[str, int]], bucket: int) -> gpd.GeoDataFrame:
    return result[0][bucket]


def _merge_task(part: Part, plan: DissolvePlan, *partials: gpd.GeoDataFrame
                ) -> tuple[Written, dict[str, int]]:
    """Merge one bucket's partial groups (the single group of an empty ``by``) and write it."""
    pieces = [p for p in partials if len(p)]
    if not pieces:
        return Written(None), {"groups": 0, "coverage_union_groups": 0}
    frame = gpd.GeoDataFrame(pd.concat(pieces, ignore_index=True), geometry="geom",
                             crs=pieces[0].crs)
    merged, summary = dissolve(frame, list(plan.by), plan.stage2,
                               key="__key" if plan.key else None)
    out = merged[list(plan.by)].copy()
    for name, how, column in plan.outputs:
        if how == "mean":
            total = merged[f"sum___s_{column}"].astype("Float64")
            n = merged[f"sum___n_{column}"].astype("Float64")
            out[name] = (total / n.where(n > 0)).astype("float64")
        elif how == "count":
            out[name] = merged[f"sum___{how}_{column}"].to_numpy()
        else:
            merge = plan.stage2[f"__{how}_{column}"]
            out[name] = merged[f"{merge}___{how}_{column}"].to_numpy()
    out["feature_count"] = merged["sum_feature_count"].to_numpy().astype(np.int64)
    result = gpd.GeoDataFrame(out, geometry=merged.geometry, crs=merged.crs)
    with _connect(part) as conn:
        written = _write(conn, part, result, part.layer.srid)
    return written, {"groups": len(result), "coverage_union_groups": summary.coverage_union_groups}


# -- the client side ------------------------------------------------------------------------


@dataclass
class Decision:
    """Whether the job runs partitioned (``cluster``) and what to tell its result."""

    cluster: Cluster | None
    warnings: list[str] = field(default_factory=list)


def _dsn(conn: psycopg.Connection[Any]) -> str:
    """The job connection's own conninfo with its password: for the job process only."""
    info = conninfo_to_dict(conn.info.dsn)
    password = conn.info.password
    if password:
        info["password"] = password
    return make_conninfo("", **info)


def decide(ctx: JobContext, layer: Layer, requested: str | None) -> Decision:
    """Connect to the Dask scheduler when one is named and the input is large enough.

    A scheduler that does not answer fails the job at once naming where it came from
    (``params.scheduler`` or ``GEOJOBS_DASK_SCHEDULER``), unless ``GEOJOBS_DASK_FALLBACK=local``:
    then the job runs in the worker, with a warning in its result.
    """
    address = requested or os.environ.get(ENV_SCHEDULER) or None
    if not address:
        return Decision(None)
    source = "scheduler" if requested else ENV_SCHEDULER
    rows = ctx.conn.execute(q.COUNT_ROWS.format(table=layer.identifier)).fetchone()
    n_rows = int(rows[0]) if rows else 0
    if n_rows <= min_rows():
        return Decision(None)
    timeout = float(os.environ.get(ENV_CONNECT_TIMEOUT) or 5)
    started = time.perf_counter()
    try:
        from distributed import Client

        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        message = (f"the Dask scheduler {address} does not answer within {timeout:g} s "
                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc})")
        if os.environ.get(ENV_FALLBACK, "fail") == "local":
            ctx.log.warning("job %s: %s; running in the worker (%s=local)", ctx.job_id, message,
                            ENV_FALLBACK)
            return Decision(None, [f"{source}: {message}; the job ran in one process"])
        raise DaskUnavailable(f"{message}; start it, fix the address, or unset it",
                              field=source) from None
    cluster = Cluster(ctx, client, address, layer, n_rows)
    cluster.timings["connect_s"] = round(time.perf_counter() - started, 3)
    return Decision(cluster)


class Cluster:
    """The job's connection to the Dask cluster and the partitioned runs of each job type."""

    def __init__(self, ctx: JobContext, client: Client, address: str, layer: Layer,
                 rows: int) -> None:
        self.ctx, self.client, self.address, self.layer, self.rows = ctx, client, address, layer, rows
        self._own_dsn = _dsn(ctx.conn)  # never sent: the tasks get the public one
        self.dsn = public_conninfo(self._own_dsn)
        self.workers = set(client.nthreads())
        self.futures: list[Future] = []
        self.tiles: list[Tile] = []
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - since, 3)
        return now

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel whatever is still pending on the cluster and disconnect."""
        try:
            if self.futures:
                self.client.cancel(self.futures, force=True)
        finally:
            self.client.close(timeout=5)

    # -- planning ------------------------------------------------------------------------

    def plan(self) -> list[Tile]:
        """Cut the input into tiles; drop the parts earlier attempts left behind."""
        started = time.perf_counter()
        conn, layer = self.ctx.conn, self.layer
        with psycopg.connect(self._own_dsn, autocommit=True) as own:
            staging.drop_parts(own, self.ctx.job_id, before=self.ctx.attempt)
        if not self.workers:
            raise DaskWorkerLost(f"the Dask scheduler {self.address} has no worker",
                                 field=self._source())
        threads = sum(self.client.nthreads().values())
        n = max(math.ceil(self.rows / _partition_rows()), 2 * threads)
        n = min(n, max(1, self.rows))
        geom = sql.Identifier(layer.geometry_column or "geom")
        ext = conn.execute(q.EXTENT.format(geom=geom, table=layer.identifier)).fetchone()
        extent = tuple(float(v) for v in ext) if ext and ext[0] is not None else (0.0, 0.0, 1.0, 1.0)
        conn.execute(q.SET_SEED)
        fraction = min(1.0, SAMPLE_ROWS / max(self.rows, 1))
        corners = conn.execute(q.SAMPLE_CORNERS.format(geom=geom, table=layer.identifier),
                               {"fraction": fraction}).fetchall()
        xy = np.array(corners, dtype=float).reshape(-1, 2)
        self.tiles = split_tiles(xy, n, extent)  # type: ignore[arg-type]
        indexed = conn.execute(q.HAS_GIST_INDEX, {"table": layer.identifier.as_string(conn),
                                                  "column": layer.geometry_column}).fetchone()
        if not (indexed and indexed[0]):
            self.warnings.append(
                f"{layer.qualified_name} has no GiST index on {layer.geometry_column}: each of "
                f"the {len(self.tiles)} partitions scanned the whole table")
        self._timed("plan_s", started)
        return self.tiles

    def parts(self, columns: Sequence[str] | None = None) -> list[Part]:
        """One :class:`Part` per tile."""
        cols = None if columns is None else tuple(columns)
        return [Part(self.dsn, self.ctx.job_id, self.ctx.attempt, self.layer, t, cols)
                for t in self.tiles]

    def _source(self) -> str:
        return ENV_SCHEDULER

    # -- running -------------------------------------------------------------------------

    def _key(self, name: str, i: int) -> str:
        return f"geojobs-{self.ctx.job_id}-a{self.ctx.attempt}-{name}-{i}"

    def submit(self, name: str, fn: Callable[..., Any], items: Sequence[Any], *args: Any
               ) -> list[Future]:
        """One task per item, keyed by job, attempt and stage; kept for cancelling."""
        futures = [self.client.submit(fn, item, *args, key=self._key(name, i), pure=False)
                   for i, item in enumerate(items)]
        self.futures.extend(futures)
        return futures

    def gather(self, futures: Sequence[Future], progress: tuple[float, float]) -> list[Any]:
        """Wait for ``futures`` with progress; fail at the first error or lost worker."""
        lo, hi = progress
        started = time.perf_counter()
        pending = set(range(len(futures)))
        results: list[Any] = [None] * len(futures)
        last_check = 0.0
        while pending:
            finished = [i for i in pending if futures[i].done()]
            for i in finished:
                results[i] = futures[i].result()  # re-raises the task's error
                pending.discard(i)
            self.ctx.progress(lo + (hi - lo) * (len(futures) - len(pending)) / max(len(futures), 1))
            if not pending:
                break
            now = time.monotonic()
            if now - last_check >= 1.0:
                last_check = now
                self._check_workers()
            time.sleep(_WATCH_SECONDS)
        self._timed("tasks_s", started)
        return results

    def _check_workers(self) -> None:
        gone = self.workers - set(self.client.nthreads())
        if gone:
            raise DaskWorkerLost(
                f"Dask worker(s) {sorted(gone)} left the cluster while the job ran; the job "
                "is retried on the schedule")

    def scatter(self, data: Any) -> Future:
        """Send ``data`` to every worker once (the broadcast layer)."""
        future = self.client.scatter(data, broadcast=True, hash=False)
        self.futures.append(future)
        return future

    # -- publishing ----------------------------------------------------------------------

    def publish(self, written: Sequence[Written], output: str, *, overwrite: bool,
                geometry_type: str | None = None) -> int:
        """Create ``output`` from the parts in the job's transaction; drop the parts."""
        started = time.perf_counter()
        conn = self.ctx.conn
        parts = [w for w in written if w.table is not None]
        if not parts:
            raise DaskWorkerLost("no part of the job was written")  # the attempt was taken back
        first = parts[0]
        attrs = list(first.attributes)
        types: dict[str, str] = {}
        for column in attrs:
            seen = {p.pg_types.get(column, "text") for p in parts}
            typed = seen - {"text"}
            types[column] = seen.pop() if len(seen) == 1 else (typed.pop() if len(typed) == 1
                                                               else "text")
        geometry_types = {c: set().union(*(p.geometry_types.get(c, set()) for p in parts))
                          for c in ["geom", *[a for a in attrs if types[a] == "geometry"]]}
        main = geometry_type or type_fitting(geometry_types["geom"])
        schema, name = split_name(output)
        assert schema is not None
        ident = sql.Identifier(schema, name)
        if output_exists(conn, output):
            conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        srid = self.layer.srid
        defs: list[sql.Composable] = []
        values: list[sql.Composable] = []
        for column in attrs:
            col = sql.Identifier(column)
            if types[column] == "geometry":
                kinds = geometry_types[column]
                gtype = kinds.copy().pop() if len(kinds) == 1 else "Geometry"
                defs.append(sql.SQL("{} geometry({}, {})").format(col, sql.SQL(gtype),
                                                                   sql.Literal(srid)))
                values.append(col)
            else:
                defs.append(sql.SQL("{} {}").format(col, sql.SQL(types[column])))
                values.append(sql.SQL("{}::{}").format(col, sql.SQL(types[column])))
        defs.append(sql.SQL("geom geometry({}, {})").format(sql.SQL(main), sql.Literal(srid)))
        values.append(sql.SQL("ST_Multi(geom)") if main.startswith("Multi") else sql.SQL("geom"))
        from geojobs import layer_sql as lq

        conn.execute(lq.CREATE_TABLE.format(table=ident, key=sql.Identifier(first.key),
                                            columns=sql.SQL(", ").join(defs)))
        columns = sql.SQL(", ").join(map(sql.Identifier, [*attrs, "geom"]))
        for p in parts:
            part_schema, part_name = split_name(p.table or "")
            conn.execute(q.INSERT_PART.format(
                output=ident, columns=columns, values=sql.SQL(", ").join(values),
                part=sql.Identifier(part_schema or staging.SCHEMA, part_name),
                key=sql.Identifier(p.key)))
        conn.execute(lq.ADD_PRIMARY_KEY.format(table=ident, key=sql.Identifier(first.key)))
        conn.execute(lq.GIST_INDEX.format(name=sql.Identifier(f"{name[:55]}_geom_gix"),
                                          table=ident, geom=sql.Identifier("geom")))
        conn.execute(lq.ANALYZE.format(table=ident))
        staging.drop_parts(conn, self.ctx.job_id, attempt=self.ctx.attempt)
        rows = conn.execute(lq.COUNT_ROWS.format(table=ident)).fetchone()
        self._timed("publish_s", started)
        return int(rows[0]) if rows else 0

    def _about(self) -> dict[str, Any]:
        return {"scheduler": self.address, "workers": len(self.workers),
                "partitions": len(self.tiles), "seconds": dict(self.timings)}

    # -- the job types -------------------------------------------------------------------

    def overlay(self, how: str, other: Layer, where: sql.Composable | None, output: str, *,
                overwrite: bool, geometry_type: Callable[[set[str]], str]
                ) -> tuple[int, OverlaySummary]:
        """clip / erase: the input partitioned, the clip or erase layer broadcast. Returns the
        rows written and the summed summary; ``geometry_type`` types the output column from
        the geometry types the parts hold."""
        self.plan()
        mask = read_layer(self.ctx.conn, other, columns=[], where=where)
        self.ctx.progress(0.1)
        mask_f = self.scatter(mask)
        futures = self.submit(how, _overlay_task, self.parts(), how, mask_f, f"{how}_table")
        done = self.gather(futures, (0.1, 0.85))
        written = [w for w, _ in done]
        totals: dict[str, int] = {}
        for _, summary in done:
            for k, v in summary.items():
                totals[k] = totals.get(k, 0) + v
        for k in ("overlay_features", "overlay_skipped", "overlay_repaired"):
            totals[k] = done[0][1][k]
        kinds = set().union(*(w.geometry_types.get("geom", set()) for w in written
                              if w.table is not None))
        rows = self.publish(written, output, overwrite=overwrite,
                            geometry_type=geometry_type(kinds))
        return rows, OverlaySummary(**totals)

    def about(self) -> dict[str, Any]:
        """``result.dask``: the scheduler, workers, partitions and the phases' seconds."""
        return self._about()

    def nearest(self, near: gpd.GeoDataFrame, options: dict[str, Any], output: str, *,
                overwrite: bool) -> dict[str, Any]:
        """nearest: the input partitioned, the near layer broadcast to every worker."""
        self.plan()
        near_f = self.scatter(near)
        futures = self.submit("nearest", _nearest_task, self.parts(), near_f, options)
        done = self.gather(futures, (0.3, 0.9))
        inputs = sum(s["inputs"] for _, s in done)
        if inputs == 0:
            raise EmptyInput("the input layer has no feature", field="input_table")
        rows = self.publish([w for w, _ in done], output, overwrite=overwrite)
        dists = [s["max"] for _, s in done if s["max"] is not None]
        return {"output_table": output, "rows": rows, "input_features": inputs,
                "near_features": len(near),
                "without_neighbour": sum(s["without"] for _, s in done),
                "max_near_dist": max(dists) if dists else None, "dask": self._about(),
                "warnings": list(self.warnings)}

    def dissolve(self, by: Sequence[str], aggregates: dict[str, str], key: str | None,
                 columns: Sequence[str], output: str, *, overwrite: bool) -> dict[str, Any]:
        """dissolve: tiles dissolved with partial aggregates, groups merged by key hash."""
        self.plan()
        stage1: dict[str, str] = {}
        stage2: dict[str, str] = {"feature_count": "sum"}
        sources: dict[str, str] = {}
        outputs = []
        merge = {"sum": "sum", "min": "min", "max": "max", "count": "sum", "first": "first"}
        for column, how in aggregates.items():
            outputs.append((f"{how}_{column}", how, column))
            if how == "mean":
                for p, agg in ((f"__s_{column}", "sum"), (f"__n_{column}", "count")):
                    sources[p], stage1[p], stage2[p] = column, agg, "sum"
            else:
                p = f"__{how}_{column}"
                sources[p], stage1[p], stage2[p] = column, how, merge[how]
        if key is not None:
            sources["__key"], stage1["__key"], stage2["__key"] = key, "min", "min"
        buckets = max(1, 2 * sum(self.client.nthreads().values())) if by else 1
        plan = DissolvePlan(tuple(by), stage1, stage2, sources, outputs, key, buckets)
        parts = self.parts(columns)
        firsts = self.submit("dissolve", _dissolve_task, parts, plan)
        pieces = [[self.client.submit(_pick, f, b, key=self._key(f"pick{b}", i), pure=False)
                   for i, f in enumerate(firsts)] for b in range(buckets)]
        for row in pieces:
            self.futures.extend(row)
        merge_parts = [replace(parts[0], tile=replace(parts[0].tile, index=b))
                       for b in range(buckets)]
        merged = [self.client.submit(_merge_task, merge_parts[b], plan, *pieces[b],
                                     key=self._key("merge", b), pure=False)
                  for b in range(buckets)]
        self.futures.extend(merged)
        counts = [c for _, c in self.gather(firsts, (0.1, 0.6))]
        done = self.gather(merged, (0.6, 0.9))
        skipped = sum(c["skipped_empty"] for c in counts)
        if skipped == sum(c["rows"] for c in counts):
            raise EmptyInput("the layer has no feature with a geometry", field="input_table")
        repaired = sum(c["repaired"] for c in counts)
        notes = list(self.warnings)
        if skipped:
            notes.append(f"{skipped} feature(s) with a null or empty geometry were skipped")
        if repaired:
            notes.append(f"{repaired} invalid geometry(ies) were repaired with make_valid")
        rows = self.publish([w for w, _ in done], output, overwrite=overwrite)
        return {"output_table": output, "rows": rows,
                "input_features": sum(c["rows"] for c in counts), "srid": self.layer.srid,
                "groups": sum(s["groups"] for _, s in done), "skipped_empty": skipped,
                "repaired": repaired,
                "coverage_union_groups": sum(s["coverage_union_groups"] for _, s in done),
                "warnings": notes, "dask": self._about()}

    def count_points(self, spec: GridSpec) -> tuple[Any, int]:
        """hotspot on incidents: points counted per cell of one grid, tile by tile."""
        conn, layer = self.ctx.conn, self.layer
        geom = sql.Identifier(layer.geometry_column or "geom")
        row = conn.execute(q.POINT_EXTENT.format(geom=geom, table=layer.identifier)).fetchone()
        assert row is not None
        if row[0]:
            names = sorted(str(n).title().replace("string", "String") for n in row[1] or [])
            raise GeometryTypeError(f"a grid counts point incidents, the input has {names}",
                                    field="grid")
        if row[2] is None:
            raise EmptyInput("no point with a geometry to count", field="input_table")
        self.plan()
        assert spec.cell_size is not None
        grid = make_grid((row[2], row[3], row[4], row[5]), float(spec.cell_size), spec.shape,
                         crs=f"EPSG:{layer.srid}")
        grid_f = self.scatter(grid)
        futures = self.submit("count", _count_task, self.parts(columns=[]), grid_f)
        done = self.gather(futures, (0.05, 0.5))
        counts = np.sum([c for c, _ in done], axis=0)
        n_points = sum(n for _, n in done)
        _, crs_name, notes = working_geometry(gpd.GeoSeries([], crs=layer.srid))
        return point_counts(grid, counts, spec, derived=False, crs=crs_name,
                            n_points=n_points, warnings=notes), n_points

