"""Downloads of whole result tables: ``GET /jobs/{id}/results?f=...`` on a real uvicorn server.

Each file is read back with pyogrio / geopandas (independent readers) and compared with the
table as PostGIS itself returns it (``geopandas.read_postgis`` of ``ST_AsBinary``): feature
count, attributes and geometries.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def ogr_count(path: Path) -> int:
    """The feature count GDAL's own ``ogrinfo`` (Debian's gdal-bin) reads in ``path``."""
    done = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = re.findall(r"^Feature Count: (\d+)$", done.stdout, re.MULTILINE)
    assert len(counts) == 1, done.stdout
    return int(counts[0])


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
    if FORMATS[fmt].driver is not None and shutil.which("ogrinfo"):  # Debian's GDAL: no Parquet
        assert ogr_count(path) == len(want)


BIG = "results.dl_points"
BIG_ROWS = 300_000


@pytest.fixture(scope="module")
def big_job(api: ApiServer) -> str:
    """A completed job of alice's whose result is 300,000 random points with random labels:
    over 10 MB in any format, even compressed, more than the pipes and sockets between the
    export and the client hold."""
    with api.connect() as conn:
        table = sql.Identifier(*BIG.split("."))
        conn.execute(sql.SQL(
            "CREATE TABLE {} AS SELECT g AS id, md5(random()::text) AS label, "
            "ST_SetSRID(ST_MakePoint(random() * 360 - 180, random() * 180 - 90), 4326) AS geom "
            "FROM generate_series(1, {}) AS g").format(table, BIG_ROWS))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO geojobs_api").format(table))
        return completed_job(conn, BIG)


def completed_job(conn: Any, table: str) -> str:
    """The id of a completed job of alice's whose result names ``table``."""
    row = conn.execute(
        "INSERT INTO background_jobs (job_type, params, status, result, submitted_by, "
        "finished_at) VALUES ('dissolve', '{}', 'completed', %s, 'alice', now()) "
        "RETURNING id", (json.dumps({"output_table": table}),)).fetchone()
    assert row is not None
    return str(row[0])


def export_queries(api: ApiServer) -> list[str]:
    """The queries reading the big table that run on the server now (the export's COPY)."""
    with api.connect() as conn:
        rows = conn.execute("SELECT query FROM pg_stat_activity WHERE state = 'active' "
                            "AND backend_type = 'client backend' "
                            "AND query LIKE %s AND pid <> pg_backend_pid()",
                            (f"%{BIG.split('.')[1]}%",)).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize("fmt", [k for k, f in sorted(FORMATS.items()) if f.streams])
def test_streaming_formats_send_bytes_while_the_export_runs(
        api: ApiServer, big_job: str, fmt: str, tmp_path: Path) -> None:
    """The first bytes arrive while PostgreSQL still sends the rows (a client that reads slowly
    holds the export back); the whole file, read on, has every row; GDAL reads it."""
    path = tmp_path / f"big{FORMATS[fmt].suffix}"
    with api.client("alice") as http, \
            http.stream("GET", f"/jobs/{big_job}/results", params={"f": fmt}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(FORMATS[fmt].media_type)
        assert 'filename="dl_points' in response.headers["content-disposition"]
        chunks = response.iter_raw()
        first = next(chunks)
        time.sleep(1)  # the pipes fill up; the export waits for this client
        assert len(export_queries(api)) == 1, "the export had finished before the first byte"
        with path.open("wb") as out:
            out.write(first)
            for chunk in chunks:
                out.write(chunk)
    if fmt == "parquet":
        assert pq.read_metadata(path).num_rows == BIG_ROWS
        assert pq.read_metadata(path).metadata[b"geojobs_job_id"].decode() == big_job
    elif shutil.which("ogrinfo"):
        assert ogr_count(path) == BIG_ROWS


def test_a_client_that_leaves_ends_the_export(api: ApiServer, big_job: str) -> None:
    with api.client("alice") as http, \
            http.stream("GET", f"/jobs/{big_job}/results", params={"f": "geojson"}) as response:
        assert response.status_code == 200
        next(response.iter_raw())
        assert len(export_queries(api)) == 1
    deadline = time.monotonic() + 20
    while export_queries(api) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert export_queries(api) == []


def test_an_error_before_the_first_byte_is_a_problem(api: ApiServer, tmp_path: Path) -> None:
    """A result table that is gone: 400 naming jobID, in every format, nothing streamed."""
    with api.connect() as conn:
        job = completed_job(conn, "results.dl_gone")
    with api.client("alice") as http:
        for fmt in sorted(FORMATS):
            response = http.get(f"/jobs/{job}/results", params={"f": fmt})
            assert response.status_code == 400, (fmt, response.text)
            assert response.json()["field"] == "jobID"
            assert "results.dl_gone" in response.json()["detail"]


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


def _export_children(api: ApiServer) -> dict[int, list[str]]:
    """The API process's child processes running ``geojobs.export``: pid -> command line."""
    children = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().decode().split("\0")[:-1]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == api.process.pid and "geojobs.export" in argv:
            children[int(proc.name)] = argv
    return children


def test_a_spare_export_process_takes_the_next_download(api: ApiServer, job_id: str) -> None:
    """After a streamed download one export process waits, its imports done, with nothing on its
    command line but ``--stdin`` (the request, database URL included, comes on its standard
    input); the next download takes it and another spare is started."""
    with api.client("alice") as http:
        assert http.get(f"/jobs/{job_id}/results", params={"f": "csv"}).status_code == 200
        spares = _export_children(api)
        assert [argv[-2:] for argv in spares.values()] == [["geojobs.export", "--stdin"]]
        response = http.get(f"/jobs/{job_id}/results", params={"f": "geojson"})
        assert response.status_code == 200 and response.json()["type"] == "FeatureCollection"
    deadline = time.monotonic() + 20
    while len(after := _export_children(api)) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(after) == 1 and not set(after) & set(spares), (spares, after)
