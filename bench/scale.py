"""One big job spread over Dask: single process vs a LocalCluster of 1 and of 2 worker processes.

``python -m bench.scale [--rows 10M] [--json PATH]``: clip of ``--rows`` points (10,000,000)
by 1,000 polygons, and nearest of ``--rows / 2`` points (5,000,000) to 100,000 polygons, each
run three ways in the same minutes: in one worker process (no scheduler), and partitioned on a
fresh ``distributed.LocalCluster`` of 1 and then 2 worker processes (one thread each), with
``GEOJOBS_DASK_MIN_ROWS=0`` so that any size runs partitioned. The polygons keep their sizes
whatever ``--rows`` is.

Printed per run: the job's time (claim to completion, from the job row), the geojobs worker
process's peak resident set (worker plus job process, ``VmHWM``), the peak of each Dask worker
process (``VmHWM`` read from ``/proc`` when the job is done; each run has a fresh cluster), the
number of partitions and the mean and largest compute time of one partition task (from the
scheduler's task stream). Then the speed-up of 2 workers over 1, and what a second machine of
the same kind would add, estimated from the measured per-partition costs (see
:func:`second_machine`).

Inputs are made in SQL (``generate_series`` with a fixed ``setseed``), in a throwaway
database, with a GiST index and ANALYZE, as a real layer would have.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.data import parse_size
from bench.database import bench_database
from bench.measure import measure_job

SRID = 26916
EXTENT = 1_000_000.0  # metres: the points spread over a 1000 km square
CASES = ("clip", "nearest")


def _load(url: str, points: int, table: str, polygons: int, poly_table: str, radius: float) -> None:
    """``points`` random points and ``polygons`` random convex polygons, made in SQL."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setseed(0.19)")
        conn.execute(f"CREATE TABLE {table} (fid bigint PRIMARY KEY, val double precision, "  # noqa: S608
                     f"geom geometry(Point, {SRID}))")
        conn.execute(
            f"INSERT INTO {table} SELECT i, random(), "  # noqa: S608
            f"ST_SetSRID(ST_MakePoint(random() * %(e)s, random() * %(e)s), {SRID}) "
            "FROM generate_series(1, %(n)s) AS i", {"e": EXTENT, "n": points})
        conn.execute(f"CREATE INDEX ON {table} USING gist (geom)")
        conn.execute(f"ANALYZE {table}")
        conn.execute(f"CREATE TABLE {poly_table} (fid bigint PRIMARY KEY, kind text, "  # noqa: S608
                     f"geom geometry(Polygon, {SRID}))")
        conn.execute(
            f"INSERT INTO {poly_table} SELECT i, 'k' || (i %% 7), ST_SetSRID(ST_Buffer("  # noqa: S608
            "ST_MakePoint(random() * %(e)s, random() * %(e)s), %(r)s * (0.5 + random()), 4), "
            f"{SRID}) FROM generate_series(1, %(n)s) AS i", {"e": EXTENT, "n": polygons, "r": radius})
        conn.execute(f"CREATE INDEX ON {poly_table} USING gist (geom)")
        conn.execute(f"ANALYZE {poly_table}")


def _hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _run(url: str, job_type: str, params: dict[str, Any], workers: int) -> dict[str, Any]:
    """One job: in the worker (``workers`` 0) or on a fresh LocalCluster of ``workers``."""
    env = {"GEOJOBS_DASK_MIN_ROWS": "0", "GEOJOBS_DASK_SCHEDULER": ""}  # "": none
    if workers == 0:
        m = measure_job(url, job_type, params, env=env)
        return {"case": job_type, "workers": 0, "job_s": m.job_s, "worker_peak_mb": m.peak_rss_mb,
                "dask_peak_mb": [], "partitions": None, "task_mean_s": None, "task_max_s": None}
    from distributed import Client, LocalCluster, get_task_stream

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=0, silence_logs=40) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)
        # a site's Dask workers are long-lived and preload the tasks' code (the systemd unit's
        # --preload geojobs.distributed): import it now, not inside the measured job
        client.run(importlib.import_module, "geojobs.distributed")
        with get_task_stream(client) as stream:
            m = measure_job(url, job_type, params,
                            env={**env, "GEOJOBS_DASK_SCHEDULER": cluster.scheduler_address})
        peaks = [_hwm_mb(pid) for pid in pids.values()]
        tasks = [sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute")
                 for t in stream.data if str(t["key"]).startswith(f"geojobs-{m.job_row['id']}-")]
    return {"case": job_type, "workers": workers, "job_s": m.job_s,
            "worker_peak_mb": m.peak_rss_mb, "dask_peak_mb": peaks,
            "partitions": (m.job_row["result"].get("dask") or {}).get("partitions"),
            "task_mean_s": statistics.fmean(tasks) if tasks else None,
            "task_max_s": max(tasks) if tasks else None, "task_total_s": sum(tasks),
            "phases_s": (m.job_row["result"].get("dask") or {}).get("seconds", {})}


def second_machine(one: dict[str, Any], two: dict[str, Any]) -> dict[str, float]:
    """What a second machine of this kind (2 more worker processes) would give, estimated.

    The run with 2 workers splits into its partition phase (``tasks_s``: from the first task
    submitted to the last result, as the job records it) and the rest, which does not spread
    (counting and tiling, reading the broadcast layer, the publish in the job's transaction:
    ``job_s - tasks_s``). With 4 workers the partition phase takes the partitions' total
    compute over 4 instead of over 2, plus what the phase cost beyond compute (task start,
    transfer), kept as measured. This assumes PostgreSQL keeps up (here it shares the same 2
    cores; at a site it has its own) and ignores the network between machines.
    """
    tasks_s = float(two["phases_s"].get("tasks_s", 0.0))
    serial = max(0.0, two["job_s"] - tasks_s)
    overhead = max(0.0, tasks_s - two["task_total_s"] / 2)
    four = serial + overhead + two["task_total_s"] / 4
    return {"serial_s": serial, "phase_overhead_s": overhead, "estimated_4_workers_s": four,
            "estimated_speedup_over_2": two["job_s"] / four if four else float("nan"),
            "estimated_speedup_over_1": one["job_s"] / four if four else float("nan")}


def run(rows: int, base_url: str | None = None) -> list[dict[str, Any]]:
    """Every case, three ways each."""
    results: list[dict[str, Any]] = []
    with bench_database(base_url, prefix="geojobs_bench_scale") as url:
        started = time.perf_counter()
        _load(url, rows, "public.clip_points", 1000, "public.clip_polygons", 15_000.0)
        _load(url, rows // 2, "public.near_points", 100_000, "public.near_polygons", 500.0)
        print(f"inputs made in {time.perf_counter() - started:.0f} s", flush=True)
        params = {
            "clip": {"input_table": "public.clip_points", "clip_table": "public.clip_polygons",
                     "overwrite": True, "output_table": "results.scale_clip"},
            "nearest": {"input_table": "public.near_points",
                        "near_table": "public.near_polygons", "overwrite": True,
                        "output_table": "results.scale_nearest"},
        }
        for case in CASES:
            for workers in (0, 1, 2):
                row = _run(url, case, params[case], workers)
                results.append(row)
                print(_line(row), flush=True)
    return results


def _line(r: dict[str, Any]) -> str:
    how = "single process" if r["workers"] == 0 else f"dask x{r['workers']}"
    dask = ", ".join(f"{p:.0f}" for p in r["dask_peak_mb"]) or "-"
    task = (f"{r['partitions']} parts, task mean {r['task_mean_s']:.2f} s max "
            f"{r['task_max_s']:.2f} s, phases {r['phases_s']}" if r["task_mean_s"] is not None else "")
    return (f"{r['case']:8} {how:15} job {r['job_s']:8.1f} s  geojobs worker peak "
            f"{r['worker_peak_mb']:7.0f} MB  dask worker peaks [{dask}] MB  {task}")


def report(results: list[dict[str, Any]]) -> str:
    """The side-by-side table, speed-ups and the second-machine estimate."""
    lines = [_line(r) for r in results]
    for case in CASES:
        by = {r["workers"]: r for r in results if r["case"] == case}
        if not {0, 1, 2} <= set(by):
            continue
        est = second_machine(by[1], by[2])
        lines.append(
            f"{case}: 2 workers over 1: {by[1]['job_s'] / by[2]['job_s']:.2f}x (goal >= 1.7x); "
            f"2 workers over single process: {by[0]['job_s'] / by[2]['job_s']:.2f}x; "
            f"largest Dask worker peak {max(by[2]['dask_peak_mb'] + by[1]['dask_peak_mb']):.0f} MB "
            f"(goal <= 1024); a second machine (4 workers), estimated: "
            f"{est['estimated_4_workers_s']:.1f} s ({est['estimated_speedup_over_2']:.2f}x over 2 "
            f"workers; part that does not spread {est['serial_s']:.1f} s, task overhead "
            f"{est['phase_overhead_s']:.1f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=parse_size, default=10_000_000,
                        help="points clipped (nearest uses half as many); default 10M")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"python -m bench.scale --rows {args.rows}; load average {os.getloadavg()}", flush=True)
    results = run(args.rows)
    print(report(results))
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
