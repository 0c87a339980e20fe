"""The API's database access: an asyncpg pool, the named queries of ``geojobs/sql/api.sql``,
and one listening connection that relays job changes (NOTIFY ``geojobs_jobs``) to waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import orjson
from psycopg.conninfo import conninfo_to_dict

from geojobs.config import SQL_DIR
from geojobs.queue import JOB_EVENTS_CHANNEL

__all__ = ["api_queries", "asyncpg_dsn", "Store", "JOB_CHANNEL", "CALLBACK_CHANNEL"]

log = logging.getLogger("geojobs.api")

JOB_CHANNEL = JOB_EVENTS_CHANNEL
CALLBACK_CHANNEL = "geojobs_callbacks"
_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PARAM = re.compile(r"%\((\w+)\)s")


@cache
def api_queries() -> dict[str, str]:
    """``geojobs/sql/api.sql`` as ``{name: sql}`` with psycopg's named parameters, parsed once."""
    parts = _NAME_LINE.split((SQL_DIR / "api.sql").read_text())
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def _asyncpg_query(name: str) -> tuple[str, tuple[str, ...]]:
    """A named query with ``$n`` placeholders, and the parameter name of each position."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    return _PARAM.sub(number, api_queries()[name]), tuple(order)


def asyncpg_dsn(dsn: str) -> str:
    """A libpq connection string (URI or ``key=value`` form) as the URI asyncpg wants."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    info = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    user = quote(info.pop("user", ""), safe="")
    password = info.pop("password", None)
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    host = info.pop("host", "")
    port = info.pop("port", "")
    dbname = quote(info.pop("dbname", ""), safe="")
    netloc = f"[{host}]" if ":" in host else host
    query = urlencode(info)
    uri = f"postgresql://{auth}{netloc}{':' + port if port else ''}/{dbname}"
    return f"{uri}?{query}" if query else uri


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson decodes: a page of 1,000 features carries 1,000 GeoJSON geometries
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=orjson.loads, schema="pg_catalog")


class Store:
    """The pool, the queries by name, and the job-change listener of one API process."""

    def __init__(self, dsn: str, pool_size: int) -> None:
        self.dsn = asyncpg_dsn(dsn)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._waiters: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._callback_hooks: list[Callable[[], None]] = []
        self._job_hooks: list[Callable[[dict[str, Any]], None]] = []

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not started"
        return self._pool

    async def start(self) -> None:
        """Open the pool and start listening for job changes."""
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                               init=_init_connection)
        await self._listen()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        await conn.add_listener(JOB_CHANNEL, self._on_job)
        await conn.add_listener(CALLBACK_CHANNEL, self._on_callback)
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    def _on_lost(self, conn: asyncpg.Connection) -> None:
        log.warning("listening connection lost; reconnecting")
        asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while self._pool is not None:
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(1)
                continue
            for queues in list(self._waiters.values()):  # make waiters re-read their job
                for q in queues:
                    q.put_nowait({"reconnected": True})
            for hook in self._callback_hooks:
                hook()
            for job_hook in self._job_hooks:  # changes may have been missed meanwhile
                job_hook({"reconnected": True})
            return

    async def stop(self) -> None:
        """Close the listener and the pool."""
        pool, self._pool = self._pool, None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        if pool is not None:
            await pool.close()

    def _on_job(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        for q in list(self._waiters.get(int(change.get("id", 0)), ())):
            q.put_nowait(change)
        for hook in self._job_hooks:
            hook(change)

    def on_job_change(self, hook: Callable[[dict[str, Any]], None]) -> None:
        """Call ``hook`` with the payload of every job change (``{"reconnected": True}`` after the
        listening connection was lost and made again: changes may have been missed)."""
        self._job_hooks.append(hook)

    def _on_callback(self, conn: object, pid: int, channel: str, payload: str) -> None:
        for hook in self._callback_hooks:
            hook()

    def on_callback(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when a callback delivery becomes due (and after a reconnection)."""
        self._callback_hooks.append(hook)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: int) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue receiving every change of job ``job_id`` while the block runs."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters[job_id].add(q)
        try:
            yield q
        finally:
            self._waiters[job_id].discard(q)
            if not self._waiters[job_id]:
                del self._waiters[job_id]

    @staticmethod
    def _args(query: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
        text, order = _asyncpg_query(query)
        return text, [params[key] for key in order]

    async def fetchrow(self, query: str, conn: asyncpg.Connection | None = None, /,
                       **params: Any) -> asyncpg.Record | None:
        """Run a named query; its first row."""
        text, args = self._args(query, params)
        if conn is not None:
            return await conn.fetchrow(text, *args)
        return await self.pool.fetchrow(text, *args)

    async def fetch(self, query: str, conn: asyncpg.Connection | None = None, /,
                    **params: Any) -> list[asyncpg.Record]:
        """Run a named query; all its rows."""
        text, args = self._args(query, params)
        if conn is not None:
            return list(await conn.fetch(text, *args))
        return list(await self.pool.fetch(text, *args))

    async def fetchval(self, query: str, conn: asyncpg.Connection | None = None, /,
                       **params: Any) -> Any:
        """Run a named query; the first column of its first row."""
        row = await self.fetchrow(query, conn, **params)
        return None if row is None else row[0]
