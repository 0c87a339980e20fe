"""Result layers: OGC API - Features and Tiles over the result tables, per user (tipg).

tipg's :class:`tipg.factory.Endpoints` (collections, items, queryables, vector tiles, tile matrix
sets, tilejson and style documents) is mounted at the API's root beside the Processes routes,
on the API's own asyncpg pool and login role. What geojobs adds around it:

- :class:`LayerCatalog`: the tables and views of the output schemas (``results``) and of
  ``GEOJOBS_LAYER_SCHEMAS``, each with the newest completed job that wrote it. It is refreshed
  when a job completes or its table goes away (NOTIFY ``geojobs_jobs``, migrations 0003 and
  0009); only the tables of that job are re-read. Behind a transaction pooler without
  ``GEOJOBS_LISTEN_URL`` no NOTIFY arrives: it then polls, every
  ``GEOJOBS_POOLED_POLL_INTERVAL`` as the workers do, a fingerprint of the completed jobs that
  name a table, and re-reads the whole catalog when it changed.
- Visibility: a user lists and reads the layers its own jobs wrote (admins: every layer); any
  other collection id answers 404, the same answer as for a collection that does not exist.
- One validating dependency (:func:`check_request`) in front of every layer route: the key,
  the collection, ``f``, ``limit``, ``offset``, ``bbox``, ``datetime``, ``filter`` (CQL2 limited
  to comparisons, logic and spatial predicates over the layer's own columns), ``sortby``,
  ``properties``, the tile matrix set and z/x/y, and no unknown parameter. Errors are RFC 7807
  problems naming the parameter.
- ``/collections/{id}/items?f=gpkg|parquet|fgb``: the whole layer as a file
  (:func:`geojobs.export.export_table`), with the writing job's provenance.
- Views without a key get ``fid`` as their id column, so ``items/{itemId}`` works.
- Tiles carry an ETag and are private, revalidated by default; nothing else here is cacheable
  (tipg's own hour-long cache middleware is not used).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import asyncpg
import attr
from ciso8601 import parse_rfc3339
from cql2 import Expr
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from morecantile import Tile, TileMatrixSet
from morecantile import tms as default_tms
from morecantile.defaults import TileMatrixSets
from starlette.datastructures import QueryParams
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tipg import dependencies as tipg_deps
from tipg import errors as tipg_errors
from tipg import factory as tipg_factory
from tipg.collections import Collection, CollectionList, pg_get_collection_index
from tipg.database import DB_CATALOG_FILE
from tipg.factory import COMMON_CONFORMS, Endpoints, OGCFeaturesFactory, OGCTilesFactory
from tipg.resources.enums import MediaType
from tipg.settings import DatabaseSettings, FeaturesSettings, MVTSettings

import geojobs.api.fastlayers as fastlayers
from geojobs.api.deps import User, current_user, settings_dep
from geojobs.api.downloads import download_table
from geojobs.api.errors import BadRequest, NotFound, problem
from geojobs.api.settings import ApiSettings
from geojobs.api.store import Store
from geojobs.config import output_schemas
from geojobs.formats import FORMATS, ExportFormat, provenance

__all__ = ["LayerCatalog", "ServedLayer", "NoSuchCollection", "mount_layers", "start_layers",
           "stop_layers", "check_cql", "check_bbox", "DOWNLOADS", "TileCacheMiddleware"]

log = logging.getLogger("geojobs.api")

DOWNLOADS = ("gpkg", "parquet", "fgb")
"""``f`` of ``/collections/{id}/items`` that tipg does not offer: whole-layer files."""
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
FALLBACK_KEY = "fid"
MAX_FILTER = 20_000
"""Longest ``filter`` accepted, in characters."""
MAX_FILTER_NODES = 2_000

_FEATURES_LIMIT = FeaturesSettings().max_features_per_query  # type: ignore[call-arg]
_TILE_LIMIT = MVTSettings().max_features_per_tile
_ITEMS_FORMATS = ("geojson", "json", "csv", "geojsonseq", "ndjson")
# f accepted by each tipg route (by its endpoint name); HTML is not served (tipg's pages load
# their scripts from CDNs; the console is the browser UI). Routes not listed take no f.
_ROUTE_FORMATS: dict[str, tuple[str, ...]] = {
    "collections": ("json",), "collection": ("json",), "queryables": ("schemajson",),
    "items": _ITEMS_FORMATS + DOWNLOADS, "download_items": _ITEMS_FORMATS + DOWNLOADS,
    "item": _ITEMS_FORMATS, "tilematrixsets": ("json",), "tilematrixset": ("json",),
    "collection_tileset_list": ("json",), "collection_tileset": ("json",),
}
_LIMITS = {"collections": 1000, "items": _FEATURES_LIMIT, "collection_get_tile": _TILE_LIMIT}
_PROPERTY_FILTER_ROUTES = ("items", "collection_get_tile")
_CRS_PARAMS = ("crs", "bbox-crs", "filter-crs")

_CQL_OPS = frozenset({
    "and", "or", "not", "=", "<>", "<", ">", "<=", ">=", "like", "between", "in", "isnull",
    "casei", "+", "-", "*", "/",
    "s_intersects", "s_equals", "s_disjoint", "s_touches", "s_within", "s_overlaps",
    "s_crosses", "s_contains",
    "t_after", "t_before", "t_contains", "t_disjoint", "t_during", "t_equals", "t_finishedby",
    "t_finishes", "t_intersects", "t_meets", "t_metby", "t_overlappedby", "t_overlaps",
    "t_startedby", "t_starts",
})
"""CQL2 operators a ``filter`` may use; anything else (any other function) is refused."""
_GEOMETRY_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon",
                             "MultiPolygon", "GeometryCollection"})


@attr.s(frozen=True)
class SharedTileMatrixSets(TileMatrixSets):
    """morecantile's tile matrix sets, each read once and shared: ``get`` returns the same
    (read-only) object every time, where morecantile deep-copies it (about 4 ms) per call, with
    its EPSG code known (:func:`_epsg_once`)."""

    def get(self, identifier: str) -> TileMatrixSet:
        """The tile matrix set ``identifier``, shared."""
        found = _SHARED_TMS.get(identifier)
        if found is None:
            found = _SHARED_TMS[identifier] = _epsg_once(super().get(identifier))
        return found


def _epsg_once(tms: TileMatrixSet) -> TileMatrixSet:
    """``tms.crs.to_epsg()`` answered from memory: pyproj identifies the CRS anew on every call
    (0.5 ms), and tipg asks twice per tile."""
    original = tms.crs.to_epsg
    code = original()

    def to_epsg(*args: Any, **kwargs: Any) -> int | None:
        return code if not args and not kwargs else original(*args, **kwargs)

    object.__setattr__(tms.crs, "to_epsg", to_epsg)
    return tms


_SHARED_TMS: dict[str, TileMatrixSet] = {}
TILE_MATRIX_SETS = SharedTileMatrixSets(dict(default_tms.tilematrixsets))
"""The tile matrix sets served (morecantile's defaults)."""


class NoSuchCollection(NotFound):
    """No such collection (or not one of the user's)."""


@dataclass(frozen=True)
class ServedLayer:
    """A collection tipg serves and the newest completed job that wrote it (None: no job did)."""

    collection: Collection
    job: Mapping[str, Any] | None
    queries: dict[Any, str | None] = dataclasses.field(default_factory=dict, compare=False,
                                                       repr=False)
    """Statement texts of this layer's tiles and pages (:mod:`geojobs.api.fastlayers`)."""

    @property
    def owner(self) -> str | None:
        """The user whose job wrote the table (None: no job)."""
        return None if self.job is None else self.job.get("submitted_by")

    def visible_to(self, user: User) -> bool:
        """Whether ``user`` may list and read this layer."""
        return user.admin or (self.owner is not None and self.owner == user.name)


def _with_key(collection: Collection, job: Mapping[str, Any] | None) -> Collection:
    """The collection with ``fid`` as its id when it has no key (views), and a title."""
    update: dict[str, Any] = {}
    if collection.id_column is None:
        key = next((c for c in collection.table_columns if c.name == FALLBACK_KEY), None)
        if key is not None:
            update["id_column"] = key
    if collection.title is None:
        update["title"] = collection.id
    if collection.description is None and job is not None:
        update["description"] = f"result of {job['job_type']} job {job['id']}"
    return collection.model_copy(update=update) if update else collection


class LayerCatalog:
    """The layers served, kept current by job changes (see the module docstring)."""

    def __init__(self, schemas: Iterable[str]) -> None:
        self.schemas = list(dict.fromkeys(schemas))
        self.layers: dict[str, ServedLayer] = {}
        self.refreshes = 0
        self._store: Store | None = None
        self._by_job: dict[int, set[str]] = {}
        self._lock = asyncio.Lock()
        self._pending_jobs: set[int] = set()
        self._pending_tables: set[str] = set()
        self._full = False
        self._task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def store(self) -> Store:
        assert self._store is not None, "layer catalog not started"
        return self._store

    async def start(self, store: Store) -> None:
        """Read the whole catalog and follow job changes from now on."""
        self._store = store
        store.on_job_change(self.on_job_change)
        fingerprint = await self._fingerprint() if store.polling else None  # before the read
        try:
            await self.refresh()
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("layer catalog not read (%s); retried at the next job change", exc)
            self._full = True
        if store.polling:
            log.info("layer catalog: no NOTIFY through the transaction pooler and no "
                     "GEOJOBS_LISTEN_URL: polling every %.2f s", store.poll_interval)
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(store.poll_interval, fingerprint), name="layer-poll")

    async def stop(self) -> None:
        """Stop polling; wait for a refresh under way to end."""
        for task in (self._poller, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def get(self, collection_id: str, user: User) -> ServedLayer:
        """The layer ``collection_id`` if ``user`` may read it; 404 otherwise (the same answer
        whether it does not exist or is another user's)."""
        layer = self.layers.get(collection_id)
        if layer is None or not layer.visible_to(user):
            raise NoSuchCollection(f"collectionId: no collection {collection_id!r}",
                                   field="collectionId")
        return layer

    def visible(self, user: User) -> list[ServedLayer]:
        """The layers ``user`` may read, by id."""
        return [layer for _, layer in sorted(self.layers.items()) if layer.visible_to(user)]

    async def refresh(self, tables: Iterable[str] | None = None) -> None:
        """Re-read ``tables`` (``schema.name``; None: every table) from the database."""
        names = None if tables is None else sorted(set(tables))
        if names == []:
            return
        async with self._lock:
            # one transaction: with a transaction pooler (PgBouncer) the temporary functions
            # and the query that calls them then run on the same server connection
            async with self.store.pool.acquire() as conn, conn.transaction():
                await conn.execute(DB_CATALOG_FILE.read_text())  # tipg's functions, in pg_temp
                settings = DatabaseSettings(schemas=self.schemas, tables=names,
                                            only_spatial_tables=True)
                collections = await pg_get_collection_index(conn, settings=settings)
                writers = {row["target"]: dict(row) for row in
                           await self.store.fetch("layer_writers", conn, tables=names)}
            layers = {} if names is None else {k: v for k, v in self.layers.items()
                                               if k not in names}
            for collection in collections:
                job = writers.get(collection.id)
                layers[collection.id] = ServedLayer(_with_key(collection, job), job)
            by_job: dict[int, set[str]] = {}
            for key, layer in layers.items():
                if layer.job is not None:
                    by_job.setdefault(int(layer.job["id"]), set()).add(key)
            self.layers, self._by_job = layers, by_job
            self.refreshes += 1

    def on_job_change(self, change: Mapping[str, Any]) -> None:
        """A NOTIFY of ``geojobs_jobs``: re-read the tables of a job that completed, or whose
        table went (dismissed, deleted, expired); everything after a lost connection."""
        if change.get("reconnected"):
            self._full = True
        else:
            try:
                job_id = int(change.get("id", 0))
            except (TypeError, ValueError):
                return
            if change.get("status") != "completed" and job_id not in self._by_job:
                return  # progress and status of jobs that wrote no layer
            self._pending_jobs.add(job_id)
        self._kick()

    def forget(self, collection_id: str) -> None:
        """A layer whose table is gone: re-read it (the answer meanwhile is 404)."""
        self._pending_tables.add(collection_id)
        self._kick()

    def _kick(self) -> None:
        if self._store is None:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._full or self._pending_jobs or self._pending_tables:
            full, jobs, tables = self._full, self._pending_jobs, self._pending_tables
            self._full, self._pending_jobs, self._pending_tables = False, set(), set()
            try:
                if full:
                    await self.refresh()
                    continue
                for job_id in jobs:
                    tables |= self._by_job.get(job_id, set())
                    target = await self.store.fetchval("job_layer", id=job_id)
                    if target:
                        tables.add(str(target))
                await self.refresh(tables)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("layer catalog refresh failed (%s); retried at the next job change", exc)
                self._full = True
                return


    async def _fingerprint(self) -> tuple[Any, ...] | None:
        try:
            row = await self.store.fetchrow("layer_fingerprint")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("layer catalog: polling failed (%s); trying again", exc)
            return None
        return None if row is None else tuple(row)

    async def _poll(self, interval: float, last: tuple[Any, ...] | None) -> None:
        """The fallback for NOTIFY: every ``interval``, re-read everything if the fingerprint
        of the completed jobs that name a table changed (or could not be read before)."""
        while True:
            await asyncio.sleep(interval)
            current = await self._fingerprint()
            if current is None:
                continue
            if current != last:
                self._full = True
                self._kick()
            last = current


def _catalog(request: Request) -> LayerCatalog:
    layers: LayerCatalog = request.app.state.layers
    return layers


# --- request checks --------------------------------------------------------------------------


def _known_params(dependant: Dependant) -> set[str]:
    """Every query parameter a route (and its dependencies) declares, by the name sent."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        node = stack.pop()
        names.update(field.alias for field in node.query_params)
        stack.extend(node.dependencies)
    return names


_ROUTE_PARAMS: dict[int, set[str]] = {}


def _route_params(route: Any) -> set[str]:
    key = id(route)
    if key not in _ROUTE_PARAMS and hasattr(route, "query_names"):
        _ROUTE_PARAMS[key] = set(route.query_names)
    if key not in _ROUTE_PARAMS:
        dependant = getattr(route, "dependant", None)
        _ROUTE_PARAMS[key] = _known_params(dependant) if dependant is not None else set()
    return _ROUTE_PARAMS[key]


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a number", field=name) from None
    if not math.isfinite(value):
        raise BadRequest(f"{name}: {text!r} is not a finite number", field=name)
    return value


def _integer(name: str, text: str, low: int, high: int | None = None) -> int:
    if not re.fullmatch(r"[+-]?\d{1,18}", text.strip()):
        raise BadRequest(f"{name}: {text!r} is not an integer", field=name)
    value = int(text)
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name}: {value} is out of range; use an integer {bound}", field=name)
    return value


def check_bbox(text: str, name: str = "bbox") -> list[float]:
    """A CRS84 ``bbox``: 4 or 6 finite numbers, longitudes within ±180, latitudes within ±90,
    south not above north."""
    parts = text.split(",")
    if len(parts) not in (4, 6):
        raise BadRequest(f"{name}: {len(parts)} numbers; give minx,miny,maxx,maxy (or 6 with "
                         "heights), in CRS84", field=name)
    values = [_number(name, part) for part in parts]
    half = len(values) // 2
    west, south, east, north = values[0], values[1], values[half], values[half + 1]
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise BadRequest(f"{name}: longitudes must be within -180..180, got {west}, {east}", field=name)
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise BadRequest(f"{name}: latitudes must be within -90..90, got {south}, {north}", field=name)
    if south > north:
        raise BadRequest(f"{name}: the south edge {south} is above the north edge {north}", field=name)
    return values


def _check_datetime(text: str) -> None:
    parts = text.split("/")
    if len(parts) > 2:
        raise BadRequest(f"datetime: {text!r} is neither an instant nor an interval", field="datetime")
    if len(parts) == 1 and parts[0] in ("", ".."):
        raise BadRequest("datetime: empty", field="datetime")
    if len(parts) == 2 and all(p in ("", "..") for p in parts):
        raise BadRequest("datetime: the interval is open at both ends", field="datetime")
    for part in parts:
        if part in ("", ".."):
            continue
        try:
            parse_rfc3339(part)
        except ValueError:
            raise BadRequest(f"datetime: {part!r} is not an RFC 3339 date-time", field="datetime") from None


def _parse_filter(text: str, lang: str | None) -> Expr:
    if len(text) > MAX_FILTER:
        raise BadRequest(f"filter: longer than {MAX_FILTER} characters", field="filter")
    try:
        if lang == "cql2-json":
            try:
                tree = json.loads(text)
            except ValueError as exc:
                raise BadRequest(f"filter: not valid JSON for filter-lang=cql2-json ({exc})",
                                 field="filter") from None
            if not isinstance(tree, dict):
                raise BadRequest("filter: cql2-json must be a JSON object", field="filter")
            expr = Expr(tree)
        else:
            if text.lstrip().startswith("{"):
                raise BadRequest("filter: looks like cql2-json; send filter-lang=cql2-json",
                                 field="filter")
            expr = Expr(text)
        return Expr(expr.to_json())
    except BadRequest:
        raise
    except Exception as exc:  # cql2 raises plain Exception on syntax errors
        first = " ".join(str(exc).split())[:200]
        raise BadRequest(f"filter: not valid CQL2 ({first})", field="filter") from None


def check_cql(tree: Any, columns: Iterable[str]) -> None:
    """Refuse a CQL2 (JSON) tree that uses an operator or function outside :data:`_CQL_OPS`,
    a property that is not one of ``columns``, or anything that is not a plain literal."""
    allowed = set(columns)
    if not (isinstance(tree, bool) or (isinstance(tree, dict) and "op" in tree)):
        raise BadRequest("filter: must be a predicate (a comparison, logic or spatial test)",
                         field="filter")
    stack: list[Any] = [tree]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_FILTER_NODES:
            raise BadRequest(f"filter: more than {MAX_FILTER_NODES} terms", field="filter")
        if node is None or isinstance(node, (bool, str)):
            continue
        if isinstance(node, (int, float)):
            if not math.isfinite(node):
                raise BadRequest("filter: numbers must be finite", field="filter")
            continue
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            raise BadRequest(f"filter: unexpected term {node!r}", field="filter")
        keys = set(node)
        if "op" in node:
            op = node["op"]
            if not isinstance(op, str) or op.lower() not in _CQL_OPS or not keys <= {"op", "args"}:
                raise BadRequest(f"filter: operator or function {op!r} is not allowed; use "
                                 "comparisons, AND/OR/NOT, LIKE, BETWEEN, IN, IS NULL, CASEI, "
                                 "arithmetic, S_* and T_* predicates", field="filter")
            stack.append(node.get("args", []))
        elif keys == {"property"}:
            name = node["property"]
            if not isinstance(name, str) or name not in allowed:
                raise BadRequest(f"filter: unknown property {name!r}; see the collection's "
                                 "queryables", field="filter")
        elif keys == {"bbox"} and isinstance(node["bbox"], list) and len(node["bbox"]) in (4, 6):
            stack.extend(node["bbox"])
        elif keys <= {"type", "coordinates", "bbox"} and node.get("type") in _GEOMETRY_TYPES:
            stack.append(node.get("coordinates", []))
        elif keys <= {"type", "geometries"} and node.get("type") == "GeometryCollection":
            stack.extend(node.get("geometries", []))
        elif keys in ({"timestamp"}, {"date"}) and isinstance(next(iter(node.values())), str):
            value = str(next(iter(node.values())))
            try:
                parse_rfc3339(value)
            except ValueError:
                raise BadRequest(f"filter: {value!r} is not an RFC 3339 date or date-time",
                                 field="filter") from None
        elif keys == {"interval"} and isinstance(node["interval"], list):
            stack.extend(node["interval"])
        else:
            raise BadRequest(f"filter: unexpected term {json.dumps(node)[:80]}", field="filter")


def _check_property_value(name: str, value: str, json_type: str) -> None:
    if json_type == "number":
        _number(name, value)
    elif json_type == "boolean" and value.lower() not in ("true", "false", "t", "f", "1", "0"):
        raise BadRequest(f"{name}: {value!r} is not a boolean", field=name)


async def check_request(request: Request, user: Annotated[User, Depends(current_user)]) -> None:
    """Every layer request, before tipg reads it: the key, the collection (404 unless it is
    the user's), then each query parameter (400 naming it)."""
    route = request.scope.get("route")
    name = getattr(route, "name", "")
    path = request.path_params
    params = request.query_params
    layer = None
    if "collectionId" in path:
        layer = _catalog(request).get(str(path["collectionId"]), user)
    request.state.layer = layer
    request.state.layer_filter = None
    collection = layer.collection if layer is not None else None
    columns = {c.name: c for c in collection.table_columns} if collection is not None else {}
    _check_tile_path(path)

    known = _route_params(route)
    filters = set(columns) if name in _PROPERTY_FILTER_ROUTES else set()
    for key in params:
        if key not in known and key not in filters:
            if name == "download_items":
                raise BadRequest(f"{key}: not accepted with f={params.get('f')}: a download holds "
                                 "the whole layer", field=key)
            raise BadRequest(f"{key}: unknown query parameter; this resource takes "
                             f"{sorted(known) or 'none'}", field=key)
        if len(params.getlist(key)) > 1:
            raise BadRequest(f"{key}: given more than once", field=key)

    f = params.get("f")
    formats = _ROUTE_FORMATS.get(name)
    if f is not None and formats is not None and f not in formats:
        raise BadRequest(f"f: unknown format {f!r} here; use one of {list(formats)}", field="f")
    if "limit" in params and name in _LIMITS:
        _integer("limit", params["limit"], 1, _LIMITS[name])
    if "offset" in params:
        _integer("offset", params["offset"], 0)
    if "bbox" in params:
        check_bbox(params["bbox"])
    for key in _CRS_PARAMS:
        if key in params and params[key] != CRS84:
            raise BadRequest(f"{key}: only {CRS84} is supported", field=key)
    if "datetime" in params:
        _check_datetime(params["datetime"])
    if "bbox-only" in params and not fastlayers.is_boolean(params["bbox-only"]):
        raise BadRequest(f"bbox-only: {params['bbox-only']!r} is not a boolean; use true or false",
                         field="bbox-only")
    if "simplify" in params and _number("simplify", params["simplify"]) < 0:
        raise BadRequest("simplify: must not be negative", field="simplify")
    for key in ("minzoom", "maxzoom"):
        if key in params:
            _integer(key, params[key], 0, 30)
    lang = params.get("filter-lang")
    if lang is not None and lang not in ("cql2-text", "cql2-json"):
        raise BadRequest(f"filter-lang: {lang!r}; use cql2-text or cql2-json", field="filter-lang")
    if "filter" in params and collection is not None:
        expr = _parse_filter(params["filter"], lang)
        check_cql(expr.to_json(), columns)
        request.state.layer_filter = expr
    if collection is not None:
        _check_columns(params, collection, columns, filters)


def _check_columns(params: QueryParams, collection: Collection, columns: Mapping[str, Any],
                   filters: set[str]) -> None:
    props = {c.name for c in collection.properties if not c.is_geometry}
    if "sortby" in params:
        for item in params["sortby"].split(","):
            column = item.strip().lstrip("+-").strip()
            if column not in props:
                raise BadRequest(f"sortby: unknown property {column!r}", field="sortby")
    if params.get("properties"):
        unknown = [p.strip() for p in params["properties"].split(",") if p.strip() not in props]
        if unknown:
            raise BadRequest(f"properties: unknown {unknown}; see the collection's queryables",
                             field="properties")
    geom = params.get("geom-column")
    if geom is not None and geom.lower() != "none" and not (geom in columns and columns[geom].is_geometry):
        raise BadRequest(f"geom-column: {geom!r} is not a geometry column", field="geom-column")
    when = params.get("datetime-column")
    if when is not None and not (when in columns and columns[when].is_datetime):
        raise BadRequest(f"datetime-column: {when!r} is not a date or time column",
                         field="datetime-column")
    for key in filters & set(params):
        _check_property_value(key, params[key], columns[key].json_type)


def _check_tile_path(path: Mapping[str, Any]) -> None:
    tms_id = path.get("tileMatrixSetId")
    if tms_id is None:
        return
    if tms_id not in TILE_MATRIX_SETS.list():
        raise NotFound(f"tileMatrixSetId: unknown tile matrix set {tms_id!r}; use one of "
                       f"{TILE_MATRIX_SETS.list()}", field="tileMatrixSetId")
    if "z" not in path:
        return
    tms = TILE_MATRIX_SETS.get(tms_id)
    z = _integer("z", str(path["z"]), -(10**6))
    if not tms.minzoom <= z <= tms.maxzoom:
        raise NotFound(f"z: zoom {z} is outside {tms_id} ({tms.minzoom} to {tms.maxzoom})", field="z")
    matrix = tms.matrix(z)
    for key, size in (("x", matrix.matrixWidth), ("y", matrix.matrixHeight)):
        value = _integer(key, str(path[key]), -(10**6))
        if not 0 <= value < size:
            raise NotFound(f"{key}: {value} is outside 0 to {size - 1} at zoom {z} of {tms_id}",
                           field=key)


# --- dependencies handed to tipg -------------------------------------------------------------


async def layer_collection(
    request: Request,
    collectionId: Annotated[str, Path(description="Collection identifier: schema.table")],  # noqa: N803
) -> Collection:
    """The collection of the path, checked by :func:`check_request`."""
    layer = getattr(request.state, "layer", None)
    if layer is None:  # check_request runs first on every layer route
        raise NoSuchCollection("collectionId: no collection", field="collectionId")
    collection: Collection = layer.collection
    return collection


def visible_collections(
    request: Request,
    user: Annotated[User, Depends(current_user)],
    bbox_filter: Annotated[list[float] | None, Depends(tipg_deps.bbox_query)],
    datetime_filter: Annotated[list[str] | None, Depends(tipg_deps.datetime_query)],
    type_filter: Annotated[Literal["Function", "Table"] | None,
                           Query(alias="type", description="Collection type.")] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000, description="Collections per page.")] = None,
    offset: Annotated[int | None, Query(ge=0, description="Start at this offset.")] = None,
) -> CollectionList:
    """The user's collections (admins: all), filtered and paged as tipg's own list."""
    collections = [layer.collection for layer in _catalog(request).visible(user)]
    if type_filter is not None:
        collections = [c for c in collections if c.type == type_filter]
    if bbox_filter is not None:
        collections = [c for c in collections
                       if c.bounds is not None and tipg_deps.s_intersects(bbox_filter, c.bounds)]
    if datetime_filter is not None:
        collections = [c for c in collections if c.dt_bounds is not None
                       and tipg_deps.t_intersects(datetime_filter, c.dt_bounds)]
    matched, start = len(collections), offset or 0
    page = collections[start:start + limit] if limit else collections[start:]
    return CollectionList(collections=page, matched=matched,
                          next=start + len(page) if matched - len(page) > start else None,
                          prev=max(start - (limit or 0), 0) if start else None)


# --- vector tiles ----------------------------------------------------------------------------

TILE_ROUTE = "/collections/{collectionId}/tiles/{tileMatrixSetId}/{z}/{x}/{y}"


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",")] if text is not None else None


async def collection_get_tile(
    request: Request,
    collection: Annotated[Collection, Depends(layer_collection)],
    tileMatrixSetId: Annotated[  # noqa: N803 - tipg's and OGC's names
        Literal[tuple(TILE_MATRIX_SETS.list())],  # type: ignore[valid-type]
        Path(description="Identifier of a supported tile matrix set.")],
    z: Annotated[int, Path(description="Zoom level (tile matrix).")],
    x: Annotated[int, Path(description="Column (tile col).")],
    y: Annotated[int, Path(description="Row (tile row).")],
    ids: Annotated[str | None, Query(description="Only these feature ids, comma-separated.")] = None,
    bbox: Annotated[str | None, Query(description="CRS84 bbox filter.")] = None,
    datetime: Annotated[str | None, Query(description="RFC 3339 instant or interval.")] = None,
    properties: Annotated[str | None, Query(description="Properties in the tile, comma-separated.")]
    = None,
    filter: Annotated[str | None, Query(description="CQL2 filter.")] = None,  # noqa: A002
    filter_lang: Annotated[Literal["cql2-text", "cql2-json"] | None,
                           Query(alias="filter-lang", description="CQL2 encoding.")] = None,
    sortby: Annotated[str | None, Query(description="Feature order, [+-]column,...")] = None,
    geom_column: Annotated[str | None, Query(alias="geom-column", description="Geometry column.")]
    = None,
    datetime_column: Annotated[str | None, Query(alias="datetime-column",
                                                 description="Date or time column.")] = None,
    limit: Annotated[int | None, Query(description="Most features in the tile.")] = None,
    simplify: Annotated[float | None, Query(description="Simplify geometries (map units).")] = None,
) -> Response:
    """A Mapbox Vector Tile of the collection (:func:`geojobs.api.fastlayers.get_tile`, else
    tipg's ``PgCollection.get_tile``).

    This endpoint documents the route; :class:`TileRoute` (before it, same path) serves it
    without FastAPI's parameter solving, which took a third of the server's time per tile.
    """
    return await _tile(request)


class TileRoute(Route):
    """The tile route as a plain Starlette route: :func:`serve_tile`."""

    query_names: frozenset[str] = frozenset()
    """The query parameters of :func:`collection_get_tile` (what the request checks accept)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """Starlette's match, with the route in the scope as FastAPI's routes put it (the
        request checks read its name and parameters)."""
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


async def serve_tile(request: Request) -> Response:
    """The key, the request checks (:func:`check_request`), then the tile."""
    store = request.app.state.store
    await check_request(request, await current_user(request, store))
    return await _tile(request)


def _float(text: str | None) -> float | None:
    return float(text) if text else None


async def _tile(request: Request) -> Response:
    """The tile of a checked request (``request.state.layer``)."""
    layer: ServedLayer = request.state.layer
    collection = layer.collection
    path, params = request.path_params, request.query_params
    tms = TILE_MATRIX_SETS.get(str(path["tileMatrixSetId"]))
    tile = Tile(int(path["x"]), int(path["y"]), int(path["z"]))
    bbox, when = params.get("bbox"), params.get("datetime")
    geom, dt = params.get("geom-column"), params.get("datetime-column")
    sortby, properties = params.get("sortby"), _split(params.get("properties"))
    limit = int(params["limit"]) if params.get("limit") else None
    simplify = _float(params.get("simplify"))
    filters = fastlayers.TileFilters(
        ids=_split(params.get("ids")), bbox=check_bbox(bbox) if bbox else None,
        datetime=when.split("/") if when else None,
        properties_filter=tipg_deps.properties_filter_query(request, collection),
        cql=request.state.layer_filter, geom=geom, dt=dt)
    async with request.app.state.pool.acquire() as conn:
        content = await fastlayers.get_tile(
            conn, collection, tms, tile, filters, sortby=sortby, properties=properties,
            limit=limit, simplify=simplify, cache=layer.queries)
        if content is None:
            content = await collection.get_tile(
                conn, tms=tms, tile=tile, ids_filter=filters.ids, bbox_filter=filters.bbox,
                datetime_filter=filters.datetime, properties_filter=filters.properties_filter,
                cql_filter=filters.cql, sortby=sortby, properties=properties, limit=limit,
                geom=geom, dt=dt, simplify=simplify)
    return Response(content, media_type=MediaType.mvt.value)


# --- downloads -------------------------------------------------------------------------------


class DownloadRoute(APIRoute):
    """``/collections/{id}/items`` when ``f`` is a download format; tipg's route otherwise."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is Match.NONE:
            return match, child
        f = QueryParams(scope.get("query_string", b"")).get("f")
        if f not in DOWNLOADS:
            return Match.NONE, {}
        return match, child


async def download_layer(layer: ServedLayer, fmt: ExportFormat, dsn: str) -> Response:
    """The whole layer as a file in ``fmt`` with its job's provenance."""
    metadata = provenance(layer.job) if layer.job is not None else {}
    return await download_table(layer.collection.id, fmt, dsn, metadata, field="collectionId",
                                name=layer.collection.table)


# --- errors ----------------------------------------------------------------------------------

_TIPG_ERRORS: dict[type[Exception], tuple[int, str | None]] = {
    tipg_errors.InvalidBBox: (400, "bbox"),
    tipg_errors.InvalidDatetime: (400, "datetime"),
    tipg_errors.InvalidLimit: (400, "limit"),
    tipg_errors.InvalidPropertyName: (400, None),
    tipg_errors.InvalidGeometryColumnName: (400, "geom-column"),
    tipg_errors.InvalidDatetimeColumnName: (400, "datetime-column"),
    tipg_errors.MissingDatetimeColumn: (400, "datetime"),
    tipg_errors.MissingGeometryColumn: (404, "collectionId"),
    tipg_errors.NoPrimaryKey: (404, "itemId"),
    tipg_errors.NotFound: (404, "itemId"),
    tipg_errors.MissingFunctionParameter: (400, None),
}


async def _tipg_error(request: Request, exc: Exception) -> Response:
    for cls in type(exc).__mro__:
        if cls in _TIPG_ERRORS:
            status, field = _TIPG_ERRORS[cls]
            detail = f"{field}: {exc}" if field else str(exc)
            extra: dict[str, Any] = {"field": field} if field else {}
            return problem(status, detail, **extra)
    log.exception("layer request failed: %s", exc)
    return problem(500, "internal error; see the server log")


async def _database_error(request: Request, exc: Exception) -> Response:
    """A database error on a layer route: its table went (404), or the database refused a value
    of the request (400, naming ``filter`` when there is one); 500 otherwise."""
    state = str(getattr(exc, "sqlstate", "") or "")
    cid = request.path_params.get("collectionId")
    if cid is not None and request.url.path.startswith("/collections/"):
        if state == "42P01":
            _catalog(request).forget(str(cid))
            return problem(404, f"collectionId: no collection {cid!r}", field="collectionId")
        if state.startswith("22") or state in ("42883", "42804", "42703", "42725"):
            field = "filter" if "filter" in request.query_params else "query"
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return problem(400, f"{field}: the database refused it: {message}", field=field)
    log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "internal error; see the server log")


# --- tile caching ----------------------------------------------------------------------------

_TILE_PATH = re.compile(r"^/collections/[^/]+/tiles/[^/]+/\d+/\d+/\d+$")
_LAYER_PATH = re.compile(r"^/(collections|tileMatrixSets)(/|$)")


def _without_html(scope: Scope) -> None:
    """Drop ``text/html`` from the Accept header of a layer request: tipg would answer a
    browser with its HTML pages (their scripts come from CDNs); JSON is served instead."""
    headers = []
    for name, value in scope.get("headers", []):
        if name == b"accept" and b"html" in value:
            kept = [part for part in value.split(b",") if b"html" not in part]
            if not kept:
                continue
            value = b",".join(kept)
        headers.append((name, value))
    scope["headers"] = headers


class TileCacheMiddleware:
    """Vector tiles get an ETag (sha1 of the body) and ``Cache-Control: private, no-cache`` (or
    ``max-age=N`` when ``GEOJOBS_LAYER_MAX_AGE`` is set);
    ``If-None-Match`` with that ETag answers 304. Other responses pass through untouched.
    Layer requests also lose ``text/html`` from their Accept header (:func:`_without_html`)."""

    def __init__(self, app: ASGIApp, max_age: int = 0) -> None:
        self.app = app
        self.cache_control = (f"private, max-age={max_age}" if max_age else "private, no-cache").encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _LAYER_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        _without_html(scope)
        if scope["method"] not in ("GET", "HEAD") or not _TILE_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            else:
                await send(message)

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", [])]
        status = int(start.get("status", 500))
        if status == 200:
            etag = '"' + hashlib.sha1(body, usedforsecurity=False).hexdigest() + '"'
            headers = [(k, v) for k, v in headers
                       if k.lower() not in (b"cache-control", b"etag", b"content-length")]
            headers += [(b"etag", etag.encode()), (b"vary", b"Authorization"),
                        (b"cache-control", self.cache_control)]
            wanted = dict(scope.get("headers", [])).get(b"if-none-match", b"").decode("latin-1")
            if etag in [tag.strip() for tag in wanted.split(",")]:
                status, body = 304, b""
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


# --- tipg's factories, with a faster url_for -------------------------------------------------


class _FastUrls:
    """tipg's ``url_for`` without Starlette's route search and URL parsing: an items page
    calls it twice per feature, which took two thirds of the time of ``items?limit=1000``."""

    router: APIRouter
    router_prefix: str

    def url_for(self, request: Request, name: str, **path_params: Any) -> str:
        formats: dict[str, str] | None = self.__dict__.get("_path_formats")
        if formats is None:
            formats = {route.name: route.path_format for route in self.router.routes
                       if isinstance(route, APIRoute)}
            self.__dict__["_path_formats"] = formats
        path = formats.get(name)
        if path is None or self.router_prefix:
            return super().url_for(request, name, **path_params)  # type: ignore[misc]
        return str(request.base_url).rstrip("/") + path.format(
            **{key: str(value) for key, value in path_params.items()})


class _Features(_FastUrls, OGCFeaturesFactory):
    """tipg's Features routes."""


class _Tiles(_FastUrls, OGCTilesFactory):
    """tipg's Tiles routes."""


class LayerEndpoints(Endpoints):
    """tipg's :class:`~tipg.factory.Endpoints` built from the two factories above."""

    def register_routes(self) -> None:
        """As tipg's, with :class:`_Features` and :class:`_Tiles`."""
        self.ogc_features = _Features(
            collections_dependency=self.collections_dependency,
            collection_dependency=self.collection_dependency, router_prefix=self.router_prefix,
            templates=self.templates, with_common=False)
        self.router.include_router(self.ogc_features.router)
        self.ogc_tiles = _Tiles(
            collection_dependency=self.collection_dependency, router_prefix=self.router_prefix,
            templates=self.templates, supported_tms=self.supported_tms,
            with_viewer=self.with_tiles_viewer, with_common=False)
        self.router.include_router(self.ogc_tiles.router)


# tipg's CSV writer takes the page's first row for the header and raises StopIteration (a
# broken 200) when the page is empty; an empty page is an empty file here.
_tipg_csv_rows = tipg_factory.create_csv_rows


def _csv_rows(data: Iterable[dict[Any, Any]]) -> Generator[str, None, None]:
    rows = iter(data)
    first = next(rows, None)
    if first is None:
        return
    yield from _tipg_csv_rows(itertools.chain([first], rows))


tipg_factory.create_csv_rows = _csv_rows


# --- mounting --------------------------------------------------------------------------------


def _conformance(endpoints: LayerEndpoints) -> list[str]:
    """tipg's conformance classes but HTML (not served here)."""
    return [c for c in [*COMMON_CONFORMS, *endpoints.conforms_to] if not c.endswith("/conf/html")]


def mount_layers(app: FastAPI, settings: ApiSettings) -> None:
    """Mount tipg's Features and Tiles routes (and the downloads) into ``app`` at the root."""
    endpoints = LayerEndpoints(
        title="geojobs result layers", with_common=False, with_tiles_viewer=False,
        supported_tms=TILE_MATRIX_SETS,
        collection_dependency=cast(Any, layer_collection),  # async: no thread hop
        collections_dependency=visible_collections)
    router = APIRouter(dependencies=[Depends(check_request)])

    async def download_items(
        request: Request,
        collection: Annotated[Collection, Depends(layer_collection)],
        settings: Annotated[ApiSettings, Depends(settings_dep)],
        f: Annotated[str, Query(description="gpkg, parquet or fgb")],
    ) -> Response:
        return await download_layer(request.state.layer, FORMATS[f], settings.database_url)

    # Before tipg's items route, matching only when f is a download format.
    router.add_api_route("/collections/{collectionId}/items", download_items, methods=["GET"],
                         name="download_items", include_in_schema=False,
                         response_class=FileResponse, route_class_override=DownloadRoute)
    # Tiles: our route in place of tipg's (same path, name and query; see collection_get_tile).
    router.add_api_route(TILE_ROUTE, collection_get_tile, methods=["GET"], name="collection_get_tile",
                         response_class=Response, tags=["OGC Tiles API"],
                         operation_id=".collection.vector.getTileTms",
                         summary="A vector tile (Mapbox Vector Tile) of the collection.",
                         responses={200: {"content": {MediaType.mvt.value: {}}}})
    endpoints.router.routes = [route for route in endpoints.router.routes
                               if getattr(route, "name", None) != "collection_get_tile"]
    tile_route = next(route for route in router.routes
                      if isinstance(route, APIRoute) and route.name == "collection_get_tile")
    TileRoute.query_names = frozenset(_known_params(tile_route.dependant))
    # first of the app's routes: a tile request is matched against no other route's pattern
    app.router.routes.insert(0, TileRoute(TILE_ROUTE, serve_tile, methods=["GET"],
                                          name="collection_get_tile", include_in_schema=False))
    # Items as GeoJSON built by PostGIS, before tipg's route (which answers everything else).
    tipg_items = next(route for route in endpoints.ogc_features.router.routes
                      if isinstance(route, APIRoute) and route.name == "items")
    fastlayers.FastItemsRoute.query_names = frozenset(_known_params(tipg_items.dependant))
    router.add_api_route("/collections/{collectionId}/items", fastlayers.items, methods=["GET"],
                         name="items", include_in_schema=False, response_class=Response,
                         route_class_override=fastlayers.FastItemsRoute)
    router.include_router(endpoints.router)
    app.include_router(router)

    app.state.layers = LayerCatalog([*output_schemas(), *settings.layer_schemas])
    app.state.conformance.extend(_conformance(endpoints))
    app.state.landing_links.extend([
        {"href": "/collections", "rel": "data", "type": "application/json",
         "title": "result layers (OGC API - Features)"},
        {"href": "/tileMatrixSets", "rel": "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes",
         "type": "application/json", "title": "tile matrix sets (OGC API - Tiles)"},
    ])
    app.add_exception_handler(tipg_errors.TiPgError, _tipg_error)
    app.add_exception_handler(asyncpg.PostgresError, _database_error)
    app.add_middleware(TileCacheMiddleware, max_age=settings.layer_max_age)


async def start_layers(app: FastAPI, store: Store) -> None:
    """At startup: tipg reads from the API's pool; the catalog is read and follows job changes."""
    app.state.pool = store.pool
    await app.state.layers.start(store)


async def stop_layers(app: FastAPI) -> None:
    """At shutdown."""
    await app.state.layers.stop()
