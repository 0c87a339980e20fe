"""The download part of ``python -m bench.layers`` (also ``python -m bench.layer_downloads``).

A 100,000-polygon result table, owned by a
completed job of the benchmark's API user, downloaded whole through
``GET /jobs/{id}/results?f=parquet|fgb|geojson`` (a real ``geojobs serve`` logged in as
``geojobs_api`` on 127.0.0.1), against ``ogr2ogr`` reading PostGIS directly into the same format
(the floor). Debian's GDAL has no Parquet driver: GeoParquet's floor is then the binary ``COPY``
of the same columns (attributes, ``ST_AsBinary``) to a file by ``psql``, the bytes any writer must
read first. Each side: the fastest of ``--repeat`` runs; the file is read back (feature count)
so that a failure is never timed. The API process's resident set is sampled during each download
(peak, and the growth over its size before the download); ``--memory-rows`` (default 1,000,000;
0 skips) repeats the GeoParquet and FlatGeobuf downloads on a table that size for the memory goal
(flat, under 300 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyogrio
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from bench.database import bench_database
from bench.measure import RssSampler
from bench.report import machine, print_table, write_json
from geojobs.api.keys import create_key

__all__ = ["main", "download_rows", "make_polygon_table"]

ROOT = Path(__file__).resolve().parents[1]
USER = "bench"
DOWNLOAD_FORMATS = {"parquet": ("GeoParquet", "Parquet", ".parquet"),
                    "fgb": ("FlatGeobuf", "FlatGeobuf", ".fgb"),
                    "geojson": ("GeoJSON", "GeoJSON", ".geojson")}
"""``f`` -> (label, ogr2ogr driver, suffix)."""


# -- set-up ---------------------------------------------------------------------------------


def make_polygon_table(conn: psycopg.Connection[Any], table: str, rows: int) -> int:
    """A result table of ``rows`` polygons (9-vertex buffers on a grid, four attributes) and a
    completed job of the benchmark user naming it; returns the job id."""
    schema, name = table.split(".")
    side = max(1, int(rows ** 0.5))
    conn.execute(f"DROP TABLE IF EXISTS {table}")  # noqa: S608 - the benchmark's own name
    conn.execute(f"""
        CREATE TABLE {table} (id bigint PRIMARY KEY, name text, value double precision,
                              class integer, geom geometry(Polygon, 4326))""")
    conn.execute(f"""
        INSERT INTO {table}
        SELECT i, 'feature ' || i, (i::bigint * 7919 % 1000) / 10.0, i % 7,
               ST_Buffer(ST_SetSRID(ST_MakePoint(-120 + (i % {side}) * 0.01,
                                                 30 + (i / {side}) * 0.01), 4326), 0.004, 2)
        FROM generate_series(1, {rows}) AS i""")  # noqa: S608
    conn.execute(f"CREATE INDEX ON {table} USING gist (geom)")
    conn.execute(f"ANALYZE {table}")
    conn.execute(f"GRANT SELECT ON {table} TO geojobs_api")
    row = conn.execute(
        "INSERT INTO background_jobs (job_type, params, status, result, submitted_by, started_at, "
        "finished_at, progress) VALUES ('dissolve', %s, 'completed', %s, %s, now(), now(), 1) "
        "RETURNING id",
        (Jsonb({"input_table": "bench", "output_table": table}),
         Jsonb({"output_table": table, "rows": rows}), USER)).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def api_server(db_url: str, tmp: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``geojobs serve`` logged in as geojobs_api on a free port; (base URL, process)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = dict(os.environ, DATABASE_URL=make_conninfo(db_url, user="geojobs_api"),
               PYTHONPATH=str(ROOT), GEOJOBS_OUTPUT_DIR=str(tmp))
    log = open(tmp / "api.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "geojobs.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, cwd=ROOT, text=True, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/conformance", timeout=1, trust_env=False).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the API did not start: {(tmp / 'api.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        log.close()


# -- the two sides --------------------------------------------------------------------------


def _features(path: Path) -> int:
    """Feature count of a downloaded file, read by GDAL (pyogrio), not by our code."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.read_metadata(path).num_rows)
    return int(pyogrio.read_info(path, force_feature_count=True)["features"])


def download_api(url: str, key: str, job_id: int, fmt: str, path: Path,
                 server_pid: int) -> dict[str, float]:
    """One whole download through the API: seconds, and the API process's RSS before / peak."""
    with RssSampler(server_pid, interval=0.005) as rss, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                         trust_env=False, timeout=3600) as http:
        t0 = time.perf_counter()
        with http.stream("GET", f"/jobs/{job_id}/results", params={"f": fmt}) as response:
            if response.status_code != 200:
                raise RuntimeError(f"download {fmt}: {response.status_code} {response.read()[:500]!r}")
            with path.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rss_before_mb": rss.start_bytes / 2**20, "rss_peak_mb": rss.peak_mb}


def _pg_source(db_url: str) -> str:
    info = conninfo_to_dict(db_url)
    return "PG:" + " ".join(f"{k}={v}" for k, v in info.items() if k in
                            ("host", "port", "dbname", "user", "password"))


def _has_driver(driver: str) -> bool:
    out = subprocess.run(["ogrinfo", "--formats"], capture_output=True, text=True, check=True).stdout
    return any(line.strip().startswith(f"{driver} ") or line.strip().startswith(f"{driver}(")
               for line in out.splitlines())


def download_floor(db_url: str, table: str, fmt: str, path: Path) -> tuple[str, float]:
    """The floor for ``fmt``: ``ogr2ogr`` PostGIS -> file, or (no such driver) the binary COPY
    of the same columns by ``psql``; (what was run, seconds)."""
    _, driver, _ = DOWNLOAD_FORMATS[fmt]
    if _has_driver(driver):
        cmd = ["ogr2ogr", "-f", driver, str(path), _pg_source(db_url), table]
        what = f"ogr2ogr -f {driver}"
    else:
        select = f"SELECT id, name, value, class, ST_AsBinary(geom) FROM {table}"  # noqa: S608
        cmd = ["psql", db_url, "-q", "-c", f"\\copy ({select}) TO '{path}' (FORMAT binary)"]
        what = "psql binary COPY (no GDAL Parquet driver)"
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return what, time.perf_counter() - t0


def download_rows(db_url: str, url: str, key: str, job_id: int, table: str, rows: int,
                  server_pid: int, tmp: Path, repeat: int) -> list[dict[str, Any]]:
    """The download rows: each format through the API and its floor, the fastest of ``repeat``."""
    out = []
    for fmt, (label, _, suffix) in DOWNLOAD_FORMATS.items():
        api_path, floor_path = tmp / f"api{suffix}", tmp / f"floor{suffix}"
        runs = [download_api(url, key, job_id, fmt, api_path, server_pid) for _ in range(repeat)]
        got = _features(api_path)
        if got != rows:
            raise RuntimeError(f"{fmt}: the API's file has {got} features, the table {rows}")
        floors = [download_floor(db_url, table, fmt, floor_path) for _ in range(repeat)]
        what, floor_s = floors[0][0], min(s for _, s in floors)
        if what.startswith("ogr2ogr") and _features(floor_path) != rows:
            raise RuntimeError(f"{fmt}: ogr2ogr's file does not have {rows} features")
        best = min(runs, key=lambda r: r["seconds"])
        out.append({"format": label, "rows": rows, "api_s": best["seconds"], "floor": what,
                    "floor_s": floor_s, "api_vs_floor": best["seconds"] / floor_s,
                    "api_mb": api_path.stat().st_size / 2**20,
                    "api_rss_before_mb": min(r["rss_before_mb"] for r in runs),
                    "api_rss_peak_mb": max(r["rss_peak_mb"] for r in runs)})
    return out


def download_memory_rows(url: str, key: str, job_id: int, rows: int, server_pid: int,
                         tmp: Path) -> list[dict[str, Any]]:
    """GeoParquet and FlatGeobuf downloads of a ``rows``-row table: the API process's peak."""
    out = []
    for fmt in ("parquet", "fgb"):
        label, _, suffix = DOWNLOAD_FORMATS[fmt]
        path = tmp / f"memory{suffix}"
        run = download_api(url, key, job_id, fmt, path, server_pid)
        if _features(path) != rows:
            raise RuntimeError(f"{fmt}: the downloaded file does not have {rows} features")
        path.unlink()
        out.append({"format": label, "rows": rows, "api_s": run["seconds"],
                    "api_rss_before_mb": run["rss_before_mb"], "api_rss_peak_mb": run["rss_peak_mb"],
                    "growth_mb": run["rss_peak_mb"] - run["rss_before_mb"]})
    return out


def run_downloads(rows: int, memory_rows: int, repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Set up a database, a result table and the API; measure the download rows."""
    with bench_database(prefix="geojobs_bench_layers") as db_url, \
            tempfile.TemporaryDirectory(prefix="geojobs-bench-layers-") as tmpdir:
        tmp = Path(tmpdir)
        with psycopg.connect(db_url, autocommit=True) as conn:
            key = create_key(conn, USER)
            job_id = make_polygon_table(conn, "results.bench_polygons", rows)
            big_job = (make_polygon_table(conn, "results.bench_polygons_big", memory_rows)
                       if memory_rows else None)
        with api_server(db_url, tmp) as (url, proc):
            speed = download_rows(db_url, url, key, job_id, "results.bench_polygons", rows,
                                  proc.pid, tmp, repeat)
            print_table(f"Downloads of {rows:,} polygons: API against the floor (fastest of "
                        f"{repeat})", speed)
            memory = (download_memory_rows(url, key, big_job, memory_rows, proc.pid, tmp)
                      if big_job is not None else [])
            if memory:
                print_table(f"API process memory, downloads of {memory_rows:,} polygons", memory)
        return {"downloads": speed, "download_memory": memory}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layer_downloads", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="polygons in the result table")
    parser.add_argument("--memory-rows", type=int, default=1_000_000,
                        help="polygons of the memory run (0: skip it)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="small sizes: check, not measure")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.memory_rows, args.repeat = 2_000, 0, 1
    if shutil.which("ogr2ogr") is None:
        parser.error("ogr2ogr is missing (gdal-bin): run `make install`")
    print(f"machine: {machine()}", flush=True)
    results = run_downloads(args.rows, args.memory_rows, args.repeat)
    if args.json:
        write_json(args.json, results["downloads"] + results["download_memory"], parts=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
