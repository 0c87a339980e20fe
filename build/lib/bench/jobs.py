"""``python -m bench.jobs <job_type> --sizes 10k,100k``: one job type's cost at several sizes.

Dispatches to ``bench/job_<job_type>.py``, whose ``run(sizes, database_url) -> list[dict]``
returns one row per case and size (see ``bench/job_dissolve.py``), in a throwaway database.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import bench
from bench.data import parse_sizes
from bench.database import bench_database
from bench.report import print_table, write_json

__all__ = ["job_benchmarks", "load", "run", "main"]

DEFAULT_SIZES = "10k,100k,1M"


def job_benchmarks() -> list[str]:
    """Job types with a benchmark module ``bench/job_<type>.py``."""
    return sorted(m.name[4:] for m in pkgutil.iter_modules(bench.__path__)
                  if m.name.startswith("job_"))


def load(job_type: str) -> ModuleType:
    """The benchmark module of ``job_type``."""
    if job_type not in job_benchmarks():
        raise SystemExit(f"no benchmark for {job_type!r}; have {job_benchmarks()}")
    return importlib.import_module(f"bench.job_{job_type}")


def run(job_type: str, sizes: Sequence[int], database_url: str | None = None,
        *, keep: bool = False) -> list[dict[str, Any]]:
    """Run one job type's benchmark in a fresh database (or ``database_url`` as it is)."""
    module = load(job_type)
    if database_url is not None:
        return list(module.run(list(sizes), database_url))
    with bench_database(keep=keep) as url:
        return list(module.run(list(sizes), url))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__)
    parser.add_argument("job_type", nargs="?", help=f"one of {job_benchmarks()}; all if omitted")
    parser.add_argument("--sizes", default=None,
                        help=f"comma-separated sizes, e.g. 10k,100k,1M (default: the module's "
                             f"SIZES or {DEFAULT_SIZES})")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for job_type in [args.job_type] if args.job_type else job_benchmarks():
        module = load(job_type)
        sizes = parse_sizes(args.sizes or getattr(module, "SIZES", DEFAULT_SIZES))
        found = run(job_type, sizes, keep=args.keep)
        print_table(f"{job_type} (sizes {', '.join(f'{s:,}' for s in sizes)})", found,
                    getattr(module, "COLUMNS", None))
        rows.extend(found)
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
