"""Benchmarks: queue speed against procrastinate and PgQueuer, the PostGIS I/O floor, job costs.

Runnable modules: ``python -m bench`` (everything, as ``make bench``), ``python -m bench.queue``,
``python -m bench.io``, ``python -m bench.jobs <job_type> --sizes 10k,100k``. Shared pieces:
:mod:`bench.data` (seeded inputs), :mod:`bench.measure` (wall time, peak memory),
:mod:`bench.database` (throwaway databases), :mod:`bench.report` (tables and JSON).
"""

__all__: list[str] = []
