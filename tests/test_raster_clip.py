"""raster_clip as a job: rasterio.mask on the polygons PostGIS holds, and the path rules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import rasterio
import shapely
from rasterio.mask import mask
from rasterio.transform import from_origin

from geojobs import queue
from tests.support import job_row, run_worker

pytestmark = pytest.mark.db


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("rasters", "outputs", "outside")}
    for path in paths.values():
        path.mkdir()
    return paths


@pytest.fixture
def source(dirs: dict[str, Path], conn: psycopg.Connection[Any]) -> Path:
    """A 2-band int16 raster over most of Georgia (UTM 16N), nodata -32768, from a seeded field."""
    x0, y0, x1, y1 = conn.execute(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
        "(SELECT ST_Extent(geom)::geometry AS e FROM public.georgia_counties) s").fetchone()
    res = 1500.0
    width, height = int((x1 - x0) / res * 0.8), int((y1 - y0) / res * 0.8)
    rng = np.random.default_rng(3)
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    data = np.stack([(cols * 3 + rows).astype("int16"),
                     rng.integers(-500, 500, (height, width)).astype("int16")])
    data[:, rng.random((height, width)) < 0.02] = -32768
    path = dirs["rasters"] / "ga" / "field.tif"
    path.parent.mkdir()
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2,
                       dtype="int16", crs="EPSG:26916", nodata=-32768,
                       transform=from_origin(x0 + 40_000, y1 - 30_000, res, res)) as dst:
        dst.write(data)
    return path


def _run(db_url: str, conn: psycopg.Connection[Any], dirs: dict[str, Path],
         params: dict[str, Any]) -> dict[str, Any]:
    job_id = queue.enqueue(conn, "raster_clip", params)
    result = run_worker(db_url, "raster_clip", GEOJOBS_RASTER_DIR=str(dirs["rasters"]),
                        GEOJOBS_OUTPUT_DIR=str(dirs["outputs"]))
    assert result.returncode == 0, result.stderr
    return job_row(conn, job_id)


def _oracle(source: Path, conn: psycopg.Connection[Any], query: str, **options: Any) -> tuple:
    shapes = [shapely.from_wkb(r[0]) for r in conn.execute(query)]
    with rasterio.open(source) as src:
        return mask(src, shapes, **options)


@pytest.mark.parametrize(("crop", "all_touched"), [(True, False), (False, True)])
def test_clip_matches_rasterio_mask(db_url: str, conn: psycopg.Connection[Any],
                                    dirs: dict[str, Path], source: Path, crop: bool,
                                    all_touched: bool) -> None:
    conn.execute("CREATE TABLE public.some_counties AS SELECT * FROM public.georgia_counties "
                 "WHERE fid % 6 = 0")
    row = _run(db_url, conn, dirs, {"raster": "ga/field.tif", "clip_table": "some_counties",
                                    "output_raster": "clips/some.tif", "crop": crop,
                                    "all_touched": all_touched})
    assert row["status"] == "completed", row["error"]
    expected, transform = _oracle(source, conn, "SELECT ST_AsBinary(geom) FROM "
                                  "public.some_counties", crop=crop, all_touched=all_touched)
    out = dirs["outputs"] / "clips" / "some.tif"
    with rasterio.open(out) as got:
        np.testing.assert_array_equal(got.read(), expected)
        assert got.transform == transform and got.crs.to_epsg() == 26916
        assert got.nodata == -32768 and got.dtypes == ("int16", "int16")
    result = row["result"]
    assert result["output_raster"] == "clips/some.tif"
    assert (result["height"], result["width"], result["bands"]) == expected.shape[1:] + (2,)
    assert result["valid_pixels"] == int((expected != -32768).any(axis=0).sum())
    assert result["crs"] == "EPSG:26916" and result["nodata"] == -32768
    assert [p.name for p in out.parent.iterdir()] == ["some.tif"]


def test_clip_layer_in_another_srid(db_url: str, conn: psycopg.Connection[Any],
                                    dirs: dict[str, Path], source: Path) -> None:
    conn.execute("CREATE TABLE public.ll_counties AS SELECT fid, ST_Transform(geom, 4326) "
                 "AS geom FROM public.georgia_counties WHERE fid % 5 = 0")
    row = _run(db_url, conn, dirs, {"raster": "ga/field.tif", "clip_table": "ll_counties"})
    assert row["status"] == "completed", row["error"]
    assert row["result"]["output_raster"] == f"raster_clip_{row['id']}.tif"
    expected, transform = _oracle(source, conn, "SELECT ST_AsBinary(ST_Transform(geom, 26916)) "
                                  "FROM public.ll_counties", crop=True)
    with rasterio.open(dirs["outputs"] / row["result"]["output_raster"]) as got:
        np.testing.assert_array_equal(got.read(), expected)
        assert got.transform == transform


def test_clip_layer_missing_the_raster(db_url: str, conn: psycopg.Connection[Any],
                                       dirs: dict[str, Path], source: Path) -> None:
    conn.execute("CREATE TABLE public.west AS SELECT * FROM public.us_states "
                 "WHERE state_name IN ('Washington', 'Oregon')")
    row = _run(db_url, conn, dirs, {"raster": "ga/field.tif", "clip_table": "west"})
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith("clip_table:") and "do not overlap" in row["error"]
    assert list(dirs["outputs"].iterdir()) == []


@pytest.mark.parametrize(("params", "field"), [
    ({"raster": "/etc/passwd"}, "raster"),
    ({"raster": "../outside/x.tif"}, "raster"),
    ({"raster": "ga/../../outside/x.tif"}, "raster"),
    ({"raster": "link_out/x.tif"}, "raster"),
    ({"raster": "ga/none.tif"}, "raster"),
    ({"output_raster": "/tmp/evil.tif"}, "output_raster"),
    ({"output_raster": "../outside/evil.tif"}, "output_raster"),
    ({"output_raster": "link_out/evil.tif"}, "output_raster"),
    ({"output_raster": "evil.sh"}, "output_raster"),
    ({"nodata": 1e9}, "nodata"),
    ({"clip_table": "public.nope"}, "clip_table"),
    ({"crop": "sometimes"}, "params.crop"),
])
def test_unsafe_or_bad_params_fail_at_once(db_url: str, conn: psycopg.Connection[Any],
                                           dirs: dict[str, Path], source: Path,
                                           params: dict[str, Any], field: str) -> None:
    (dirs["outside"] / "x.tif").write_bytes(source.read_bytes())
    os.symlink(dirs["outside"], dirs["rasters"] / "link_out")
    os.symlink(dirs["outside"], dirs["outputs"] / "link_out")
    before = sorted(p.name for p in dirs["outside"].iterdir())
    base = {"raster": "ga/field.tif", "clip_table": "public.georgia_counties"}
    row = _run(db_url, conn, dirs, {**base, **params})
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"].startswith(field), row["error"]
    assert sorted(p.name for p in dirs["outside"].iterdir()) == before
    assert sorted(p.name for p in dirs["outputs"].iterdir()) == ["link_out"]
    assert not Path("/tmp/evil.tif").exists()


def test_existing_output_needs_overwrite(db_url: str, conn: psycopg.Connection[Any],
                                         dirs: dict[str, Path], source: Path) -> None:
    params = {"raster": "ga/field.tif", "clip_table": "public.georgia_counties",
              "output_raster": "all.tif"}
    assert _run(db_url, conn, dirs, params)["status"] == "completed"
    first = (dirs["outputs"] / "all.tif").stat().st_mtime_ns
    second = _run(db_url, conn, dirs, params)
    assert second["status"] == "failed" and second["error"].startswith("output_raster")
    assert (dirs["outputs"] / "all.tif").stat().st_mtime_ns == first
    third = _run(db_url, conn, dirs, {**params, "overwrite": True, "crop": False})
    assert third["status"] == "completed", third["error"]
    with rasterio.open(dirs["outputs"] / "all.tif") as out, rasterio.open(source) as src:
        assert (out.width, out.height) == (src.width, src.height)


def test_cancel_of_a_running_clip_leaves_no_file(db_url: str, conn: psycopg.Connection[Any],
                                                 dirs: dict[str, Path]) -> None:
    """Cancelled while it writes (its temporary tiles file is on disk): the job process is
    killed, the worker removes the job's scratch directory, no file is left in the output
    directory, and the worker runs the next job."""
    import signal
    import time

    from tests.support import start_worker, wait_for

    x0, y0, x1, y1 = conn.execute(
        "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
        "(SELECT ST_Extent(geom)::geometry AS e FROM public.georgia_counties) s").fetchone()
    size = 6000  # about 60 m pixels over Georgia: seconds of tiles and DEFLATE
    rng = np.random.default_rng(5)
    path = dirs["rasters"] / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1,
                       dtype="int16", crs="EPSG:26916", tiled=True,
                       transform=from_origin(x0, y1, (x1 - x0) / size, (y1 - y0) / size)) as dst:
        for row in range(0, size, 1000):
            dst.write(rng.integers(-500, 500, (1, 1000, size)).astype("int16"),
                      window=((row, row + 1000), (0, size)))
    params = {"raster": "big.tif", "clip_table": "public.georgia_counties",
              "output_raster": "big_clip.tif"}
    job = queue.enqueue(conn, "raster_clip", params)
    worker = start_worker(db_url, "raster_clip", GEOJOBS_RASTER_DIR=str(dirs["rasters"]),
                          GEOJOBS_OUTPUT_DIR=str(dirs["outputs"]))
    try:
        scratch = dirs["outputs"] / f".partial-{job}"
        wait_for(lambda: scratch.is_dir() and any(scratch.iterdir()), timeout=120, interval=0.02)
        assert job_row(conn, job)["status"] == "running"
        cancelled_at = time.monotonic()
        assert queue.cancel(conn, job)
        wait_for(lambda: not scratch.exists(), timeout=10, interval=0.02)
        assert time.monotonic() - cancelled_at < 2.0
        assert list(dirs["outputs"].iterdir()) == []
        assert job_row(conn, job)["status"] == "cancelled"
        # the worker lives and takes the next job (a small clip that completes)
        small = queue.enqueue(conn, "raster_clip", {**params, "output_raster": "small.tif",
                                                     "clip_filter": [{"column": "fid", "op": "=",
                                                                      "value": 1}]})
        wait_for(lambda: job_row(conn, small)["status"] in ("completed", "failed"), timeout=120)
        assert job_row(conn, small)["status"] == "completed", job_row(conn, small)["error"]
        assert [p.name for p in dirs["outputs"].iterdir()] == ["small.tif"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
