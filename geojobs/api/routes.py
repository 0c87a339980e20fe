"""The OGC API - Processes routes, grouped in a factory an app mounts beside other routers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geojobs import registry
from geojobs.api.callbacks import check_callback_uri
from geojobs.api.deps import (
    Paging,
    Prefer,
    User,
    current_user,
    get_store,
    idempotency_key,
    job_id,
    json_body,
    paging,
    parse_interval,
    prefer,
    settings_dep,
)
from geojobs.api.describe import process_description, process_summary
from geojobs.api.downloads import download_table
from geojobs.api.errors import (
    BadRequest,
    Forbidden,
    JobFailed,
    NoSuchJob,
    NoSuchProcess,
    ResultNotReady,
    TooManyQueued,
)
from geojobs.api.jobs import (
    FINAL,
    OGC_STATUS,
    SQL_STATUS,
    job_from_change,
    raster_path,
    results_document,
    status_info,
)
from geojobs.api.settings import ApiSettings
from geojobs.api.store import Store
from geojobs.errors import InvalidParams
from geojobs.formats import FORMATS, ExportFormat, provenance, result_table
from geojobs.params import JobParams, validate_params

__all__ = ["ProcessesEndpoints", "CONFORMANCE", "base_url", "NO_STORE"]

CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/ogc-process-description",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/job-list",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/dismiss",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/callback",
]
OPENAPI_TYPE = "application/vnd.oai.openapi+json;version=3.0"
NO_STORE = {"Cache-Control": "no-store"}
REL = "http://www.opengis.net/def/rel/ogc/1.0/"


def base_url(request: Request) -> str:
    """The API's base URL as the client reached it, without a trailing slash."""
    return str(request.base_url).rstrip("/")


class Subscriber(BaseModel):
    """OGC ``subscriber``: URLs the API POSTs the job's status to."""

    model_config = ConfigDict(extra="forbid")

    successUri: str | None = None  # noqa: N815 - OGC's names
    inProgressUri: str | None = None  # noqa: N815
    failedUri: str | None = None  # noqa: N815


class ExecuteRequest(BaseModel):
    """The execute request of OGC API - Processes 1.0."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict, description="The job's parameters.")
    outputs: dict[str, Any] | None = Field(default=None, description="Accepted; all outputs are given.")
    response: Literal["document", "raw"] = "document"
    subscriber: Subscriber | None = None


class Link(BaseModel):
    """A link."""

    href: str
    rel: str
    type: str | None = None
    title: str | None = None


class StatusInfo(BaseModel):
    """OGC statusInfo."""

    jobID: str  # noqa: N815
    processID: str  # noqa: N815
    type: Literal["process"] = "process"
    status: Literal["accepted", "running", "successful", "failed", "dismissed"]
    message: str | None = None
    progress: int = Field(ge=0, le=100)
    created: str | None = None
    started: str | None = None
    finished: str | None = None
    updated: str | None = None
    links: list[Link] = Field(default_factory=list)


class JobList(BaseModel):
    """A page of jobs."""

    jobs: list[StatusInfo]
    links: list[Link]


class FastJSONResponse(JSONResponse):
    """``JSONResponse`` encoded by orjson: the same compact UTF-8 JSON for the documents of the
    submit and status routes (strings, integers, null), in a fraction of the time."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@cache
def _params_model(process_id: str) -> type[JobParams]:
    """The ``Params`` model of a registered job type (loaded and checked once)."""
    return registry.load(process_id).Params


_BASES: dict[tuple[Any, ...], str] = {}


def _base(request: Request) -> str:
    """:func:`base_url`, kept per (scheme, server, Host header, root path): it is the same for
    every request that arrives the same way, and building it is a URL parse."""
    scope = request.scope
    key = (scope.get("scheme"), scope.get("server"), request.headers.get("host"),
           scope.get("app_root_path", scope.get("root_path", "")))
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) > 256:  # Host headers are the client's choice: keep the dict small
            _BASES.clear()
        base = _BASES[key] = base_url(request)
    return base


def _invalid_inputs(exc: InvalidParams) -> BadRequest:
    message = str(exc).replace("params.", "inputs.")
    first = message.split(":", 1)[0]
    return BadRequest(message, field=first)


def _execute_request(body: dict[str, Any]) -> ExecuteRequest:
    try:
        return ExecuteRequest.model_validate(body)
    except ValidationError as exc:
        parts, fields = [], []
        for item in exc.errors():
            where = ".".join(str(p) for p in item["loc"]) or "body"
            fields.append(where)
            parts.append(f"{where}: {item['msg']}")
        raise BadRequest("; ".join(parts), field=fields[0]) from None


async def _job(store: Store, user: User, jid: int) -> asyncpg.Record:
    row = await store.fetchrow("get_job", id=jid, username=user.scope)
    if row is None:
        raise NoSuchJob(f"jobID: no job {jid}", field="jobID")
    return row


async def _job_status(store: Store, user: User, jid: int) -> asyncpg.Record:
    """The columns statusInfo shows, without the job's params and result (they can be large,
    and a client polling a job's status reads them for nothing)."""
    row = await store.fetchrow("get_job_status", id=jid, username=user.scope)
    if row is None:
        raise NoSuchJob(f"jobID: no job {jid}", field="jobID")
    return row


async def _download(job: dict[str, Any], fmt: ExportFormat, dsn: str) -> Response:
    """The job's whole result table as a file in ``fmt``, with its provenance."""
    table = result_table(job["result"])
    if table is None:
        raise NoSuchJob(f"job {job['id']} has no result table to download", field="jobID")
    return await download_table(table, fmt, dsn, provenance(job), field="jobID",
                                name=table.rpartition(".")[2])


@dataclass
class ProcessesEndpoints:
    """Landing page, conformance, OpenAPI, processes and jobs, on one router."""

    router: APIRouter = field(default_factory=APIRouter)
    title: str = "geojobs"

    def __post_init__(self) -> None:
        self.register_routes()

    def register_routes(self) -> None:  # noqa: C901 - one place lists every route
        """Add every route to the router."""
        router = self.router

        @router.get("/", summary="Landing page", tags=["Capabilities"])
        def landing(request: Request) -> dict[str, Any]:
            base = base_url(request)
            return {"title": self.title,
                    "description": "Geospatial analysis jobs: OGC API - Processes over PostGIS",
                    "links": [
                        {"href": f"{base}/", "rel": "self", "type": "application/json",
                         "title": "this document"},
                        {"href": f"{base}/api", "rel": "service-desc", "type": OPENAPI_TYPE,
                         "title": "the API definition"},
                        {"href": f"{base}/conformance", "rel": "conformance",
                         "type": "application/json", "title": "conformance classes"},
                        {"href": f"{base}/processes", "rel": REL + "processes",
                         "type": "application/json", "title": "processes"},
                        {"href": f"{base}/jobs", "rel": REL + "job-list",
                         "type": "application/json", "title": "jobs"},
                        *({**link, "href": base + link["href"]}
                          for link in getattr(request.app.state, "landing_links", [])),
                    ]}

        @router.get("/conformance", summary="Conformance classes", tags=["Capabilities"])
        def conformance(request: Request) -> dict[str, list[str]]:
            extra = getattr(request.app.state, "conformance", [])
            return {"conformsTo": CONFORMANCE + [c for c in extra if c not in CONFORMANCE]}

        @router.get("/api", summary="OpenAPI 3.0 definition", tags=["Capabilities"],
                    response_class=JSONResponse)
        def openapi(request: Request) -> Response:
            doc = request.app.state.openapi_30()
            return JSONResponse(doc, media_type=OPENAPI_TYPE)

        @router.get("/processes", summary="Processes (one per job type)", tags=["Processes"])
        def processes(request: Request) -> dict[str, Any]:
            base = base_url(request)
            return {"processes": [process_summary(name, base) for name in registry.names()],
                    "links": [{"href": f"{base}/processes", "rel": "self",
                               "type": "application/json"}]}

        @router.get("/processes/{processID}", summary="Process description", tags=["Processes"])
        def process(request: Request, processID: str) -> dict[str, Any]:  # noqa: N803
            if processID not in registry.names():
                raise NoSuchProcess(f"processID: no process {processID!r}", field="processID")
            return process_description(processID, base_url(request))

        @router.post("/processes/{processID}/execution", summary="Execute (queue a job)",
                     tags=["Processes"], status_code=201, response_model=StatusInfo,
                     responses={200: {"model": StatusInfo,
                                      "description": "The job of this Idempotency-Key"}},
                     openapi_extra={"requestBody": {"required": True, "content": {
                         "application/json": {"schema": ExecuteRequest.model_json_schema()}}}})
        async def execute(
            request: Request,
            processID: str,  # noqa: N803
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
            settings: Annotated[ApiSettings, Depends(settings_dep)],
            preference: Annotated[Prefer, Depends(prefer)],
            key: Annotated[str | None, Depends(idempotency_key)],
        ) -> Response:
            return await self.submit(request, processID, user, store, settings, preference, key)

        @router.get("/jobs", summary="The user's jobs, newest first", tags=["Jobs"],
                    response_model=JobList)
        async def jobs(
            request: Request,
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
            page: Annotated[Paging, Depends(paging)],
            processID: Annotated[list[str] | None, Query()] = None,  # noqa: N803
            status: Annotated[list[str] | None, Query()] = None,
            datetime: Annotated[str | None, Query(description="RFC 3339 instant or interval")]
            = None,
            minDuration: Annotated[int | None, Query(ge=0)] = None,  # noqa: N803
            maxDuration: Annotated[int | None, Query(ge=0)] = None,  # noqa: N803
        ) -> Response:
            statuses = None
            if status:
                names = [s for part in status for s in part.split(",") if s]
                unknown = [s for s in names if s not in SQL_STATUS]
                if unknown:
                    raise BadRequest(f"status: unknown {unknown}; use {list(SQL_STATUS)}", field="status")
                statuses = [ours for s in names for ours in SQL_STATUS[s]]
            types = [t for part in processID for t in part.split(",") if t] if processID else None
            start = end = None
            if datetime is not None:
                start, end = parse_interval(datetime)
            rows = await store.fetch(
                "list_jobs", username=user.scope, before=page.before, types=types,
                statuses=statuses, created_from=start, created_to=end,
                min_duration=None if minDuration is None else float(minDuration),
                max_duration=None if maxDuration is None else float(maxDuration), limit=page.limit)
            base = base_url(request)
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "before"]
            links = [{"href": str(request.url), "rel": "self", "type": "application/json"}]
            if len(rows) == page.limit:
                query.append(("before", str(rows[-1]["id"])))
                links.append({"href": f"{base}/jobs?{urlencode(query)}", "rel": "next",
                              "type": "application/json"})
            return JSONResponse({"jobs": [status_info(r, base) for r in rows], "links": links},
                                headers=NO_STORE)

        @router.get("/jobs/{jobID}", summary="Job status (statusInfo)", tags=["Jobs"],
                    response_model=StatusInfo)
        async def job_status(
            request: Request,
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> Response:
            return await self.status(request, jid, user, store)

        @router.get("/jobs/{jobID}/inputs", summary="The inputs a job was submitted with",
                    tags=["Jobs"])
        async def job_inputs(
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> Response:
            job = await _job(store, user, jid)
            return JSONResponse({"jobID": str(jid), "processID": job["job_type"],
                                 "inputs": job["params"] or {}}, headers=NO_STORE)

        @router.get("/jobs/{jobID}/results", summary="Job results", tags=["Jobs"])
        async def job_results(
            request: Request,
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
            settings: Annotated[ApiSettings, Depends(settings_dep)],
            f: Annotated[str | None, Query(
                description="Download the whole result table as a file: " + ", ".join(FORMATS))]
            = None,
        ) -> Response:
            fmt = None
            if f is not None:
                fmt = FORMATS.get(f)
                if fmt is None:
                    raise BadRequest(f"f: unknown format {f!r}; use one of {sorted(FORMATS)}",
                                     field="f")
            job = await _job(store, user, jid)
            if job["status"] in ("waiting", "queued", "running"):
                raise ResultNotReady(f"job {jid} is {OGC_STATUS[job['status']]}", field="jobID")
            if job["status"] == "failed":
                raise JobFailed(f"job {jid} failed: {job['error']}", field="jobID")
            if job["status"] == "cancelled":
                raise NoSuchJob(f"job {jid} was dismissed", field="jobID")
            if fmt is not None:
                return await _download(dict(job), fmt, settings.database_url)
            return JSONResponse(results_document(job, base_url(request)), headers=NO_STORE)

        @router.get("/jobs/{jobID}/results/cog", summary="The COG file of a raster job", tags=["Jobs"],
                    response_class=FileResponse)
        async def job_cog(
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> Response:
            job = await _job(store, user, jid)
            path = raster_path(job["result"] or {}) if job["status"] == "completed" else None
            if path is None or not path.is_file():
                raise NoSuchJob(f"job {jid} has no raster output", field="jobID")
            return FileResponse(path, media_type="image/tiff; application=geotiff",
                                headers=NO_STORE)

        @router.delete("/jobs/{jobID}", summary="Dismiss (cancel, or delete with results)",
                       tags=["Jobs"], response_model=StatusInfo)
        async def dismiss(
            request: Request,
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> Response:
            job = await _job(store, user, jid)
            base = base_url(request)
            if job["status"] in ("waiting", "queued", "running"):
                if await store.fetchval("cancel_job", id=jid, username=user.scope):
                    job = await _job(store, user, jid)
                    return JSONResponse(status_info(job, base), headers=NO_STORE)
                job = await _job(store, user, jid)
            async with store.pool.acquire() as conn, conn.transaction():
                result = await store.fetchval("dismiss_job", conn, id=jid, username=user.scope)
                if result is None:
                    raise NoSuchJob(f"jobID: no job {jid}", field="jobID")
                path = raster_path(result)
                if path is not None:
                    path.unlink(missing_ok=True)
            return JSONResponse(status_info(job, base, status="cancelled"), headers=NO_STORE)

        @router.get("/jobs/{jobID}/events", summary="Server-Sent Events of status and progress",
                    tags=["Jobs"], response_class=StreamingResponse)
        async def events(
            request: Request,
            jid: Annotated[int, Depends(job_id)],
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> Response:
            await _job(store, user, jid)
            base = base_url(request)
            return StreamingResponse(self._events(request, store, user, jid, base),
                                     media_type="text/event-stream",
                                     headers={**NO_STORE, "X-Accel-Buffering": "no"})

    async def submit(self, request: Request, processID: str, user: User,  # noqa: N803
                     store: Store, settings: ApiSettings, preference: Prefer,
                     key: str | None) -> Response:
        """``POST /processes/{processID}/execution`` once its dependencies are solved: validate
        the inputs with the job type's ``Params``, insert the job in one round trip, and answer
        its statusInfo (201, or 200 for a known Idempotency-Key)."""
        if processID not in registry.JOB_TYPES:
            raise NoSuchProcess(f"processID: no process {processID!r}", field="processID")
        body = await json_body(request, settings)
        req = _execute_request(body)
        try:
            params = validate_params(_params_model(processID), req.inputs)
        except InvalidParams as exc:
            raise _invalid_inputs(exc) from None
        await self._check_overwrite(store, user, params)
        uris: dict[str, str | None] = {"success_uri": None, "in_progress_uri": None,
                                       "failed_uri": None}
        if req.subscriber is not None:
            for name, column in (("successUri", "success_uri"), ("inProgressUri", "in_progress_uri"),
                                 ("failedUri", "failed_uri")):
                value = getattr(req.subscriber, name)
                if value is not None:
                    uris[column] = check_callback_uri(value, settings, f"subscriber.{name}")
        try:
            row = await store.fetchrow(
                "submit_job", username=user.name, job_type=processID,
                params=params.model_dump(mode="json", exclude_unset=True),
                idempotency_key=key, max_queued=settings.api_max_queued, **uris)
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == "GJ429":
                raise TooManyQueued(
                    f"user {user.name} has {settings.api_max_queued} queued jobs (the limit, "
                    "GEOJOBS_API_MAX_QUEUED); wait for some to start", field="GEOJOBS_API_MAX_QUEUED",
                ) from None
            raise
        assert row is not None
        jid, created = int(row["job_id"]), bool(row["created"])
        job: Mapping[str, Any]
        if created and preference.wait is None:  # as inserted: no second round trip
            job = {"id": jid, "job_type": processID, "status": "queued", "progress": None,
                   "error": None, "result": None, "created_at": row["created_at"],
                   "started_at": None, "finished_at": None, "updated_at": row["created_at"]}
        else:
            job = await _job_status(store, user, jid)
        applied = []
        if preference.wait is not None and created:
            job = await self._wait(store, user, jid, job, preference.wait)
            applied.append(f"wait={preference.wait}")
        elif preference.respond_async:
            applied.append("respond-async")
        base = _base(request)
        headers = {"Location": f"{base}/jobs/{jid}", **NO_STORE}
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        return FastJSONResponse(status_info(job, base), status_code=201 if created else 200,
                                headers=headers)

    async def status(self, request: Request, jid: int, user: User, store: Store) -> Response:
        """``GET /jobs/{jobID}`` once its dependencies are solved: the job's statusInfo."""
        job = await _job_status(store, user, jid)
        return FastJSONResponse(status_info(job, _base(request)), headers=NO_STORE)

    async def _check_overwrite(self, store: Store, user: User, params: Any) -> None:
        """403 when ``overwrite`` would replace a table another user's job wrote."""
        if not getattr(params, "overwrite", False) or user.admin:
            return
        field_name = "output_table"  # every job type that writes a table names it so
        target = getattr(params, field_name, None)
        if not target:
            return
        if not await store.fetchval("relation_exists", table=target):
            return
        writer = await store.fetchval("table_writer", table=target)
        if writer != user.name:
            raise Forbidden(f"inputs.{field_name}: {target} was not written by your jobs; "
                            "it may not be overwritten", field=f"inputs.{field_name}")

    async def _wait(self, store: Store, user: User, jid: int, job: Mapping[str, Any],
                    seconds: int) -> Mapping[str, Any]:
        """The job once it is final, or as it is after ``seconds``; woken by NOTIFY."""
        deadline = time.monotonic() + seconds
        async with store.watch(jid) as changes:
            job = await _job_status(store, user, jid)
            while job["status"] not in FINAL:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    change = await asyncio.wait_for(changes.get(), remaining)
                except TimeoutError:
                    break
                if change.get("status") not in FINAL and job_from_change(change) is not None:
                    continue  # progress or running: nothing to answer yet
                job = await _job_status(store, user, jid)
        return job

    async def _events(self, request: Request, store: Store, user: User, jid: int,
                      base: str) -> AsyncIterator[bytes]:
        """SSE: the job's statusInfo now and at every change, until its final status.

        The row is read once; each later event comes straight from the change's NOTIFY
        payload (migration 0012), read again only when the payload does not carry it all."""
        last: tuple[Any, ...] | None = None
        number = 0
        async with store.watch(jid) as changes:
            row: Mapping[str, Any] | None = await store.fetchrow("get_job", id=jid,
                                                                 username=user.scope)
            while True:
                if row is None:
                    info = {"jobID": str(jid), "status": "dismissed", "message": "job dismissed"}
                    yield f"id: {number}\nevent: status\ndata: {json.dumps(info)}\n\n".encode()
                    return
                key = (row["status"], row["progress"])
                if key != last:
                    last = key
                    number += 1
                    data = json.dumps(status_info(row, base))
                    yield f"id: {number}\nevent: status\ndata: {data}\n\n".encode()
                if row["status"] in FINAL:
                    return
                try:
                    change = await asyncio.wait_for(changes.get(), 15)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                row = job_from_change(change)
                if row is None:
                    row = await store.fetchrow("get_job", id=jid, username=user.scope)
