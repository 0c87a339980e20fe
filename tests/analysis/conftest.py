"""Real datasets bundled with libpysal (no network), shared by the hot spot and outlier tests."""

from __future__ import annotations

import os

import geopandas as gpd
import pandas as pd
import pytest
from libpysal import examples


@pytest.fixture(scope="session")
def columbus() -> gpd.GeoDataFrame:
    """49 Columbus, OH neighbourhoods (polygons, no CRS) with CRIME."""
    return gpd.read_file(examples.get_path("columbus.shp"))


@pytest.fixture(scope="session")
def tokyo() -> gpd.GeoDataFrame:
    """262 Tokyo municipalities (EPSG:30166) with 10 islands under contiguity, and the
    standardised mortality ratio of ages 25-64 (observed / expected deaths)."""
    folder = os.path.dirname(examples.get_path("tokyomet262.shp"))
    gdf = gpd.read_file(os.path.join(folder, "tokyomet262.shp"))
    table = pd.read_csv(os.path.join(folder, "Tokyomortality.csv"))
    assert (table["IDnum0"].to_numpy() == gdf["AreaID"].to_numpy()).all()
    gdf["smr"] = table["db2564"].to_numpy() / table["eb2564"].to_numpy()
    return gdf


@pytest.fixture(scope="session")
def baltimore() -> gpd.GeoDataFrame:
    """211 Baltimore house sales (points, local planar coordinates) with PRICE."""
    return gpd.read_file(examples.get_path("baltim.shp"))


@pytest.fixture(scope="session")
def mexico() -> gpd.GeoDataFrame:
    """32 Mexican states in longitude/latitude (EPSG:4326) with per-capita GDP."""
    return gpd.read_file(examples.get_path("mexicojoin.shp")).set_crs(4326)


@pytest.fixture(scope="session")
def burkitt() -> gpd.GeoDataFrame:
    """188 cases of Burkitt's lymphoma in Uganda (point incidents, planar km)."""
    return gpd.read_file(examples.get_path("burkitt.shp"))
