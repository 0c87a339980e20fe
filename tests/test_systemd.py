"""The systemd units are hardened, and the worker speaks sd_notify to a socket the test holds."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from geojobs import queue, registry, sdnotify, units
from tests.support import ROOT, job_row, start_worker, wait_for

UNITS = sorted((ROOT / "systemd").glob("*_worker.service"))
ALL_UNITS = sorted([*(ROOT / "systemd").glob("*.service"), *(ROOT / "systemd").glob("*.timer")])
"""The worker units and the platform's (the API, the janitor and its timer)."""
ENV_EXAMPLE = ROOT / "systemd" / "geojobs.env.example"


def _directives(path: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given, across sections (systemd allows repeats)."""
    return _directives_of(path.read_text())


def _directives_of(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def _megabytes(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"": 2**-20, "K": 2**-10, "M": 1, "G": 2**10, "T": 2**20}[unit]


def test_every_job_type_has_a_unit_and_every_unit_a_job_type() -> None:
    assert {u.name for u in UNITS} == {f"{name}_worker.service" for name in registry.names()}


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_unit_is_hardened(unit: Path) -> None:
    d = _directives(unit)
    env = _env_example()
    one = {k: v[-1] for k, v in d.items()}
    job_type = unit.name.removesuffix("_worker.service")
    assert one["ExecStart"].endswith(f"-m workers.{job_type}")
    assert one.get("User") not in (None, "root", "0") and one.get("Group") not in (None, "root")
    for key, value in {"Type": "notify", "NotifyAccess": "main", "Restart": "always",
                       "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
                       "CapabilityBoundingSet": ""}.items():
        assert one.get(key) == value, f"{unit.name}: {key}={one.get(key)!r}, want {value!r}"
    assert env["GEOJOBS_OUTPUT_DIR"] in one["ReadWritePaths"].split()
    cap = float(env["GEOJOBS_MEMORY_CAP_MB"])
    assert cap < _megabytes(one["MemoryMax"]) <= 1.5 * cap  # a little above the worker's own cap
    watchdog = float(one["WatchdogSec"])
    for setting in ("GEOJOBS_HEARTBEAT_SECONDS", "GEOJOBS_POLL_INTERVAL", "GEOJOBS_LEASE_SECONDS"):
        assert watchdog >= 2 * float(env[setting]) or setting == "GEOJOBS_LEASE_SECONDS", setting
    assert watchdog >= float(env["GEOJOBS_LEASE_SECONDS"])
    assert 0 < float(one["RestartSec"]) <= 30
    assert int(one["StartLimitBurst"]) >= 3 and float(one["StartLimitIntervalSec"]) > 0
    assert float(one["TimeoutStopSec"]) > float(env["GEOJOBS_GRACE_SECONDS"])
    assert "MemoryDenyWriteExecute" not in d  # numba needs executable memory


def _installed(tmp_path: Path) -> list[Path]:
    """The units as ``geojobs units install`` writes them for this checkout and interpreter."""
    result = subprocess.run([sys.executable, "-m", "geojobs.cli", "units", "install", "--prefix",
                             str(ROOT), "--python", sys.executable, "--output", str(tmp_path)],
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    written = sorted(Path(line) for line in result.stdout.split())
    assert [p.name for p in written] == sorted(u.name for u in ALL_UNITS)
    return written


def test_shipped_units_are_the_rendered_ones() -> None:
    """systemd/ holds exactly what the template renders with the defaults: no drift."""
    rendered = units.render_all()
    assert {u.name for u in ALL_UNITS} == set(rendered), "run: geojobs units render --output systemd"
    for unit in ALL_UNITS:
        assert unit.read_text() == rendered[unit.name], (
            f"{unit.name} differs from the template; run: geojobs units render --output systemd")


def test_render_takes_prefix_user_and_refuses_unsafe_values(tmp_path: Path) -> None:
    text = units.render(units.worker_unit("dissolve"), prefix="/srv/gj", user="gis")
    d = {k: v[-1] for k, v in _directives_of(text).items()}
    assert d["ExecStart"] == "/srv/gj/.venv/bin/python -m workers.dissolve"
    assert (d["User"], d["Group"], d["WorkingDirectory"]) == ("gis", "gis", "/srv/gj")
    assert d["SyslogIdentifier"] == "geojobs-dissolve"
    for bad in ({"prefix": "relative"}, {"prefix": "/a b"}, {"user": "root; rm"},
                {"python": "/x/$HOME/python"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            units.render(units.worker_unit("noop"), **bad)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_install_writes_units_that_verify(tmp_path: Path) -> None:
    """``geojobs units install --output DIR`` writes every unit; ``systemd-analyze verify``
    accepts them (the test machine has no systemd running, so no daemon-reload here)."""
    written = _installed(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, written)],
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert f"ExecStart={sys.executable} -m workers.hotspot" in (
        tmp_path / "hotspot_worker.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_exposure_is_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates every service at most 2.0 (the unhardened unit: 9.2);
    a timer runs nothing itself."""
    for unit in (u for u in _installed(tmp_path) if u.suffix == ".service"):
        result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                                text=True, capture_output=True, timeout=60)
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert score is not None, result.stdout + result.stderr
        assert float(score.group(1)) <= 2.0, f"{unit.name}: {score.group(0)}"


# -- sd_notify ---------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, list[tuple[float, str]]]]:
    """A datagram socket standing in for systemd: (its path, messages received with times)."""
    path = str(tmp_path / "notify")
    received: list[tuple[float, str]] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            received.append((time.time(), data.decode()))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        yield path, received
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def test_sdnotify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False  # never raises


def test_sdnotify_abstract_socket_and_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"geojobs-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"
        monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
        assert sdnotify.watchdog("STATUS=y") is False
        monkeypatch.setenv("WATCHDOG_PID", str(__import__("os").getpid()))
        assert sdnotify.watchdog("STATUS=z")
        assert sock.recv(4096) == b"WATCHDOG=1\nSTATUS=z"


@pytest.mark.db
def test_worker_sends_ready_watchdog_and_stopping(
    db_url: str, conn: psycopg.Connection[Any], notify_socket: tuple[str, list[tuple[float, str]]],
) -> None:
    path, received = notify_socket
    worker = start_worker(db_url, "noop", NOTIFY_SOCKET=path, GEOJOBS_HEARTBEAT_SECONDS="0.3",
                          GEOJOBS_POLL_INTERVAL="5")
    try:
        wait_for(lambda: any("READY=1" in m for _, m in received), timeout=60)
        time.sleep(3.5)  # idle: the loop pets the watchdog (at most once a second) while it waits
        job_id = queue.enqueue(conn, "noop", {"sleep_seconds": 4, "steps": 2})
        wait_for(lambda: job_row(conn, job_id)["status"] == "completed", timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    wait_for(lambda: any("STOPPING=1" in m for _, m in received), timeout=5)
    row = job_row(conn, job_id)
    start, end = row["started_at"].timestamp(), row["finished_at"].timestamp()
    messages = [m for _, m in received]
    assert messages[0].startswith("READY=1") and "STOPPING=1" in messages[-1]
    pets = [t for t, m in received if m.startswith("WATCHDOG=1")]
    idle = [t for t in pets if t < start]
    during = [t for t in pets if start + 0.5 < t < end - 0.5]  # well inside the job
    assert len(idle) >= 2, (idle, start)
    assert len(during) >= 2, (during, start, end)  # from the heartbeat thread, mid-job
