"""``python -m bench.layers``: result layers over HTTP against PostGIS directly, in one run.

A 100,000-polygon result table (``results.bench_polys``: fid, name, v, cls, an octagon each, in
EPSG:4326 with a GiST index) written by the worker role, with the completed job of user
``bench`` that owns it; ``geojobs serve`` (one uvicorn worker, logged in as geojobs_api) on
loopback. Each part is a function ``f(bench, args) -> rows`` registered in :data:`PARTS`:

- ``tiles``: vector tile latency. Every WebMercatorQuad tile covering the layer at zoom 8, and a
  seeded sample of those at zooms 10 and 12; each tile is fetched from
  ``/collections/results.bench_polys/tiles/WebMercatorQuad/{z}/{x}/{y}`` (one keep-alive
  connection, no ``If-None-Match``) and built by ``ST_AsMVT`` run directly over psycopg (same
  rows: ``ST_Intersects`` with the tile, extent 4096, buffer 256, clipped), alternately, after
  one untimed pass. p50/p95 of each and their ratios, the API server's CPU per tile, and the
  benchmark's own CPU per request on each side. The HTTP client is :mod:`bench.rawhttp`
  (``--client raw``, the default: tens of microseconds per request, like psycopg's side) or httpx
  (``--client httpx``: about 1 ms of the client's CPU per request).
- ``items``: ``/collections/{id}/items?limit=1000`` pages per second with 8 concurrent clients
  (httpx, one process), at offsets spread over the table; against 8 psycopg connections each
  building the same page as one GeoJSON FeatureCollection in SQL (``json_agg(ST_AsGeoJSON)``);
  the API server's CPU per page and the benchmark's own on each side.

- ``downloads``: the whole layer through ``GET /jobs/{id}/results?f=parquet|fgb|geojson``
  (httpx, streamed to a file) against ``ogr2ogr`` reading PostGIS directly into the same format
  (the floor). Debian's GDAL has no Parquet driver: GeoParquet's floor is then ``psql``'s binary
  ``COPY`` of the same columns (attributes, ``ST_AsBinary``) to a file, the bytes any writer must
  read first. Fastest of ``--repeat`` runs per side; every file's feature count is read back
  before a time counts. The resident set of the API process and its children (the child that
  writes a streamed format) is sampled every 5 ms during each download (before, peak).
- ``download_memory``: the GeoParquet and FlatGeobuf downloads of a ``--memory-rows`` table
  (default 1,000,000; made with :func:`make_polygons` too): the API process's growth.

:func:`layer_bench` gives every part the same server and table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import morecantile
import psutil
import psycopg
import pyogrio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from bench.database import bench_database
from bench.measure import RssSampler, percentiles
from bench.rawhttp import BlockingClient, request_bytes
from bench.report import machine, print_table, write_json
from geojobs.api.keys import create_key

__all__ = ["LayerBench", "layer_bench", "make_polygons", "tile_rows", "items_rows", "download_rows",
           "download_memory_rows", "PARTS", "run", "main"]

ROOT = Path(__file__).resolve().parents[1]
TABLE = "results.bench_polys"
USER = "bench"
ZOOMS = (8, 10, 12)
CELL = 0.02
"""Degrees between polygon centres; 100,000 polygons span about 6.3 x 6.3 degrees."""


@dataclass
class LayerBench:
    """What every part needs: the API, the database, the layer and its owner's key."""

    url: str
    db_url: str
    key: str
    table: str
    rows: int
    bounds: tuple[float, float, float, float]
    server: subprocess.Popen[str]
    tmp: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        """A keep-alive HTTP client with the owner's key."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"},
                            trust_env=False, **{"timeout": 120, **kwargs})


def make_polygons(conn: psycopg.Connection[Any], table: str, rows: int) -> tuple[float, ...]:
    """``rows`` octagons on a square grid, created by the worker role as a job would; returns
    the layer's bounds (west, south, east, north)."""
    schema, name = table.split(".")
    side = int(rows ** 0.5) + 1
    west, south = 5.0, 44.0
    target = sql.Identifier(schema, name)
    conn.execute("SET ROLE geojobs_worker")
    try:
        conn.execute(sql.SQL(
            "CREATE TABLE {t} (fid integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text, "
            "v double precision, cls integer, geom geometry(Polygon, 4326))").format(t=target))
        conn.execute(sql.SQL(
            "INSERT INTO {t} (name, v, cls, geom) "
            "SELECT 'poly ' || n, (n::bigint * 7919 %% 1000) / 10.0, n %% 7, "
            "       ST_Buffer(ST_SetSRID(ST_MakePoint(%(w)s + (n %% %(side)s) * %(cell)s, "
            "                                         %(s)s + (n / %(side)s) * %(cell)s), 4326), "
            "                 %(cell)s * 0.4, 'quad_segs=2') "
            "FROM generate_series(0, %(rows)s - 1) AS n").format(t=target),
            {"w": west, "s": south, "side": side, "cell": CELL, "rows": rows})
        conn.execute(sql.SQL("CREATE INDEX ON {t} USING gist (geom)").format(t=target))
        conn.execute(sql.SQL("VACUUM ANALYZE {t}").format(t=target))
    finally:
        conn.execute("RESET ROLE")
    job = conn.execute(
        "INSERT INTO background_jobs (job_type, params, submitted_by, status, started_at) "
        "VALUES ('dissolve', %s, %s, 'running', now()) RETURNING id",
        (Jsonb({"output_table": table}), USER)).fetchone()
    assert job is not None
    conn.execute("UPDATE background_jobs SET status = 'completed', finished_at = now(), result = %s "
                 "WHERE id = %s", (Jsonb({"output_table": table, "rows": rows}), job[0]))
    east = west + (side - 1) * CELL + CELL
    north = south + ((rows - 1) // side) * CELL + CELL
    return west - CELL, south - CELL, east, north


def _wait_up(url: str, server: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/conformance", trust_env=False, timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)


@contextmanager
def layer_bench(rows: int) -> Iterator[LayerBench]:
    """A fresh database with the layer, and the API serving it; everything removed after."""
    with bench_database(prefix="geojobs_bench_layers") as db_url, \
            tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with psycopg.connect(db_url, autocommit=True) as conn:
            key = create_key(conn, USER)
            bounds = make_polygons(conn, TABLE, rows)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), GEOJOBS_OUTPUT_DIR=str(tmp),
                   DATABASE_URL=make_conninfo(db_url, user="geojobs_api"),
                   GEOJOBS_API_POOL_SIZE="20")
        log_path = tmp / "api.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "geojobs.cli", "serve", "--port", str(port),
                 "--workers", "1", "--log-level", "warning"],
                env=env, cwd=ROOT, text=True, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_up(url, server, log_path)
                yield LayerBench(url, db_url, key, TABLE, rows, bounds, server, tmp)
            finally:
                if server.poll() is None:
                    server.terminate()
                    try:
                        server.wait(15)
                    except subprocess.TimeoutExpired:
                        server.kill()


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children: the server's own
    cost, which the machine's load does not change."""
    proc = psutil.Process(pid)
    times = [proc.cpu_times(), *(c.cpu_times() for c in proc.children(recursive=True))]
    return sum(t.user + t.system for t in times)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- vector tiles ----------------------------------------------------------------------------

_MVT = sql.SQL(
    "SELECT ST_AsMVT(q, 'default', 4096, 'geom') FROM ("
    " SELECT fid, name, v, cls, ST_AsMVTGeom(ST_Transform(geom, 3857), "
    "        ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 256, true) AS geom"
    " FROM {t}"
    " WHERE ST_Intersects(geom, ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4326))) q")


def covering_tiles(bench: LayerBench, zoom: int, sample: int, seed: int = 7) -> list[morecantile.Tile]:
    """The WebMercatorQuad tiles covering the layer at ``zoom`` (a seeded sample of ``sample``)."""
    tiles = list(morecantile.tms.get("WebMercatorQuad").tiles(*bench.bounds, [zoom]))
    if len(tiles) > sample:
        tiles = random.Random(seed + zoom).sample(tiles, sample)
    return tiles


def tile_rows(bench: LayerBench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tile latency through the API against ST_AsMVT in SQL, per zoom."""
    rows = []
    schema, name = bench.table.split(".")
    query = _MVT.format(t=sql.Identifier(schema, name))
    host, port = urlsplit(bench.url).hostname or "127.0.0.1", urlsplit(bench.url).port or 80
    headers = {"Authorization": f"Bearer {bench.key}"}
    raw = BlockingClient(host, port) if args.client == "raw" else None

    def fetch(http: httpx.Client, path: str) -> bytes:
        if raw is None:
            response = http.get(path)
            response.raise_for_status()
            return response.content
        answer = raw.send(request_bytes("GET", path, f"{host}:{port}", headers))
        if answer.status != 200:
            raise RuntimeError(f"GET {path}: {answer.status} {answer.body[:200]!r}")
        return answer.body

    with bench.client() as http, psycopg.connect(bench.db_url, autocommit=True) as conn:
        for zoom in ZOOMS:
            tiles = covering_tiles(bench, zoom, args.tiles)
            api_ms: list[float] = []
            sql_ms: list[float] = []
            api_bytes = sql_bytes = 0
            cpu = api_client = sql_client = 0.0
            for timed in (False, True):
                if timed:
                    cpu = _cpu(bench.server.pid)
                for tile in tiles:
                    path = f"/collections/{bench.table}/tiles/WebMercatorQuad/{zoom}/{tile.x}/{tile.y}"
                    start, own = time.perf_counter(), time.thread_time()
                    body = fetch(http, path)
                    elapsed, own = time.perf_counter() - start, time.thread_time() - own
                    if timed:
                        api_ms.append(elapsed * 1000)
                        api_bytes += len(body)
                        api_client += own
                    start, own = time.perf_counter(), time.thread_time()
                    row = conn.execute(query, {"z": zoom, "x": tile.x, "y": tile.y}).fetchone()
                    elapsed, own = time.perf_counter() - start, time.thread_time() - own
                    if timed:
                        sql_ms.append(elapsed * 1000)
                        sql_client += own
                        sql_bytes += len(bytes(row[0])) if row and row[0] is not None else 0
            cpu = _cpu(bench.server.pid) - cpu
            (a50, a95), (s50, s95) = percentiles(api_ms), percentiles(sql_ms)
            rows.append({"zoom": zoom, "tiles": len(tiles), "client": args.client,
                         "api_p50_ms": a50, "api_p95_ms": a95, "sql_p50_ms": s50, "sql_p95_ms": s95,
                         "ratio_p50": a50 / s50, "ratio_p95": a95 / s95,
                         "server_cpu_ms_per_tile": cpu * 1000 / len(tiles),
                         "client_cpu_ms_per_tile": api_client * 1000 / len(tiles),
                         "sql_client_cpu_ms_per_tile": sql_client * 1000 / len(tiles),
                         "api_kb_per_tile": api_bytes / len(tiles) / 1024,
                         "sql_kb_per_tile": sql_bytes / len(tiles) / 1024})
    return rows


# --- feature pages ---------------------------------------------------------------------------

_PAGE = sql.SQL(
    "SELECT json_build_object('type', 'FeatureCollection', 'features', "
    "       coalesce(json_agg(ST_AsGeoJSON(p.*, 'geom', 9)::json), '[]'))::text FROM ("
    " SELECT fid, name, v, cls, geom FROM {t} ORDER BY fid LIMIT 1000 OFFSET %(offset)s) p")


def _offsets(bench: LayerBench, pages: int, seed: int = 11) -> list[int]:
    starts = list(range(0, bench.rows, 1000))
    rng = random.Random(seed)
    return [rng.choice(starts) for _ in range(pages)]


async def _api_pages(bench: LayerBench, offsets: list[int], clients: int) -> tuple[float, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for offset in offsets:
        queue.put_nowait(offset)
    size = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=bench.url, limits=limits, trust_env=False, timeout=120,
                                 headers={"Authorization": f"Bearer {bench.key}"}) as http:
        async def one() -> None:
            nonlocal size
            while not queue.empty():
                offset = queue.get_nowait()
                response = await http.get(f"/collections/{bench.table}/items",
                                          params={"limit": 1000, "offset": offset})
                response.raise_for_status()
                size += len(response.content)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return time.perf_counter() - start, size


async def _sql_pages(bench: LayerBench, offsets: list[int], clients: int) -> tuple[float, int]:
    schema, name = bench.table.split(".")
    query = _PAGE.format(t=sql.Identifier(schema, name))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for offset in offsets:
        queue.put_nowait(offset)
    size = 0
    conns = [await psycopg.AsyncConnection.connect(bench.db_url, autocommit=True)
             for _ in range(clients)]
    try:
        async def one(conn: psycopg.AsyncConnection[Any]) -> None:
            nonlocal size
            while not queue.empty():
                offset = queue.get_nowait()
                cur = await conn.execute(query, {"offset": offset})
                row = await cur.fetchone()
                size += len(row[0]) if row else 0

        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in conns))
        return time.perf_counter() - start, size
    finally:
        for conn in conns:
            await conn.close()


def items_rows(bench: LayerBench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``items?limit=1000`` pages per second, 8 clients, against the same pages built in SQL."""
    clients = args.clients
    offsets = _offsets(bench, args.pages)
    asyncio.run(_api_pages(bench, offsets[: clients * 2], clients))  # warm both sides
    asyncio.run(_sql_pages(bench, offsets[: clients * 2], clients))
    cpu, own = _cpu(bench.server.pid), time.process_time()
    api_s, api_size = asyncio.run(_api_pages(bench, offsets, clients))
    cpu, api_client = _cpu(bench.server.pid) - cpu, time.process_time() - own
    own = time.process_time()
    sql_s, sql_size = asyncio.run(_sql_pages(bench, offsets, clients))
    sql_client = time.process_time() - own
    return [{"clients": clients, "pages": len(offsets),
             "api_pages_per_s": len(offsets) / api_s, "sql_pages_per_s": len(offsets) / sql_s,
             "ratio": (len(offsets) / sql_s) / (len(offsets) / api_s),
             "server_cpu_ms_per_page": cpu * 1000 / len(offsets),
             "client_cpu_ms_per_page": api_client * 1000 / len(offsets),
             "sql_client_cpu_ms_per_page": sql_client * 1000 / len(offsets),
             "api_kb_per_page": api_size / len(offsets) / 1024,
             "sql_kb_per_page": sql_size / len(offsets) / 1024}]


# --- downloads -------------------------------------------------------------------------------

DOWNLOAD_FORMATS = {"parquet": ("GeoParquet", "Parquet", ".parquet"),
                    "fgb": ("FlatGeobuf", "FlatGeobuf", ".fgb"),
                    "geojson": ("GeoJSON", "GeoJSON", ".geojson")}
"""``f`` -> (label, ogr2ogr driver, suffix)."""


def _job_of(db_url: str, table: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM background_jobs WHERE result ->> 'output_table' = %s",
                           (table,)).fetchone()
    assert row is not None
    return int(row[0])


def _features(path: Path) -> int:
    """Feature count of a downloaded file, read by pyarrow / GDAL, not by our code."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    return int(pyogrio.read_info(path, force_feature_count=True)["features"])


def download_api(bench: LayerBench, job_id: int, fmt: str, path: Path) -> dict[str, float]:
    """One whole download through the API: seconds, and the RSS of the API process and its
    children before / peak."""
    with RssSampler(bench.server.pid, interval=0.005, children=True) as rss, \
            bench.client(timeout=3600) as http:
        t0 = time.perf_counter()
        with http.stream("GET", f"/jobs/{job_id}/results", params={"f": fmt}) as response:
            if response.status_code != 200:
                raise RuntimeError(f"download {fmt}: {response.status_code} {response.read()[:500]!r}")
            with path.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before_mb": rss.start_bytes / 2**20, "rss_peak_mb": rss.peak_mb}


def _has_driver(driver: str) -> bool:
    out = subprocess.run(["ogrinfo", "--formats"], capture_output=True, text=True, check=True).stdout
    return any(line.strip().startswith((f"{driver} ", f"{driver}(")) for line in out.splitlines())


def download_floor(bench: LayerBench, fmt: str, path: Path) -> tuple[str, float]:
    """The floor for ``fmt``: ``ogr2ogr`` PostGIS -> file, or (no such driver) the binary COPY
    of the same columns by ``psql``; (what was run, seconds)."""
    _, driver, _ = DOWNLOAD_FORMATS[fmt]
    if _has_driver(driver):
        info = conninfo_to_dict(bench.db_url)
        source = "PG:" + " ".join(f"{k}={v}" for k, v in info.items()
                                  if k in ("host", "port", "dbname", "user", "password"))
        cmd = ["ogr2ogr", "-f", driver, str(path), source, bench.table]
        what = f"ogr2ogr -f {driver}"
    else:
        select = f"SELECT fid, name, v, cls, ST_AsBinary(geom) FROM {bench.table}"  # noqa: S608
        cmd = ["psql", bench.db_url, "-q", "-c", f"\\copy ({select}) TO '{path}' (FORMAT binary)"]
        what = "psql binary COPY (no GDAL Parquet driver)"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return what, time.perf_counter() - t0


def download_rows(bench: LayerBench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each format through the API and its floor, the fastest of ``args.repeat`` runs."""
    job_id = _job_of(bench.db_url, bench.table)
    out = []
    for fmt, (label, _, suffix) in DOWNLOAD_FORMATS.items():
        api_path, floor_path = bench.tmp / f"api{suffix}", bench.tmp / f"floor{suffix}"
        runs = [download_api(bench, job_id, fmt, api_path) for _ in range(args.repeat)]
        if _features(api_path) != bench.rows:
            raise RuntimeError(f"{fmt}: the API's file does not have {bench.rows} features")
        floors = [download_floor(bench, fmt, floor_path) for _ in range(args.repeat)]
        what, floor_s = floors[0][0], min(s for _, s in floors)
        if what.startswith("ogr2ogr") and _features(floor_path) != bench.rows:
            raise RuntimeError(f"{fmt}: ogr2ogr's file does not have {bench.rows} features")
        best = min(runs, key=lambda r: r["seconds"])
        out.append({"format": label, "rows": bench.rows, "api_s": best["seconds"], "floor": what,
                    "floor_s": floor_s, "api_vs_floor": best["seconds"] / floor_s,
                    "api_mb": api_path.stat().st_size / 2**20,
                    "api_rss_before_mb": min(r["rss_before_mb"] for r in runs),
                    "api_rss_peak_mb": max(r["rss_peak_mb"] for r in runs)})
    return out


def download_memory_rows(bench: LayerBench, args: argparse.Namespace) -> list[dict[str, Any]]:
    """GeoParquet and FlatGeobuf downloads of an ``args.memory_rows`` table: the API's growth."""
    if not args.memory_rows:
        return []
    table = TABLE + "_big"
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        make_polygons(conn, table, args.memory_rows)
    job_id = _job_of(bench.db_url, table)
    out = []
    for fmt in ("parquet", "fgb"):
        label, _, suffix = DOWNLOAD_FORMATS[fmt]
        path = bench.tmp / f"memory{suffix}"
        run = download_api(bench, job_id, fmt, path)
        if _features(path) != args.memory_rows:
            raise RuntimeError(f"{fmt}: the downloaded file does not have {args.memory_rows} features")
        path.unlink()
        out.append({"format": label, "rows": args.memory_rows, "api_s": run["seconds"],
                    "api_rss_before_mb": run["rss_before_mb"], "api_rss_peak_mb": run["rss_peak_mb"],
                    "growth_mb": run["rss_peak_mb"] - run["rss_before_mb"]})
    return out


PARTS: dict[str, tuple[str, Callable[[LayerBench, argparse.Namespace], list[dict[str, Any]]]]] = {
    "tiles": ("Vector tiles: API against ST_AsMVT in SQL (ms per tile, sequential)", tile_rows),
    "items": ("Features items?limit=1000: pages per second, API against SQL", items_rows),
    "downloads": ("Whole-layer downloads: API against ogr2ogr (or COPY), fastest runs",
                  download_rows),
    "download_memory": ("API process memory during whole-layer downloads (--memory-rows)",
                        download_memory_rows),
}
"""Each part: (title, function of the shared bench and the arguments -> rows)."""


def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every part asked for, on one server and one table."""
    out: dict[str, list[dict[str, Any]]] = {}
    with layer_bench(args.rows) as bench:
        for part in args.only or list(PARTS):
            title, function = PARTS[part]
            out[part] = function(bench, args)
            print_table(f"{title}, {bench.rows:,} polygons", out[part])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: check, not measure")
    parser.add_argument("--rows", type=int, help="polygons in the layer (default 100,000)")
    parser.add_argument("--tiles", type=int, help="tiles sampled per zoom (default 60)")
    parser.add_argument("--pages", type=int, help="item pages fetched (default 200)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for items")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="HTTP client of the tiles part (default raw: bench.rawhttp)")
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="run only these parts")
    parser.add_argument("--repeat", type=int, help="download runs per side; the fastest counts (3)")
    parser.add_argument("--memory-rows", type=int,
                        help="polygons of the download memory run (default 1,000,000; 0 skips)")
    parser.add_argument("--json", type=Path, help="also save the figures here")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.memory_rows is None:
        args.memory_rows = 0 if args.quick else 1_000_000
    args.rows = args.rows or (5_000 if args.quick else 100_000)
    args.tiles = args.tiles or (5 if args.quick else 60)
    args.pages = args.pages or (16 if args.quick else 200)
    print(f"machine: {machine()}", flush=True)
    print(f"command: python -m bench.layers {' '.join(argv if argv is not None else sys.argv[1:])}",
          flush=True)
    out = run(args)
    if args.json:
        write_json(args.json, [row for rows in out.values() for row in rows], polygons=args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
