"""Throwaway PostGIS databases for the tests: real PostgreSQL, never a mock.

A template database (migrations applied, sample layers loaded) is made once per test run;
each test that asks for ``db_url`` gets its own copy, dropped afterwards, so two runs (or two
tests) never share state.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from geojobs.config import DEFAULT_DATABASE_URL

BASE_URL = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL

SLOWEST_FIRST = tuple(f"tests/{name}.py" for name in (
    "test_wheel", "test_distributed", "test_pgbouncer", "test_notebooks", "test_bench_smoke",
    "test_pipelines", "test_cli_and_schema", "test_provenance", "test_bad_input", "analysis/test_jit",
    "test_create_view", "test_hotspot_timeseries", "test_raster_clip", "test_dissolve",
    "test_console", "test_janitor", "test_nearest", "test_clip_erase", "test_layers", "test_hotspot",
    "test_operations", "test_queue", "test_outlier", "test_soak", "test_api",
    "test_layers_download", "test_job_control",
))
"""The modules that take longest, longest first (summed ``--durations`` of a whole run; the
wheel first, as its one test is the longest). They start first so that no long module begins
near the end of a parallel run (``make test``); the others follow in their usual order."""

SPLIT_ACROSS_PROCESSES = frozenset({"tests/test_notebooks.py", "tests/test_bench_smoke.py"})
"""Long modules without module-scoped fixtures or shared state between their tests: under
``--dist loadfile`` their tests go to whichever process is free rather than all to one."""


def _rank(nodeid: str) -> int:
    module = nodeid.split("::")[0]
    return SLOWEST_FIRST.index(module) if module in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slowest modules first; the rest keep their order (a stable sort)."""
    items.sort(key=lambda item: _rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)  # the hook exists when pytest-xdist is installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` in the order above, with the long modules' tests spread out.

    pytest-xdist would otherwise start the modules with the most tests first, which leaves the
    longest ones (one or a few long tests each) for the end of the run.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SlowestFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return nodeid if module in SPLIT_ACROSS_PROCESSES else module

    config.option.loadscopereorder = False  # keep the collection order set above
    return SlowestFirst(config, log)


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(BASE_URL, dbname="postgres"), autocommit=True)


def _create(name: str, template: str | None = None) -> str:
    with _admin() as conn:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        conn.execute(statement)
    return make_conninfo(BASE_URL, dbname=name)


def _drop(name: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def _dropper() -> Iterator[ThreadPoolExecutor]:
    """Drops test databases in the background: DROP DATABASE takes about a second here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dropdb") as pool:
        yield pool


@pytest.fixture(scope="session")
def template_db(_dropper: ThreadPoolExecutor) -> Iterator[str]:
    """A database with the schema and the sample layers, copied by every test."""
    from geojobs import db
    from geojobs.samples import SAMPLES, load_sample

    name = f"geojobs_test_tpl_{uuid.uuid4().hex[:10]}"
    url = _create(name)
    try:
        # Migrations create cluster-wide roles: parallel test processes (pytest -n) take turns.
        with _admin() as lock, psycopg.connect(url, autocommit=True) as conn:
            lock.execute("SELECT pg_advisory_lock(hashtext('geojobs test template'))")
            db.upgrade(conn)
            for sample in SAMPLES:
                load_sample(conn, sample)
        yield name
    finally:
        _dropper.submit(_drop, name)


@pytest.fixture
def db_url(template_db: str, _dropper: ThreadPoolExecutor,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database for one test; DATABASE_URL points at it for the test's processes."""
    name = f"geojobs_test_{uuid.uuid4().hex[:12]}"
    url = _create(name, template=template_db)
    monkeypatch.setenv("DATABASE_URL", url)
    try:
        yield url
    finally:
        _dropper.submit(_drop, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@dataclass(frozen=True)
class WarmRun:
    """What one ``geojobs warm`` printed, and the empty numba cache directory it wrote into."""

    returncode: int
    stdout: str
    stderr: str
    cache: Path


WARMED = ("noop", "hotspot", "outlier")
"""The job types of the shared ``geojobs warm`` run: noop has no warm-up, the other two do."""


@pytest.fixture(scope="session")
def warm_run(tmp_path_factory: pytest.TempPathFactory, testrun_uid: str) -> WarmRun:
    """``geojobs warm noop hotspot outlier`` with an empty ``NUMBA_CACHE_DIR``, run once per
    test run and shared by every test process (``pytest -n``) under a file lock.

    Compiling esda's kernels from nothing takes a minute of CPU; the tests that check what
    ``warm`` writes (tests/test_warm.py, tests/analysis/test_jit.py) read the same run.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each process has its own base inside the run's
        base = base.parent
    shared = base / f"geojobs-warm-{testrun_uid}"
    shared.mkdir(exist_ok=True)
    result = shared / "result.json"
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            cache = shared / "numba"
            cache.mkdir()
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
                       NUMBA_CACHE_DIR=str(cache))
            done = subprocess.run([sys.executable, "-m", "geojobs.cli", "warm", *WARMED],
                                  env=env, cwd=env["PYTHONPATH"], text=True, capture_output=True,
                                  timeout=900)
            result.write_text(json.dumps({"returncode": done.returncode, "stdout": done.stdout,
                                          "stderr": done.stderr, "cache": str(cache)}))
    return WarmRun(**{**json.loads(result.read_text()), "cache": shared / "numba"})
