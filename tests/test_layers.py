"""Result layers over OGC API - Features and Tiles (tipg in the API app) on a real uvicorn server.

Oracles: PostGIS itself (rows, attributes and geometries as ``ST_AsBinary``; ``ST_AsMVT`` run
directly for the tiles), GDAL's OAPIF driver (Debian's ``ogrinfo``/``ogr2ogr``) as an
independent client, ``mapbox_vector_tile`` as an independent MVT decoder, pyogrio/pyarrow for the
downloads. Users: alice and bob (their own layers), ops (admin).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import mapbox_vector_tile
import morecantile
import psycopg
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from openapi_spec_validator import validate
from psycopg import sql

from geojobs.api.keys import create_key
from tests.api_support import ApiServer, api_server, start_server, stop
from tests.conftest import _create, _drop
from tests.layer_support import complete_job, make_layer
from tests.support import WORKER_ROLE, wait_for
from tests.test_layers_download import ogr_count, oracle, same_features

pytestmark = pytest.mark.db

ALICE = "results.la_grid"
BOB = "results.lb_grid"
REGIONS = "results.la_regions"
VIEW = "results.la_view"
LAYER_ROUTES = ("", "/items", "/items/1", "/queryables", "/tiles", "/tiles/WebMercatorQuad",
                "/tiles/WebMercatorQuad/3/4/2", "/tiles/WebMercatorQuad/tilejson.json",
                "/tiles/WebMercatorQuad/style.json", "/items?f=gpkg")


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    for server in api_server(template_db, tmp_path_factory.mktemp("layers"),
                             users={"alice": False, "bob": False, "ops": True},
                             workers=("dissolve", "create_view")):
        with server.connect() as conn:
            make_layer(conn, ALICE, "alice", cells=6)
            make_layer(conn, BOB, "bob", cells=3)
        with server.client("alice") as http:
            done = http.post("/processes/dissolve/execution", headers={"Prefer": "wait=60"},
                             json={"inputs": {"input_table": "public.us_states",
                                              "by": ["sub_region"], "output_table": REGIONS}})
            assert done.json()["status"] == "successful", done.text
        yield server


def ids(http: Any) -> set[str]:
    response = http.get("/collections")
    assert response.status_code == 200, response.text
    return {c["id"] for c in response.json()["collections"]}


def listed(api: ApiServer, user: str, collection: str, present: bool = True) -> None:
    with api.client(user) as http:
        wait_for(lambda: (collection in ids(http)) == present, timeout=15)


def test_landing_links_conformance_and_openapi(api: ApiServer) -> None:
    with api.client() as http:
        links = http.get("/").json()["links"]
        rels = {link["rel"]: link for link in links}
        assert rels["service-desc"]["type"] == "application/vnd.oai.openapi+json;version=3.0"
        assert rels["data"]["href"] == f"{api.url}/collections"
        conforms = set(http.get("/conformance").json()["conformsTo"])
        for name in ("ogcapi-features-1/1.0/conf/core", "ogcapi-features-1/1.0/conf/geojson",
                     "ogcapi-tiles-1/1.0/conf/mvt", "ogcapi-processes-1/1.0/conf/core"):
            assert f"http://www.opengis.net/spec/{name}" in conforms
        document = http.get("/api").json()
        validate(document)
        assert {"/collections", "/collections/{collectionId}/items",
                "/collections/{collectionId}/tiles/{tileMatrixSetId}/{z}/{x}/{y}",
                "/processes/{processID}/execution"} <= set(document["paths"])


def test_collections_items_and_queryables_match_postgis(api: ApiServer) -> None:
    listed(api, "alice", REGIONS)
    with api.client("alice") as http, api.connect() as conn:
        assert ids(http) == {ALICE, REGIONS}
        meta = http.get(f"/collections/{ALICE}").json()
        extent = conn.execute(f"SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "  # noqa: S608
                              f"(SELECT ST_Extent(geom) e FROM {ALICE}) x").fetchone()
        # tipg gives ST_EstimatedExtent once the table is analyzed (float4, a little larger)
        west, south, east, north = meta["extent"]["spatial"]["bbox"][0]
        assert extent is not None
        assert west <= extent[0] and south <= extent[1] and east >= extent[2] and north >= extent[3]
        assert [west, south, east, north] == pytest.approx(list(extent), abs=0.05)

        page = http.get(f"/collections/{ALICE}/items", params={"limit": 1000}).json()
        want = oracle(api, ALICE)
        assert page["numberMatched"] == page["numberReturned"] == len(want) == 36
        got = gpd.GeoDataFrame.from_features(page["features"], crs=4326)
        got["fid"] = [f["id"] for f in page["features"]]
        same_features(got, want, "fid")

        one = http.get(f"/collections/{ALICE}/items/7").json()
        row = want.set_index("fid").loc[7]
        assert one["properties"]["name"] == row["name"] and one["properties"]["v"] == row["v"]
        assert shapely.geometry.shape(one["geometry"]).equals_exact(row.geometry, 1e-9)

        filtered = http.get(f"/collections/{ALICE}/items",
                            params={"filter": "v > 30 AND flag = true", "limit": 100}).json()
        count = conn.execute(f"SELECT count(*) FROM {ALICE} WHERE v > 30 AND flag").fetchone()  # noqa: S608
        assert filtered["numberMatched"] == (count or [None])[0] > 0
        empty = http.get(f"/collections/{ALICE}/items", params={"f": "csv", "filter": "v > 1000"})
        assert empty.status_code == 200 and empty.text == ""  # tipg's writer broke on no rows
        csv_page = http.get(f"/collections/{ALICE}/items", params={"f": "csv", "limit": 3}).text
        assert csv_page.splitlines()[0].startswith("collectionId,itemId,") and len(csv_page.splitlines()) == 4
        boxed = http.get(f"/collections/{ALICE}/items", params={"bbox": "0.5,40.5,2.5,41.5"}).json()
        count = conn.execute(f"SELECT count(*) FROM {ALICE} WHERE ST_Intersects(geom, "  # noqa: S608
                             "ST_MakeEnvelope(0.5, 40.5, 2.5, 41.5, 4326))").fetchone()
        assert boxed["numberMatched"] == (count or [None])[0] == 6

        queryables = http.get(f"/collections/{ALICE}/queryables")
        assert queryables.headers["content-type"].startswith("application/schema+json")
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'results' "
            "AND table_name = 'la_grid'")}
        assert set(queryables.json()["properties"]) == columns


ITEM_QUERIES = [
    {}, {"limit": 5, "offset": 3}, {"limit": 7, "offset": 35}, {"properties": "v,name"},
    {"properties": ""}, {"sortby": "-v,name"}, {"bbox": "0.5,40.5,2.5,41.5"},
    {"filter": "v > 30 AND flag = true", "limit": 4, "offset": 2}, {"flag": "true"},
    {"ids": "3,5,8"}, {"geom-column": "none"}, {"bbox-only": "true"}, {"simplify": "0.5"},
    {"filter": "S_INTERSECTS(geom, POINT(2.5 42.5))"},
]


@pytest.mark.parametrize("query", ITEM_QUERIES, ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()))
def test_geojson_pages_hold_the_features_tipg_writes(api: ApiServer, query: dict[str, Any]) -> None:
    """A GeoJSON page (built by PostGIS) holds, in order, the features tipg's own writer gives
    for the same query as GeoJSON text sequences (ids, properties, geometry, links); its counts
    are PostGIS's and its paging links those of tipg's pages."""
    with api.client("alice") as http:
        page = http.get(f"/collections/{ALICE}/items", params=query)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "application/geo+json"
        seq = http.get(f"/collections/{ALICE}/items", params={**query, "f": "geojsonseq"})
        assert seq.status_code == 200, seq.text
    body = page.json()
    want = [json.loads(line) for line in seq.text.splitlines() if line]
    assert body["features"] == want
    assert body["numberReturned"] == len(want)
    assert body["type"] == "FeatureCollection" and body["id"] == ALICE
    limit, offset = int(query.get("limit", 10)), int(query.get("offset", 0))
    rels = [link["rel"] for link in body["links"]]
    assert rels[:2] == ["collection", "self"]
    assert ("next" in rels) == (body["numberMatched"] - len(want) > offset)
    assert ("prev" in rels) == (offset > 0)
    for link in body["links"][2:]:
        target = httpx.URL(link["href"])
        expected = offset + len(want) if link["rel"] == "next" else max(offset - limit, 0)
        assert target.params["offset"] == str(expected)
    if not query or query == {"limit": 5, "offset": 3}:
        with api.connect() as conn:
            count = conn.execute(f"SELECT count(*) FROM {ALICE}").fetchone()  # noqa: S608
        assert body["numberMatched"] == (count or [None])[0] == 36


@pytest.mark.parametrize(("table", "columns", "rows"), [
    ("results.la_types", "amount numeric, seen timestamptz",
     "(1, 12.50, '2024-03-01 10:00+02', ST_Point(1, 2, 4326)), "
     "(2, 0.0000001, NULL, ST_Point(3, 4, 4326))"),
    ("results.la_floats", "ratio real, v double precision",
     "(1, 0.1, 'NaN', ST_Point(1, 2, 4326)), (2, NULL, 'Infinity', ST_Point(3, 4, 4326)), "
     "(3, 3.4e38, -1e-300, NULL)"),
])
def test_pages_with_other_column_types_are_tipgs(api: ApiServer, table: str, columns: str,
                                                   rows: str) -> None:
    """Columns whose JSON PostgreSQL writes unlike tipg (numeric: tipg writes a string; time
    stamps) page through tipg; float4, NaN, infinities and a null geometry in GeoJSON pages
    written by PostGIS come out as tipg writes them."""
    with api.connect() as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(WORKER_ROLE)))
        conn.execute(f"CREATE TABLE {table} (fid integer PRIMARY KEY, {columns}, "  # noqa: S608
                     "geom geometry(Point, 4326))")
        conn.execute(f"INSERT INTO {table} VALUES {rows}")  # noqa: S608
        conn.execute("RESET ROLE")
        complete_job(conn, table, "alice")
    listed(api, "alice", table)
    with api.client("alice") as http:
        page = http.get(f"/collections/{table}/items")
        seq = http.get(f"/collections/{table}/items", params={"f": "geojsonseq"})
    assert page.status_code == 200, page.text
    want = [json.loads(line) for line in seq.text.splitlines() if line]
    assert page.json()["features"] == want and len(want) == rows.count("), (") + 1
    if table == "results.la_types":
        assert want[0]["properties"]["amount"] == "12.50"  # tipg's Decimal, as a string
    else:
        assert [f["properties"]["v"] for f in want] == [None, None, -1e-300]
        assert want[0]["properties"]["ratio"] == pytest.approx(0.1) and want[2]["geometry"] is None


def test_tiles_with_filters_hold_the_features_of_the_filter(api: ApiServer) -> None:
    """A tile with a CQL2 filter, a property filter or ids holds the features ST_AsMVT gives
    for the rows the same condition selects in SQL."""
    cases = [({"filter": "v > 30"}, "v > 30"), ({"flag": "true"}, "flag"),
             ({"ids": "1,8,15"}, "fid IN (1, 8, 15)")]
    with api.client("alice") as http, api.connect() as conn:
        for params, condition in cases:
            response = http.get(f"/collections/{ALICE}/tiles/WebMercatorQuad/2/2/1", params=params)
            assert response.status_code == 200, response.text
            want = {r[0] for r in conn.execute(f"SELECT fid FROM {ALICE} WHERE {condition}")}  # noqa: S608
            got = _features(response.content)
            assert set(got) == want, params
            every = _features(_oracle_tile(api, ALICE, 2, 2, 1))
            for fid, (props, geom) in got.items():
                assert props == every[fid][0] and geom.equals_exact(every[fid][1], 1.0)


def _oracle_tile(api: ApiServer, table: str, z: int, x: int, y: int) -> bytes:
    """The tile as ST_AsMVT gives it, run directly in PostGIS (same extent, buffer, clip)."""
    with api.connect() as conn:
        row = conn.execute(
            f"SELECT ST_AsMVT(q, 'default', 4096, 'geom') FROM ("  # noqa: S608
            "  SELECT fid, name, v, flag, ST_AsMVTGeom(ST_Transform(geom, 3857), "
            "         ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4096, 256, true) AS geom"
            f"  FROM {table}"
            "  WHERE ST_Intersects(geom, ST_Transform(ST_TileEnvelope(%(z)s, %(x)s, %(y)s), 4326))"
            ") q", {"z": z, "x": x, "y": y}).fetchone()
    assert row is not None
    return bytes(row[0])


def _features(tile: bytes) -> dict[int, tuple[dict[str, Any], Any]]:
    layers = mapbox_vector_tile.decode(tile)
    features = layers.get("default", {"features": []})["features"]
    return {int(f["properties"]["fid"]): (f["properties"], shapely.geometry.shape(f["geometry"]))
            for f in features}


@pytest.mark.parametrize("z", [4, 6, 8])
def test_tiles_decode_to_the_features_st_asmvt_gives(api: ApiServer, z: int) -> None:
    """Every tile covering the layer at zoom z holds the features (attributes, geometry in tile
    coordinates) of ST_AsMVT run directly on the table."""
    grid = morecantile.tms.get("WebMercatorQuad")
    covering = list(grid.tiles(0, 40, 6, 46, [z]))  # the extent of ALICE (6 x 6 degrees)
    assert covering
    seen: set[int] = set()
    with api.client("alice") as http:
        for tile in covering:
            response = http.get(f"/collections/{ALICE}/tiles/WebMercatorQuad/{z}/{tile.x}/{tile.y}")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
            got, want = _features(response.content), _features(_oracle_tile(api, ALICE, z, tile.x, tile.y))
            assert set(got) == set(want)
            for fid, (props, geom) in got.items():
                assert props == want[fid][0]
                assert geom.equals_exact(want[fid][1], 1.0), fid  # within one tile unit
            seen |= set(got)
    assert seen == set(range(1, 37))  # every feature is drawn at every zoom


def test_tiles_carry_an_etag_and_job_state_is_never_cached(api: ApiServer) -> None:
    with api.client("alice") as http:
        path = f"/collections/{ALICE}/tiles/WebMercatorQuad/5/16/11"
        first = http.get(path)
        assert first.status_code == 200 and first.content
        assert first.headers["cache-control"] == "private, no-cache"  # a shared cache revalidates
        etag = first.headers["etag"]
        again = http.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert http.get("/collections").headers["cache-control"] == "no-store"
        assert http.get(f"/collections/{ALICE}/items").headers["cache-control"] == "no-store"
        assert http.get("/jobs").headers["cache-control"] == "no-store"
        # a browser's Accept gets JSON, not tipg's HTML pages (their scripts come from CDNs)
        page = http.get("/collections", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.headers["content-type"] == "application/json" and page.json()["collections"]


def test_a_new_result_appears_and_a_dismissed_one_vanishes_without_restart(api: ApiServer) -> None:
    pid = api.process.pid
    with api.client("bob") as http:
        done = http.post("/processes/dissolve/execution", headers={"Prefer": "wait=60"},
                         json={"inputs": {"input_table": BOB, "by": ["flag"],
                                          "output_table": "results.lb_new"}}).json()
        assert done["status"] == "successful", done
        listed(api, "bob", "results.lb_new")
        items = http.get("/collections/results.lb_new/items").json()
        assert items["numberMatched"] == 2  # flag true and false
        assert http.delete(f"/jobs/{done['jobID']}").status_code == 200
        listed(api, "bob", "results.lb_new", present=False)
        gone = http.get("/collections/results.lb_new/items")
        assert gone.status_code == 404 and gone.json()["field"] == "collectionId"
    assert api.process.poll() is None and api.process.pid == pid
    with api.connect() as conn:  # the table went with the job
        assert conn.execute("SELECT to_regclass('results.lb_new')").fetchone() == (None,)


def test_a_layer_the_janitor_expired_vanishes(api: ApiServer) -> None:
    """The janitor drops a result table and stamps ``expired_at`` on the job (no status change):
    migration 0009's NOTIFY takes the layer out of the catalog."""
    with api.connect() as conn:
        job = make_layer(conn, "results.la_expiring", "alice", cells=2)
    listed(api, "alice", "results.la_expiring")
    with api.connect() as conn:
        conn.execute("DROP TABLE results.la_expiring")
        conn.execute("UPDATE background_jobs SET result = result || jsonb_build_object('expired_at', "
                     "now()) WHERE id = %s", (job,))
    listed(api, "alice", "results.la_expiring", present=False)


def test_users_see_only_their_own_layers(api: ApiServer) -> None:
    listed(api, "alice", REGIONS)
    with api.client("alice") as alice, api.client("bob") as bob, api.client("ops") as ops:
        assert BOB not in ids(alice) and ALICE not in ids(bob) and REGIONS not in ids(bob)
        assert {ALICE, BOB, REGIONS} <= ids(ops)
        for route in LAYER_ROUTES:
            own = alice.get(f"/collections/{ALICE}{route}")
            assert own.status_code == 200, (route, own.text)
            other = bob.get(f"/collections/{ALICE}{route}")
            assert other.status_code == 404, (route, other.text)
            assert other.headers["content-type"] == "application/problem+json"
            assert other.json()["field"] == "collectionId"
            # the same answer as for a collection that does not exist
            missing = bob.get(f"/collections/results.no_such{route}")
            assert missing.json()["detail"].replace("no_such", "la_grid") == other.json()["detail"]
            assert ops.get(f"/collections/{ALICE}{route}").status_code == 200
    with api.client() as anonymous:
        response = anonymous.get(f"/collections/{ALICE}/items")
        assert response.status_code == 401 and response.json()["field"] == "Authorization"
        assert anonymous.get("/collections").status_code == 401


def test_a_view_without_key_serves_items_by_fid(api: ApiServer) -> None:
    listed(api, "alice", REGIONS)
    with api.client("alice") as http:
        done = http.post("/processes/create_view/execution", headers={"Prefer": "wait=60"},
                         json={"inputs": {"input_table": ALICE, "output_table": VIEW,
                                          "columns": ["fid", "name", "v", "geom"],
                                          "filter": [{"column": "v", "op": ">=", "value": 20}]}})
        assert done.json()["status"] == "successful", done.text
        listed(api, "alice", VIEW)
        with api.connect() as conn:
            kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (VIEW,)).fetchone()
            assert kind == ("v",)
            rows = dict(conn.execute(f"SELECT fid, name FROM {VIEW}").fetchall())  # noqa: S608
        assert rows and min(rows) > 1
        for fid in (min(rows), max(rows)):
            item = http.get(f"/collections/{VIEW}/items/{fid}")
            assert item.status_code == 200, item.text
            assert item.json()["id"] == fid and item.json()["properties"]["name"] == rows[fid]
        assert http.get(f"/collections/{VIEW}/items/1").status_code == 404  # filtered out
        page = http.get(f"/collections/{VIEW}/items", params={"limit": 100}).json()
        assert sorted(f["id"] for f in page["features"]) == sorted(rows)


def _gdal(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="gdal-bin is installed by make install")
@pytest.mark.parametrize(("table", "key"), [(ALICE, "name"), (REGIONS, "sub_region")])
def test_gdal_reads_the_layer_as_postgis_has_it(api: ApiServer, table: str, key: str,
                                                tmp_path: Path) -> None:
    """ogrinfo and ogr2ogr (GDAL's OAPIF driver, with HTTP Basic NAME:KEY and pages of 4
    features): feature count, attributes and geometries equal to the table's."""
    listed(api, "alice", table)
    source = f"OAPIF:{api.url}"
    auth = ["-oo", f"USERPWD=alice:{api.keys['alice']}", "-oo", "PAGE_SIZE=4"]
    info = _gdal("ogrinfo", "-ro", "-so", *auth, source, table)
    want = oracle(api, table)
    assert f"Feature Count: {len(want)}" in info
    out = tmp_path / "copy.gpkg"
    _gdal("ogr2ogr", "-f", "GPKG", str(out), *auth, source, table, "-nln", "copy")
    got = pyogrio.read_dataframe(out, layer="copy")
    assert got.crs is not None and got.crs.to_epsg() == 4326
    same_features(got, want, key)
    # GDAL sees only what alice may read
    listing = _gdal("ogrinfo", "-ro", "-q", *auth, source)
    assert table in listing and BOB not in listing


def test_items_download_whole_layer_files(api: ApiServer, tmp_path: Path) -> None:
    want = oracle(api, ALICE)
    with api.client("alice") as http:
        for fmt in ("gpkg", "parquet", "fgb"):
            response = http.get(f"/collections/{ALICE}/items", params={"f": fmt})
            assert response.status_code == 200, response.text
            assert response.headers["cache-control"] == "no-store"
            path = tmp_path / f"layer.{fmt}"
            path.write_bytes(response.content)
            got = gpd.read_parquet(path) if fmt == "parquet" else pyogrio.read_dataframe(path)
            same_features(got, want, "name")
            if fmt != "parquet" and shutil.which("ogrinfo"):  # Debian's GDAL: no Parquet
                assert ogr_count(path) == len(want)
        meta = pq.read_metadata(tmp_path / "layer.parquet").metadata
        assert json.loads(meta[b"geojobs_params"])["output_table"] == ALICE
        assert pyogrio.read_info(tmp_path / "layer.gpkg")["dataset_metadata"]["geojobs_table"] == ALICE
    with api.client("bob") as http:
        assert http.get(f"/collections/{ALICE}/items", params={"f": "gpkg"}).status_code == 404


def test_bench_layers_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.layers`` cannot rot: its parts run on 2,000 polygons."""
    from bench import layers

    assert layers.main(["--quick", "--rows", "2000", "--tiles", "2", "--pages", "8",
                        "--only", "tiles", "--only", "items"]) == 0
    out = capsys.readouterr().out
    assert "Vector tiles" in out and "pages per second" in out


def test_layer_schemas_serve_more_schemas_to_admins(template_db: str, tmp_path: Path) -> None:
    """GEOJOBS_LAYER_SCHEMAS=public: public's tables the API role may read are layers too, shown
    to admins only (no job of a user wrote them); without the setting, to nobody."""
    name = f"geojobs_test_layers_{uuid.uuid4().hex[:10]}"
    db_url = _create(name, template=template_db)
    processes = []
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            keys = {user: create_key(conn, user, admin=user == "ops") for user in ("alice", "ops")}
            conn.execute("GRANT SELECT ON public.us_states TO geojobs_api")
        for settings in ({"GEOJOBS_LAYER_SCHEMAS": "public"}, {}):
            out = tmp_path / str(len(processes))
            out.mkdir()
            process = start_server(db_url, out, **settings)
            processes.append(process)
            url = f"http://127.0.0.1:{process.port}"  # type: ignore[attr-defined]
            seen = {}
            for user, key in keys.items():
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                  trust_env=False, timeout=60) as http:
                    seen[user] = ids(http)
                    status = http.get("/collections/public.us_states/items").status_code
                    assert status == (200 if settings and user == "ops" else 404)
            assert "public.us_states" not in seen["alice"]
            assert ("public.us_states" in seen["ops"]) == bool(settings)
            stop(process)
    finally:
        for process in processes:
            stop(process)
        _drop(name)
