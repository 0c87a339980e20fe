"""``GET /metrics`` and ``GET /health``: a router an app mounts, needing no API key.

Neither carries job data: metrics are counts by job type and status, workers by host and id;
health is a verdict with reasons naming job types. Both read the database at request time
through one connection per process (reopened after a failure), so a scrape while PostgreSQL
restarts answers 503 and the next one succeeds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse

from geojobs import health, metrics
from geojobs.config import database_url
from geojobs.db import connect

__all__ = ["OperationsEndpoints"]


class _Connection:
    """One lazily opened connection, used by one request at a time."""

    def __init__(self, url: str | None, timeout: int) -> None:
        self._url = url
        self._timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self.lock = threading.Lock()

    def get(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # Through PgBouncer (no session of its own) the timeout is not set: give the API's
            # role one instead (ALTER ROLE geojobs_api SET statement_timeout, docs/operations.md).
            self._conn = connect(self._url or database_url(), connect_timeout=self._timeout,
                                 session={"statement_timeout": str(self._timeout * 1000)})
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None


def _unavailable(exc: Exception) -> JSONResponse:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return JSONResponse(status_code=503, media_type="application/problem+json",
                        content={"type": "about:blank", "title": "Service Unavailable",
                                 "status": 503, "detail": f"database unreachable: {first}"},
                        headers={"Retry-After": "5"})


@dataclass
class OperationsEndpoints:
    """The operations routes on their own router (mount beside the Processes routes)."""

    database_url: str | None = None
    connect_timeout: int = 5
    settle_seconds: float = 60.0
    router: APIRouter = field(default_factory=APIRouter)

    def __post_init__(self) -> None:
        self._db = _Connection(self.database_url, self.connect_timeout)
        self.register_routes()

    def register_routes(self) -> None:
        """Add ``/metrics`` and ``/health`` to the router."""

        @self.router.get("/metrics", summary="Prometheus metrics (text format)", tags=["Operations"],
                         response_class=Response)
        def scrape() -> Response:
            with self._db.lock:
                try:
                    body = metrics.render(self._db.get(), settle_seconds=self.settle_seconds)
                except psycopg.Error as exc:
                    self._db.drop()
                    return _unavailable(exc)
            return Response(body, media_type=metrics.CONTENT_TYPE,
                            headers={"Cache-Control": "no-store"})

        @self.router.get("/health", summary="Health: database reachable, every queued type served",
                         tags=["Operations"])
        def health_check() -> JSONResponse:
            with self._db.lock:
                try:
                    verdict = health.assess(metrics.snapshot(self._db.get(), outcomes=False))
                except psycopg.Error as exc:
                    self._db.drop()
                    verdict = health.Health(database=False)
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
                    verdict.add(health.CRITICAL, f"database unreachable: {first}")
            return JSONResponse(verdict.as_dict(), status_code=verdict.http_status,
                                headers={"Cache-Control": "no-store"})


def create_app(database_url: str | None = None) -> FastAPI:
    """A small app serving only the operations routes, for a host that runs no HTTP API.

    The API app (``geojobs serve``) mounts the same routes.
    """
    app = FastAPI(title="geojobs operations", docs_url=None, redoc_url=None)
    app.include_router(OperationsEndpoints(database_url=database_url).router)
    return app
