"""The benchmarks at a tiny size, so that they cannot rot; and their shared pieces."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import psycopg
import pytest
import shapely

from bench import data, jobs
from bench.floor import copy_read, copy_write
from bench.measure import growth_exponent, measure_job, time_sql


def test_grids_are_exact_coverages_with_contiguous_groups() -> None:
    for make, cell_area in ((data.square_grid, 100.0**2), (data.hex_grid, 6 * 50.0**2)):
        gdf = make(1000, groups=7, seed=3)
        geoms = gdf.geometry.to_numpy()
        assert len(gdf) == 1000 and shapely.coverage_is_valid(geoms)
        assert np.allclose(shapely.area(geoms), cell_area)
        assert sorted(gdf["grp"].unique()) == list(range(7))
        for _, group in gdf.groupby("grp"):  # blocks are contiguous: one polygon each
            assert shapely.get_num_geometries(shapely.union_all(group.geometry.values)) == 1
    assert data.square_grid(50, seed=1)["value"].equals(data.square_grid(50, seed=1)["value"])


def test_voronoi_polygons_tile_the_square() -> None:
    gdf = data.irregular_polygons(500, seed=2)
    geoms = gdf.geometry.to_numpy()
    side = 100.0 * math.sqrt(500)
    assert not shapely.is_missing(geoms).any() and shapely.coverage_is_valid(geoms)
    assert math.isclose(shapely.area(geoms).sum(), side * side, rel_tol=1e-9)
    points = data.random_points(100, extent=10.0)
    assert shapely.contains(shapely.box(0, 0, 10, 10), points.geometry.values).all()


def test_parse_sizes_and_growth_exponent() -> None:
    assert data.parse_sizes("10k,1M,2500") == [10_000, 1_000_000, 2_500]
    with pytest.raises(ValueError):
        data.parse_size("0.5")
    sizes = [1e3, 1e4, 1e5]
    assert math.isclose(growth_exponent(sizes, [3e-6 * s**1.3 for s in sizes]), 1.3)


@pytest.mark.db
def test_floor_round_trip_and_measured_job(db_url: str, conn: psycopg.Connection[Any]) -> None:
    gdf = data.square_grid(200, groups=4)
    data.load_layer(conn, gdf, "public.grid")
    back = copy_read(conn, "public.grid", {"id": "int8", "grp": "int4"}).sort_values("id")
    assert shapely.equals(back.geometry.values, gdf.geometry.values).all()
    with conn.transaction():
        copy_write(conn, back, "results.copy", {"id": "int8", "grp": "int4"},
                   geometry_type="Polygon")
    area = conn.execute("SELECT sum(ST_Area(geom)), count(*) FROM results.copy").fetchone()
    assert area == (pytest.approx(200 * 100.0**2), 200)
    idle = measure_job(db_url, "noop", {})
    held = measure_job(db_url, "noop", {"allocate_mb": 64})
    assert held.job_row["status"] == "completed" and held.wall_s >= held.job_s > 0
    assert held.peak_rss_mb - idle.peak_rss_mb > 56  # the 64 MB the job held
    t = time_sql(db_url, "SELECT count(*) FROM public.grid WHERE grp = %s", (1,), fetch=True)
    assert t.value == [(int((gdf["grp"] == 1).sum()),)] and t.wall_s > 0


@pytest.mark.db
@pytest.mark.parametrize("job_type", jobs.job_benchmarks())
def test_job_benchmark_smoke(db_url: str, job_type: str) -> None:
    module = jobs.load(job_type)
    rows = module.run(list(getattr(module, "SMOKE_SIZES", [200])), db_url)
    assert rows and all(r["job_type"] == job_type for r in rows)
    assert all(r["wall_s"] > 0 for r in rows)
    assert any(r["case"] == "geojobs" for r in rows)


@pytest.mark.db
def test_queue_benchmark_smoke() -> None:
    from bench import peers
    from bench import queue as qbench

    for system in (peers.GEOJOBS, peers.PROCRASTINATE, peers.PGQUEUER_ONE):
        row = qbench.throughput(system, 1, 20, timeout=120)
        assert row["jobs"] == 20 and row["jobs_per_s"] > 0  # throughput() checks all 20 ran
    lat = qbench.latency(peers.GEOJOBS, 5, timeout=120)
    # "From commit" is from the moment the inserting client saw its COMMIT return: a worker woken
    # by the NOTIFY may start the job before that (the client waited for a core), so only the
    # latency from the insert call is sure to be positive.
    assert lat["jobs"] == 5 and 0 <= lat["p50_from_insert_call_ms"]
    assert lat["p50_ms"] <= lat["p95_ms"] < 5_000
    fair = qbench.fairness(60, workers=4, timeout=120)
    assert (fair["completed"], fair["left"], fair["max_attempts"]) == (60, 0, 1)
    assert fair["run_twice_by_logs"] == 0 and fair["started_by_logs"] == 60


@pytest.mark.db
def test_job_control_benchmark_smoke() -> None:
    """The code before job control runs from its own tree against its own schema; the
    long-history case loads its finished rows and runs both sizes."""
    from bench import queue as qbench

    [side] = qbench.against_baseline(20, worker_counts=(1,), rounds=1)
    assert side["workers"] == 1 and side["old_jobs_per_s"] > 0 and side["new_jobs_per_s"] > 0
    [hist] = qbench.history(3000, 20, 20, rounds=2)
    assert hist["finished_rows"] == 3000 and hist["claims"] == 20 and hist["pairs"] == 2
    assert [p["round"] for p in hist["every_pair"]] == [1, 2]
    assert all(p["full_claim_lookup_buffers"] >= 1 for p in hist["every_pair"])
    assert all(p["claim_ratio"] == p["full_claim_p50_ms"] / p["empty_claim_p50_ms"]
               for p in hist["every_pair"])
    assert hist["claim_ratio_median"] > 0 and hist["throughput_ratio_median"] > 0


@pytest.mark.db
def test_io_benchmark_smoke(db_url: str) -> None:
    from bench import io

    rows = io.run([300], db_url, repeat=1)
    paths = {(r["op"], r["path"]) for r in rows}
    assert ("read", "geojobs read_layer") in paths and ("write", "geojobs write_layer") in paths
    assert ("read", "geopandas read_postgis") in paths and len(rows) == 7
    assert all(r["wall_s"] > 0 and r["size"] == 300 for r in rows)


@pytest.mark.db
def test_api_benchmark_smoke() -> None:
    from bench import api

    out = api.run(n_latency=5, n_throughput=20, n_sse=2, uvicorn_workers=1)
    assert [r["path"] for r in out["latency"]] == ["HTTP API", "SQL INSERT"]
    assert all(0 < r["p50_ms"] <= r["p95_ms"] for r in out["latency"])
    assert [r["clients"] for r in out["throughput"]] == [1, 16]
    assert all(r["api_submits_per_s"] > 0 and r["api_get_job_per_s"] > 0 for r in out["throughput"])
    assert out["sse"][0]["jobs"] == 2 and out["sse"][0]["completion_to_sse_p50_ms"] > 0


def test_start_benchmark_smoke(db_url: str) -> None:
    from bench import start

    rows = start.run(["noop"], db_url, repeat=1)
    assert rows[0]["job_type"] == "noop" and 0 < rows[0]["best_s"] < 120


@pytest.mark.db
def test_layers_download_bench_runs() -> None:
    """bench.layers' download rows at a tiny size: a real API server, ogr2ogr and psql."""
    import argparse

    from bench import layers

    out = layers.run(argparse.Namespace(rows=300, only=["downloads", "download_memory"], repeat=1,
                                        memory_rows=200))
    assert [r["growth_mb"] >= 0 and r["rows"] == 200 for r in out["download_memory"]] == [True, True]
    assert [r["format"] for r in out["downloads"]] == ["GeoParquet", "FlatGeobuf", "GeoJSON"]
    assert all(r["rows"] == 300 and r["api_s"] > 0 and r["floor_s"] > 0 for r in out["downloads"])
    assert all(r["api_rss_peak_mb"] >= r["api_rss_before_mb"] > 0 for r in out["downloads"])


def test_million_benchmark_smoke(db_url: str) -> None:
    from bench import million

    rows = million.run(["create_view"], [200, 400], [], db_url)
    assert [r["size"] for r in rows] == [200, 400]
    assert all(r["job_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert "exponent" in rows[-1] and "exponent" not in rows[0]
