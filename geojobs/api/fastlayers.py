"""Vector tiles and GeoJSON item pages built whole by PostGIS, with tipg's filters and output.

tipg builds a tile's query with the tile's bounds written into its text, so asyncpg prepares a
new statement for every tile (two round trips), and builds an items page as one Python dict per
feature before serializing it (about 70 ms of CPU for 1,000 features). Here:

- :func:`get_tile`: the same statement as tipg's ``PgCollection.get_tile`` but with the tile's
  envelopes as parameters, so each connection prepares it once per collection and tile matrix
  set and every tile is one round trip; the tile's bytes are the ones tipg's query makes.
- :func:`items_page`: an items page as GeoJSON whose features PostGIS writes (``json_agg``),
  with the members, links and ``numberMatched`` tipg's items route writes, in one statement.

Filters (ids, bbox, datetime, property values, CQL2) are tipg's own ``cql_where``, rendered by
cql2 as tipg does; requests this module does not cover (another output format, a tile outside
its matrix set's domain, a table-valued function, a column type whose JSON tipg writes
differently) answer None and take tipg's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, get_args

import asyncpg
import orjson
from cql2 import Expr
from fastapi import Request, Response
from fastapi.routing import APIRoute
from morecantile import Tile, TileMatrixSet
from pyproj import Transformer
from starlette.datastructures import Headers, QueryParams
from starlette.routing import Match
from starlette.types import Scope
from tipg.collections import Collection, Column, PgCollection, _quote_ident
from tipg.dependencies import ItemsResponseType, accept_media_type, properties_filter_query
from tipg.errors import InvalidGeometryColumnName, InvalidLimit, InvalidPropertyName
from tipg.resources.enums import MediaType
from tipg.settings import FeaturesSettings, MVTSettings

__all__ = ["TileFilters", "get_tile", "items_supported", "items_page", "FastItemsRoute", "items",
           "is_boolean", "JSON_TYPES"]

_MVT = MVTSettings()
_FEATURES = FeaturesSettings()  # type: ignore[call-arg]
_CACHE_SIZE = 64
"""Statement texts kept per layer (requests without filters only)."""
_TRANSFORMERS: dict[tuple[int, int], Transformer] = {}

JSON_TYPES: Mapping[str, str] = {
    "int2": "{c}", "int4": "{c}", "int8": "{c}", "smallint": "{c}", "integer": "{c}",
    "bigint": "{c}", "float8": "{f}", "double precision": "{f}", "float4": "{f}", "real": "{f}",
    "text": "{c}", "varchar": "{c}", "character varying": "{c}", "bpchar": "{c}",
    "bool": "{c}", "boolean": "{c}",
}
"""Column types whose value PostgreSQL's JSON writes as tipg's (asyncpg, then orjson) does, and
the SQL that writes it: ``{c}`` the column, ``{f}`` a float column (as float8, with NaN and
infinities as null, which orjson writes for them)."""
_FLOAT = "CASE WHEN {c}::float8 IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE {c}::float8 END"


def _transformer(source: int, target: int) -> Transformer:
    key = (source, target)
    found = _TRANSFORMERS.get(key)
    if found is None:
        found = _TRANSFORMERS[key] = Transformer.from_crs(source, target, always_xy=True)
    return found


_BOUNDS: dict[tuple[int, int, float, float, float, float], tuple[float, ...]] = {}
_BOUNDS_SIZE = 50_000
"""Tile bounds transformed to a column's CRS, kept (pyproj's ``transform_bounds`` is a tenth
of a tile's CPU); emptied when full."""


def _transform_bounds(source: int, target: int, west: float, south: float, east: float,
                      north: float) -> tuple[float, ...]:
    """pyproj's ``transform_bounds`` (as tipg calls it), remembered."""
    key = (source, target, west, south, east, north)
    found = _BOUNDS.get(key)
    if found is None:
        if len(_BOUNDS) >= _BOUNDS_SIZE:
            _BOUNDS.clear()
        found = _BOUNDS[key] = tuple(
            _transformer(source, target).transform_bounds(west, south, east, north))
    return found


class TileFilters:
    """The filters of a tile or items request, as tipg's route passes them on."""

    __slots__ = ("ids", "bbox", "datetime", "properties_filter", "cql", "geom", "dt")

    def __init__(self, *, ids: list[str] | None = None, bbox: list[float] | None = None,
                 datetime: list[str] | None = None,
                 properties_filter: list[tuple[str, str]] | None = None, cql: Expr | None = None,
                 geom: str | None = None, dt: str | None = None) -> None:
        self.ids, self.bbox, self.datetime = ids, bbox, datetime
        self.properties_filter, self.cql, self.geom, self.dt = properties_filter, cql, geom, dt

    @property
    def empty(self) -> bool:
        """Whether no filter is set (then the statement's text is the same for every request)."""
        return not (self.ids or self.bbox or self.datetime or self.properties_filter
                    or self.cql is not None)

    def where(self, collection: Collection) -> str:
        """tipg's WHERE condition of these filters (cql2's SQL), ``TRUE`` without any."""
        expr = collection.cql_where(
            ids=self.ids, datetime=self.datetime, bbox=self.bbox,
            properties=self.properties_filter, cql=self.cql, geom=self.geom, dt=self.dt)
        return "TRUE" if expr is None else str(expr.to_sql())


# --- tiles -----------------------------------------------------------------------------------


def _tile_sql(collection: PgCollection, geometry: Column, tms_srid: int, target_srid: int,
              properties: list[str] | None, where: str, sortby: str | None,
              simplify: float | None) -> str:
    """tipg's tile statement with $1-$5 the tile's envelope (TMS CRS) and segment length,
    $6-$9 its bounds in the column's CRS, $10 the limit and $11 the layer name."""
    cols = collection._select_property_columns(properties)
    geom = f"CAST({_quote_ident(geometry.name)} AS geometry)"
    if simplify:
        geom = f"ST_SnapToGrid(ST_SimplifyPreserveTopology({geom}, {float(simplify)}), {float(simplify)})"
    clip = "TRUE" if _MVT.tile_clip else "FALSE"
    cols.append(
        f"ST_AsMVTGeom(ST_Transform({geom}, {int(tms_srid)}), "
        "ST_Segmentize(ST_MakeEnvelope($1, $2, $3, $4), $5), "
        f"{int(_MVT.tile_resolution)}, {int(_MVT.tile_buffer)}, {clip}) AS geom")
    sorts = collection._sort_expressions(sortby)
    order_by = "ORDER BY " + ", ".join(fragment for _, fragment in sorts)
    aggregate_order = ""
    if sortby:
        selected = collection.columns(properties)
        if missing := [col for col, _ in sorts if col not in selected]:
            raise InvalidPropertyName(
                f"Cannot sort by {', '.join(missing)}: not in the selected `properties`.")
        aggregate_order = f" {order_by}"
    # identifiers quoted as tipg quotes them; where: cql2's SQL of checked filters
    inner = (f"SELECT {', '.join(cols)} FROM {collection._qualified_name} "  # noqa: S608
             f"WHERE ({where}) AND ST_Intersects({_quote_ident(geometry.name)}, "
             f"ST_MakeEnvelope($6, $7, $8, $9, {int(target_srid)})) {order_by} LIMIT $10")
    return f"WITH t AS ({inner}) SELECT ST_AsMVT(t.*, $11{aggregate_order}) FROM t"  # noqa: S608


async def get_tile(conn: asyncpg.Connection, collection: Collection, tms: TileMatrixSet,
                   tile: Tile, filters: TileFilters, *, sortby: str | None = None,
                   properties: list[str] | None = None, limit: int | None = None,
                   simplify: float | None = None,
                   cache: dict[Any, str | None] | None = None) -> bytes | None:
    """The Mapbox Vector Tile tipg's ``get_tile`` makes, in one prepared statement; None when
    tipg's path is needed (a function, a tile outside the matrix set's domain, a tile matrix
    set without an EPSG code, no geometry column: tipg answers those). ``cache`` keeps the
    statement text per layer."""
    if not isinstance(collection, PgCollection) or collection.type == "Function":
        return None
    geometry = collection.get_geometry_column(filters.geom)
    tms_srid = tms.crs.to_epsg()
    if geometry is None or not tms_srid or not tms.is_valid(tile, strict=False):
        return None
    limit = limit or _MVT.max_features_per_tile
    if limit > _MVT.max_features_per_tile:
        return None  # tipg's error
    target_srid = geometry.srid if geometry.srid is not None else 4326
    key = ("tile", tms.id, geometry.name, _tuple(properties), sortby, simplify)
    sql = cache.get(key) if cache is not None and filters.empty else None
    if sql is None:
        sql = _tile_sql(collection, geometry, tms_srid, target_srid, properties,
                        filters.where(collection), sortby, simplify)
        if cache is not None and filters.empty and len(cache) < _CACHE_SIZE:
            cache[key] = sql
    bounds = tms.xy_bounds(tile)
    west, south, east, north = bounds.left, bounds.bottom, bounds.right, bounds.top
    if tms_srid != target_srid:
        west, south, east, north = _transform_bounds(tms_srid, target_srid, west, south, east,
                                                     north)
    layer = collection.table if _MVT.set_mvt_layername is True else "default"
    content = await conn.fetchval(
        sql, bounds.left, bounds.bottom, bounds.right, bounds.top, bounds.right - bounds.left,
        west, south, east, north, int(limit), layer)
    return bytes(content)


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


# --- items -----------------------------------------------------------------------------------


def _property_json(collection: Collection, name: str) -> str | None:
    column = collection.get_column(name)
    if column is None:
        return None
    template = JSON_TYPES.get(column.type)
    if template is None:
        return None
    quoted = _quote_ident(name)
    return _FLOAT.format(c=quoted) if template == "{f}" else quoted


def items_supported(collection: Collection) -> bool:
    """Whether :func:`items_page` writes this collection's features as tipg does: a table or
    view with an id column, and properties of types in :data:`JSON_TYPES` only."""
    if not isinstance(collection, PgCollection) or collection.type == "Function":
        return False
    id_column = collection.id_column
    if id_column is None or JSON_TYPES.get(id_column.type) != "{c}":
        return False
    return all(column.type in JSON_TYPES for column in collection.properties
               if column.type not in ("geometry", "geography"))


def _items_sql(collection: PgCollection, geometry: Column | None, properties: list[str] | None,
               where: str, sortby: str | None, bbox_only: bool | None,
               simplify: float | None) -> str:
    """One statement: ``numberMatched``, ``numberReturned`` and the page's features as GeoJSON
    text ($1 limit, $2 offset, $3 a feature's links up to its item's URL, $4 the items URL
    with a trailing slash). The collection passed :func:`items_supported`. The page's rows
    are picked first with their plain columns, so the rows OFFSET skips are not written as
    JSON."""
    names = collection.columns(properties)
    members = []
    for name in names:
        quoted = _quote_ident(name)
        column = collection.get_column(name)
        float_column = column is not None and JSON_TYPES.get(column.type) == "{f}"
        members.append(f"{_literal(name)}, {_FLOAT.format(c=quoted) if float_column else quoted}")
    assert collection.id_column is not None
    picked = [*names, collection.id_column.name]
    if geometry is not None:
        picked.append(geometry.name)
    identifier = _quote_ident(collection.id_column.name)
    geom = collection._geom_expr(geometry, bbox_only, simplify)
    geometry_json = f"coalesce(ST_AsGeoJSON({geom}), 'null')" if geom else "'null'"
    # tipg's feature members in tipg's order, written as text (cheaper than json_build_object
    # around the geometry: no re-parsing of ST_AsGeoJSON's output)
    feature = (
        f"""'{{"type":"Feature","geometry":' || {geometry_json} """
        f"""|| ',"id":' || coalesce(to_json({identifier})::text, 'null') """
        f"""|| ',"properties":' || json_build_object({', '.join(members)})::text """
        f"""|| $3::text || to_json($4::text || coalesce({identifier}::text, 'None'))::text """
        f"""|| ',"rel":"item","type":"application/geo+json"}}]}}'""")
    table = collection._qualified_name
    columns = ", ".join(_quote_ident(name) for name in dict.fromkeys(picked))
    # identifiers quoted as tipg quotes them; where: cql2's SQL of checked filters. The page is
    # materialized in its ORDER BY order, which string_agg reads it in.
    return (
        f"WITH page AS MATERIALIZED (SELECT {columns} FROM {table} WHERE {where} "  # noqa: S608
        f"{collection._sortby(sortby)} LIMIT $1 OFFSET $2) "
        f"SELECT (SELECT count(*) FROM {table} WHERE {where}) AS matched, "
        "(SELECT count(*) FROM page) AS returned, "
        f"(SELECT '[' || coalesce(string_agg({feature}, ','), '') || ']' FROM page) AS features")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def items_page(conn: asyncpg.Connection, collection: Collection, filters: TileFilters,
                     params: QueryParams, base_url: str, *, sortby: str | None = None,
                     properties: list[str] | None = None, limit: int | None = None,
                     offset: int | None = None, bbox_only: bool | None = None,
                     simplify: float | None = None,
                     cache: dict[Any, str | None] | None = None) -> bytes:
    """The GeoJSON items page tipg's items route writes, built by PostGIS, for a collection
    that passed :func:`items_supported`, with tipg's errors. ``base_url``: the API's root, no
    trailing slash; ``params`` the request's query (for the page links)."""
    assert isinstance(collection, PgCollection)
    limit = limit or _FEATURES.default_features_limit
    offset = offset or 0
    if limit > _FEATURES.max_features_per_query:
        raise InvalidLimit(f"Limit can not be set higher than the `tipg_max_features_per_query` "
                           f"setting of {_FEATURES.max_features_per_query}")
    geom_name = filters.geom
    if geom_name and geom_name.lower() != "none" and not collection.get_geometry_column(geom_name):
        raise InvalidGeometryColumnName(f"Invalid Geometry Column: {geom_name}.")
    geometry = collection.get_geometry_column(geom_name)
    key = ("items", geom_name, _tuple(properties), sortby, bbox_only, simplify)
    sql = cache.get(key) if cache is not None and filters.empty else None
    if sql is None:
        sql = _items_sql(collection, geometry, properties, filters.where(collection), sortby,
                         bbox_only, simplify)
        if cache is not None and filters.empty and len(cache) < _CACHE_SIZE:
            cache[key] = sql
    cid = collection.id
    collection_url = f"{base_url}/collections/{cid}"
    items_url = f"{collection_url}/items"
    links_text = (b',"links":[' + orjson.dumps(
        {"title": "Collection", "href": collection_url, "rel": "collection",
         "type": "application/json"}) + b',{"title":"Item","href":').decode()
    row = await conn.fetchrow(sql, int(limit), int(offset), links_text, items_url + "/")
    matched, returned, features = int(row["matched"]), int(row["returned"]), row["features"]
    links = [
        {"title": "Collection", "href": collection_url, "rel": "collection",
         "type": "application/json"},
        {"title": "Items", "href": items_url + ("?" + str(params) if params else ""),
         "rel": "self", "type": "application/geo+json"},
    ]
    if matched - returned > offset:
        links.append({"href": f"{items_url}?{QueryParams({**params, 'offset': offset + returned})}",
                      "rel": "next", "type": "application/geo+json", "title": "Next page"})
    if offset:
        query = dict(params)
        query.pop("offset", None)
        previous = QueryParams({**query, "offset": max(offset - limit, 0)})
        links.append({"href": f"{items_url}?{previous}" if previous else items_url,
                      "rel": "prev", "type": "application/geo+json", "title": "Previous page"})
    head = orjson.dumps({
        "type": "FeatureCollection", "id": cid, "title": collection.title or cid,
        "description": collection.description or collection.title or cid,
        "numberMatched": matched, "numberReturned": returned, "links": links,
    })
    return head[:-1] + b',"features":' + features.encode() + b"}"


# --- the items route -------------------------------------------------------------------------

_ITEMS_MEDIA = [MediaType[name] for name in get_args(ItemsResponseType)]
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


def is_boolean(text: str) -> bool:
    """Whether ``text`` is a boolean as FastAPI (pydantic) reads one in a query."""
    return text.lower() in _TRUE | _FALSE


def _wants_geojson(scope: Scope) -> bool:
    """Whether tipg's items route would answer GeoJSON (``f``, else the Accept header)."""
    params = QueryParams(scope.get("query_string", b""))
    f = params.get("f")
    if f is not None:
        return f == "geojson"
    try:
        media = accept_media_type(Headers(scope=scope).get("accept", ""), _ITEMS_MEDIA)
    except ValueError:
        return False  # tipg's route answers it as it does
    return media in (None, MediaType.geojson)


class FastItemsRoute(APIRoute):
    """``/collections/{id}/items`` answered by :func:`items` when the page is GeoJSON of a
    collection :func:`items_supported` accepts; tipg's route (next in line) otherwise."""

    query_names: ClassVar[frozenset[str]] = frozenset()
    """The query parameters of tipg's items route (what the request checks accept)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        layers = getattr(scope["app"].state, "layers", None)
        layer = None if layers is None else layers.layers.get(
            child.get("path_params", {}).get("collectionId"))
        if layer is None or not _wants_geojson(scope) or not items_supported(layer.collection):
            return Match.NONE, {}
        return match, child


async def items(request: Request) -> Response:
    """A GeoJSON page of the collection's features (:func:`items_page`), with the query tipg's
    items route takes; the layer request checks ran first (``request.state.layer``)."""
    layer = request.state.layer
    params = request.query_params
    ids, bbox, datetime = params.get("ids"), params.get("bbox"), params.get("datetime")
    properties = params.get("properties")
    bbox_only = params.get("bbox-only")
    simplify = params.get("simplify")
    filters = TileFilters(
        ids=ids.split(",") if ids else None,
        bbox=[float(v) for v in bbox.split(",")] if bbox else None,
        datetime=datetime.split("/") if datetime else None,
        properties_filter=properties_filter_query(request, layer.collection),
        cql=request.state.layer_filter, geom=params.get("geom-column"),
        dt=params.get("datetime-column"))
    async with request.app.state.pool.acquire() as conn:
        body = await items_page(
            conn, layer.collection, filters, params, str(request.base_url).rstrip("/"),
            sortby=params.get("sortby"),
            properties=[p.strip() for p in properties.split(",")] if properties is not None else None,
            limit=int(params.get("limit") or 0) or None, offset=int(params.get("offset") or 0),
            bbox_only=None if bbox_only is None else bbox_only.lower() in _TRUE,
            simplify=float(simplify) if simplify else None, cache=layer.queries)
    return Response(body, media_type=MediaType.geojson.value)
