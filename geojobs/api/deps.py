"""Request parsing as FastAPI dependencies, one per concern; each raises an error of our tree."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request

from geojobs.api.errors import (
    BadRequest,
    NoSuchJob,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from geojobs.api.keys import hash_key
from geojobs.api.settings import ApiSettings
from geojobs.api.store import Store

__all__ = ["User", "current_user", "job_id", "Paging", "paging", "json_body", "get_store",
           "settings_dep", "Prefer", "prefer", "idempotency_key", "MAX_DEPTH"]

MAX_DEPTH = 32
"""Deepest JSON nesting accepted in a request body."""
_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,255}$")


async def get_store(request: Request) -> Store:
    """The process's database store (async: FastAPI runs a plain def in a thread)."""
    return request.app.state.store


async def settings_dep(request: Request) -> ApiSettings:
    """The app's settings (async: FastAPI runs a plain def in a thread)."""
    return request.app.state.settings


@dataclass(frozen=True)
class User:
    """The authenticated API user."""

    name: str
    admin: bool

    @property
    def scope(self) -> str | None:
        """The submitter whose jobs this user sees (None: all, for admins)."""
        return None if self.admin else self.name


async def current_user(request: Request, store: Annotated[Store, Depends(get_store)]) -> User:
    """The user of ``Authorization: Bearer KEY`` or ``Basic NAME:KEY``; 401 otherwise."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Authorization header: missing; send 'Bearer KEY' or Basic NAME:KEY",
                           field="Authorization")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer" and credentials:
        digest = hash_key(credentials)
        row = await store.fetchrow("key_by_hash", key_hash=digest)
    elif scheme.lower() == "basic" and credentials:
        try:
            name, sep, key = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, sep, key = "", "", ""
        if not sep:
            raise Unauthorized("Authorization header: Basic credentials must be base64 of NAME:KEY",
                               field="Authorization")
        digest = hash_key(key)
        row = await store.fetchrow("key_by_name", name=name)
    else:
        raise Unauthorized("Authorization header: use the Bearer or Basic scheme", field="Authorization")
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), digest):
        raise Unauthorized("Authorization header: the API key is not valid (unknown, wrong or revoked)",
                           field="Authorization")
    return User(row["name"], row["admin"])


def job_id(job_id: Annotated[str, Path(alias="jobID", description="Job id")]) -> int:
    """The job id of the path: a positive integer, else 404 as for a missing job."""
    if not job_id.isascii() or not job_id.isdigit() or len(job_id) > 18 or int(job_id) == 0:
        raise NoSuchJob(f"jobID: no job {job_id!r}", field="jobID")
    return int(job_id)


@dataclass(frozen=True)
class Paging:
    """A page of jobs: at most ``limit``, with ids below ``before`` (keyset)."""

    limit: int
    before: int | None


def paging(
    limit: Annotated[int, Query(ge=1, le=1000, description="Jobs per page (1-1000).")] = 10,
    before: Annotated[int | None, Query(ge=1, description="Keyset cursor: jobs with a smaller id.")]
    = None,
) -> Paging:
    """``limit`` and the keyset cursor of ``GET /jobs``."""
    return Paging(limit, before)


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """An RFC 3339 instant or interval (``a/b``, ``../b``, ``a/..``) as (start, end)."""
    def instant(part: str) -> datetime | None:
        if part in ("", ".."):
            return None
        try:
            value = datetime.fromisoformat(part.replace("z", "Z"))
        except ValueError:
            raise BadRequest(f"datetime: {part!r} is not an RFC 3339 date-time", field="datetime") from None
        if value.tzinfo is None:
            raise BadRequest(f"datetime: {part!r} needs a time zone (Z or +hh:mm)", field="datetime")
        return value

    if "/" in text:
        first, _, second = text.partition("/")
        if "/" in second or (first in ("", "..") and second in ("", "..")):
            raise BadRequest(f"datetime: {text!r} is not an interval", field="datetime")
        start, end = instant(first), instant(second)
        if start and end and start > end:
            raise BadRequest("datetime: the interval ends before it starts", field="datetime")
        return start, end
    moment = instant(text)
    if moment is None:
        raise BadRequest("datetime: empty", field="datetime")
    return moment, moment


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


async def json_body(request: Request, settings: Annotated[ApiSettings, Depends(settings_dep)]) -> Any:
    """The request body as JSON: type ``application/json`` (415), at most the limit (413), valid
    JSON without NaN/Infinity and not deeper than :data:`MAX_DEPTH` (400)."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(
            f"Content-Type header: must be application/json, got {content_type or 'none'!r}",
            field="Content-Type")
    limit = settings.api_max_body
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body: {declared} bytes; the limit is {limit}", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: more than {limit} bytes", field="body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"body: JSON nested deeper than {MAX_DEPTH} levels", field="body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})", field="body") from None
    if _depth(value) > MAX_DEPTH:
        raise BadRequest(f"body: JSON nested deeper than {MAX_DEPTH} levels", field="body")
    if not isinstance(value, dict):
        raise BadRequest(f"body: must be a JSON object, got {type(value).__name__}", field="body")
    return value


@dataclass(frozen=True)
class Prefer:
    """The preferences of RFC 7240 this API honours."""

    respond_async: bool
    wait: int | None


def prefer(request: Request, settings: Annotated[ApiSettings, Depends(settings_dep)]) -> Prefer:
    """``Prefer: respond-async`` and ``Prefer: wait=N`` (N at most GEOJOBS_API_MAX_WAIT)."""
    respond_async, wait = False, None
    for header in request.headers.getlist("prefer"):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            name = name.strip().lower()
            value = value.split(";", 1)[0].strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                if not value.isdigit():
                    raise BadRequest(f"Prefer header: wait={value!r} must be whole seconds",
                                     field="Prefer")
                seconds = int(value)
                if seconds > settings.api_max_wait:
                    raise BadRequest(f"Prefer header: wait={seconds} exceeds the maximum of "
                                     f"{settings.api_max_wait} seconds", field="Prefer")
                wait = seconds
    return Prefer(respond_async, wait)


def idempotency_key(
    key: Annotated[str | None, Header(alias="Idempotency-Key", description="Same key, same job.")]
    = None,
) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 visible ASCII characters."""
    if key is not None and not _IDEMPOTENCY.match(key):
        raise BadRequest("Idempotency-Key header: 1 to 255 visible ASCII characters", field="Idempotency-Key")
    return key
