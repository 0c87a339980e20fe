"""The claim stays cheap with a long history of finished rows: every vacuum of the job table
removes the dead entries claimed jobs leave in the claim index (migration 0018)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from geojobs import db, queue

pytestmark = pytest.mark.db

HISTORY = 300_000
"""Finished rows: enough that the pages a burst of jobs leaves dead rows on are under 2 % of the
table, where VACUUM's default (index_cleanup auto) skips the index pass."""

BURST = 1000


def _load_history(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO background_jobs (job_type, params, status, attempts, started_at, "
        "  finished_at, heartbeat_at, worker_id, progress, result) "
        "SELECT 'noop', '{}'::jsonb, 'completed', 1, now(), now(), now(), 'h:1:x', 1, '{}' "
        "FROM generate_series(1, %s)", (HISTORY,))
    conn.execute("VACUUM ANALYZE background_jobs")


def _run_burst(conn: psycopg.Connection[Any]) -> None:
    """``BURST`` jobs queued, then every queued job claimed and completed one at a time, as a
    worker does."""
    conn.execute("INSERT INTO background_jobs (job_type, params) "
                 "SELECT 'noop', '{}'::jsonb FROM generate_series(1, %s)", (BURST,))
    done = 0
    while (job := queue.claim(conn, "noop", "w")) is not None:
        assert queue.complete(conn, job, {})
        done += 1
    assert done >= BURST


def _claim_plan(conn: psycopg.Connection[Any]) -> Any:
    """EXPLAIN (ANALYZE, BUFFERS) of a claim of one queued job; the claim is rolled back."""
    conn.execute("INSERT INTO background_jobs (job_type, params) VALUES ('noop', '{}')")
    with conn.transaction():
        row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + queue.queries()["claim_job"],
                           {"job_type": "noop", "worker_id": "w"}).fetchone()
        raise psycopg.Rollback()
    assert row is not None
    return row[0]


def _scan_node(plan: Any) -> dict[str, Any]:
    """The index scan under the claim's LIMIT ... FOR UPDATE SKIP LOCKED subquery."""
    def walk(node: dict[str, Any]) -> list[dict[str, Any]]:
        found = [node] if node.get("Parent Relationship") == "InitPlan" else []
        for child in node.get("Plans", []):
            found += walk(child)
        return found
    [init] = walk(plan[0]["Plan"])
    node = init
    while node["Node Type"] != "Index Scan":
        [node] = node["Plans"]
    return node


def _claim_scan_after_vacuum(conn: psycopg.Connection[Any]) -> tuple[dict[str, Any], int]:
    """A burst of jobs, a plain VACUUM (the table's own settings decide its index pass), then the
    claim's index scan node and the index scans that VACUUM VERBOSE reported."""
    _run_burst(conn)
    notices: list[str] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    conn.add_notice_handler(collect)
    conn.execute("VACUUM (VERBOSE) background_jobs")
    conn.remove_notice_handler(collect)
    [report] = [n for n in notices
                if n.startswith("finished vacuuming") and '.public.background_jobs"' in n]
    index_scans = int(report.split("index scans: ")[1].split()[0])
    return _scan_node(_claim_plan(conn)), index_scans


def test_job_table_settings(conn: psycopg.Connection[Any]) -> None:
    """The storage parameters docs/jobs.md names are the table's."""
    row = conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'background_jobs'::regclass"
                       ).fetchone()
    assert row is not None
    assert set(row[0]) >= {"fillfactor=80", "vacuum_index_cleanup=on",
                           "autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=1000",
                           "autovacuum_analyze_scale_factor=0.02"}


def test_claim_reads_no_dead_entries_after_vacuum_with_a_long_history(
        conn: psycopg.Connection[Any]) -> None:
    """Without 0018's setting the vacuum after a burst skips the index pass and the next claim
    reads past the burst's dead entries; with it, the claim reads a root and a leaf page."""
    _load_history(conn)
    conn.execute("ALTER TABLE background_jobs RESET (vacuum_index_cleanup)")
    before, scans_before = _claim_scan_after_vacuum(conn)
    assert before["Index Name"] == "background_jobs_claim_idx"
    assert scans_before == 0  # "index scan bypassed": the failure 0018 removes
    read_before = before["Shared Hit Blocks"] + before["Shared Read Blocks"]
    assert read_before >= 5, before

    migration = next(p for p in db.MIGRATIONS_DIR.iterdir() if p.name.startswith("0018_"))
    conn.execute(migration.read_text())
    after, scans_after = _claim_scan_after_vacuum(conn)
    assert after["Index Name"] == "background_jobs_claim_idx"
    assert scans_after == 1
    assert after["Shared Hit Blocks"] + after["Shared Read Blocks"] <= 3, after
