"""The ``geojobs`` command: database, job types, jobs, workers and the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from geojobs import db, queue, registry, units
from geojobs.demo import run_demo
from geojobs.errors import GeojobsError
from geojobs.params import validate_params
from geojobs.report import describe_types, print_jobs
from geojobs.worker_cli import add_worker_arguments, run_worker

FINAL = {"completed", "failed", "cancelled"}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    if db.ensure_database():
        print("created the database")
    with db.connect() as conn:
        applied = db.upgrade(conn)
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_types(args: argparse.Namespace) -> int:
    jobtypes = [registry.load(name) for name in registry.names()]
    if args.json:
        _print_json([{"job_type": t.JOB_TYPE, "summary": t.summary, "description": t.description,
                      "params_schema": t.params_schema(), "example": t.EXAMPLE,
                      "parameters": [dataclasses.asdict(p) for p in t.parameters()]}
                     for t in jobtypes])
    else:
        print(describe_types(jobtypes), end="")
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    jobtype = registry.load(args.job_type)
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise GeojobsError(f"--params is not valid JSON: {exc}") from None
    validate_params(jobtype.Params, params)  # fail here, before the job is queued
    with db.connect() as conn:
        job_id = queue.enqueue(conn, args.job_type, params, priority=args.priority,
                               max_attempts=args.max_attempts)
        print(job_id)
        if args.wait:
            return _follow(conn, job_id)
    return 0


def _follow(conn: Any, job_id: int) -> int:
    """Show a job's progress until it ends; exit 0 only if it completed."""
    last = None
    while True:
        job = queue.get(conn, job_id)
        assert job is not None
        line = f"job {job_id} {job['status']} {100 * (job['progress'] or 0):5.1f}%"
        if line != last:
            bar = "#" * int(30 * (job["progress"] or 0))
            print(f"\r{line} [{bar:<30}]", end="", file=sys.stderr, flush=True)
            last = line
        if job["status"] in FINAL:
            print(file=sys.stderr)
            _print_json({k: job[k] for k in ("status", "result", "error")})
            return 0 if job["status"] == "completed" else 1
        time.sleep(0.25)


def cmd_jobs(args: argparse.Namespace) -> int:
    with db.connect() as conn:
        if args.action == "list":
            print_jobs(queue.list_jobs(conn, status=args.status, job_type=args.type,
                                       limit=args.limit))
            return 0
        if args.id is None:
            raise GeojobsError(f"jobs {args.action} needs a job id")
        if args.action == "show":
            job = queue.get(conn, args.id)
            if job is None:
                raise GeojobsError(f"no job {args.id}")
            _print_json(job)
            return 0
        done = (queue.cancel if args.action == "cancel" else queue.retry)(conn, args.id)
        state = "queued or running" if args.action == "cancel" else "failed or cancelled"
        print(f"job {args.id} {args.action}{'led' if args.action == 'cancel' else ' queued'}"
              if done else f"job {args.id} is not {state}")
        return 0 if done else 1


def cmd_worker(args: argparse.Namespace) -> int:
    registry.load(args.job_type)
    return run_worker(args.job_type, args)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo()


def cmd_units(args: argparse.Namespace) -> int:
    options = {"prefix": args.prefix, "user": args.user, "python": args.python}
    try:
        if args.action == "render" and args.output is None:
            for name, text in units.render_all(**options).items():
                print(f"# --- {name} ---\n{text}")
            return 0
        if args.action == "render":
            written = units.write_units(args.output, **options)
        else:
            written = units.install(args.output or units.SYSTEM_DIR, **options)
    except ValueError as exc:
        raise GeojobsError(str(exc)) from None
    for path in written:
        print(path)
    if args.action == "install":
        names = " ".join(p.stem for p in written)
        print(f"enable and start the workers you need: systemctl enable --now {names}",
              file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geojobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_db = sub.add_parser("db", help="database schema")
    p_db.add_argument("action", choices=["upgrade"])
    p_db.set_defaults(func=cmd_db_upgrade)

    p_types = sub.add_parser("types", help="job types, their parameter schemas and examples")
    p_types.add_argument("--json", action="store_true", help="JSON Schema of every job type")
    p_types.set_defaults(func=cmd_types)

    p_enq = sub.add_parser("enqueue", help="queue a job")
    p_enq.add_argument("job_type")
    p_enq.add_argument("--params", default="{}", help="parameters as a JSON object")
    p_enq.add_argument("--priority", type=int, default=0)
    p_enq.add_argument("--max-attempts", type=int, default=4)
    p_enq.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p_enq.set_defaults(func=cmd_enqueue)

    p_jobs = sub.add_parser("jobs", help="list, show, retry or cancel jobs")
    p_jobs.add_argument("action", choices=["list", "show", "retry", "cancel"])
    p_jobs.add_argument("id", type=int, nargs="?")
    p_jobs.add_argument("--status")
    p_jobs.add_argument("--type")
    p_jobs.add_argument("--limit", type=int, default=50)
    p_jobs.set_defaults(func=cmd_jobs)

    p_worker = sub.add_parser("worker", help="run a worker for one job type")
    p_worker.add_argument("job_type")
    add_worker_arguments(p_worker)
    p_worker.set_defaults(func=cmd_worker)

    p_units = sub.add_parser("units", help="systemd units: render them, or install them on this host")
    p_units.add_argument("action", choices=["render", "install"],
                         help="render: print them (or write them to --output); install: write them "
                              "to /etc/systemd/system (or --output) and reload systemd")
    p_units.add_argument("--prefix", default=units.DEFAULT_PREFIX,
                         help=f"install directory (default {units.DEFAULT_PREFIX})")
    p_units.add_argument("--user", default=units.DEFAULT_USER,
                         help=f"account the services run as (default {units.DEFAULT_USER})")
    p_units.add_argument("--python", help="interpreter with geojobs installed "
                                          "(default PREFIX/.venv/bin/python)")
    p_units.add_argument("--output", type=Path, help="directory to write the unit files to")
    p_units.set_defaults(func=cmd_units)

    p_demo = sub.add_parser("demo", help="load sample data, queue jobs, run them, show them")
    p_demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GeojobsError as exc:
        print(f"geojobs: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
