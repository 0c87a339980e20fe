"""A raster_clip result over HTTP: the results document links the COG, the file downloads, reads
back equal to rasterio.mask on the same polygons (the oracle), only for its owner, and goes
away with a dismiss."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.io import MemoryFile
from rasterio.mask import mask
from rasterio.transform import from_origin

from tests.api_support import ApiServer, api_server
from tests.support import WORKER_ROLE, as_role, run_worker

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded 1-band int16 raster over central Georgia (UTM 16N) with nodata holes."""
    root = tmp_path_factory.mktemp("rasters")
    rng = np.random.default_rng(11)
    data = rng.integers(-300, 300, (1, 300, 400)).astype("int16")
    data[:, rng.random((300, 400)) < 0.02] = -32768
    with rasterio.open(root / "field.tif", "w", driver="GTiff", width=400, height=300, count=1,
                       dtype="int16", crs="EPSG:26916", nodata=-32768,
                       transform=from_origin(700_000, 3_700_000, 1000, 1000)) as dst:
        dst.write(data)
    return root


@pytest.fixture(scope="module")
def api(template_db: str, rasters: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from api_server(template_db, tmp_path_factory.mktemp("api"),
                          users={"alice": False, "bob": False}, GEOJOBS_RASTER_DIR=str(rasters))


def test_cog_download_matches_rasterio_mask(api: ApiServer, rasters: Path) -> None:
    alice, bob = api.client("alice"), api.client("bob")
    answer = alice.post("/processes/raster_clip/execution", json={"inputs": {
        "raster": "field.tif", "clip_table": "public.georgia_counties"}})
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["jobID"]
    assert alice.get(f"/jobs/{job_id}/results/cog").status_code == 404  # not run yet

    ran = run_worker(as_role(api.db_url, WORKER_ROLE), "raster_clip",
                     GEOJOBS_RASTER_DIR=str(rasters), GEOJOBS_OUTPUT_DIR=str(api.output_dir))
    assert ran.returncode == 0, ran.stderr
    document = alice.get(f"/jobs/{job_id}/results").json()
    href = document["cog"]["href"]
    assert href.endswith(f"/jobs/{job_id}/results/cog")

    download = alice.get(href)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("image/tiff")
    assert "no-store" in download.headers["cache-control"]
    with api.connect() as conn:
        shapes = [shapely.from_wkb(row[0]) for row in conn.execute(
            "SELECT ST_AsBinary(geom) FROM public.georgia_counties")]
    with rasterio.open(rasters / "field.tif") as src:
        expected, transform = mask(src, shapes, crop=True)
    with MemoryFile(download.content) as memory, memory.open() as got:
        assert got.profile["tiled"] and got.crs.to_epsg() == 26916
        assert got.transform.almost_equals(transform)
        np.testing.assert_array_equal(got.read(), expected)

    assert bob.get(href).status_code == 404  # another user's file is invisible
    assert alice.delete(f"/jobs/{job_id}").status_code == 200
    assert alice.get(href).status_code == 404
    assert list(api.output_dir.rglob("*.tif")) == []
