"""Workers on two "hosts" draining one queue, and the lease taking back the jobs of a dead host.

Each host is a UTS namespace with its own hostname (``unshare --uts``) holding two ``noop``
workers (joined with ``nsenter``), so ``worker_id``, the registry and the logs name the host;
all of them reach the test's database over loopback. Needs root for the namespaces.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from geojobs import queue
from tests.support import ROOT, wait_for, worker_env

pytestmark = [pytest.mark.db,
              pytest.mark.skipif(os.geteuid() != 0, reason="UTS namespaces need root")]

HOSTS = ("geojobs-host-a", "geojobs-host-b")
LEASE = {"GEOJOBS_LEASE_SECONDS": "2", "GEOJOBS_HEARTBEAT_SECONDS": "0.3",
         "GEOJOBS_POLL_INTERVAL": "0.2", "GEOJOBS_JIT_WARMUP": "0"}


def _host(name: str) -> subprocess.Popen[bytes]:
    """A process that holds a fresh UTS namespace whose hostname is ``name``."""
    holder = subprocess.Popen(["unshare", "--uts", "sh", "-c",
                               f"hostname {name} && echo ready && exec sleep 600"],
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
    return holder


def _worker(holder: subprocess.Popen[bytes], db_url: str) -> subprocess.Popen[str]:
    """``python -m workers.noop`` inside the holder's UTS namespace (nsenter execs, same pid)."""
    return subprocess.Popen(["nsenter", f"--uts=/proc/{holder.pid}/ns/uts",
                             sys.executable, "-m", "workers.noop"],
                            env=worker_env(db_url, **LEASE), cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _log_jobs(stderr: str, event: str) -> list[int]:
    return [int(m) for m in re.findall(rf"job (\d+) noop attempt \d+/\d+ {event}", stderr)]


def _hosts_of_jobs(conn: psycopg.Connection[Any], ids: list[int]) -> collections.Counter[str]:
    rows = conn.execute("SELECT worker_id FROM background_jobs WHERE id = ANY(%s)", (ids,))
    return collections.Counter(r[0].split(":")[0] for r in rows)


def _registry_hosts(conn: psycopg.Connection[Any]) -> collections.Counter[str]:
    return collections.Counter(w["host"] for w in queue.list_workers(conn))


def _all_done(conn: psycopg.Connection[Any], ids: list[int]) -> bool:
    row = conn.execute("SELECT count(*) FROM background_jobs WHERE id = ANY(%s) "
                       "AND status = 'completed'", (ids,)).fetchone()
    return row is not None and row[0] == len(ids)


def test_two_hosts_share_the_queue_and_survive_one_host_dying(
        db_url: str, conn: psycopg.Connection[Any]) -> None:
    assert "127.0.0.1" in db_url or "localhost" in db_url  # loopback only
    holders = [_host(name) for name in HOSTS]
    workers = {name: [_worker(h, db_url) for _ in range(2)] for name, h in zip(HOSTS, holders, strict=True)}
    a, b = HOSTS
    errs: dict[int, str] = {}
    try:
        wait_for(lambda: _registry_hosts(conn) == {a: 2, b: 2}, timeout=30)
        for w in queue.list_workers(conn):
            assert w["worker_id"].startswith(w["host"] + ":")

        quick = [queue.enqueue(conn, "noop", {"sleep_seconds": 0.05}) for _ in range(60)]
        wait_for(lambda: _all_done(conn, quick), timeout=30)
        split = _hosts_of_jobs(conn, quick)
        assert set(split) == {a, b} and min(split.values()) >= 5, split

        # one long job per worker: each worker holds one when host A dies
        held = [queue.enqueue(conn, "noop", {"sleep_seconds": 4, "steps": 8}, max_attempts=3)
                for _ in range(4)]

        def holding() -> collections.Counter[str]:
            rows = conn.execute("SELECT worker_id FROM background_jobs WHERE id = ANY(%s) "
                                "AND status = 'running'", (held,)).fetchall()
            return collections.Counter(r[0].split(":")[0] for r in rows)

        wait_for(lambda: holding() == {a: 2, b: 2}, timeout=15)
        on_a = [r[0] for r in conn.execute(
            "SELECT id FROM background_jobs WHERE id = ANY(%s) AND worker_id LIKE %s",
            (held, a + ":%"))]
        for w in workers[a]:
            w.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for w in workers[a]:
            _, errs[w.pid] = w.communicate(timeout=10)
            assert w.returncode == -signal.SIGKILL

        wait_for(lambda: _all_done(conn, held), timeout=20)
        recovered_in = time.monotonic() - killed_at
        rows = conn.execute("SELECT id, attempts, worker_id, error FROM background_jobs "
                            "WHERE id = ANY(%s) ORDER BY id", (on_a,)).fetchall()
        for job_id, attempts, worker_id, error in rows:
            assert attempts == 2 and worker_id.startswith(b + ":"), (job_id, worker_id)
            assert error is None or "stopped sending heartbeats" in error
        assert recovered_in < 15, recovered_in
        wait_for(lambda: _registry_hosts(conn) == {b: 2}, timeout=10)
        others = conn.execute("SELECT attempts FROM background_jobs WHERE id = ANY(%s) "
                              "AND NOT (id = ANY(%s))", (held, on_a)).fetchall()
        assert others == [(1,), (1,)]
    finally:
        for w in workers[b]:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
            _, errs[w.pid] = w.communicate(timeout=30)
        for w in workers[a]:
            if w.poll() is None:
                w.kill()
                w.communicate(timeout=10)
        for h in holders:
            h.kill()
            h.wait(timeout=10)
    assert [w.returncode for w in workers[b]] == [0, 0], [errs[w.pid] for w in workers[b]]

    every = quick + held
    completed = collections.Counter(j for e in errs.values() for j in _log_jobs(e, "completed"))
    assert sorted(completed) == sorted(every) and set(completed.values()) == {1}, completed
    started = collections.Counter(j for e in errs.values() for j in _log_jobs(e, "started"))
    assert {j for j, n in started.items() if n != 1} == set(on_a)  # only A's held jobs ran twice
    assert all(started[j] == 2 for j in on_a)
    a_started = {j for w in workers[a] for j in _log_jobs(errs[w.pid], "started")}
    assert set(on_a) <= a_started
    rows = conn.execute("SELECT status, count(*) FROM background_jobs WHERE id = ANY(%s) "
                        "GROUP BY 1", (every,)).fetchall()
    assert rows == [("completed", len(every))]
