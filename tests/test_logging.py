"""Worker logs: journald's native protocol (parsed from a socket the test holds) and rotating files.

The parser below follows the protocol as systemd documents it (systemd.io/JOURNAL_NATIVE_PROTOCOL):
a datagram is a run of fields, each either ``KEY=value\\n`` or, for values that may hold newlines,
``KEY\\n`` + 64-bit little-endian length + value + ``\\n``; a payload too large for a datagram
arrives as a sealed memfd passed with SCM_RIGHTS. It shares no code with the sender.
"""

from __future__ import annotations

import array
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from geojobs import queue
from tests.support import ROOT, job_row, run_worker, start_worker, wait_for

pytestmark = pytest.mark.db


def parse_entry(data: bytes) -> dict[str, list[str]]:
    """One native-protocol datagram -> ``{FIELD: [values]}`` (a field may repeat)."""
    fields: dict[str, list[str]] = {}
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = newline + 1
        else:
            key = line
            (length,) = struct.unpack("<Q", data[newline + 1:newline + 9])
            start = newline + 9
            value = data[start:start + length]
            assert data[start + length:start + length + 1] == b"\n", "value not closed by a newline"
            pos = start + length + 1
        assert re.fullmatch(rb"[A-Z0-9_]+", key) and not key.startswith(b"_"), key
        fields.setdefault(key.decode(), []).append(value.decode())
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    """A datagram socket standing in for journald: (its path, entries received so far)."""
    path = str(tmp_path / "journal.socket")
    entries: list[dict[str, list[str]]] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
    sock.settimeout(0.2)
    stop = threading.Event()

    def listen() -> None:
        fds = array.array("i")
        while not stop.is_set():
            try:
                data, ancdata, _, _ = sock.recvmsg(2**20, socket.CMSG_SPACE(fds.itemsize))
            except TimeoutError:
                continue
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = array.array("i", payload[:fds.itemsize])[0]
                    with os.fdopen(fd, "rb") as memfd:
                        memfd.seek(0)
                        data = memfd.read()
            entries.append(parse_entry(data))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield path, entries
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def one(entry: dict[str, list[str]], key: str) -> str | None:
    values = entry.get(key)
    if values is None:
        return None
    assert len(values) == 1, (key, values)
    return values[0]


def test_parser_reads_a_hand_made_datagram() -> None:
    data = b"MESSAGE\n" + struct.pack("<Q", 7) + b"a\nb=c\nd\nPRIORITY=3\nX==y\n"
    assert parse_entry(data) == {"MESSAGE": ["a\nb=c\nd"], "PRIORITY": ["3"], "X": ["=y"]}


def test_worker_sends_structured_entries_to_journald(
        conn: psycopg.Connection[Any], db_url: str,
        journal: tuple[str, list[dict[str, list[str]]]]) -> None:
    path, entries = journal
    ok = queue.enqueue(conn, "noop", {"steps": 2})
    bad = queue.enqueue(conn, "noop", {"raise_error": "boom\nsecond line"}, max_attempts=1)
    big = queue.enqueue(conn, "noop", {"raise_error": "x" * 400}, max_attempts=1)
    done = run_worker(db_url, "noop", GEOJOBS_LOG="journal", GEOJOBS_JOURNAL_SOCKET=path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # everything went to the journal
    wait_for(lambda: any("stopped after" in (one(e, "MESSAGE") or "") for e in entries), timeout=10)
    worker_id = job_row(conn, ok)["worker_id"]
    assert job_row(conn, bad)["status"] == "failed"

    for entry in entries:
        assert one(entry, "GEOJOBS_WORKER_ID") == worker_id
        assert one(entry, "GEOJOBS_JOB_TYPE") == "noop"
        assert one(entry, "SYSLOG_IDENTIFIER") == "geojobs-noop"
        assert one(entry, "PRIORITY") in {"3", "4", "6"}
        assert int(one(entry, "CODE_LINE") or "x") > 0 and one(entry, "CODE_FUNC")
        assert Path(one(entry, "CODE_FILE") or "").is_file()
    started = [e for e in entries if "started" in (one(e, "MESSAGE") or "")
               and one(e, "GEOJOBS_JOB_ID") is None]
    assert len(started) == 1 and (one(started[0], "CODE_FILE") or "").endswith("geojobs/runner.py")

    mine = [e for e in entries if one(e, "GEOJOBS_JOB_ID") == str(ok)]
    assert [one(e, "PRIORITY") for e in mine] == ["6", "6"]  # started, completed
    assert all(one(e, "GEOJOBS_ATTEMPT") == "1" for e in mine)
    assert "completed" in (one(mine[1], "MESSAGE") or "")

    failed = [e for e in entries if one(e, "GEOJOBS_JOB_ID") == str(bad)]
    errors = [e for e in failed if one(e, "PRIORITY") == "3"]
    assert len(errors) == 1  # the whole traceback is one entry
    message = one(errors[0], "MESSAGE") or ""
    assert "Traceback (most recent call last)" in message
    assert "RuntimeError: boom\nsecond line" in message
    assert message.count("\n") > 3 and f"job {bad} noop" in message
    assert not any((one(e, "MESSAGE") or "").startswith("  File") for e in entries)
    big_error = [e for e in entries if one(e, "GEOJOBS_JOB_ID") == str(big)
                 and one(e, "PRIORITY") == "3"]
    assert len(big_error) == 1 and "x" * 400 in (one(big_error[0], "MESSAGE") or "")


def test_without_journal_the_worker_writes_plain_lines(
        conn: psycopg.Connection[Any], db_url: str,
        journal: tuple[str, list[dict[str, list[str]]]]) -> None:
    path, entries = journal
    job = queue.enqueue(conn, "noop", {})
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "GEOJOBS_LOG")}
    done = subprocess.run([sys.executable, "-m", "workers.noop", "--drain"], cwd=ROOT, text=True,
                          capture_output=True, timeout=60,
                          env=dict(env, DATABASE_URL=db_url, PYTHONPATH=str(ROOT),
                                   GEOJOBS_JOURNAL_SOCKET=path))
    assert done.returncode == 0, done.stderr
    assert re.search(rf"INFO geojobs.worker \[job {job} attempt 1\]: job {job} noop .* completed",
                     done.stderr)
    time.sleep(0.3)
    assert entries == []


def _rotate_config(tmp_path: Path, log_dir: Path) -> Path:
    """The shipped logrotate config, pointed at the test's directory."""
    text = (ROOT / "systemd" / "geojobs.logrotate").read_text()
    text = text.replace("/var/log/geojobs/", f"{log_dir}/").replace("geojobs geojobs", "root root")
    assert str(log_dir) in text
    path = tmp_path / "logrotate.conf"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is installed by make install")
def test_log_file_survives_rotation_under_a_running_worker(
        conn: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    config = _rotate_config(tmp_path, log_dir)
    for key in ("daily", "rotate 14", "compress", "delaycompress", "missingok"):
        assert re.search(rf"^\s*{key}\s*$", config.read_text(), re.MULTILINE), key
    worker = start_worker(db_url, "noop", GEOJOBS_LOG_DIR=str(log_dir), GEOJOBS_LOG="stderr")
    jobs: list[int] = []
    try:
        log = log_dir / "worker_noop.log"
        wait_for(log.exists, timeout=30)

        def enqueue_some(n: int) -> None:
            for _ in range(n):
                jobs.append(queue.enqueue(conn, "noop", {"sleep_seconds": 0.01}))

        enqueue_some(30)
        time.sleep(0.2)  # rotate while jobs are still being run
        state = tmp_path / "logrotate.state"
        for _ in range(2):  # two rotations: the second compresses the first rotated file
            subprocess.run(["logrotate", "--force", "--state", str(state), str(config)], check=True)
            enqueue_some(30)
            time.sleep(0.3)
        wait_for(lambda: all(job_row(conn, j)["status"] == "completed" for j in jobs), timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
    assert worker.returncode == 0
    import gzip

    texts = {p.name: (gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz"
                      else p.read_text()) for p in log_dir.iterdir()}
    assert set(texts) == {"worker_noop.log", "worker_noop.log.1", "worker_noop.log.2.gz"}
    assert all(texts.values())  # each file got lines
    lines = "".join(texts.values())
    for job in jobs:
        assert len(re.findall(rf"\bjob {job} noop attempt 1/\d+ completed", lines)) == 1, job
    assert texts["worker_noop.log"].count("stopped after 90 job(s)") == 1
