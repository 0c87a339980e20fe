"""Result layers opened in QGIS (its OGC API - Features provider, ``OAPIF``) from a real uvicorn
server, as a desktop user opens them: a saved connection whose collections QGIS's browser lists,
layers added with the user name and API key (in the URI, or as a Basic configuration of QGIS's
authentication database), pages of features read through the ``next`` links, an extent read
with ``bbox``; the same tables through QGIS's PostGIS provider; a layer's vector tiles drawn.

QGIS is Debian's python3-qgis (installed by ``make install``), run headless by
``tests/qgis_probe.py`` under Debian's ``/usr/bin/python3``. Oracle: the tables as PostGIS
returns them (psycopg; geometries as ``ST_AsBinary``); for the tiles, the table drawn by QGIS
from PostGIS.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tests.api_support import API_ROLE, ApiServer, api_server
from tests.layer_support import complete_job, make_layer
from tests.support import ROOT, WORKER_ROLE, wait_for

SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = ROOT / "tests" / "qgis_probe.py"


def _has_qgis() -> bool:
    """Whether Debian's python can import QGIS's bindings (python3-qgis)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True,
                          env=_env(), timeout=120, check=False)
    return done.returncode == 0


def _env() -> dict[str, str]:
    """Debian's python with none of the virtualenv's paths, QGIS headless, times in UTC."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(QT_QPA_PLATFORM="offscreen", TZ="UTC", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    return env


pytestmark = pytest.mark.db

ALICE = "results.qa_grid"
BOB = "results.qb_grid"
REGIONS = "results.qa_regions"
TYPES = "results.qa_types"
VIEW = "results.qa_view"
RECT = [0.5, 40.5, 2.5, 41.5]


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    if not _has_qgis():
        pytest.skip(f"QGIS's Python bindings are missing from {SYSTEM_PYTHON}: `make install` "
                    "installs them (or `apt-get install python3-qgis`)")
    for server in api_server(template_db, tmp_path_factory.mktemp("qgis"),
                             users={"alice": False, "bob": False}, workers=("dissolve",)):
        with server.connect() as conn:
            make_layer(conn, ALICE, "alice", cells=11)  # 121 features: more than QGIS's page
            make_layer(conn, BOB, "bob", cells=3)
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(WORKER_ROLE)))
            conn.execute(
                "CREATE TABLE results.qa_types (fid integer PRIMARY KEY, amount numeric, "
                "seen timestamptz, day date, n bigint, label text, ratio real, "
                "geom geometry(Point, 4326))")
            conn.execute(
                "INSERT INTO results.qa_types VALUES "
                "(1, 12.50, '2024-03-01 10:00:00.25+02', '2024-03-01', 9007199254740993, "
                " 'é \"q\"', 0.1, ST_Point(1.123456789012345, 2, 4326)), "
                "(2, 0.0000001, NULL, NULL, NULL, NULL, NULL, ST_Point(-3, -4.5, 4326)), "
                "(3, NULL, NULL, NULL, -5, '', 3.5, NULL)")
            conn.execute(f"CREATE VIEW {VIEW} AS SELECT * FROM {ALICE} WHERE v > 30")  # noqa: S608
            conn.execute("RESET ROLE")
            complete_job(conn, TYPES, "alice")
        with server.client("alice") as http:
            done = http.post("/processes/dissolve/execution", headers={"Prefer": "wait=60"},
                             json={"inputs": {"input_table": "public.us_states",
                                              "by": ["sub_region"], "output_table": REGIONS}})
            assert done.json()["status"] == "successful", done.text
            wait_for(lambda: REGIONS in {c["id"] for c in
                                         http.get("/collections").json()["collections"]}, timeout=15)
        yield server


def qgis(api: ApiServer, tmp_path: Path, user: str, layers: list[str], *, auth: str = "uri",
         page_size: int | None = None, key: str | None = None,
         postgres: dict[str, Any] | None = None,
         tiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """What QGIS sees (tests/qgis_probe.py's report) as ``user``, through its PostGIS provider
    (``postgres``), and of the vector ``tiles``."""
    profile = tmp_path / f"profile-{uuid.uuid4().hex[:8]}"
    profile.mkdir()
    request = {"url": api.url, "user": user, "key": key or api.keys[user], "open": layers,
               "auth": auth, "page_size": page_size, "rect": RECT, "profile": str(profile),
               "postgres": postgres, "tiles": tiles}
    done = subprocess.run([SYSTEM_PYTHON, str(PROBE)], input=json.dumps(request), text=True,
                          capture_output=True, env=_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["qgis"].startswith("3."), report["qgis"]
    return report


def _same(got: Any, want: Any) -> bool:
    """A QGIS attribute value equal to PostGIS's (numeric comes as text, times as UTC text,
    ``real`` as the double of the same single-precision value)."""
    if want is None or got is None:
        return got is want
    if isinstance(want, np.float32):
        return type(got) is float and np.float32(got) == want and float(want) == got
    if isinstance(want, decimal.Decimal):
        return decimal.Decimal(str(got)) == want
    if isinstance(want, dt.datetime):
        return dt.datetime.fromisoformat(got).replace(tzinfo=dt.UTC) == want
    if isinstance(want, dt.date):
        return dt.date.fromisoformat(got) == want
    return type(got) is type(want) and got == want


FLOAT4 = 700
"""The type OID of ``real``."""


def oracle(api: ApiServer, table: str) -> tuple[str, list[dict[str, Any]]]:
    """The table's geometry column and rows as PostGIS returns them (psycopg's Python values,
    ``real`` as numpy.float32; the geometry as a shapely geometry read from ``ST_AsBinary``,
    None for NULL)."""
    schema, name = table.split(".")
    with api.connect() as conn:
        found = conn.execute("SELECT f_geometry_column FROM geometry_columns "
                             "WHERE f_table_schema = %s AND f_table_name = %s", (schema, name)).fetchone()
        assert found is not None
        cur = conn.execute(sql.SQL("SELECT *, ST_AsBinary({}) AS oracle_wkb FROM {}").format(
            sql.Identifier(found[0]), sql.Identifier(schema, name)))
        names = [d.name for d in cur.description or []]
        singles = {d.name for d in cur.description or [] if d.type_code == FLOAT4}
        rows = [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
    for row in rows:
        wkb = row.pop("oracle_wkb")
        row[found[0]] = None if wkb is None else shapely.from_wkb(bytes(wkb))
        row.update({c: np.float32(row[c]) for c in singles if row[c] is not None})
    return found[0], rows


def same_as_postgis(api: ApiServer, table: str, layer: dict[str, Any]) -> None:
    """QGIS's layer holds the table's rows: count, every attribute, every geometry (WKT at 17
    digits, exact to 1e-9 degrees once normalised), in EPSG:4326 longitude/latitude."""
    geometry_column, want = oracle(api, table)
    assert layer["valid"] is True
    assert layer["crs"] == "EPSG:4326"
    assert layer["count"] == len(layer["features"]) == len(want)
    columns = [c for c in want[0] if c != geometry_column]
    assert sorted(layer["fields"]) == sorted(columns)
    key = "fid" if "fid" in columns else columns[0]
    got = {f["attributes"][key]: f for f in layer["features"]}
    assert len(got) == len(want)
    for row in want:
        feature = got[row[key]]
        for column in columns:
            assert _same(feature["attributes"][column], row[column]), (table, row[key], column)
        geometry = row[geometry_column]
        if geometry is None:
            assert feature["wkt"] is None
        else:
            assert shapely.equals_exact(shapely.normalize(shapely.from_wkt(feature["wkt"])),
                                        shapely.normalize(geometry), tolerance=1e-9), row[key]


def items_requests(report: dict[str, Any], table: str) -> list[str]:
    return [url for url in report["requests"] if f"/collections/{table}/items" in url]


def test_qgis_lists_and_reads_the_users_layers_as_postgis_has_them(api: ApiServer,
                                                                    tmp_path: Path) -> None:
    """User name and key in the URI, QGIS's own page size: alice's layers listed in QGIS's
    browser (bob's not), each read whole with the table's rows; bob's layer does not open."""
    report = qgis(api, tmp_path, "alice", [ALICE, REGIONS, TYPES, BOB])
    assert {(i["name"], i["provider"]) for i in report["listed"]} == {
        (ALICE, "OAPIF"), (REGIONS, "OAPIF"), (TYPES, "OAPIF")}
    for table in (ALICE, REGIONS, TYPES):
        same_as_postgis(api, table, report["layers"][table])
    assert report["layers"][BOB] == {"valid": False}
    # 121 features came in more than one page, through the next links
    pages = [u for u in items_requests(report, ALICE) if "bbox=" not in u]
    assert len(pages) >= 3 and any("offset=" in u for u in pages), pages
    # the extent QGIS draws is asked of the server with bbox, and holds the features PostGIS finds
    assert any("bbox=0.5,40.5,2.5,41.5" in u for u in items_requests(report, ALICE))
    with api.connect() as conn:
        inside = [r[0] for r in conn.execute(
            sql.SQL("SELECT fid FROM {} WHERE geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326) "
                    "ORDER BY fid").format(sql.Identifier(*ALICE.split("."))), RECT)]
    assert report["layers"][ALICE]["in_rect"] == inside and len(inside) == 6


def test_qgis_reads_with_an_authentication_configuration_in_small_pages(api: ApiServer,
                                                                        tmp_path: Path) -> None:
    """A Basic configuration of QGIS's authentication database (the desktop's Authentication
    tab), pages of 4 features: the same rows."""
    report = qgis(api, tmp_path, "alice", [REGIONS, ALICE], auth="authcfg", page_size=4)
    assert {i["name"] for i in report["listed"]} == {ALICE, REGIONS, TYPES}
    assert all("authcfg=" in i["uri"] and api.keys["alice"] not in i["uri"]
               for i in report["listed"])
    same_as_postgis(api, REGIONS, report["layers"][REGIONS])
    same_as_postgis(api, ALICE, report["layers"][ALICE])
    pages = [u for u in items_requests(report, ALICE) if "bbox=" not in u and "limit=4" in u]
    assert len(pages) >= 121 // 4, pages


def test_another_user_and_a_wrong_key_see_none_of_alices_layers(api: ApiServer,
                                                                tmp_path: Path) -> None:
    report = qgis(api, tmp_path, "bob", [BOB, ALICE, REGIONS])
    assert [i["name"] for i in report["listed"]] == [BOB]
    same_as_postgis(api, BOB, report["layers"][BOB])
    assert report["layers"][ALICE] == report["layers"][REGIONS] == {"valid": False}
    wrong = qgis(api, tmp_path, "alice", [ALICE], key=api.keys["bob"])
    assert wrong["listed"] == [] and wrong["layers"][ALICE] == {"valid": False}


def _postgres(api: ApiServer, layers: list[list[str]]) -> dict[str, Any]:
    """The probe's PostGIS connection: the server's database as the API's role."""
    conninfo = conninfo_to_dict(api.db_url)
    return {"host": conninfo["host"], "port": str(conninfo["port"]), "dbname": conninfo["dbname"],
            "user": API_ROLE, "layers": layers}


def test_qgis_opens_results_directly_from_postgis(api: ApiServer, tmp_path: Path) -> None:
    """QGIS's PostGIS provider as a role that may read ``results`` (the API's): a result table
    (QGIS finds its primary key) and a view (none) with ``fid`` as its key hold the rows; the
    view without a key does not open."""
    postgres = _postgres(api, [[ALICE, ""], [VIEW, "fid"], [VIEW, ""]])
    report = qgis(api, tmp_path, "alice", [], postgres=postgres)["postgres"]
    same_as_postgis(api, ALICE, report[ALICE])
    same_as_postgis(api, VIEW, report[f"{VIEW} fid"])
    assert report[VIEW] == {"valid": False}


def test_qgis_draws_the_vector_tiles_where_it_draws_the_table(api: ApiServer,
                                                              tmp_path: Path) -> None:
    """QGIS's vector tile layer (Basic authcfg) draws alice's regions where QGIS draws the table
    itself (PostGIS provider, the same fill): the two differ in under 2 % of the filled pixels
    (edges: tiles are quantized); with bob's key nothing is drawn."""
    tiles = {"collection": REGIONS, "extent": [-125, 24, -66, 50], "size": 256}
    got = qgis(api, tmp_path, "alice", [], postgres=_postgres(api, []), tiles=tiles)["tiles"]
    assert got["valid"] is True and got["reference"] > 0.1 * 256 * 256, got
    assert got["differ"] < 0.02 * got["reference"], got
    other = qgis(api, tmp_path, "bob", [], postgres=_postgres(api, []), tiles=tiles)
    assert other["tiles"]["drawn"] == 0, other["requests"]
    assert other["tiles"]["reference"] == got["reference"], other
