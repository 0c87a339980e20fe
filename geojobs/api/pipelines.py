"""Pipelines over HTTP: ``POST /pipelines`` takes the spec ``geojobs pipeline submit`` takes and
``GET /pipelines/{id}`` shows a run, as a statusInfo-like document linking each step's job.

The spec is checked by :func:`geojobs.pipelines.plan` (the CLI's checks, each step's params by
its job type's Params); the steps are then inserted as the API user in one transaction through
the SECURITY DEFINER functions of migration 0005b, so a refused spec inserts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from geojobs import pipelines
from geojobs.api.deps import User, current_user, get_store, settings_dep, spec_body
from geojobs.api.errors import BadRequest, Forbidden, NotFound, TooManyQueued
from geojobs.api.jobs import OGC_STATUS, iso, status_info
from geojobs.api.settings import ApiSettings
from geojobs.api.store import Store
from geojobs.errors import InvalidParams

__all__ = ["PipelineEndpoints", "pipeline_document"]

NO_STORE = {"Cache-Control": "no-store"}


class NoSuchPipeline(NotFound):
    """No such pipeline (or not the user's)."""


def _bad_spec(exc: InvalidParams) -> BadRequest:
    """A 400 naming the field: the text before the first ': ' of the message."""
    message = str(exc)
    return BadRequest(message, field=message.split(": ", 1)[0])


def _rewrite(value: Any, job_ids: Mapping[str, int]) -> Any:
    """Parameters with step names in ``output_of`` replaced by job ids."""
    if isinstance(value, dict):
        if isinstance(value.get("output_of"), str):
            return {**value, "output_of": job_ids[value["output_of"]]}
        return {k: _rewrite(v, job_ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, job_ids) for v in value]
    return value


def pipeline_document(run: Mapping[str, Any], steps: list[Mapping[str, Any]],
                      base: str) -> dict[str, Any]:
    """A run as statusInfo: status derived from its steps, progress their mean, a link each."""
    ours = pipelines.status_of([dict(s) for s in steps]) if steps else "failed"
    progress = [1.0 if s["status"] == "completed" else float(s["progress"] or 0) for s in steps]
    finished = [s["finished_at"] for s in steps]
    href = f"{base}/pipelines/{run['id']}"
    return {
        "jobID": str(run["id"]),
        "processID": "pipeline",
        "type": "pipeline",
        "name": run["name"],
        "status": OGC_STATUS[ours],
        "message": ours,
        "progress": int(round(100 * sum(progress) / len(progress))) if progress else 0,
        "created": iso(run["created_at"]),
        "started": iso(min((s["started_at"] for s in steps if s["started_at"]), default=None)),
        "finished": iso(max(finished)) if finished and all(finished) else None,
        "steps": [{"step": s["step"], **status_info(s, base)} for s in steps],
        "links": [{"href": href, "rel": "self", "type": "application/json",
                   "title": "pipeline status"},
                  *({"href": f"{base}/jobs/{s['id']}", "rel": "item", "type": "application/json",
                     "title": f"step {s['step']}"} for s in steps)],
    }


async def _check_overwrites(store: Store, user: User, planned: list[pipelines.PlannedStep]) -> None:
    """403 when a step's ``overwrite`` would replace a table another user's job wrote."""
    if user.admin:
        return
    for step in planned:
        target = step.spec.params.get("output_table")
        if not step.spec.params.get("overwrite") or not isinstance(target, str):
            continue
        if not await store.fetchval("relation_exists", table=target):
            continue
        if await store.fetchval("table_writer", table=target) != user.name:
            where = f"steps[{step.position}] ({step.spec.name}).params.output_table"
            raise Forbidden(f"{where}: {target} was not written by your jobs; it may not be "
                            "overwritten", field=where)


class PipelineEndpoints:
    """``POST /pipelines`` and ``GET /pipelines/{id}`` on one router."""

    def __init__(self) -> None:
        self.router = APIRouter()
        router = self.router

        @router.post("/pipelines", summary="Submit a pipeline (its steps as jobs)",
                     tags=["Pipelines"], status_code=201)
        async def submit(
            request: Request,
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
            settings: Annotated[ApiSettings, Depends(settings_dep)],
        ) -> JSONResponse:
            body = await spec_body(request, settings)
            try:
                spec, planned = pipelines.plan(body)
            except InvalidParams as exc:
                raise _bad_spec(exc) from None
            await _check_overwrites(store, user, planned)
            async with store.pool.acquire() as conn, conn.transaction():
                queued = int(await store.fetchval("pipeline_queue_room", conn,
                                                  username=user.name))
                if queued + len(planned) > settings.api_max_queued:
                    raise TooManyQueued(
                        f"user {user.name} has {queued} queued or waiting jobs; this pipeline's "
                        f"{len(planned)} steps would pass the limit of {settings.api_max_queued} "
                        "(GEOJOBS_API_MAX_QUEUED); wait for some to start",
                        field="GEOJOBS_API_MAX_QUEUED")
                try:
                    pid = int(await store.fetchval(
                        "pipeline_create_as", conn, username=user.name, name=spec.name,
                        spec=spec.model_dump(mode="json")))
                    job_ids: dict[str, int] = {}
                    for step in planned:
                        job_ids[step.spec.name] = int(await store.fetchval(
                            "pipeline_step_as", conn, username=user.name, pipeline_id=pid,
                            step=step.spec.name, position=step.position,
                            job_type=step.spec.job_type,
                            params=_rewrite(step.spec.params, job_ids),
                            depends_on=[job_ids[d] for d in step.depends],
                            priority=step.spec.priority, max_attempts=step.spec.max_attempts))
                except asyncpg.DataError as exc:  # the dependency trigger's checks (0005)
                    raise _bad_spec(InvalidParams(str(exc))) from None
                run = await store.fetchrow("get_pipeline", conn, id=pid, username=user.name)
                steps = await store.fetch("pipeline_steps", conn, id=pid)
            assert run is not None
            base = str(request.base_url).rstrip("/")
            return JSONResponse(pipeline_document(run, steps, base), status_code=201,
                                headers={"Location": f"{base}/pipelines/{pid}", **NO_STORE})

        @router.get("/pipelines/{pipelineID}", summary="A pipeline's status and steps",
                    tags=["Pipelines"])
        async def show(
            request: Request,
            pipelineID: int,  # noqa: N803 - OGC-style name
            user: Annotated[User, Depends(current_user)],
            store: Annotated[Store, Depends(get_store)],
        ) -> JSONResponse:
            run = await store.fetchrow("get_pipeline", id=pipelineID, username=user.scope)
            if run is None:
                raise NoSuchPipeline(f"pipelineID: no pipeline {pipelineID}", field="pipelineID")
            steps = await store.fetch("pipeline_steps", id=pipelineID)
            return JSONResponse(pipeline_document(run, steps, str(request.base_url).rstrip("/")),
                                headers=NO_STORE)
