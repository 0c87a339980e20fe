"""clip_raster() against rasterio.mask.mask with the same options, pixel for pixel.

The raster is made here from real data: Georgia's counties burnt into three
bands (population, % rural, % poverty, plus seeded noise), with a nodata
value outside the state and in scattered holes, on a grid that leaves part of
the state off the raster so some clip polygons are only partly covered.
"""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import geopandas as gpd
import libpysal
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.mask import mask
from rasterio.transform import from_origin

from analysis import raster_clip
from analysis.errors import AnalysisError
from analysis.raster_clip import clip_raster

NODATA = -9999


@pytest.fixture(scope="module")
def georgia() -> gpd.GeoDataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gpd.read_file(libpysal.examples.get_path("G_utm.shp")).set_crs(26916)


def burn(georgia: gpd.GeoDataFrame, path: Path, dtype: str, nodata: float | None,
         res: float = 600.0, bands: tuple[str, ...] = ("TotPop90", "PctRural", "PctPov")) -> Path:
    x0, y0, x1, y1 = georgia.total_bounds
    # shifted east and south so the west and north of the state fall off the raster
    transform = from_origin(x0 + 60_000, y1 - 45_000, res, res)
    width, height = int((x1 - x0) / res), int((y1 - y0) / res)
    rng = np.random.default_rng(7)
    layers = []
    for column in bands:
        values = rasterize(zip(georgia.geometry, georgia[column], strict=True),
                           out_shape=(height, width), transform=transform, fill=np.nan,
                           dtype="float64")
        values += rng.normal(0, 1, values.shape)
        layers.append(values)
    data = np.stack(layers)
    holes = np.isnan(data) | (rng.random(data.shape[1:]) < 0.03)
    data = np.clip(np.nan_to_num(data), 0, np.iinfo("int16").max if dtype != "uint8" else 250)
    data = data.astype(dtype)
    if nodata is not None:
        data[:, holes.any(axis=0)] = nodata
    profile = {"driver": "GTiff", "width": width, "height": height, "count": len(bands),
               "dtype": dtype, "crs": georgia.crs, "transform": transform, "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def source(georgia, tmp_path_factory) -> Path:
    return burn(georgia, tmp_path_factory.mktemp("src") / "georgia.tif", "int16", NODATA)


@pytest.fixture(scope="module")
def clip(georgia) -> gpd.GeoDataFrame:
    # counties on every side, some crossing the raster's west and north edges
    west = georgia.geometry.centroid.x.nsmallest(6).index
    north = georgia.geometry.centroid.y.nlargest(6).index
    middle = georgia.index[::9]
    return georgia.loc[sorted({*west, *north, *middle})]


def oracle(source: Path, shapes: gpd.GeoDataFrame, nodata: float, **options) -> tuple:
    with rasterio.open(source) as src:
        expected, transform = mask(src, list(shapes.to_crs(src.crs).geometry), nodata=nodata,
                                   **options)
        kept, _ = mask(src, list(shapes.to_crs(src.crs).geometry), filled=False, **options)
        return expected, transform, src.crs, src.dtypes[0], kept


def assert_matches(result, source, shapes, **options) -> None:
    expected, transform, crs, dtype, kept = oracle(source, shapes, result.nodata, **options)
    with rasterio.open(result.path) as out:
        got = out.read()
        assert out.transform == transform
        assert out.crs == crs
        assert out.dtypes[0] == dtype
        assert out.count == expected.shape[0]
        assert out.nodata == result.nodata or (np.isnan(out.nodata) and np.isnan(result.nodata))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert (result.height, result.width, result.bands) == expected.shape[1:] + expected.shape[:1]
    assert result.valid_pixels == int((~np.ma.getmaskarray(kept)).any(axis=0).sum())


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("all_touched", [False, True])
def test_matches_rasterio_mask(source, clip, tmp_path, crop, all_touched):
    result = clip_raster(source, clip, tmp_path / "out.tif", crop=crop, all_touched=all_touched)
    assert result.nodata == NODATA
    assert result.valid_pixels > 1000
    assert_matches(result, source, clip, crop=crop, all_touched=all_touched)


def test_many_small_tiles_stitch_exactly(source, clip, tmp_path, monkeypatch):
    monkeypatch.setattr(raster_clip, "TILE", 48)
    result = clip_raster(source, clip, tmp_path / "out.tif", all_touched=True)
    assert_matches(result, source, clip, crop=True, all_touched=True)
    with rasterio.open(result.path) as out:
        assert out.block_shapes[0] == (48, 48)


def test_output_is_a_cloud_optimised_geotiff(source, georgia, tmp_path):
    big = clip_raster(source, georgia, tmp_path / "big.tif")
    with rasterio.open(source) as src:
        centre = shapely.Point(src.xy(src.height // 2, src.width // 2))
    small = clip_raster(source, georgia[georgia.contains(centre)], tmp_path / "small.tif")
    assert big.width > 512 and big.height > 512
    with rasterio.open(big.path) as out:
        assert out.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert out.compression.name == "deflate"
        assert out.block_shapes[0] == (512, 512)
        assert out.overviews(1) and out.overviews(3)
    with rasterio.open(small.path) as out:
        assert max(out.width, out.height) <= 512
        assert out.overviews(1) == []
    assert_matches(big, source, georgia, crop=True)


def test_clip_layer_in_another_crs(source, clip, tmp_path):
    lonlat = clip.to_crs(4326)
    result = clip_raster(source, lonlat, tmp_path / "out.tif")
    assert result.crs == "EPSG:26916"
    assert_matches(result, source, lonlat, crop=True)


def test_float_without_nodata_defaults_to_nan(georgia, clip, tmp_path):
    source = burn(georgia, tmp_path / "float.tif", "float32", None)
    result = clip_raster(source, clip, tmp_path / "out.tif")
    assert np.isnan(result.nodata)
    expected, transform, *_ = oracle(source, clip, float("nan"), crop=True)
    with rasterio.open(result.path) as out:
        np.testing.assert_array_equal(out.read(), expected)  # NaN == NaN here
        assert out.transform == transform


def test_integers_without_nodata_get_a_value_outside_the_data(georgia, clip, tmp_path):
    source = burn(georgia, tmp_path / "byte.tif", "uint8", None)
    result = clip_raster(source, clip, tmp_path / "out.tif")
    *_, kept = oracle(source, clip, 0, crop=True)
    assert result.nodata == 255
    assert not (kept.compressed() == result.nodata).any()
    assert_matches(result, source, clip, crop=True)


def test_explicit_nodata_replaces_the_source_nodata(source, clip, tmp_path):
    result = clip_raster(source, clip, tmp_path / "out.tif", nodata=-1)
    assert result.nodata == -1
    assert_matches(result, source, clip, crop=True)
    with pytest.raises(AnalysisError) as err:
        clip_raster(source, clip, tmp_path / "bad.tif", nodata=1e6)
    assert err.value.field == "nodata"


def test_clip_layer_missing_the_raster_fails_clearly(source, georgia, tmp_path):
    elsewhere = georgia.iloc[:3].translate(xoff=2_000_000)
    with pytest.raises(AnalysisError, match="do not overlap the raster") as err:
        clip_raster(source, elsewhere, tmp_path / "out.tif")
    assert err.value.field == "clip_table"
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_failures_leave_no_partial_file(source, clip, tmp_path, monkeypatch):
    out = tmp_path / "out.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(AnalysisError, match="already exists") as err:
        clip_raster(source, clip, out)
    assert err.value.field == "output_raster"
    assert out.read_bytes() == b"keep me"

    def broken_copy(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(raster_clip.rasterio.shutil, "copy", broken_copy)
    with pytest.raises(RuntimeError):
        clip_raster(source, clip, out, overwrite=True)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    monkeypatch.undo()
    result = clip_raster(source, clip, out, overwrite=True)
    assert_matches(result, source, clip, crop=True)


def test_reads_only_under_the_polygon(georgia, tmp_path):
    """Python-side peak memory stays near the output, far below the source."""
    x0, y0, x1, y1 = georgia.total_bounds
    width = height = 4000
    res = max(x1 - x0, y1 - y0) / width
    transform = from_origin(x0, y1, res, res)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": "float32", "crs": georgia.crs, "transform": transform, "nodata": -1,
               "tiled": True, "compress": "deflate"}
    source = tmp_path / "large.tif"
    with rasterio.open(source, "w", **profile) as dst:
        row = np.arange(width, dtype="float32")
        for top in range(0, height, 500):
            dst.write(np.tile(row + top, (1, 500, 1)), window=((top, top + 500), (0, width)))
    county = georgia.iloc[[int(georgia.area.idxmax())]]  # about 1/100 of the raster
    tracemalloc.start()
    try:
        result = clip_raster(source, county, tmp_path / "out.tif")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    source_bytes = width * height * 4
    assert result.width * result.height * 4 < source_bytes / 20
    assert peak < source_bytes / 8, f"peak {peak / 2**20:.1f} MiB"
    assert_matches(result, source, county, crop=True)
