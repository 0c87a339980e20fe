"""``python -m bench`` (``make bench``): the queue, the I/O floor and every job type, one run.

Each part prints its table as it finishes; ``--json-dir DIR`` also saves one JSON file per
part. ``--quick`` uses small sizes to check that everything runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from bench import jobs
from bench.database import bench_database, server_versions
from bench.report import machine, package_versions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: check, not measure")
    parser.add_argument("--only", choices=["queue", "io", "jobs"], action="append",
                        help="run only these parts (repeatable)")
    parser.add_argument("--json-dir", type=Path, help="write queue.json, io.json, jobs.json here")
    args = parser.parse_args(argv)
    parts = args.only or ["queue", "io", "jobs"]
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)

    def out(name: str) -> list[str]:
        return ["--json", str(args.json_dir / f"{name}.json")] if args.json_dir else []

    with bench_database() as url:
        server = server_versions(url)
    print(f"machine: {machine()}\nversions: {package_versions()}\nserver: {server}", flush=True)
    for part in ("queue", "io"):
        if part not in parts:
            continue
        if importlib.util.find_spec(f"bench.{part}") is None:
            print(f"(bench.{part} is not there yet: skipped)")
            continue
        module = importlib.import_module(f"bench.{part}")
        module.main([*(["--quick"] if args.quick else []), *out(part)])
    if "jobs" in parts:
        quick = ["--sizes", "1k"] if args.quick else []
        jobs.main([*quick, *out("jobs")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
