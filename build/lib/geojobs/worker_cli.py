"""Command line of one worker: ``python -m workers.<type> [--drain] [--once]``.

``geojobs worker <type>`` and the systemd units start workers through :func:`run_worker` too,
so every worker runs its job type's ``warm_up`` hook before it claims a job.
"""

from __future__ import annotations

import argparse
import sys

from geojobs import registry
from geojobs.logs import setup_logging
from geojobs.runner import Worker, WorkerSettings

__all__ = ["add_worker_arguments", "run_worker", "main"]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every worker takes (shared by ``geojobs worker``)."""
    parser.add_argument("--drain", action="store_true", help="exit 0 when no job is ready")
    parser.add_argument("--once", action="store_true", help="run at most one job, then exit")
    parser.add_argument("--memory-cap-mb", type=float, help="exit after a job past this RSS "
                        "(env GEOJOBS_MEMORY_CAP_MB, default 1024)")
    parser.add_argument("--poll-interval", type=float, help="seconds between polls when no "
                        "notification arrives (env GEOJOBS_POLL_INTERVAL, default 5)")
    parser.add_argument("--log-file", action="store_true", help="also log to logs/worker_<type>.log")


def run_worker(job_type: str, args: argparse.Namespace) -> int:
    """Warm the job type up, build the worker from parsed flags and run it; returns the exit
    code."""
    jobtype = registry.load(job_type)
    setup_logging(job_type, log_file=args.log_file)
    if jobtype.warm_up is not None:
        jobtype.warm_up()
    settings = WorkerSettings(job_type=job_type)
    if args.memory_cap_mb is not None:
        settings.memory_cap_mb = args.memory_cap_mb
    if args.poll_interval is not None:
        settings.poll_interval = args.poll_interval
    return Worker(settings).run(drain=args.drain, once=args.once, handle_signals=True)


def main(job_type: str, argv: list[str] | None = None) -> int:
    """Entry point of ``python -m workers.<job_type>``."""
    parser = argparse.ArgumentParser(prog=f"python -m workers.{job_type}",
                                     description=f"Run a {job_type} worker.")
    add_worker_arguments(parser)
    return run_worker(job_type, parser.parse_args(sys.argv[1:] if argv is None else argv))
