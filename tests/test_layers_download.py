"""Downloads of whole result tables: ``GET /jobs/{id}/results?f=...`` on a real uvicorn server.

Each file is read back with pyogrio / geopandas (independent readers) and compared with the
table as PostGIS itself returns it (``geopandas.read_postgis`` of ``ST_AsBinary``): feature
count, attributes and geometries.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from psycopg import sql

from geojobs.export import FORMATS, export_table
from tests.api_support import ApiServer, api_server
from tests.support import ROOT

pytestmark = pytest.mark.db

TABLE = "results.dl_regions"


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    yield from api_server(template_db, tmp_path_factory.mktemp("layers"),
                          users={"alice": False, "bob": False}, workers=("dissolve",))


@pytest.fixture(scope="module")
def job_id(api: ApiServer) -> str:
    with api.client("alice") as http:
        response = http.post("/processes/dissolve/execution", headers={"Prefer": "wait=60"},
                             json={"inputs": {"input_table": "public.us_states",
                                              "by": ["sub_region"], "output_table": TABLE}})
        info = response.json()
        assert info["status"] == "successful", info
        return str(info["jobID"])


def oracle(api: ApiServer, table: str) -> gpd.GeoDataFrame:
    """The table as PostGIS returns it: every column, the geometry as ST_AsBinary."""
    schema, name = table.split(".")
    with api.connect() as conn:
        geom = conn.execute(
            "SELECT f_geometry_column FROM geometry_columns WHERE f_table_schema = %s "
            "AND f_table_name = %s", (schema, name)).fetchone()[0]  # type: ignore[index]
        cur = conn.execute(sql.SQL("SELECT *, ST_AsBinary({}) AS oracle_wkb FROM {}").format(
            sql.Identifier(geom), sql.Identifier(schema, name)))
        names = [d.name for d in cur.description or []]
        frame = pd.DataFrame(cur.fetchall(), columns=names)
    geometry = gpd.GeoSeries.from_wkb(frame["oracle_wkb"].map(bytes), crs=4326)
    return gpd.GeoDataFrame(frame.drop(columns=[geom, "oracle_wkb"]), geometry=geometry)


def same_features(got: gpd.GeoDataFrame, want: gpd.GeoDataFrame, key: str, *,
                  text: bool = False) -> None:
    """Equal count, attribute values (by key) and geometries (exact, normalised)."""
    assert len(got) == len(want)
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    for column in want.columns:
        if column in (want.geometry.name, "fid"):
            continue
        left, right = list(got[column]), list(want[column])
        if text:
            right = [str(v) for v in right]
            left = [str(v) for v in left]
        assert left == right, column
    assert shapely.equals_exact(shapely.normalize(got.geometry.values),
                                shapely.normalize(want.geometry.values), tolerance=1e-9).all()


def read_back(content: bytes, fmt: str, tmp_path: Path) -> gpd.GeoDataFrame:
    path = tmp_path / f"download{FORMATS[fmt].suffix}"
    path.write_bytes(content)
    if fmt == "parquet":
        return gpd.read_parquet(path)
    if fmt == "csv":
        frame = pd.read_csv(io.BytesIO(content))
        return gpd.GeoDataFrame(frame.drop(columns="WKT"),
                                geometry=gpd.GeoSeries.from_wkt(frame["WKT"]))
    return pyogrio.read_dataframe(path)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_download_equals_the_table(api: ApiServer, job_id: str, fmt: str, tmp_path: Path) -> None:
    want = oracle(api, TABLE)
    with api.client("alice") as http:
        response = http.get(f"/jobs/{job_id}/results", params={"f": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FORMATS[fmt].media_type)
    assert "attachment" in response.headers["content-disposition"]
    got = read_back(response.content, fmt, tmp_path)
    same_features(got, want, "sub_region", text=fmt == "csv")
    if fmt != "csv":
        assert got.crs.to_epsg() == 4326
    path = tmp_path / f"download{FORMATS[fmt].suffix}"
    if fmt == "gpkg":
        meta = pyogrio.read_info(path)["dataset_metadata"]
        assert meta["geojobs_job_id"] == job_id and meta["geojobs_job_type"] == "dissolve"
        assert json.loads(meta["geojobs_params"])["output_table"] == TABLE
        assert meta["geojobs_finished_at"]
    if fmt == "parquet":
        kv = pq.read_metadata(path).metadata
        assert kv[b"geojobs_job_id"].decode() == job_id
        assert json.loads(kv[b"geojobs_params"])["by"] == ["sub_region"]
        geo = json.loads(kv[b"geo"])
        assert geo["version"] == "1.1.0"
        column = geo["columns"][geo["primary_column"]]  # the table's geometry column name
        assert column["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
        assert column["geometry_types"] == sorted(set(want.geometry.geom_type))
        assert column["bbox"] == pytest.approx(list(want.total_bounds))
        bbox = pq.read_table(path, columns=["bbox"]).column("bbox").to_pylist()
        bounds = want.sort_values("sub_region").geometry.bounds
        table = pq.read_table(path).to_pandas().sort_values("sub_region")
        assert [b["xmin"] for b in table["bbox"]] == pytest.approx(list(bounds["minx"]))
        assert len(bbox) == len(want)
    if fmt == "fgb":
        assert pyogrio.read_info(path)["capabilities"]["fast_spatial_filter"]


def test_other_users_and_bad_format(api: ApiServer, job_id: str) -> None:
    with api.client("bob") as http:
        response = http.get(f"/jobs/{job_id}/results", params={"f": "gpkg"})
        assert response.status_code == 404
        assert response.json()["field"] == "jobID"
    with api.client("alice") as http:
        response = http.get(f"/jobs/{job_id}/results", params={"f": "shp"})
        assert response.status_code == 400
        assert response.json()["field"] == "f" and "gpkg" in response.json()["detail"]
        assert response.headers["content-type"].startswith("application/problem+json")
        assert http.get(f"/jobs/{job_id}/results").json()["result"]["output_table"] == TABLE


@pytest.mark.parametrize("fmt", ["gpkg", "parquet", "fgb"])
def test_chunked_export_keeps_every_row(api: ApiServer, fmt: str, tmp_path: Path) -> None:
    """Chunks of 7 rows (48 states): every row and geometry arrives once, in order of the COPY."""
    path = tmp_path / f"states{FORMATS[fmt].suffix}"
    with api.connect() as conn:
        count = export_table(conn, "public.us_states", FORMATS[fmt], path, {"k": "v"},
                             chunk_rows=7)
    want = oracle(api, "public.us_states")
    assert count == len(want)
    got = gpd.read_parquet(path) if fmt == "parquet" else pyogrio.read_dataframe(path)
    same_features(got, want, "state_name")


def run_cli(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=api.db_url, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "geojobs.cli", "export", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_export_of_a_job_and_of_a_table(api: ApiServer, job_id: str, tmp_path: Path) -> None:
    out = tmp_path / "regions.gpkg"
    done = run_cli(api, job_id, "--format", "gpkg", "-o", str(out))
    assert done.returncode == 0, done.stderr
    same_features(pyogrio.read_dataframe(out), oracle(api, TABLE), "sub_region")
    assert pyogrio.read_info(out)["dataset_metadata"]["geojobs_job_id"] == job_id
    states = tmp_path / "states.parquet"
    done = run_cli(api, "--table", "public.us_states", "-o", str(states))
    assert done.returncode == 0, done.stderr
    same_features(gpd.read_parquet(states), oracle(api, "public.us_states"), "state_name")


def test_cli_export_bad_input(api: ApiServer, job_id: str, tmp_path: Path) -> None:
    done = run_cli(api, job_id, "-o", str(tmp_path / "x.shp"))
    assert done.returncode != 0 and "--format" in done.stderr
    assert not (tmp_path / "x.shp").exists()
    done = run_cli(api, "999999", "-o", str(tmp_path / "x.gpkg"))
    assert done.returncode != 0 and "JOB_ID" in done.stderr
    done = run_cli(api, "--table", "results.nope", "-o", str(tmp_path / "x.gpkg"))
    assert done.returncode != 0 and "results.nope" in done.stderr
    assert not (tmp_path / "x.gpkg").exists()
    existing = tmp_path / "kept.gpkg"
    existing.write_text("keep")
    done = run_cli(api, job_id, "-o", str(existing))
    assert done.returncode != 0 and "--overwrite" in done.stderr
    assert existing.read_text() == "keep"
