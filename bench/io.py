"""``python -m bench.io``: reading and writing a polygon layer, against the binary COPY floor.

For each size (100,000 and 1,000,000 hexagons with ``id``, ``value``, ``category``):

- read: the floor (:func:`bench.floor.copy_read`: binary COPY, ``shapely.from_wkb``), the
  project's ``describe_layer`` + ``read_layer``, and ``geopandas.read_postgis``;
- write, into a new table with a GiST index, committed: the floor
  (:func:`bench.floor.copy_write`), the project's ``write_layer`` (which also adds a ``fid``
  primary key and runs ANALYZE), and ``GeoDataFrame.to_postgis`` (hex EWKB through text
  COPY; GeoAlchemy2 adds the index).

All in this process, best of several interleaved runs (the machine is shared and noisy).
Goal: the project's paths within 1.2x of the floor.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import geopandas as gpd
import psycopg
from psycopg import sql

from bench.data import hex_grid, load_layer, parse_sizes
from bench.database import bench_database, sqlalchemy_engine
from bench.floor import copy_read, copy_write
from bench.measure import Timing, time_call
from bench.report import report
from geojobs.layers import describe_layer, read_layer, write_layer

__all__ = ["run", "main"]

COLUMNS = {"id": "int8", "value": "float8", "category": "text"}
SRID = 3857
FLOOR_READ = "floor: binary COPY + from_wkb"
FLOOR_WRITE = "floor: binary COPY of EWKB + GiST"


def _drop(url: str, table: str) -> None:
    schema, _, name = table.rpartition(".")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))


def _row(op: str, path: str, n: int, seconds: float, floor: float) -> dict[str, Any]:
    return {"op": op, "path": path, "size": n, "wall_s": seconds, "rows_per_s": n / seconds,
            "ratio_to_floor": seconds / floor}


def _best(paths: dict[str, Callable[[], Any]], repeat: int) -> dict[str, Timing]:
    """Run every path ``repeat`` times, interleaved (so drift hits all alike); keep the best."""
    best: dict[str, Timing] = {}
    for _ in range(repeat):
        for path, fn in paths.items():
            timing = time_call(fn)
            if path not in best or timing.wall_s < best[path].wall_s:
                best[path] = timing
    return best


def _reads(url: str, engine: Any, table: str, *, geopandas: bool) -> dict[str, Callable[[], Any]]:
    def floor() -> gpd.GeoDataFrame:
        with psycopg.connect(url) as conn:
            return copy_read(conn, table, COLUMNS, srid=SRID)

    def project() -> gpd.GeoDataFrame:
        with psycopg.connect(url) as conn:
            return read_layer(conn, describe_layer(conn, table))

    def read_postgis() -> gpd.GeoDataFrame:
        return gpd.read_postgis(f"SELECT id, value, category, geom FROM {table}",  # noqa: S608
                                engine, geom_col="geom")

    paths = {FLOOR_READ: floor, "geojobs read_layer": project}
    if geopandas:
        paths["geopandas read_postgis"] = read_postgis
    return paths


def _writes(url: str, engine: Any, data: gpd.GeoDataFrame, out: str, *, geopandas: bool
            ) -> dict[str, Callable[[], Any]]:
    """Writes into ``out``, committed as a job's output is; the drop before each is untimed."""
    schema, _, name = out.rpartition(".")

    def timed(fn: Callable[[psycopg.Connection[Any]], Any]) -> Callable[[], None]:
        def work() -> None:
            with psycopg.connect(url) as conn:
                fn(conn)
                conn.commit()
        return work

    def floor(conn: psycopg.Connection[Any]) -> None:
        copy_write(conn, data, out, COLUMNS, geometry_type="Polygon", srid=SRID)

    def floor_analyze(conn: psycopg.Connection[Any]) -> None:
        floor(conn)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))

    def project(conn: psycopg.Connection[Any]) -> None:
        write_layer(conn, data, out, srid=SRID)

    def to_postgis(conn: psycopg.Connection[Any]) -> None:
        data.to_postgis(name, engine, schema=schema)

    paths = {FLOOR_WRITE: timed(floor), "floor + ANALYZE (which write_layer runs)":
             timed(floor_analyze), "geojobs write_layer": timed(project)}
    if geopandas:
        paths["geopandas to_postgis"] = timed(to_postgis)
    return {path: _dropping_first(url, out, fn) for path, fn in paths.items()}


def _dropping_first(url: str, table: str, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` preceded by dropping ``table`` (a drop that ``time_call`` times too: a few ms)."""
    def work() -> None:
        _drop(url, table)
        fn()
    return work


def run(sizes: Sequence[int], database_url: str, *, geopandas_max: int = 1_000_000,
        repeat: int | None = None) -> list[dict[str, Any]]:
    """Read and write rows for every size; best of ``repeat`` (3 up to 100k, then 2)."""
    rows: list[dict[str, Any]] = []
    engine = sqlalchemy_engine(database_url)
    try:
        for n in sizes:
            times = repeat or (3 if n <= 100_000 else 2)
            table, out = f"public.bench_io_{n}", f"results.bench_io_out_{n}"
            load_layer(database_url, hex_grid(n, seed=n), table, srid=SRID)
            reads = _best(_reads(database_url, engine, table, geopandas=n <= geopandas_max),
                          times)
            for path, timing in reads.items():
                assert len(timing.value) == n, f"{path} read {len(timing.value)} of {n} rows"
                rows.append(_row("read", path, n, timing.wall_s, reads[FLOOR_READ].wall_s))
            data = reads[FLOOR_READ].value
            writes = _best(_writes(database_url, engine, data, out,
                                   geopandas=n <= geopandas_max), times)
            with psycopg.connect(database_url, autocommit=True) as conn:
                row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(*out.split(".")))).fetchone()
            assert row is not None and row[0] == n, f"the last write holds {row} rows, not {n}"
            for path, timing in writes.items():
                rows.append(_row("write", path, n, timing.wall_s, writes[FLOOR_WRITE].wall_s))
            print(f"  {n:,} polygons: done", flush=True)
            _drop(database_url, out)
            _drop(database_url, table)
    finally:
        engine.dispose()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.io", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100k,1M", help="polygon counts (100k,1M)")
    parser.add_argument("--geopandas-max", default="1M",
                        help="largest size also run through GeoPandas (1M)")
    parser.add_argument("--repeat", type=int, help="runs per path (default 3, 2 above 100k)")
    parser.add_argument("--quick", action="store_true", help="2k polygons: a check")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sizes = parse_sizes("2k" if args.quick else args.sizes)
    with bench_database() as url:
        rows = run(sizes, url, geopandas_max=parse_sizes(args.geopandas_max)[0],
                   repeat=args.repeat)
    return report("layer I/O (goal: geojobs within 1.2x of the floor)", rows, json_path=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
