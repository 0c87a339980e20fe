"""The wheel installs and runs: built from the source, installed into a fresh virtualenv,
used from a directory that is not the checkout.

How it stays honest and fast: the virtualenv is a new one (``python -m venv``, no system
site-packages, no PYTHONPATH), so it holds only the wheel and what the wheel's metadata
declares; a runtime import that ``pyproject.toml`` forgets fails here. The install resolves
those dependencies from the package index like any ``pip install`` would, through ``uv pip
install``: uv keeps the packages it has unpacked once in its cache and links them into each new
virtualenv, which takes seconds where pip takes about a minute. Without uv (not in the ``dev``
extra) the test falls back to pip. The virtualenv is deleted and made again on every run, but
at one fixed path (under a lock, so two runs take turns), so that two caches of derived files
survive between runs: Python's bytecode (``PYTHONPYCACHEPREFIX``) and numba's machine code
(``NUMBA_CACHE_DIR``), both keyed by each source file's path and checked against its mtime.
Neither can hide a missing package; they only spare a warm run about a minute of compiling
pandas and esda's kernels. The three commands a new host runs then go against a database that
does not exist yet: ``geojobs db upgrade`` (creates it and applies the migrations
shipped in the wheel), ``geojobs demo`` (loads the samples and runs every demo job in worker
processes of the virtualenv) and ``python -m workers.dissolve --drain``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import BASE_URL, _drop
from tests.support import ROOT

pytestmark = [pytest.mark.db, pytest.mark.slow]

_NOT_SHIPPED = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                                      "data", "logs", ".*_cache", "notebooks", "bench")


def _uv() -> str | None:
    beside = Path(sys.executable).with_name("uv")
    return str(beside) if beside.exists() else shutil.which("uv")


def _run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300,
         ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """The URL of a database that does not exist yet; dropped afterwards."""
    name = f"geojobs_wheel_{uuid.uuid4().hex[:10]}"
    try:
        yield make_conninfo(BASE_URL, dbname=name)
    finally:
        _drop(name)


@pytest.fixture
def stable_dir() -> Iterator[Path]:
    """A directory at a fixed path, held under an exclusive lock for the test."""
    root = Path(tempfile.gettempdir()) / f"geojobs-wheel-test-{os.getuid()}"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield root


@pytest.mark.timeout(900)  # a first run compiles everything; a warm run takes about a minute
def test_wheel_installs_and_runs_from_any_directory(
    tmp_path: Path, stable_dir: Path, fresh_database: str,
) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SHIPPED)
    uv = _uv()
    build = [uv, "build", "--wheel", "--quiet"] if uv else [sys.executable, "-m", "pip", "wheel",
                                                              "--no-deps", "--quiet", "-w"]
    _run([*build, "--out-dir", str(tmp_path / "dist"), str(source)] if uv else
         [*build, str(tmp_path / "dist"), str(source)], cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "dist").glob("geojobs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "geojobs").rglob("*")
               if p.suffix in (".sql", ".in")}
    assert shipped and shipped <= names, shipped - names  # SQL and unit templates inside
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    venv = stable_dir / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    install = ([uv, "pip", "install", "--quiet", "--python", str(python)] if uv else
               [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                "--no-compile"])
    _run([*install, str(wheel)], cwd=tmp_path, env=env, timeout=600)
    assert subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True).returncode, \
        "matplotlib is a notebook extra, not a runtime dependency"

    work = tmp_path / "elsewhere"
    work.mkdir()
    env.update(DATABASE_URL=fresh_database, GEOJOBS_DATA_DIR=str(tmp_path / "data"),
               NUMBA_CACHE_DIR=str(stable_dir / "numba"), PYTHONPYCACHEPREFIX=str(stable_dir / "pycache"),
               GEOJOBS_POLL_INTERVAL="0.5")
    geojobs = str(venv / "bin" / "geojobs")
    upgraded = _run([geojobs, "db", "upgrade"], cwd=work, env=env)
    assert "created the database" in upgraded.stdout and "0001_initial" in upgraded.stdout
    demo = _run([geojobs, "demo"], cwd=work, env=env, timeout=600)
    assert "completed" in demo.stdout and "failed" not in demo.stdout, demo.stdout
    queued = _run([geojobs, "enqueue", "dissolve", "--params",
                   '{"input_table": "public.us_states", "by": ["sub_region"], '
                   '"output_table": "results.wheel_regions"}'], cwd=work, env=env)
    job_id = int(queued.stdout.strip())
    _run([str(python), "-m", "workers.dissolve", "--drain"], cwd=work, env=env)
    with psycopg.connect(fresh_database) as conn:
        status = conn.execute("SELECT status FROM background_jobs WHERE id = %s", (job_id,)).fetchone()
        regions = conn.execute("SELECT count(*) FROM results.wheel_regions").fetchone()
        oracle = conn.execute("SELECT count(DISTINCT sub_region) FROM public.us_states").fetchone()
    assert status == ("completed",)
    assert regions == oracle and oracle is not None and oracle[0] > 1
    assert not (work / "logs").exists() and list(work.iterdir()) == []  # nothing left in the cwd
