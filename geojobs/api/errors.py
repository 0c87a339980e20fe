"""The API's errors: our one error tree mapped to HTTP statuses, written as RFC 7807 problems.

Every error a route raises is a :class:`~geojobs.errors.GeojobsError`; :data:`STATUS_CODES`
maps each class to a status, and :func:`install_handlers` answers it as an
``application/problem+json`` document whose ``detail`` names the field or header at fault.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from geojobs.errors import GeojobsError, InvalidParams, OutputExists

__all__ = ["ApiError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "NoSuchProcess",
           "NoSuchJob", "ResultNotReady", "PayloadTooLarge", "UnsupportedMediaType",
           "TooManyQueued", "JobFailed", "STATUS_CODES", "problem", "geojobs_error",
           "install_handlers"]

log = logging.getLogger("geojobs.api")

OGC_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
PROBLEM = "application/problem+json"


class ApiError(GeojobsError):
    """The request cannot be served."""

    type_uri: str = "about:blank"
    headers: dict[str, str] = {}


class BadRequest(ApiError):
    """The request is invalid."""


class Unauthorized(ApiError):
    """A valid API key is required."""

    headers = {"WWW-Authenticate": 'Bearer realm="geojobs", Basic realm="geojobs"'}


class Forbidden(ApiError):
    """The request is not allowed for this user."""


class NotFound(ApiError):
    """No such resource."""


class NoSuchProcess(NotFound):
    """No such process."""

    type_uri = OGC_EXCEPTIONS + "no-such-process"


class NoSuchJob(NotFound):
    """No such job."""

    type_uri = OGC_EXCEPTIONS + "no-such-job"


class ResultNotReady(NotFound):
    """The job has not finished yet."""

    type_uri = OGC_EXCEPTIONS + "result-not-ready"


class JobFailed(ApiError):
    """The job failed."""


class PayloadTooLarge(ApiError):
    """The request body is too large."""


class UnsupportedMediaType(ApiError):
    """The request body must be JSON."""


class TooManyQueued(ApiError):
    """Too many queued jobs."""

    def __init__(self, message: str | None = None, *, field: str | None = None,
                 retry_after: int = 30) -> None:
        super().__init__(message, field=field)
        self.headers = {"Retry-After": str(retry_after)}


STATUS_CODES: dict[type[Exception], int] = {
    BadRequest: 400,
    InvalidParams: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    OutputExists: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    TooManyQueued: 429,
    JobFailed: 500,
    GeojobsError: 400,
}
"""Status of each error class; the nearest listed base class decides."""


def status_of(exc: Exception) -> int:
    """The HTTP status for an error of the tree."""
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


def problem(status: int, detail: str, *, type_uri: str = "about:blank", title: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An RFC 7807 problem document; never cached."""
    body: dict[str, Any] = {"type": type_uri, "title": title or _TITLES.get(status, "Error"),
                            "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM,
                        headers={"Cache-Control": "no-store", **(headers or {})})


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           415: "Unsupported Media Type", 429: "Too Many Requests", 500: "Internal Server Error"}


def _location(loc: tuple[Any, ...]) -> str:
    """FastAPI's error location as the name a client sent: query ``limit``, header ``prefer``."""
    where = [str(p) for p in loc]
    if where and where[0] in ("query", "path", "header", "body", "cookie"):
        return f"{where[0]} parameter {'.'.join(where[1:])}" if len(where) > 1 else where[0]
    return ".".join(where)


async def geojobs_error(request: Request, exc: Exception) -> JSONResponse:
    """The problem document of an error of our tree (also used by :mod:`geojobs.api.fast`)."""
    assert isinstance(exc, GeojobsError)
    status = status_of(exc)
    if status >= 500 and not isinstance(exc, JobFailed):
        log.exception("request failed: %s", exc)
    type_uri = getattr(exc, "type_uri", "about:blank")
    extra: dict[str, Any] = {}
    if exc.field:
        extra["field"] = exc.field
    return problem(status, Exception.__str__(exc), type_uri=type_uri, headers=getattr(exc, "headers", None),
                   **extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    fields = []
    for item in exc.errors():
        where = _location(tuple(item.get("loc", ())))
        fields.append(where)
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return problem(400, "; ".join(parts), field=fields[0] if fields else None)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.url.path}"
    return problem(exc.status_code, detail, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; see the server log")


def install_handlers(app: FastAPI) -> None:
    """Answer every error of the app as an RFC 7807 problem document."""
    app.add_exception_handler(GeojobsError, geojobs_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
