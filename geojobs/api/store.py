"""The API's database access: an asyncpg pool, the named queries of ``geojobs/sql/api.sql``,
and one listening connection that relays job changes (NOTIFY ``geojobs_jobs``) to waiters and
empties a short-lived cache of verified API keys when a key changes (NOTIFY ``geojobs_keys``,
migration 0012).

Through PgBouncer in transaction pooling mode (detected at start: the server process answering
is not the one named at login), the pool keeps no prepared statements
(``statement_cache_size=0``), and the listening connection goes to ``listen_dsn``
(``GEOJOBS_LISTEN_URL``), a direct one; without it, a task reads the watched jobs every
``poll_interval`` seconds and wakes their waiters and the callback dispatcher, and API keys are
not cached (nothing would carry their revocation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
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

__all__ = ["api_queries", "asyncpg_dsn", "Store", "JOB_CHANNEL", "CALLBACK_CHANNEL", "KEYS_CHANNEL",
           "KEY_CACHE_SECONDS"]

log = logging.getLogger("geojobs.api")

JOB_CHANNEL = JOB_EVENTS_CHANNEL
CALLBACK_CHANNEL = "geojobs_callbacks"
KEYS_CHANNEL = "geojobs_keys"
KEY_CACHE_SECONDS = 5.0
"""How long a verified key is used without asking the database again. A revoked key is
refused as soon as the listening connection receives the revocation's NOTIFY (milliseconds
after its commit), and at the latest after this many seconds (a notification lost with the
connection: the cache is emptied on reconnection too)."""
_KEY_CACHE_MAX = 10_000
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset query (``RESET ALL; UNLISTEN *; ...``, one
    more round trip per query): the API never changes session state on pooled connections
    (no SET, LISTEN, cursors or session advisory locks). asyncpg still rolls back a transaction
    left open before calling this."""


class Store:
    """The pool, the queries by name, and the job-change listener of one API process."""

    def __init__(self, dsn: str, pool_size: int, *, listen_dsn: str | None = None,
                 poll_interval: float = 0.5) -> None:
        self.dsn = asyncpg_dsn(dsn)
        self.listen_dsn = asyncpg_dsn(listen_dsn) if listen_dsn else None
        self.pool_size = pool_size
        self.poll_interval = poll_interval
        self.pooled = False
        """Whether ``dsn`` goes through a transaction pooler (known once started)."""
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._poller: asyncio.Task[None] | None = None
        self._waiters: dict[int, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._callback_hooks: list[Callable[[], None]] = []
        self._job_hooks: list[Callable[[dict[str, Any]], None]] = []
        self._keys: dict[tuple[Any, ...], tuple[float, asyncpg.Record]] = {}
        self._keys_generation = 0

    @property
    def polling(self) -> bool:
        """Whether job changes must be polled for: a transaction pooler carries no NOTIFY and
        there is no direct ``GEOJOBS_LISTEN_URL`` (known once started)."""
        return self.pooled and self.listen_dsn is None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store not started"
        return self._pool

    async def start(self) -> None:
        """Open the pool and start listening for job changes (or polling for them)."""
        probe = await asyncpg.connect(self.dsn, statement_cache_size=0)
        try:
            self.pooled = probe.get_server_pid() != await probe.fetchval("SELECT pg_backend_pid()")
        finally:
            await probe.close()
        # Behind a transaction pooler a named prepared statement outlives the transaction on a
        # server connection the next query may not get: asyncpg then prepares unnamed ones only.
        extra: dict[str, Any] = {"statement_cache_size": 0} if self.pooled else {}
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                               init=_init_connection, reset=_keep_session, **extra)
        if self.pooled and self.listen_dsn is None:
            log.info("connected through a transaction pooler and no GEOJOBS_LISTEN_URL: polling "
                     "watched jobs every %.2f s", self.poll_interval)
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="job-poll")
        else:
            await self._listen()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.listen_dsn if self.pooled and self.listen_dsn
                                     else self.dsn)
        await conn.add_listener(JOB_CHANNEL, self._on_job)
        await conn.add_listener(CALLBACK_CHANNEL, self._on_callback)
        await conn.add_listener(KEYS_CHANNEL, self._on_keys)
        conn.add_termination_listener(self._on_lost)
        self._forget_keys()
        self._listener = conn

    def _on_lost(self, conn: asyncpg.Connection) -> None:
        log.warning("listening connection lost; reconnecting")
        self._listener = None
        self._forget_keys()
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

    async def _poll(self) -> None:
        """The fallback for NOTIFY: every ``poll_interval``, read the watched jobs and hand each
        change (and each job seen for the first time) to its waiters; wake the callback
        dispatcher too, as NOTIFY geojobs_callbacks would."""
        seen: dict[int, tuple[Any, Any]] = {}
        while True:
            await asyncio.sleep(self.poll_interval)
            ids = list(self._waiters)
            try:
                rows = await self.fetch("job_changes", ids=ids) if ids else []
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("polling watched jobs failed (%s); trying again", exc)
                continue
            current = {int(row["id"]): (row["status"], row["progress"]) for row in rows}
            for job_id, state in current.items():
                if seen.get(job_id) != state:
                    change = {"id": job_id, "status": state[0], "progress": state[1]}
                    for q in list(self._waiters.get(job_id, ())):
                        q.put_nowait(change)
            seen = current
            for hook in self._callback_hooks:
                hook()

    async def stop(self) -> None:
        """Close the listener (or stop polling) and the pool."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
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

    def _on_keys(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._forget_keys()

    def _forget_keys(self) -> None:
        self._keys.clear()
        self._keys_generation += 1

    async def key_row(self, query: str, **params: Any) -> asyncpg.Record | None:
        """``key_by_hash`` or ``key_by_name``: the active user's row, from a cache of rows read in
        the last :data:`KEY_CACHE_SECONDS` (only found rows are kept; only while the listening
        connection is up, since it carries the revocations)."""
        cache_key = (query, *sorted(params.items()))
        now = time.monotonic()
        hit = self._keys.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._keys_generation
        row = await self.fetchrow(query, **params)
        # A key changed while we read it: do not keep what we read.
        if row is not None and generation == self._keys_generation and self._listener is not None:
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[cache_key] = (now + KEY_CACHE_SECONDS, row)
        return row

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
