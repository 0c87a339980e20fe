"""``python -m bench.provenance --base DIR``: where a job's provenance time goes, this tree
against another checkout, the same job interleaved.

Loads the 100k hexagons of ``bench/job_dissolve.py`` (50 groups) once in a throwaway database,
then runs one ``dissolve`` job at a time with ``python -m workers.dissolve --once`` from this
tree and from ``--base`` (a ``git worktree`` of the code to compare), alternately (ABBA), and
reads what each job recorded: its time claim to completion (``finished_at - started_at``) and
its provenance timings (``run_seconds`` of the handler, ``provenance_seconds`` after it,
``fingerprint_seconds`` and ``fingerprint_wait_seconds`` of fingerprints read beside the job).
Both trees use this interpreter.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.data import hex_grid, load_layer, parse_size
from bench.database import bench_database
from bench.report import report
from geojobs import queue

__all__ = ["COLUMNS", "run", "main"]

COLUMNS = ["round", "tree", "load", "job_s", "run_s", "provenance_s", "fingerprint_s",
           "fingerprint_wait_s", "as_of", "signature"]
ROOT = Path(__file__).resolve().parents[1]
GROUPS = 50


def _one(url: str, tree: Path, table: str) -> dict[str, Any]:
    """Run one dissolve job of ``table`` with the worker of ``tree``; what it recorded."""
    with psycopg.connect(url, autocommit=True) as conn:
        job_id = queue.enqueue(conn, "dissolve", {
            "input_table": table, "by": ["grp"], "output_table": "results.bench_provenance",
            "overwrite": True}, max_attempts=1)
    load = os.getloadavg()[0]
    env = dict(os.environ, DATABASE_URL=url, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-m", "workers.dissolve", "--once"], cwd=tree, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    with psycopg.connect(url, autocommit=True) as conn:
        row = queue.get(conn, job_id) or {}
    if row.get("status") != "completed":
        raise RuntimeError(f"job {job_id} ended {row.get('status')!r}: {row.get('error')}")
    prov = row["result"]["provenance"]
    timings = prov["timings"]
    source = prov["inputs"][0]
    return {"load": load, "job_s": (row["finished_at"] - row["started_at"]).total_seconds(),
            "run_s": timings["run_seconds"], "provenance_s": timings["provenance_seconds"],
            "fingerprint_s": timings.get("fingerprint_seconds"),
            "fingerprint_wait_s": timings.get("fingerprint_wait_seconds"),
            "as_of": source.get("as_of"), "signature": source["signature"]}


def run(base: Path, size: int, rounds: int, database_url: str) -> list[dict[str, Any]]:
    """``rounds`` rounds of one job per tree, the order alternating; one row per job."""
    table = f"public.bench_dissolve_{size}"
    load_layer(database_url, hex_grid(size, groups=GROUPS, seed=size), table)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON {} TO geojobs_worker").format(
            sql.Identifier(*table.split("."))))
    trees = [("base", base), ("this tree", ROOT)]
    rows = []
    for i in range(rounds):
        for name, tree in trees if i % 2 == 0 else trees[::-1]:
            rows.append({"round": i, "tree": name, **_one(database_url, tree, table)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provenance", description=__doc__)
    parser.add_argument("--base", required=True, type=Path,
                        help="checkout of the code to compare (e.g. a git worktree of main)")
    parser.add_argument("--size", default="100k", help="hexagons (default 100k)")
    parser.add_argument("--rounds", type=int, default=4, help="jobs per tree (default 4)")
    args = parser.parse_args(argv)
    with bench_database() as url:
        rows = run(args.base.resolve(), parse_size(args.size), args.rounds, url)
    report("provenance: dissolve jobs, base and this tree interleaved", rows, COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
