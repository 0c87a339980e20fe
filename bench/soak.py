"""Chaos soak: many workers, thousands of jobs, kills, stops and a database outage; nothing lost.

A supervisor (standing in for systemd: ``Restart=always``, ``RestartSec``) keeps worker
processes of several job types running against one database, logged in as ``geojobs_worker``;
the jobs are queued as ``geojobs_frontend``. While they work it SIGKILLs a random worker (of
those that got through their start) every few seconds, SIGTERMs another now and then, and once,
midway, takes the database away: a real PostgreSQL restart (``--outage restart``, ``make soak``)
or, on the soak's own database only, ``pg_terminate_backend`` of every worker connection
(``--outage terminate``, the short soak in ``make test``). With ``--pgbouncer`` the workers and
the front end go through a PgBouncer of the soak's own in transaction pooling mode (LISTEN over
a direct ``GEOJOBS_LISTEN_URL``, or polling with ``--no-listen``), and the outage is that
PgBouncer stopped and started again (``--outage proxy``). Then it checks, from the job rows, the
result tables and the workers' logs:

- every job is final (``completed``, or ``failed`` with its error); attempts <= max_attempts;
- no job ran on two workers at once (each run's start and end, per worker and attempt, read
  from the worker logs; a killed worker's run ends when the supervisor reaped it);
- every completed dissolve has its whole result table (rows and area sum against SQL), and no
  result table exists without its completed job;
- no worker exited except when killed, stopped or past its memory cap (no crash loop);
- running jobs cancelled by the front end (``geojobs_cancel``) end ``cancelled`` and their
  work stops within 2 s (the worker's "stopped" log line against the time of the cancel);
  jobs stuck in one SQL statement past their ``timeout_seconds`` end ``failed``,
  ``timed out after N s``.

``python -m bench.soak`` prints the figures; ``--full`` is the run whose figures are in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

__all__ = ["SoakConfig", "SoakReport", "run_soak", "run_soak_via_pgbouncer", "SHORT", "FULL"]

ROOT = Path(__file__).resolve().parents[1]
FINAL = ("completed", "failed", "cancelled")
WORKER_ROLE, FRONTEND_ROLE = "geojobs_worker", "geojobs_frontend"
DISSOLVE = {"input_table": "public.us_states", "by": ["sub_region"],
            "aggregates": {"area": "sum", "state_name": "count"}}


@dataclass
class SoakConfig:
    """What the soak does; see ``SHORT`` and ``FULL``."""

    jobs: int = 2000
    mix: dict[str, float] = field(default_factory=lambda: {
        "quick": 0.58, "dissolve": 0.20, "raises": 0.04, "bad_params": 0.04, "memory": 0.02,
        "slow": 0.06, "cancel": 0.03, "timeout": 0.03})
    workers: dict[str, int] = field(default_factory=lambda: {"noop": 4, "dissolve": 2})
    memory_cap_mb: dict[str, float] = field(default_factory=lambda: {"noop": 120, "dissolve": 400})
    job_memory_mb: dict[str, float] = field(default_factory=lambda: {"noop": 400, "dissolve": 800})
    allocate_mb: int = 160
    timeout_seconds: int = 1
    slow_seconds: tuple[float, float] = (1.0, 3.0)
    kill_every: float = 3.0
    term_every: float = 8.0
    outage: str = "restart"  # restart | terminate | proxy (PgBouncer restarted) | none
    outage_at: float = 0.5  # fraction of jobs final when the outage comes
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 1.0
    grace_seconds: float = 2.0
    restart_sec: float = 0.5
    retry_delays: str = "0.2,0.5,1"
    deadline: float = 900.0
    seed: int = 9
    pg_cluster: tuple[str, str] = ("15", "main")


SHORT = SoakConfig(jobs=160, workers={"noop": 2, "dissolve": 1}, kill_every=2.5, term_every=6.0,
                   outage="terminate", lease_seconds=3.0, heartbeat_seconds=0.5,
                   grace_seconds=1.0, slow_seconds=(0.5, 1.5), deadline=120.0)
FULL = SoakConfig()


@dataclass
class SoakReport:
    """The soak's figures and the problems it found (``ok`` when there are none)."""

    config: dict[str, Any]
    seconds: float = 0.0
    jobs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    runs: int = 0
    sigkills: int = 0
    sigterms: int = 0
    memory_exits: int = 0
    worker_starts: int = 0
    outage: str = "none"
    outage_seconds: float = 0.0
    cancels: int = 0
    cancel_stop_max_seconds: float = 0.0
    late_cancels: list[str] = field(default_factory=list)
    reconnect_warnings: int = 0
    heartbeat_warnings: int = 0
    max_attempts_seen: int = 0
    lost: list[int] = field(default_factory=list)
    double_runs: list[str] = field(default_factory=list)
    over_attempts: list[int] = field(default_factory=list)
    failed_without_error: list[int] = field(default_factory=list)
    bad_results: list[str] = field(default_factory=list)
    orphan_tables: list[str] = field(default_factory=list)
    unexpected_outcomes: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.double_runs or self.over_attempts or self.failed_without_error
                    or self.bad_results or self.orphan_tables or self.unexpected_outcomes
                    or self.unexpected_exits or self.late_cancels)

    def summary(self) -> str:
        figures = {k: v for k, v in asdict(self).items() if k != "config"}
        for key in ("lost", "double_runs", "over_attempts", "failed_without_error", "bad_results",
                    "orphan_tables", "unexpected_outcomes", "unexpected_exits", "late_cancels"):
            figures[key] = len(figures[key])
        return json.dumps({"ok": self.ok, **figures}, indent=1, default=str)


# -- the jobs --------------------------------------------------------------------------------


def _job(kind: str, rng: random.Random, config: SoakConfig) -> tuple[str, dict[str, Any]]:
    if kind == "quick":
        return "noop", {"sleep_seconds": round(rng.uniform(0.0, 0.03), 3)}
    if kind == "dissolve":
        return "dissolve", DISSOLVE
    if kind == "raises":
        return "noop", {"raise_error": "soak: a job that always fails"}
    if kind == "bad_params":
        return "dissolve", {**DISSOLVE, "by": ["no_such_column"]}
    if kind == "memory":
        return "noop", {"allocate_mb": config.allocate_mb}
    if kind == "cancel":  # one long sleep with no progress check: only a kill stops it
        return "noop", {"sleep_seconds": 60}
    if kind == "timeout":  # one SQL statement far longer than its timeout
        return "noop", {"sql_sleep_seconds": 60}
    seconds = round(rng.uniform(*config.slow_seconds), 2)
    return "noop", {"sleep_seconds": seconds, "steps": max(1, int(seconds * 10))}


def _enqueue(url: str, config: SoakConfig, rng: random.Random) -> dict[int, str]:
    """Queue the jobs as the front-end role; returns job id -> kind."""
    kinds = [k for k, share in config.mix.items() for _ in range(round(share * config.jobs))]
    kinds += ["quick"] * (config.jobs - len(kinds))
    rng.shuffle(kinds)
    insert = ("INSERT INTO background_jobs (job_type, params, priority, max_attempts, "
              "timeout_seconds) VALUES (%s, %s, 0, 4, %s) RETURNING id")
    ids: dict[int, str] = {}
    # prepare_threshold=None: through PgBouncer a prepared statement would stay behind on a
    # server connection that other clients get next.
    with psycopg.connect(make_conninfo(url, user=FRONTEND_ROLE), autocommit=True,
                         prepare_threshold=None) as conn, conn.transaction():
        for kind in kinds[:config.jobs]:
            job_type, params = _job(kind, rng, config)
            timeout = config.timeout_seconds if kind == "timeout" else None
            row = conn.execute(insert, (job_type, Jsonb(params), timeout)).fetchone()
            assert row is not None
            ids[int(row[0])] = kind
    return ids


# -- the supervisor ---------------------------------------------------------------------------


@dataclass
class _Proc:
    job_type: str
    slot: int
    popen: subprocess.Popen[bytes]
    log: Path
    started: float
    ended: float | None = None
    code: int | None = None
    sent: str | None = None  # the signal the soak sent it, if any
    ready: bool = False  # it logged that it started


class _Supervisor:
    """Keeps ``config.workers`` processes per job type alive, as systemd would, and breaks them."""

    def __init__(self, url: str, config: SoakConfig, logs: Path, rng: random.Random,
                 extra_env: dict[str, str] | None = None) -> None:
        self.url, self.config, self.logs, self.rng = url, config, logs, rng
        self.procs: list[_Proc] = []
        self.live: dict[tuple[str, int], _Proc] = {}
        self.restart_at: dict[tuple[str, int], float] = {}
        env = dict(os.environ, DATABASE_URL=make_conninfo(url, user=WORKER_ROLE),
                   GEOJOBS_POLL_INTERVAL="1", GEOJOBS_LEASE_SECONDS=str(config.lease_seconds),
                   GEOJOBS_HEARTBEAT_SECONDS=str(config.heartbeat_seconds),
                   GEOJOBS_GRACE_SECONDS=str(config.grace_seconds),
                   GEOJOBS_RETRY_DELAYS=config.retry_delays, PYTHONPATH=str(ROOT))
        env.pop("NOTIFY_SOCKET", None)
        env.pop("GEOJOBS_LISTEN_URL", None)
        env.update(extra_env or {})
        self.env = env

    def start(self, job_type: str, slot: int) -> None:
        log = self.logs / f"{job_type}-{slot}-{len(self.procs)}.log"
        env = dict(self.env, GEOJOBS_MEMORY_CAP_MB=str(self.config.memory_cap_mb[job_type]),
                   GEOJOBS_JOB_MEMORY_MB=str(self.config.job_memory_mb[job_type]))
        with open(log, "wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", f"workers.{job_type}"], env=env,
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
        proc = _Proc(job_type, slot, popen, log, time.time())
        self.procs.append(proc)
        self.live[(job_type, slot)] = proc

    def start_all(self) -> None:
        for job_type, count in self.config.workers.items():
            for slot in range(count):
                self.start(job_type, slot)

    def reap(self) -> None:
        """Note exits; start a replacement ``restart_sec`` later (Restart=always)."""
        now = time.time()
        for key, proc in list(self.live.items()):
            code = proc.popen.poll()
            if code is not None:
                proc.ended, proc.code = now, code
                del self.live[key]
                self.restart_at[key] = now + self.config.restart_sec
        for key, when in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[key]
                self.start(*key)

    def ready(self, proc: _Proc) -> bool:
        """Whether the worker got through its start (imports, connection): killing one that
        has not tests nothing, and on a loaded host could starve a job type of workers."""
        if not proc.ready:
            proc.ready = f"for {proc.job_type} started".encode() in proc.log.read_bytes()
        return proc.ready

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` to one running worker picked at random (none yet: to none)."""
        candidates = [p for p in self.live.values() if p.sent is None and self.ready(p)]
        if candidates:
            proc = self.rng.choice(candidates)
            proc.sent = signum.name
            proc.popen.send_signal(signum)

    def stop_all(self, timeout: float) -> None:
        self.restart_at.clear()
        for proc in self.live.values():
            if proc.sent is None:
                proc.sent = "SIGTERM(end)"
            proc.popen.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout
        while self.live and time.time() < deadline:
            self.reap()
            self.restart_at.clear()
            time.sleep(0.05)
        for proc in list(self.live.values()):
            proc.sent = "SIGKILL(end)"
            proc.popen.kill()
            proc.popen.wait()
        self.reap()
        self.restart_at.clear()


def _outage(url: str, config: SoakConfig, proxy_restart: Callable[[], None] | None = None) -> float:
    """Take the database (or the proxy in front of it) away once; returns how long until it
    answered again through ``url``."""
    started = time.monotonic()
    if config.outage == "proxy":
        assert proxy_restart is not None, "--outage proxy needs a proxy to restart"
        proxy_restart()
    elif config.outage == "restart":
        version, cluster = config.pg_cluster
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"],
                       check=True, capture_output=True, timeout=120)
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return time.monotonic() - started
        except psycopg.OperationalError:
            time.sleep(0.1)


def _pending(url: str, ids: dict[int, str]) -> int | None:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM background_jobs WHERE status <> ALL (%s)",
                               (list(FINAL),)).fetchone()
            return int(row[0]) if row else None
    except psycopg.OperationalError:
        return None


# -- the checks ------------------------------------------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+(?: \[[^]]*\])?: (.*)$")
_START = re.compile(r"job (\d+) \w+ attempt (\d+)/\d+ started")
_END = re.compile(r"job (\d+) \w+ attempt \d+/\d+ (completed|failed|stopped)")
_GIVEN_BACK = re.compile(r"job (\d+) \w+: grace period over")


def _runs(proc: _Proc) -> list[tuple[int, int, float, float, str]]:
    """(job, attempt, start, end, worker log) of every run in one worker's log."""
    runs = []
    current: tuple[int, int, float] | None = None
    for line in proc.log.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(2)
        if (m := _START.search(message)) is not None:
            if current is not None:
                runs.append((*current, when, proc.log.name))
            current = (int(m.group(1)), int(m.group(2)), when)
        elif current is not None and (
                ((m := _END.search(message) or _GIVEN_BACK.search(message)) is not None
                 and int(m.group(1)) == current[0])
                or message.startswith("database unavailable")):
            runs.append((*current, when, proc.log.name))
            current = None
    if current is not None:  # killed mid-run: the run ended by the time it was reaped
        runs.append((*current, proc.ended or time.time(), proc.log.name))
    return runs


def _check_results(conn: psycopg.Connection[Any], report: SoakReport, jobs: list[dict[str, Any]]) -> None:
    from psycopg import sql

    expected = conn.execute("SELECT count(*) FROM (SELECT DISTINCT sub_region FROM public.us_states) s"
                            ).fetchone()
    area = conn.execute("SELECT sum(area) FROM public.us_states").fetchone()
    assert expected is not None and area is not None
    outputs = set()
    for job in jobs:
        result = job["result"] or {}
        table = result.get("output_table")
        if job["status"] != "completed" or not table:
            continue
        outputs.add(table)
        schema, name = table.split(".")
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            report.bad_results.append(f"job {job['id']}: {table} missing")
            continue
        row = conn.execute(sql.SQL("SELECT count(*), sum(sum_area), count(*) FILTER "
                                   "(WHERE geom IS NULL OR NOT ST_IsValid(geom)) FROM {}")
                           .format(sql.Identifier(schema, name))).fetchone()
        assert row is not None
        rows, total, broken = row
        if rows != result.get("rows") or rows != expected[0] or broken or \
                abs(float(total) - float(area[0])) > 1e-6 * abs(float(area[0])):
            report.bad_results.append(f"job {job['id']}: {table} has {rows} rows (result says "
                                      f"{result.get('rows')}, SQL {expected[0]}), area sum {total} "
                                      f"(SQL {area[0]}), {broken} null/invalid geometries")
    tables = {f"results.{r[0]}" for r in conn.execute(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'results' AND c.relkind IN ('r', 'v', 'm', 'p')")}
    report.orphan_tables = sorted(tables - outputs)


def _cancel_running(url: str, ids: dict[int, str], cancelled_at: dict[int, float]) -> None:
    """Cancel, as the front end, every running job of kind ``cancel`` not cancelled yet."""
    wanted = [i for i, kind in ids.items() if kind == "cancel" and i not in cancelled_at]
    if not wanted:
        return
    try:
        with psycopg.connect(make_conninfo(url, user=FRONTEND_ROLE), autocommit=True,
                             connect_timeout=2, prepare_threshold=None) as conn:
            running = conn.execute("SELECT id FROM background_jobs WHERE id = ANY(%s) "
                                   "AND status = 'running'", (wanted,)).fetchall()
            for (job_id,) in running:
                row = conn.execute("SELECT geojobs_cancel(%s)", (job_id,)).fetchone()
                if row and row[0]:
                    cancelled_at[job_id] = time.time()
    except psycopg.OperationalError:
        pass


_STOPPED = re.compile(r"job (\d+) \w+ attempt \d+/\d+ stopped after [\d.]+ s: the job was cancelled")


def _cancel_latencies(report: SoakReport, procs: list[_Proc],
                      cancelled_at: dict[int, float]) -> None:
    """From each cancel to the worker's "stopped" line (its job process killed, session ended)."""
    stopped: dict[int, float] = {}
    for proc in procs:
        for line in proc.log.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if match and (m := _STOPPED.search(match.group(2))) is not None:
                when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                job_id = int(m.group(1))
                if job_id in cancelled_at and when >= cancelled_at[job_id] - 0.5:
                    stopped[job_id] = min(stopped.get(job_id, when), when)
    report.cancels = len(cancelled_at)
    for job_id, when in stopped.items():
        seconds = when - cancelled_at[job_id]
        report.cancel_stop_max_seconds = round(max(report.cancel_stop_max_seconds, seconds), 3)
        if seconds > 2.0:
            report.late_cancels.append(f"job {job_id}: stopped {seconds:.2f} s after its cancel")


def _check(url: str, report: SoakReport, ids: dict[int, str], procs: list[_Proc],
           cancelled_at: dict[int, float] | None = None, timeout_seconds: int = 1) -> None:
    from psycopg.rows import dict_row

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor(row_factory=dict_row) as cur:
            jobs = cur.execute("SELECT id, job_type, status, attempts, max_attempts, result, error "
                               "FROM background_jobs ORDER BY id").fetchall()
        _check_results(conn, report, jobs)
    report.jobs = len(jobs)
    report.by_status = dict(Counter(j["status"] for j in jobs))
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for job in jobs:
        kind = ids.get(job["id"], "?")
        by_kind[kind][job["status"]] += 1
        report.max_attempts_seen = max(report.max_attempts_seen, job["attempts"])
        if job["status"] not in FINAL:
            report.lost.append(job["id"])
        if job["attempts"] > job["max_attempts"]:
            report.over_attempts.append(job["id"])
        if job["status"] == "failed" and not job["error"]:
            report.failed_without_error.append(job["id"])
        error = job["error"] or ""
        # Killed on its last attempt: failed by the lease, an allowed end for any kind.
        killed = job["status"] == "failed" and "stopped sending heartbeats" in error
        if killed:
            pass
        elif kind == "raises" and not (job["status"] == "failed" and
                                       error == "RuntimeError: soak: a job that always fails"):
            report.unexpected_outcomes.append(f"job {job['id']} ({kind}): {job['status']} {error}")
        elif kind == "bad_params" and not (job["status"] == "failed" and error.startswith("by:")):
            report.unexpected_outcomes.append(f"job {job['id']} ({kind}): {job['status']} {error}")
        elif kind == "cancel" and job["status"] != "cancelled":
            report.unexpected_outcomes.append(f"job {job['id']} ({kind}): {job['status']} {error}")
        elif kind == "timeout" and not (job["status"] == "failed" and
                                        error == f"timed out after {timeout_seconds} s"):
            report.unexpected_outcomes.append(f"job {job['id']} ({kind}): {job['status']} {error}")
        elif kind in ("quick", "dissolve", "memory", "slow") and job["status"] != "completed" and \
                not killed:
            report.unexpected_outcomes.append(f"job {job['id']} ({kind}): {job['status']} {error}")
    report.by_kind = {k: dict(v) for k, v in sorted(by_kind.items())}

    runs = [run for proc in procs for run in _runs(proc)]
    report.runs = len(runs)
    per_job: dict[int, list[tuple[int, int, float, float, str]]] = defaultdict(list)
    for run in runs:
        per_job[run[0]].append(run)
    for job_id, job_runs in per_job.items():
        job_runs.sort(key=lambda r: r[2])
        for before, after in zip(job_runs, job_runs[1:], strict=False):
            if after[2] < before[3]:
                report.double_runs.append(
                    f"job {job_id}: attempt {before[1]} in {before[4]} until {before[3]:.3f}, "
                    f"attempt {after[1]} in {after[4]} from {after[2]:.3f}")

    for proc in procs:
        text = proc.log.read_text(errors="replace")
        report.reconnect_warnings += text.count("database unavailable")
        report.heartbeat_warnings += text.count("heartbeat failed")
        capped = "over the cap" in text
        report.memory_exits += capped and proc.code == 0
        report.sigkills += proc.sent == "SIGKILL"
        report.sigterms += proc.sent == "SIGTERM"
        # SIGTERM before the worker's signal handling is in place (start-up) or after its loop
        # has ended (interpreter shutdown) kills it by default; it holds no job either way.
        idle = " started" not in text or "stopped after" in text
        expected_exit = (proc.sent in ("SIGKILL", "SIGKILL(end)") and proc.code in (0, -9)) or (
            proc.sent in ("SIGTERM", "SIGTERM(end)") and (proc.code == 0 or (
                idle and proc.code == -15))) or (
            proc.sent is None and capped and proc.code == 0)
        if not expected_exit:
            tail = " | ".join(text.strip().splitlines()[-3:])
            report.unexpected_exits.append(f"{proc.log.name}: exit {proc.code} after "
                                           f"{proc.sent or 'no signal'}: {tail}")
    report.worker_starts = len(procs)
    _cancel_latencies(report, procs, cancelled_at or {})


# -- the run ---------------------------------------------------------------------------------


def run_soak(url: str, config: SoakConfig, logs: Path | None = None, *,
             via_url: str | None = None, worker_env: dict[str, str] | None = None,
             proxy_restart: Callable[[], None] | None = None) -> SoakReport:
    """Run the soak on the database at ``url`` (migrated, with public.us_states loaded).

    ``via_url``: the same database through a proxy (PgBouncer): workers, inserts and cancels go
    through it, the checks read ``url`` directly. ``worker_env`` is added to the workers'
    environment (``GEOJOBS_LISTEN_URL``); ``proxy_restart`` is the ``proxy`` outage.
    """
    rng = random.Random(config.seed)
    logs = logs or Path(tempfile.mkdtemp(prefix="geojobs_soak_"))
    report = SoakReport(config=asdict(config), outage=config.outage)
    client_url = via_url or url
    ids = _enqueue(client_url, config, rng)
    supervisor = _Supervisor(client_url, config, logs, rng, worker_env)
    started = time.monotonic()
    supervisor.start_all()
    next_kill = started + config.kill_every
    next_term = started + config.term_every
    next_check = started
    outage_done = config.outage == "none"
    cancelled_at: dict[int, float] = {}
    try:
        while time.monotonic() - started < config.deadline:
            supervisor.reap()
            now = time.monotonic()
            if now >= next_kill:
                supervisor.send(signal.SIGKILL)
                next_kill = now + config.kill_every * rng.uniform(0.5, 1.5)
            if now >= next_term:
                supervisor.send(signal.SIGTERM)
                next_term = now + config.term_every * rng.uniform(0.5, 1.5)
            if now >= next_check:
                next_check = now + 0.5
                _cancel_running(client_url, ids, cancelled_at)
                pending = _pending(url, ids)
                if pending == 0:
                    break
                if not outage_done and pending is not None and \
                        pending <= (1 - config.outage_at) * len(ids) and \
                        any(supervisor.ready(p) for p in supervisor.live.values()):
                    report.outage_seconds = round(_outage(client_url, config, proxy_restart), 2)
                    outage_done = True
            time.sleep(0.05)
    finally:
        supervisor.stop_all(timeout=config.grace_seconds + 10)
    report.seconds = round(time.monotonic() - started, 1)
    _check(url, report, ids, supervisor.procs, cancelled_at, config.timeout_seconds)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="2,000 jobs and a real PostgreSQL restart (other users of the server "
                             "see it restart too)")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--outage", choices=["restart", "terminate", "proxy", "none"])
    parser.add_argument("--pgbouncer", action="store_true",
                        help="workers and front end through a PgBouncer of the soak's own "
                             "(transaction pooling); the outage restarts it unless --outage says")
    parser.add_argument("--no-listen", action="store_true", help="with --pgbouncer: no "
                        "GEOJOBS_LISTEN_URL, the workers poll")
    parser.add_argument("--workers", help="workers per job type, e.g. noop=4,dissolve=2")
    parser.add_argument("--kill-every", type=float, help="mean seconds between SIGKILLs of a "
                        "random worker (full: 3)")
    parser.add_argument("--deadline", type=float, help="seconds before the soak gives up "
                        "waiting (unfinished jobs then count as lost)")
    parser.add_argument("--lease", type=float, help="GEOJOBS_LEASE_SECONDS of the workers; below "
                        "the time between heartbeats, jobs are taken from live workers (a "
                        "misconfiguration the double-run check must catch)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--pg-cluster", metavar="VERSION/NAME",
                        help="the cluster that DATABASE_URL points at, for the restart outage "
                             "(pg_ctlcluster; default 15/main)")
    args = parser.parse_args(argv)
    config = FULL if args.full else SHORT
    if args.jobs:
        config.jobs = args.jobs
    if args.outage:
        config.outage = args.outage
    if args.lease:
        config.lease_seconds = args.lease
    if args.deadline:
        config.deadline = args.deadline
    if args.kill_every:
        config.kill_every = args.kill_every
    if args.workers:
        config.workers = {k: int(v) for k, v in (p.split("=") for p in args.workers.split(","))}
    if args.pg_cluster:
        version, _, name = args.pg_cluster.partition("/")
        config.pg_cluster = (version, name)
    if args.pgbouncer and not args.outage:
        config.outage = "proxy"

    from bench.database import bench_database
    from geojobs.samples import load_sample

    with bench_database(prefix="geojobs_soak", keep=args.keep) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            load_sample(conn, "us_states")
        logs = Path(tempfile.mkdtemp(prefix="geojobs_soak_"))
        if args.pgbouncer:
            report = run_soak_via_pgbouncer(url, config, logs, listen=not args.no_listen)
        else:
            report = run_soak(url, config, logs)
    print(report.summary())
    for name in ("lost", "double_runs", "over_attempts", "failed_without_error", "bad_results",
                 "orphan_tables", "unexpected_outcomes", "unexpected_exits", "late_cancels"):
        for item in getattr(report, name)[:10]:
            print(f"{name}: {item}", file=sys.stderr)
    print(f"worker logs in {logs}", file=sys.stderr)
    return 0 if report.ok else 1


def run_soak_via_pgbouncer(url: str, config: SoakConfig, logs: Path, *, listen: bool) -> SoakReport:
    """The soak with workers and front end behind a PgBouncer started for it."""
    from bench.pgbouncer import PgBouncer

    bouncer = PgBouncer()
    bouncer.start()

    def restart() -> None:
        bouncer.stop()
        time.sleep(1.0)
        bouncer.start()

    try:
        env = {"GEOJOBS_LISTEN_URL": make_conninfo(url, user=WORKER_ROLE)} if listen else {}
        return run_soak(url, config, logs, via_url=bouncer.url(url), worker_env=env,
                        proxy_restart=restart)
    finally:
        bouncer.close()


if __name__ == "__main__":
    raise SystemExit(main())
