"""``python -m bench.metrics``: the cost of one Prometheus scrape over a large job history.

Fills a throwaway database with finished jobs (default 1,000,000: 90 % completed, 8 % failed,
2 % cancelled, over 10 job types and 30 days, the last minute included), 1,000 queued and 20
running jobs, then times side by side:

- folding the whole history into ``geojobs_metrics_finished`` (what migration 0007b does once,
  on upgrade);
- steady scrapes (``geojobs.metrics.render``: the fold of the last seconds, every query and the
  text rendering), as Prometheus sees them every 15 s;
- the same figures computed naively from the whole table (GROUP BY over every row), the
  alternative the fold replaces.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from bench.database import bench_database
from geojobs import metrics, registry

__all__ = ["fill", "main"]

NAIVE = """
SELECT job_type, status, count(*),
       count(*) FILTER (WHERE extract(epoch FROM finished_at - started_at) <= 1),
       count(*) FILTER (WHERE extract(epoch FROM finished_at - started_at) <= 10),
       count(*) FILTER (WHERE extract(epoch FROM finished_at - started_at) <= 60),
       count(*) FILTER (WHERE extract(epoch FROM finished_at - started_at) <= 600),
       sum(extract(epoch FROM finished_at - started_at))
FROM background_jobs GROUP BY job_type, status
"""


def fill(conn: psycopg.Connection[Any], rows: int) -> None:
    """Insert ``rows`` finished jobs (the newest ``rows // 1000`` in the last minute) and a live queue."""
    types = registry.names()
    conn.execute("""
        INSERT INTO background_jobs (job_type, status, attempts, created_at, started_at,
                                     finished_at, progress, error)
        SELECT (%(types)s::text[])[1 + i %% cardinality(%(types)s::text[])],
               CASE WHEN i %% 50 = 0 THEN 'cancelled' WHEN i %% 100 < 8 THEN 'failed'
                    ELSE 'completed' END,
               1, f - d - interval '1 second', f - d, f, 1,
               CASE WHEN i %% 100 < 8 THEN 'RuntimeError: synthetic' END
        FROM generate_series(1, %(rows)s) AS i,
             LATERAL (SELECT CASE WHEN i > %(rows)s - %(recent)s
                                  THEN now() - random() * interval '50 seconds'
                                  ELSE now() - interval '2 minutes' - random() * interval '30 days'
                             END AS f,
                             (random() ^ 3) * interval '2 hours' AS d) AS t
    """, {"types": types, "rows": rows, "recent": max(1, rows // 1000)})
    conn.execute("""
        INSERT INTO background_jobs (job_type, status, attempts, started_at, heartbeat_at, progress)
        SELECT (%(types)s::text[])[1 + i %% cardinality(%(types)s::text[])], 'running', 1,
               now() - interval '1 minute', now(), 0.5
        FROM generate_series(1, 20) AS i
    """, {"types": types})
    conn.execute("""
        INSERT INTO background_jobs (job_type, available_at)
        SELECT (%(types)s::text[])[1 + i %% cardinality(%(types)s::text[])],
               now() - (i %% 600) * interval '1 second'
        FROM generate_series(1, 1000) AS i
    """, {"types": types})
    conn.execute("VACUUM ANALYZE background_jobs")


def _times(call: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished jobs (default 1e6)")
    parser.add_argument("--repeat", type=int, default=30, help="steady scrapes timed")
    parser.add_argument("--quick", action="store_true", help="10,000 rows, 5 scrapes")
    args = parser.parse_args(argv)
    rows, repeat = (10_000, 5) if args.quick else (args.rows, args.repeat)
    with bench_database() as url, psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        fill(conn, rows)
        print(f"filled {rows:,} finished jobs in {time.perf_counter() - started:.1f} s", flush=True)
        first = _times(lambda: conn.execute("SELECT geojobs_metrics_fold(60, NULL)"), 1)[0]
        folded = conn.execute("SELECT sum(jobs) FROM geojobs_metrics_finished").fetchone()[0]
        steady = _times(lambda: metrics.render(conn), repeat)
        naive = _times(lambda: conn.execute(NAIVE).fetchall(), max(3, repeat // 5))
        size = len(metrics.render(conn))
        print(f"\nscrape of {rows:,} finished jobs ({folded:,} folded once, "
              f"exposition {size:,} bytes)")
        print(f"{'what':<44} {'median ms':>10} {'p95 ms':>8} {'runs':>5}")
        for name, times in (("fold of the whole history (on upgrade)", [first]),
                            ("steady scrape: geojobs.metrics.render", steady),
                            ("naive GROUP BY over the whole table", naive)):
            p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
            print(f"{name:<44} {statistics.median(times):>10.1f} {p95:>8.1f} {len(times):>5}")
        print(f"\nnaive / steady (medians): {statistics.median(naive) / statistics.median(steady):.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
