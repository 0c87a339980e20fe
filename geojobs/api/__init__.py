"""The HTTP API: OGC API - Processes on the job table, and OGC API - Features and Tiles over the
result tables (``geojobs serve``).

:func:`create_app` builds the FastAPI app: the Processes routes of
:class:`~geojobs.api.routes.ProcessesEndpoints`, the RFC 7807 error handlers of
:mod:`geojobs.api.errors`, the asyncpg store and the callback dispatcher. The result layers
(:mod:`geojobs.api.layers`, tipg) mount into the same app and share its pool, and so do
``/metrics`` and ``/health`` of :class:`~geojobs.opsapi.OperationsEndpoints` (no key: counts
and verdicts only).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from geojobs.api.callbacks import Dispatcher
from geojobs.api.console import mount_console
from geojobs.api.errors import install_handlers
from geojobs.api.fast import FastRoutes
from geojobs.api.layers import mount_layers, start_layers, stop_layers
from geojobs.api.oas import document_to_oas30
from geojobs.api.pipelines import PipelineEndpoints
from geojobs.api.routes import ProcessesEndpoints
from geojobs.api.settings import ApiSettings, get_settings
from geojobs.api.store import Store
from geojobs.opsapi import OperationsEndpoints

__all__ = ["create_app", "NoStoreMiddleware"]


class NoStoreMiddleware:
    """Job state must never be cached: ``Cache-Control: no-store`` on every HTTP response whose
    route did not choose otherwise.

    Pure ASGI (it only edits the response start message): Starlette's ``BaseHTTPMiddleware``,
    used before, ran each request in an extra task with a memory stream, a measurable share
    of the server's CPU per request (bench/README.md, "HTTP API").
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    message["headers"] = [*headers, (b"cache-control", b"no-store")]
            await send(message)

        await self.app(scope, receive, send_no_store)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """A new API app with its own store; nothing connects before startup."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.database_url, settings.api_pool_size,
                      listen_dsn=settings.listen_url or None,
                      poll_interval=settings.pooled_poll_interval)
        await store.start()
        app.state.store = store
        dispatcher = Dispatcher(store, settings, settings.api_public_url.rstrip("/"))
        app.state.dispatcher = dispatcher
        dispatcher.start()
        await start_layers(app, store)
        try:
            yield
        finally:
            await stop_layers(app)
            await dispatcher.stop()
            await store.stop()

    app = FastAPI(title="geojobs", version="1.0.0", lifespan=lifespan, docs_url="/api.html",
                  redoc_url=None, openapi_url="/openapi.json",
                  description="OGC API - Processes - Part 1: Core 1.0.0 over the geojobs job table.")
    app.state.settings = settings
    # Routers mounted beside the Processes routes (the result layers) add their conformance
    # classes here, and landing-page links with hrefs relative to the API root.
    app.state.conformance = []
    app.state.landing_links = []
    install_handlers(app)
    processes = ProcessesEndpoints()
    app.include_router(processes.router)
    if settings.api_fast_routes:  # the innermost middleware: submit and status skip FastAPI
        app.add_middleware(FastRoutes, endpoints=processes)
    app.include_router(PipelineEndpoints().router)
    app.include_router(OperationsEndpoints(database_url=settings.database_url).router)
    mount_layers(app, settings)  # OGC API - Features and Tiles (tipg) over the result tables
    mount_console(app)
    app.state.landing_links.append({"href": "/console", "rel": "alternate", "type": "text/html",
                                    "title": "web console: jobs, forms, result maps, downloads"})

    cache: dict[str, Any] = {}

    def openapi_30() -> dict[str, Any]:
        if "doc" not in cache:
            cache["doc"] = document_to_oas30(app.openapi())
        return cache["doc"]

    app.state.openapi_30 = openapi_30

    app.add_middleware(NoStoreMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Prefer", "Idempotency-Key"],
            expose_headers=["Location", "Preference-Applied", "Retry-After"])
    return app
