"""Bad input to the result layers (OGC API - Features and Tiles): each case is a clear 4xx, an
RFC 7807 problem whose ``field`` names the parameter at fault, and changes nothing (job rows,
catalog, table contents; tests/snapshot.py).

One server for the module, no workers. alice owns results.bad_grid, bob owns results.bob_grid.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from tests.api_support import ApiServer, api_server
from tests.layer_support import make_layer
from tests.snapshot import diff, snapshot
from tests.support import wait_for

pytestmark = pytest.mark.db

GRID = "results.bad_grid"
ITEMS = f"/collections/{GRID}/items"
TILE = f"/collections/{GRID}/tiles/WebMercatorQuad"
JOBS = "SELECT count(*), coalesce(max(xmin::text::bigint), 0) FROM background_jobs"


@pytest.fixture(scope="module")
def api(template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    for server in api_server(template_db, tmp_path_factory.mktemp("layers_bad"),
                             users={"alice": False, "bob": False}):
        with server.connect() as conn:
            make_layer(conn, GRID, "alice")
            make_layer(conn, "results.bob_grid", "bob")
            conn.execute("CREATE TABLE public.secret AS SELECT 1 AS fid, "
                         "ST_MakePoint(0, 0)::geometry(Point, 4326) AS geom")
            conn.execute("GRANT SELECT ON public.secret TO geojobs_api")  # readable, not served
        with server.client("alice") as http:
            wait_for(lambda: http.get(ITEMS).status_code == 200, timeout=15)
        yield server


@dataclass(frozen=True)
class Case:
    """A bad GET and what must come back."""

    name: str
    path: str
    status: int
    field: str
    user: str = "alice"


CASES = [
    Case("unknown collection", "/collections/results.nope/items", 404, "collectionId"),
    Case("another user's collection", "/collections/results.bob_grid/items", 404, "collectionId"),
    Case("another user's tile", "/collections/results.bob_grid/tiles/WebMercatorQuad/0/0/0", 404,
         "collectionId"),
    Case("another user's queryables", "/collections/results.bob_grid/queryables", 404, "collectionId"),
    Case("a table outside the served schemas", "/collections/public.secret/items", 404, "collectionId"),
    Case("the job table", "/collections/public.background_jobs", 404, "collectionId"),
    Case("a system catalog", "/collections/pg_catalog.pg_authid/items", 404, "collectionId"),
    Case("dot-dot in the id", "/collections/results..bad_grid/items", 404, "collectionId"),
    Case("quoted identifiers", "/collections/" + quote('"results"."bad_grid"') + "/items", 404,
         "collectionId"),
    Case("a quote to break out", "/collections/" + quote("results.bad_grid'; DROP TABLE x; --")
         + "/items", 404, "collectionId"),
    Case("schema only", "/collections/results/items", 404, "collectionId"),
    Case("bbox not numbers", f"{ITEMS}?bbox=a,b,c,d", 400, "bbox"),
    Case("bbox with 3 numbers", f"{ITEMS}?bbox=0,40,1", 400, "bbox"),
    Case("bbox latitude 100", f"{ITEMS}?bbox=0,40,1,100", 400, "bbox"),
    Case("bbox south above north", f"{ITEMS}?bbox=0,45,1,40", 400, "bbox"),
    Case("bbox NaN", f"{ITEMS}?bbox=0,nan,1,41", 400, "bbox"),
    Case("limit 0", f"{ITEMS}?limit=0", 400, "limit"),
    Case("limit over the maximum", f"{ITEMS}?limit=10001", 400, "limit"),
    Case("limit not a number", f"{ITEMS}?limit=ten", 400, "limit"),
    Case("negative offset", f"{ITEMS}?offset=-1", 400, "offset"),
    Case("unknown f", f"{ITEMS}?f=shp", 400, "f"),
    Case("HTML is not served", f"/collections/{GRID}?f=html", 400, "f"),
    Case("download f on the collection", f"/collections/{GRID}?f=gpkg", 400, "f"),
    Case("download with a filter", f"{ITEMS}?f=gpkg&bbox=0,40,1,41", 400, "bbox"),
    Case("zoom above the matrix", f"{TILE}/25/0/0", 404, "z"),
    Case("negative zoom", f"{TILE}/-1/0/0", 404, "z"),
    Case("x outside the matrix", f"{TILE}/2/4/0", 404, "x"),
    Case("y outside the matrix", f"{TILE}/2/0/9", 404, "y"),
    Case("z not a number", f"{TILE}/two/0/0", 400, "z"),
    Case("unknown tile matrix set", f"/collections/{GRID}/tiles/MarsQuad/0/0/0", 404,
         "tileMatrixSetId"),
    Case("unknown tile matrix set (tilejson)", f"/collections/{GRID}/tiles/MarsQuad/tilejson.json",
         404, "tileMatrixSetId"),
    Case("a SQL function in the filter", f"{ITEMS}?filter=" + quote("pg_sleep(5) = 1"), 400, "filter"),
    Case("a SQL function inside a predicate", f"{ITEMS}?filter="
         + quote("v > 1 AND upper(name) = 'X'"), 400, "filter"),
    Case("a column that is not there", f"{ITEMS}?filter=" + quote("password = 'x'"), 400, "filter"),
    Case("a statement after the filter", f"{ITEMS}?filter=" + quote("v > 1; DROP TABLE results.bad_grid"),
         400, "filter"),
    Case("not CQL2 at all", f"{ITEMS}?filter=" + quote("((("), 400, "filter"),
    Case("cql2-json that is not JSON", f"{ITEMS}?filter-lang=cql2-json&filter=" + quote("{op:"),
         400, "filter"),
    Case("a subquery in cql2-json", f"{ITEMS}?filter-lang=cql2-json&filter=" + quote(
        '{"op": "=", "args": [{"op": "current_setting", "args": ["is_superuser"]}, "on"]}'),
        400, "filter"),
    Case("unknown filter-lang", f"{ITEMS}?filter-lang=sql&filter=v%3E1", 400, "filter-lang"),
    Case("a text value for a number", f"{ITEMS}?filter=" + quote("v = 'abc'"), 400, "filter"),
    Case("a filter over another's column name", f"{ITEMS}?filter=" + quote("name = 1"), 400, "filter"),
    Case("sortby an unknown column", f"{ITEMS}?sortby=-password", 400, "sortby"),
    Case("properties unknown", f"{ITEMS}?properties=name,password", 400, "properties"),
    Case("datetime not RFC 3339", f"{ITEMS}?datetime=yesterday", 400, "datetime"),
    Case("simplify negative", f"{ITEMS}?simplify=-1", 400, "simplify"),
    Case("simplify infinite", f"{ITEMS}?simplify=inf", 400, "simplify"),
    Case("a number column compared with text", f"{ITEMS}?v=abc", 400, "v"),
    Case("an unknown query parameter", f"{ITEMS}?limt=5", 400, "limt"),
    Case("crs other than CRS84", f"{ITEMS}?bbox-crs=" + quote("http://www.opengis.net/def/crs/EPSG/0/3857"),
         400, "bbox-crs"),
    Case("geom-column not a geometry", f"{ITEMS}?geom-column=name", 400, "geom-column"),
    Case("an item id that is not an integer", f"{ITEMS}/abc", 404, "itemId"),
    Case("no key", f"{ITEMS}", 401, "Authorization", user=""),
    Case("an unknown query parameter on a tile", f"{TILE}/2/2/1?limt=5", 400, "limt"),
    Case("a tile limit above the most features per tile", f"{TILE}/2/2/1?limit=10001", 400, "limit"),
    Case("a SQL function in a tile's filter", f"{TILE}/2/2/1?filter=" + quote("pg_sleep(5) = 1"),
         400, "filter"),
    Case("a tile's properties unknown", f"{TILE}/2/2/1?properties=password", 400, "properties"),
    Case("an item format on a tile", f"{TILE}/2/2/1?f=csv", 400, "f"),
    Case("bbox-only not a boolean", f"{ITEMS}?bbox-only=maybe", 400, "bbox-only"),
]


def _state(api: ApiServer) -> dict[str, object]:
    with api.connect() as conn:
        state = snapshot(conn)
        state["jobs"] = conn.execute(JOBS).fetchone()
    return state


def test_enough_cases() -> None:
    assert len(CASES) >= 20
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request_is_a_clear_4xx_and_changes_nothing(api: ApiServer, case: Case) -> None:
    before = _state(api)
    with api.client(case.user or None) as http:
        response = http.get(case.path)
        assert response.status_code == case.status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == case.status
        assert problem["field"] == case.field, problem
        assert problem["detail"].startswith(case.field) or case.field in problem["detail"], problem
        assert response.headers["cache-control"] == "no-store"
        # the layer still answers as before
        if case.user:
            assert http.get(ITEMS).json()["numberMatched"] == 25
    assert diff(before, _state(api)) == {}
