"""Callbacks (OGC ``subscriber``): which URIs may be called, and the dispatcher that calls them.

Deliveries owed are rows of ``api_deliveries``, recorded by the job row's trigger in the same
transaction as the state change (migration 0003), so they survive restarts of the API. The
dispatcher of each API process claims due rows with ``SKIP LOCKED``, POSTs the statusInfo (and
the results on success), and on failure retries with doubling delays until an hour has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from geojobs.api.errors import BadRequest
from geojobs.api.jobs import results_document, status_info
from geojobs.api.settings import ApiSettings
from geojobs.api.store import Store

__all__ = ["check_callback_uri", "Dispatcher"]

log = logging.getLogger("geojobs.api.callbacks")

MAX_URI = 2048


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_callback_uri(uri: Any, settings: ApiSettings, field: str) -> str:
    """``uri`` if it is an http(s) URL to loopback or a host of GEOJOBS_CALLBACK_HOSTS; else 400."""
    if not isinstance(uri, str) or len(uri) > MAX_URI:
        raise BadRequest(f"{field}: must be a URL of at most {MAX_URI} characters", field=field)
    try:
        parts = urlsplit(uri)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise BadRequest(f"{field}: not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest(f"{field}: only http and https URLs are allowed", field=field)
    if parts.username or parts.password:
        raise BadRequest(f"{field}: credentials in the URL are not allowed", field=field)
    allowed = {h.lower() for h in settings.callback_hosts}
    if not (_loopback(host) or host in allowed):
        raise BadRequest(f"{field}: host {host!r} is not in GEOJOBS_CALLBACK_HOSTS", field=field)
    return uri


class Dispatcher:
    """Delivers the callbacks owed, from one task per API process."""

    def __init__(self, store: Store, settings: ApiSettings, base: str) -> None:
        self.store = store
        self.settings = settings
        self.base = base
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Start delivering; NOTIFY geojobs_callbacks wakes the loop."""
        self._client = httpx.AsyncClient(timeout=self.settings.api_callback_timeout,
                                         follow_redirects=False, trust_env=False)
        self.store.on_callback(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="callbacks")

    async def stop(self) -> None:
        """Stop the loop and close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
                due = await self.store.fetchval("next_delivery")
            except Exception:
                log.exception("callback dispatch failed; retrying in 5 s")
                due = None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5)
                self._wake.clear()
                continue
            timeout = 60.0 if due is None else max(0.0, min(60.0, float(due)))
            self._wake.clear()
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def run_once(self) -> int:
        """Deliver the callbacks due now; how many were attempted."""
        assert self._client is not None
        async with self.store.pool.acquire() as conn, conn.transaction():
            rows = await self.store.fetch("claim_deliveries", conn)
            for row in rows:
                error = await self._deliver(conn, row)
                if error is None:
                    await self.store.fetchrow("delivery_done", conn, id=row["id"])
                else:
                    delay = self.settings.api_callback_backoff * 2 ** row["attempts"]
                    log.warning("callback %s to %s failed (%s); retry in %.0f s",
                                row["id"], row["uri"], error, delay)
                    await self.store.fetchrow("delivery_retry", conn, id=row["id"], error=error,
                                              delay=float(delay))
            return len(rows)

    async def _deliver(self, conn: Any, row: Any) -> str | None:
        job = await self.store.fetchrow("get_job", conn, id=row["job_id"], username=None)
        if job is None:
            return None  # dismissed meanwhile: nothing to say
        body = status_info(job, self.base)
        if row["state"] == "successful" and job["status"] == "completed":
            body["results"] = results_document(job, self.base)
        assert self._client is not None
        try:
            response = await self._client.post(row["uri"], json=body)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if response.status_code >= 300:
            return f"HTTP {response.status_code}"
        return None
