"""``geojobs top``: a live terminal view of workers, running jobs, queues and recent failures.

It redraws when PostgreSQL announces a change (LISTEN on the job channels) and at least once
a second otherwise; ``q`` quits. The data comes from the same named queries as the metrics.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from geojobs.config import listen_url
from geojobs.db import connect, pooled
from geojobs.metrics import Snapshot, metrics_queries, snapshot

__all__ = ["TopData", "fetch", "render", "run_top", "CHANNELS"]

CHANNELS = ("geojobs", "geojobs_jobs", "geojobs_cancel")
"""Channels whose notifications trigger a redraw (new jobs; any job change, where announced)."""


@dataclass
class TopData:
    """Everything one screen shows."""

    snap: Snapshot
    running: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    at: datetime = field(default_factory=datetime.now)


def fetch(conn: psycopg.Connection[Any], *, job_types: list[str] | None = None,
          limit: int = 15) -> TopData:
    """Read one screen's worth of data."""
    q = metrics_queries()
    data = TopData(snap=snapshot(conn, outcomes=False))
    with conn.cursor(row_factory=dict_row) as cur:
        data.running = cur.execute(q["running_jobs"], {"limit": 200}).fetchall()
        data.failures = cur.execute(q["recent_failures"], {"limit": 200}).fetchall()
    if job_types:
        wanted = set(job_types)
        data.running = [r for r in data.running if r["job_type"] in wanted]
        data.failures = [r for r in data.failures if r["job_type"] in wanted]
        if data.snap.workers is not None:
            data.snap.workers = [w for w in data.snap.workers if w["job_type"] in wanted]
    data.running = data.running[:limit]
    data.failures = data.failures[:limit // 2 or 1]
    return data


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def render(data: TopData, *, job_types: list[str] | None = None) -> RenderableType:
    """The screen as a rich renderable."""
    snap = data.snap
    types = job_types or [t for t in snap.job_types()
                          if snap.live.get((t, "queued")) or snap.live.get((t, "running"))
                          or snap.live_workers(t)]

    workers = Table(expand=True, box=None, header_style="bold")
    for column in ("host", "type", "worker", "job", "RSS MB", "jobs run", "last seen"):
        workers.add_column(column)
    for w in snap.workers:
        workers.add_row(w["host"], w["job_type"], w["worker_id"],
                        str(w["current_job"]) if w["current_job"] is not None else "idle",
                        f"{w['rss_mb']:.0f}" if w["rss_mb"] is not None else "-",
                        str(w["jobs_run"]), f"{_duration(w['seen_seconds_ago'])} ago")

    running = Table(expand=True, box=None, header_style="bold")
    for column in ("id", "type", "try", "progress", "", "elapsed", "worker"):
        running.add_column(column)
    for r in data.running:
        fraction = float(r["progress"] or 0.0)
        running.add_row(str(r["id"]), r["job_type"], f"{r['attempts']}/{r['max_attempts']}",
                        ProgressBar(total=1.0, completed=fraction, width=20), f"{100 * fraction:3.0f}%",
                        _duration(r["elapsed_seconds"]), r["worker_id"] or "")
    if not data.running:
        running.add_row("", "no running jobs", "", "", "", "", "")

    queues = Table(expand=True, box=None, header_style="bold")
    for column in ("type", "queued", "ready", "oldest ready", "running", "workers"):
        queues.add_column(column)
    for job_type in types:
        queues.add_row(job_type, str(snap.live.get((job_type, "queued"), 0)),
                       str(snap.ready.get(job_type, 0)),
                       _duration(snap.oldest_ready_seconds.get(job_type)) if snap.ready.get(job_type)
                       else "-",
                       str(snap.live.get((job_type, "running"), 0)),
                       str(snap.live_workers(job_type)) if snap.workers is not None else "?")
    if not types:
        queues.add_row("queues empty", "", "", "", "", "")

    failures = Table(expand=True, box=None, header_style="bold")
    for column in ("id", "type", "tries", "finished", "error"):
        failures.add_column(column, overflow="ellipsis", no_wrap=column == "error")
    for f in data.failures:
        finished = f["finished_at"].strftime("%H:%M:%S") if f["finished_at"] else "-"
        failures.add_row(str(f["id"]), f["job_type"], str(f["attempts"]), finished, f["error"])
    if not data.failures:
        failures.add_row("", "no failures", "", "", "")

    header = Text.assemble(("geojobs top", "bold"), f"  {data.at:%H:%M:%S}  ",
                           ("q", "bold"), " quits")
    return Group(header, Panel(workers, title="workers"), Panel(running, title="running jobs"),
                 Panel(queues, title="queues"), Panel(failures, title="last failures"))


@contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one at a time), or None when it is not a terminal."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(url: str | None = None, *, job_types: list[str] | None = None, interval: float = 1.0,
            once: bool = False, console: Console | None = None) -> int:
    """Show the live view until ``q``; exit 2 with a message when the database is unreachable."""
    console = console or Console()
    try:
        conn = connect(url, connect_timeout=5)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"geojobs top: cannot reach the database: {first}", file=sys.stderr)
        return 2
    with conn:
        if once:
            console.print(render(fetch(conn, job_types=job_types), job_types=job_types))
            return 0
        # Through PgBouncer, LISTEN needs a direct connection (GEOJOBS_LISTEN_URL); without
        # one the view redraws every interval only.
        listener: psycopg.Connection[Any] | None = conn
        if pooled(conn):
            direct = listen_url()
            listener = connect(direct, connect_timeout=5) if direct else None
        if listener is not None:
            for channel in CHANNELS:
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        with _keys() as key_fd, Live(render(fetch(conn, job_types=job_types), job_types=job_types),
                                     console=console, screen=True, auto_refresh=False) as live:
            last = time.monotonic()
            pending = False
            while True:
                if key_fd is not None and select.select([key_fd], [], [], 0)[0]:
                    if b"q" in os.read(key_fd, 64).lower():  # terminal replies may come along
                        return 0
                try:
                    # Wait a tenth of a second for a change, so that keys stay responsive.
                    if listener is None:
                        time.sleep(0.1)
                    else:
                        pending |= bool(list(listener.notifies(timeout=0.1, stop_after=1)))
                    now = time.monotonic()
                    # Redraw on a change (at most 5 frames a second) or every interval.
                    if (pending and now - last >= 0.2) or now - last >= interval:
                        live.update(render(fetch(conn, job_types=job_types), job_types=job_types),
                                    refresh=True)
                        last, pending = time.monotonic(), False
                except psycopg.OperationalError as exc:
                    live.stop()
                    print(f"geojobs top: lost the database: {exc}", file=sys.stderr)
                    return 2
