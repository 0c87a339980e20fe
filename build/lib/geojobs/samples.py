"""Real sample layers for the demo and the notebooks, from libpysal's bundled examples.

No network: every file ships inside the libpysal package. The shapefiles carry no .prj, so
each sample names its CRS here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import psycopg

from geojobs.layers import write_layer

__all__ = ["SAMPLES", "Sample", "load_sample", "read_sample"]


@dataclass(frozen=True)
class Sample:
    """A libpysal example file, the CRS it is in and the table it is loaded into."""

    file: str
    srid: int
    table: str
    description: str
    panel_csv: str | None = None  # libpysal CSV joined on state_fips, one column per year


SAMPLES: dict[str, Sample] = {
    "us_states": Sample("us48.shp", 4326, "public.us_states",
                        "48 US states with their census sub-region (libpysal us_income)"),
    "georgia": Sample("G_utm.shp", 26916, "public.georgia_counties",
                      "159 Georgia counties, UTM 16N, with 1990 census rates (libpysal georgia)"),
    "nc_sids": Sample("sids2.shp", 4267, "public.nc_counties",
                      "100 North Carolina counties with SIDS rates 1974-84 (libpysal sids2)"),
    "us_income": Sample("us48.shp", 4326, "public.us_income",
                        "48 US states with per capita income 1929-2009, columns y1929..y2009 "
                        "(libpysal us_income)", panel_csv="usjoin.csv"),
}


def read_sample(name: str) -> gpd.GeoDataFrame:
    """Read a sample layer with lower-case column names and its CRS set."""
    from libpysal import examples

    sample = SAMPLES[name]
    gdf = gpd.read_file(examples.get_path(sample.file))
    gdf.columns = [c.lower() if c != gdf.geometry.name else c for c in gdf.columns]
    if sample.panel_csv:
        import pandas as pd

        panel = pd.read_csv(examples.get_path(sample.panel_csv)).drop(columns="Name")
        panel.columns = ["state_fips", *(f"y{c}" for c in panel.columns[1:])]
        gdf = gdf.astype({"state_fips": int}).merge(panel, on="state_fips")
    return gdf.set_crs(sample.srid, allow_override=True)


def load_sample(conn: psycopg.Connection[Any], name: str) -> str:
    """(Re)load a sample into PostGIS; returns its table name."""
    sample = SAMPLES[name]
    gdf = read_sample(name)
    with conn.transaction():
        write_layer(conn, gdf, sample.table, srid=sample.srid, overwrite=True)
    return sample.table
