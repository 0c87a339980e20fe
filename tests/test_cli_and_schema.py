"""The geojobs command, the schema migrations and the systemd units."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from geojobs import db, registry
from tests.support import ROOT, job_row, worker_env


def geojobs(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geojobs.cli", *args], env=worker_env(db_url),
                          cwd=ROOT, text=True, capture_output=True, timeout=120)


@pytest.mark.db
def test_upgrade_is_idempotent_and_complete(conn: psycopg.Connection[Any]) -> None:
    assert db.upgrade(conn) == []  # the template already has every migration
    columns = {r[0]: r[1] for r in conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = 'background_jobs'")}
    assert columns["id"] == "bigint" and columns["params"] == "jsonb"
    assert columns["progress"] == "real" and columns["available_at"].startswith("timestamp")
    assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'results'").fetchone() == (1,)


@pytest.mark.db
def test_db_upgrade_creates_a_missing_database(db_url: str) -> None:
    info = conninfo_to_dict(db_url)
    fresh_name = f"{info['dbname']}_fresh"
    fresh = make_conninfo(db_url, dbname=fresh_name)
    try:
        result = geojobs(fresh, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        assert "created the database" in result.stdout and "applied 0001_initial" in result.stdout
        again = geojobs(fresh, "db", "upgrade")
        assert again.returncode == 0 and "up to date" in again.stdout
    finally:
        with psycopg.connect(make_conninfo(db_url, dbname="postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(fresh_name)))


def test_types_describe_every_job_type(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "geojobs.cli", "types", "--json"], cwd=ROOT,
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    described = {item["job_type"]: item for item in json.loads(result.stdout)}
    assert set(described) == set(registry.names())
    for name, item in described.items():
        module = registry.load(name)
        module.Params.model_validate(item["example"])  # every example is valid
        assert item["params_schema"]["type"] == "object"


@pytest.mark.db
def test_enqueue_validates_and_wait_follows(db_url: str, conn: psycopg.Connection[Any]) -> None:
    bad = geojobs(db_url, "enqueue", "dissolve", "--params", '{"by": ["x"]}')
    assert bad.returncode == 2 and "params.input_table" in bad.stderr
    assert conn.execute("SELECT count(*) FROM background_jobs").fetchone() == (0,)
    ok = geojobs(db_url, "enqueue", "noop", "--params", '{"sleep_seconds": 0}')
    job_id = int(ok.stdout.strip())
    assert job_row(conn, job_id)["status"] == "queued"
    listed = geojobs(db_url, "jobs", "list")
    assert str(job_id) in listed.stdout and "queued" in listed.stdout
    assert geojobs(db_url, "jobs", "cancel", str(job_id)).returncode == 0
    assert job_row(conn, job_id)["status"] == "cancelled"
    assert geojobs(db_url, "jobs", "retry", str(job_id)).returncode == 0
    assert job_row(conn, job_id)["status"] == "queued"


def test_types_read_as_plain_text() -> None:
    """Summaries in full and without reStructuredText; parameters with type, default, description."""
    result = subprocess.run([sys.executable, "-m", "geojobs.cli", "types"], cwd=ROOT, text=True,
                            capture_output=True, timeout=60, env={**worker_env(""), "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "``" not in text and ":mod:" not in text
    joined = " ".join(text.split())  # summaries may wrap
    assert "outlier: Anselin Local Moran's I clusters and outliers (ArcGIS's Cluster and Outlier " \
           "Analysis)." in joined
    assert "noop: A diagnostic job type that does nothing useful, on purpose." in joined
    rows: dict[str, list[str]] = {}  # the first job type's row of each parameter name
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            rows.setdefault(line.split()[0], line.split())
    assert rows["permutations"][1:5] == ["integer", "0..99999", "999", "Conditional"]
    assert rows["input_table"][1:5] == ["string", "or", "output_of", "required"]
    assert rows["weights.transform"][1:3] == ["B|R", "null"]
    assert all(len(line) <= 100 for line in text.splitlines() if not line.startswith("  example"))


@pytest.mark.db
@pytest.mark.parametrize("command", [["-m", "workers.hotspot"], ["-m", "geojobs.cli", "worker", "hotspot"]],
                         ids=["python-m", "geojobs-worker"])
def test_warm_up_runs_however_the_worker_starts(db_url: str, command: list[str]) -> None:
    """The job type's warm_up hook (numba compilation for hotspot) runs before the first claim."""
    env = {**worker_env(db_url), "GEOJOBS_JIT_WARMUP": "1"}
    result = subprocess.run([sys.executable, *command, "--drain"], env=env, cwd=ROOT, text=True,
                            capture_output=True, timeout=240)
    assert result.returncode == 0, result.stderr
    ready = result.stderr.find("hotspot: numba kernels ready")
    assert 0 <= ready < result.stderr.find(" started"), result.stderr


def test_readme_lists_every_job_type() -> None:
    """README's job-type table has a row for every registered type and none for an unknown one."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Job types"):text.index("\n## ", text.index("## Job types") + 1)]
    listed = set(re.findall(r"^\| \[?`(\w+)`", table, flags=re.M)) | set(
        re.findall(r", \[`(\w+)`\]", table))
    assert listed == set(registry.names())
