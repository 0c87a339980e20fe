"""The two hot routes, submit (``POST /processes/{processID}/execution``) and status
(``GET /jobs/{jobID}``), served without FastAPI's routing and dependency solver.

FastAPI still declares both routes (the OpenAPI document is generated from them, and they
answer when this middleware is off: ``GEOJOBS_API_FAST_ROUTES=false``). This middleware,
the innermost one, answers them first: it solves the same dependencies, in the order FastAPI
would, by calling the same functions of :mod:`geojobs.api.deps`, then runs the same handler
(:meth:`ProcessesEndpoints.submit` / :meth:`~ProcessesEndpoints.status`). Errors of our tree
become the same RFC 7807 documents as through FastAPI's handlers; anything else goes on to
Starlette's server-error handler as before. What it saves per request is FastAPI's route
matching over every router, its dependency solving (signature analysis, a cache key per
dependency, parameter validation) and two middleware layers: a third to nearly half of
the server's CPU per submit, and half per status read (bench/README.md, "HTTP API").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from geojobs.api.deps import current_user, idempotency_key, job_id, prefer
from geojobs.api.errors import geojobs_error
from geojobs.errors import GeojobsError

if TYPE_CHECKING:
    from geojobs.api.routes import ProcessesEndpoints

__all__ = ["FastRoutes"]

_EXECUTION = "/execution"
_PROCESSES = "/processes/"
_JOBS = "/jobs/"


class FastRoutes:
    """Pure ASGI middleware answering submit and status itself; every other request (and
    those two with another method) passes through untouched."""

    def __init__(self, app: ASGIApp, endpoints: ProcessesEndpoints) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path.startswith(_PROCESSES) and path.endswith(_EXECUTION):
                process_id = path[len(_PROCESSES):-len(_EXECUTION)]
                if process_id and "/" not in process_id:
                    await self._submit(scope, receive, send, process_id)
                    return
            elif method == "GET" and path.startswith(_JOBS):
                raw_id = path[len(_JOBS):]
                if raw_id and "/" not in raw_id:
                    await self._status(scope, receive, send, raw_id)
                    return
        await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send, process_id: str) -> None:
        request = Request(scope, receive)
        state = request.app.state
        try:
            # the execute route's dependencies, in its signature's order
            user = await current_user(request, state.store)
            preference = await prefer(request, state.settings)
            key = await idempotency_key(request.headers.get("idempotency-key"))
            response = await self.endpoints.submit(request, process_id, user, state.store,
                                                   state.settings, preference, key)
        except GeojobsError as exc:
            response = await geojobs_error(request, exc)
        await response(scope, receive, send)

    async def _status(self, scope: Scope, receive: Receive, send: Send, raw_id: str) -> None:
        request = Request(scope, receive)
        store = request.app.state.store
        try:
            jid = await job_id(raw_id)  # before the key, as FastAPI solves them
            user = await current_user(request, store)
            response = await self.endpoints.status(request, jid, user, store)
        except GeojobsError as exc:
            response = await geojobs_error(request, exc)
        await response(scope, receive, send)
