"""The ``geojobs`` command: database, job types, jobs, workers and the demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from geojobs import db, formats, health, janitor, pipelines, queue, registry, rerun, top, units
from geojobs.config import lease_seconds
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
    _check_limit("--timeout-seconds", args.timeout_seconds, 1, 604800)
    _check_limit("--memory-limit-mb", args.memory_limit_mb, 64, 262144)
    if args.idempotency_key is not None and not 1 <= len(args.idempotency_key) <= 255:
        raise GeojobsError("--idempotency-key: must be 1 to 255 characters")
    with db.connect() as conn:
        if args.timeout_seconds or args.memory_limit_mb or args.idempotency_key:
            job_id, new = queue.enqueue_controlled(
                conn, args.job_type, params, priority=args.priority,
                max_attempts=args.max_attempts, timeout_seconds=args.timeout_seconds,
                memory_limit_mb=args.memory_limit_mb, idempotency_key=args.idempotency_key)
            if not new:
                print(f"idempotency key already used: job {job_id}", file=sys.stderr)
        else:
            job_id = queue.enqueue(conn, args.job_type, params, priority=args.priority,
                                   max_attempts=args.max_attempts)
        print(job_id)
        if args.wait:
            if queue.live_workers(conn, args.job_type, lease_seconds()) == 0:
                from geojobs.client import no_worker_message  # loads geopandas: only here

                print(f"{no_worker_message(args.job_type)} (the job stays queued)", file=sys.stderr)
            return _follow(conn, job_id)
    return 0


def _check_limit(flag: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise GeojobsError(f"{flag}: {value} is outside {low}..{high}")


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


def cmd_export(args: argparse.Namespace) -> int:
    """Write a job's result table (or ``--table``) to a file, as the API's downloads do."""
    from geojobs import export  # the writers (pyarrow, pyogrio, ADBC): only for this command

    fmt_name = args.format or Path(args.output).suffix.lstrip(".").replace("geoparquet", "parquet")
    fmt = formats.check_format(fmt_name, field="--format")
    if (args.job_id is None) == (args.table is None):
        raise GeojobsError("export needs either JOB_ID or --table (not both)", field="JOB_ID")
    path = Path(args.output)
    if path.exists() and not args.overwrite:
        raise GeojobsError(f"-o: {path} exists; pass --overwrite to replace it", field="-o")
    with db.connect() as conn:
        metadata: dict[str, str] = {}
        table = args.table
        if args.job_id is not None:
            job = queue.get(conn, args.job_id)
            if job is None:
                raise GeojobsError(f"JOB_ID: no job {args.job_id}", field="JOB_ID")
            if job["status"] != "completed":
                raise GeojobsError(f"JOB_ID: job {args.job_id} is {job['status']}, not completed",
                                   field="JOB_ID")
            table = formats.result_table(job.get("result"))
            if table is None:
                raise GeojobsError(f"JOB_ID: job {args.job_id} wrote no table", field="JOB_ID")
            metadata = formats.provenance(job)
        path.unlink(missing_ok=True)
        try:
            count = export.export_table(conn, table, fmt, path, metadata,
                                        field="--table" if args.table else "JOB_ID")
        except BaseException:
            path.unlink(missing_ok=True)  # no half-written file is left behind
            raise
    print(f"wrote {count} features of {table} to {path}")
    return 0


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
            worker = queue.worker_of_job(conn, args.id)
            host = worker["host"] if worker else (job["worker_id"] or "").split(":")[0] or None
            _print_json({**job, "worker": worker, "host": host})
            return 0
        if args.action == "rerun":
            print(rerun.rerun(conn, args.id, args.set))
            return 0
        if args.set:
            raise GeojobsError(f"--set: only for jobs rerun, not jobs {args.action}", field="--set")
        if args.action in ("pin", "unpin"):
            if not queue.pin(conn, args.id, args.action == "pin"):
                raise GeojobsError(f"no job {args.id}", field="ID")
            print(f"job {args.id} {args.action}ned")
            return 0
        done = (queue.cancel if args.action == "cancel" else queue.retry)(conn, args.id)
        state = "queued or running" if args.action == "cancel" else "failed or cancelled"
        print(f"job {args.id} {args.action}{'led' if args.action == 'cancel' else ' queued'}"
              if done else f"job {args.id} is not {state}")
        return 0 if done else 1


def cmd_workers(args: argparse.Namespace) -> int:
    """The registered workers: live (seen within the lease) or stale."""
    with db.connect() as conn:
        workers = queue.list_workers(conn)
    live = lease_seconds()
    print(f"{'worker':<34} {'type':<18} {'state':<6} {'seen':>6} {'jobs':>6} {'MB':>6}  job")
    for w in workers:
        state = "live" if w["seen_seconds_ago"] <= live else "stale"
        print(f"{w['worker_id']:<34} {w['job_type']:<18} {state:<6} "
              f"{w['seen_seconds_ago']:>5.0f}s {w['jobs_run']:>6} {w['rss_mb'] or 0:>6.0f}  "
              f"{w['current_job'] or ''}")
    return 0


def cmd_janitor(args: argparse.Namespace) -> int:
    """One retention pass: expired outputs dropped, old finished jobs deleted."""
    with db.connect() as conn:
        report = janitor.run_janitor(conn)
    print(f"outputs of {len(report.jobs_expired)} job(s) dropped "
          f"({len(report.dropped)} tables/views, {len(report.files_removed)} files); "
          f"{len(report.jobs_deleted)} job row(s) deleted; "
          f"{len(report.scratch_removed)} orphan scratch director(ies) removed")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    with db.connect() as conn:
        if args.action == "submit":
            pipeline_id, jobs = pipelines.submit(conn, pipelines.load_spec(args.target), args.set)
        elif args.action == "rerun":
            if not args.from_step:
                raise GeojobsError("pipeline rerun needs --from STEP")
            pipeline_id, jobs = pipelines.rerun(conn, _pipeline_id(args.target), args.from_step,
                                                args.set)
        elif args.action == "cancel":
            cancelled = pipelines.cancel(conn, _pipeline_id(args.target))
            print(f"cancelled jobs: {' '.join(map(str, cancelled)) or 'none (all had ended)'}")
            return 0
        else:
            run = pipelines.show(conn, _pipeline_id(args.target))
            if args.json:
                _print_json(run)
            else:
                print(pipelines.format_tree(run))
            return 0
        print(f"pipeline {pipeline_id}")
        for step, job_id in jobs.items():
            print(f"{step} {job_id}")
        if args.wait:
            run = pipelines.wait(conn, pipeline_id)
            print(pipelines.format_tree(run), file=sys.stderr)
            return 0 if run["status"] == "completed" else 1
    return 0


def _pipeline_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise GeojobsError(f"pipeline id must be a number, got {text!r}") from None


def cmd_worker(args: argparse.Namespace) -> int:
    registry.load(args.job_type)
    return run_worker(args.job_type, args)


def cmd_warm(args: argparse.Namespace) -> int:
    """Run every job type's warm-up once, so that numba's on-disk cache is built at install
    time and no worker on this host compiles at its first start."""
    for name in args.job_types:
        if name not in registry.JOB_TYPES:
            raise GeojobsError(f"job_types: unknown job type {name!r}; known: {registry.names()}")
    for name in args.job_types or registry.names():
        jobtype = registry.load(name)
        if jobtype.warm_up is None:
            continue
        started = time.perf_counter()
        jobtype.warm_up()
        print(f"{name}: warm in {time.perf_counter() - started:.1f} s")
    return 0


def _job_types(values: list[str] | None) -> list[str] | None:
    """The --type filters, each checked against the registry."""
    for value in values or []:
        if value not in registry.JOB_TYPES:
            raise GeojobsError(f"--type: unknown job type {value!r}; known: {registry.names()}")
    return values or None


def cmd_health(args: argparse.Namespace) -> int:
    verdict = health.check(job_types=_job_types(args.type))
    if args.json:
        _print_json(verdict.as_dict())
    else:
        print(verdict.line())
    return verdict.code


def cmd_top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise GeojobsError(f"--interval: must be above 0 seconds, got {args.interval}")
    return top.run_top(job_types=_job_types(args.type), interval=args.interval, once=args.once)


def cmd_demo(args: argparse.Namespace) -> int:
    from geojobs.demo import run_demo

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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    # With --workers N, uvicorn kills a child that does not answer its health check within
    # timeout_worker_healthcheck (default 5 s), which a child still starting up (imports) on a
    # loaded host cannot do: it then restarts children forever. 60 s. The HTTP protocol writes a
    # response's head and body at once (geojobs.api.http).
    uvicorn.run("geojobs.api:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, proxy_headers=False,
                timeout_worker_healthcheck=60, http="geojobs.api.http:CoalescingHttpProtocol")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from geojobs.api import keys

    with db.connect() as conn:
        if args.action == "list":
            for row in keys.list_keys(conn):
                state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
                print(f"{row['name']:<24} {'admin' if row['admin'] else 'user':<6} {state}")
            return 0
        if not args.name:
            raise GeojobsError(f"keys {args.action} needs a NAME")
        if args.action == "create":
            print(keys.create_key(conn, args.name, admin=args.admin))
            print(f"(the key of {args.name}; it is shown only now)", file=sys.stderr)
            return 0
        if keys.revoke_key(conn, args.name):
            print(f"revoked the key of {args.name}")
            return 0
        print(f"no active key named {args.name}", file=sys.stderr)
        return 1


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
    p_enq.add_argument("--timeout-seconds", type=int,
                       help="stop and fail the job past this (default per job type)")
    p_enq.add_argument("--memory-limit-mb", type=int,
                       help="stop and fail the job past this resident memory "
                            "(default GEOJOBS_JOB_MEMORY_MB)")
    p_enq.add_argument("--idempotency-key", help="a second enqueue with this key returns the "
                       "first job")
    p_enq.set_defaults(func=cmd_enqueue)

    p_jobs = sub.add_parser("jobs", help="list, show, retry, cancel, pin or re-run jobs")
    p_jobs.add_argument("action", choices=["list", "show", "retry", "cancel", "pin", "unpin",
                                           "rerun"])
    p_jobs.add_argument("id", type=int, nargs="?", metavar="ID")
    p_jobs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="rerun: change a parameter (KEY may be dotted: weights.type=rook; "
                             "VALUE as JSON, else a string)")
    p_jobs.add_argument("--status")
    p_jobs.add_argument("--type")
    p_jobs.add_argument("--limit", type=int, default=50)
    p_jobs.set_defaults(func=cmd_jobs)

    p_pipe = sub.add_parser("pipeline", help="submit, show, re-run or cancel a pipeline of jobs")
    p_pipe.add_argument("action", choices=["submit", "show", "rerun", "cancel"])
    p_pipe.add_argument("target", help="spec file (.json, .yaml) for submit, else pipeline id")
    p_pipe.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                        help="override a step parameter (value as JSON, else a string)")
    p_pipe.add_argument("--from", dest="from_step", metavar="STEP",
                        help="rerun: the step to run again, with everything downstream")
    p_pipe.add_argument("--wait", action="store_true", help="submit/rerun: wait until it ends")
    p_pipe.add_argument("--json", action="store_true", help="show: as JSON")
    p_pipe.set_defaults(func=cmd_pipeline)

    p_workers = sub.add_parser("workers", help="registered workers, live or stale")
    p_workers.set_defaults(func=cmd_workers)

    p_janitor = sub.add_parser("janitor", help="drop expired outputs, delete old finished jobs")
    p_janitor.set_defaults(func=cmd_janitor)

    p_worker = sub.add_parser("worker", help="run a worker for one job type")
    p_worker.add_argument("job_type")
    add_worker_arguments(p_worker)
    p_worker.set_defaults(func=cmd_worker)

    p_health = sub.add_parser("health", help="OK/WARNING/CRITICAL with reasons; exits 0/1/2 "
                              "(Nagios plugin convention)")
    p_health.add_argument("--type", action="append", help="only this job type (repeatable)")
    p_health.add_argument("--json", action="store_true", help="the same document as GET /health")
    p_health.set_defaults(func=cmd_health)

    p_top = sub.add_parser("top", help="live view of workers, running jobs, queues and failures")
    p_top.add_argument("--type", action="append", help="only this job type (repeatable)")
    p_top.add_argument("--interval", type=float, default=1.0,
                       help="seconds between redraws when no notification arrives (default 1)")
    p_top.add_argument("--once", action="store_true", help="print one screen and exit")
    p_top.set_defaults(func=cmd_top)

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
    p_export = sub.add_parser("export", help="write a job's result table to a file "
                              "(gpkg, parquet, fgb, geojson, csv)")
    p_export.add_argument("job_id", nargs="?", type=int, metavar="JOB_ID",
                          help="a completed job whose result table to export")
    p_export.add_argument("--table", help="export this table or view instead (schema.name)")
    p_export.add_argument("--format", choices=sorted(formats.FORMATS),
                          help="file format (default: from the -o suffix)")
    p_export.add_argument("-o", "--output", required=True, help="the file to write")
    p_export.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p_export.set_defaults(func=cmd_export)

    p_serve = sub.add_parser("serve", help="serve the HTTP API (OGC API - Processes)")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p_serve.add_argument("--log-level", default="info")
    p_serve.set_defaults(func=cmd_serve)

    p_keys = sub.add_parser("keys", help="API users and their keys")
    p_keys.add_argument("action", choices=["create", "list", "revoke"])
    p_keys.add_argument("name", nargs="?")
    p_keys.add_argument("--admin", action="store_true", help="the user sees every job")
    p_keys.set_defaults(func=cmd_keys)

    p_warm = sub.add_parser("warm", help="build the numba caches of the job types that have "
                            "kernels (run once after installing, as make install does)")
    p_warm.add_argument("job_types", nargs="*", help="job types (default: all)")
    p_warm.set_defaults(func=cmd_warm)

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
