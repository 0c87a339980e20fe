"""Whole result tables as files, for ``/jobs/{id}/results?f=`` and ``/collections/{id}/items?f=``.

Formats whose writer only appends (GeoJSON, CSV, GeoParquet) are streamed: a child process
(``python -m geojobs.export``) writes the file to its standard output as the rows leave PostGIS,
and each chunk is sent as it comes, so the first byte goes out at once and the API's memory
does not grow with the table. A child process, because GDAL streams only to ``/vsistdout/``
(the standard output of the process). The child is started ahead of the download (a spare with
its writers loaded, so a download does not wait for their imports) and reads its request, the
database URL included, on its standard input, never on its command line. A client that goes
away ends the child. GeoPackage (SQLite) and FlatGeobuf
(its spatial index precedes the features) need a seekable, finished file: they are written to a
temporary file in a worker thread, then sent and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from geojobs import errors
from geojobs.db import connect
from geojobs.formats import ExportFormat

__all__ = ["download_table"]

log = logging.getLogger("geojobs.api")

CHUNK = 1 << 16
"""Most bytes read from the child and sent at once."""
_NO_STORE = {"Cache-Control": "no-store"}


async def download_table(table: str, fmt: ExportFormat, dsn: str, metadata: Mapping[str, str],
                         *, field: str, name: str) -> Response:
    """``table`` as a file ``name`` + suffix in ``fmt`` with ``metadata`` (provenance); an error
    found before the first byte (no such table, ...) is raised, naming ``field``."""
    filename = f"{name}{fmt.suffix}"
    if fmt.streams:
        return await _stream(table, fmt, dsn, dict(metadata), field, filename)
    return await _temporary_file(table, fmt, dsn, dict(metadata), field, filename)


def _export(table: str, fmt: ExportFormat, path: Path, dsn: str, metadata: dict[str, str],
            field: str) -> None:
    # The writers (pyarrow, pyogrio, ADBC) load with the first such download, not with the API.
    from geojobs.export import export_table

    with connect(dsn) as conn:  # direct or through PgBouncer (no prepared statements then)
        export_table(conn, table, fmt, path, metadata, field=field)


async def _temporary_file(table: str, fmt: ExportFormat, dsn: str, metadata: dict[str, str],
                          field: str, filename: str) -> Response:
    """Written in a worker thread (the event loop stays free), then sent and deleted."""
    tmpdir = Path(tempfile.mkdtemp(prefix="geojobs-export-"))
    path = tmpdir / filename
    try:
        await run_in_threadpool(_export, table, fmt, path, dsn, metadata, field)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return FileResponse(path, media_type=fmt.media_type, filename=filename, headers=_NO_STORE,
                        background=BackgroundTask(shutil.rmtree, tmpdir, ignore_errors=True))


_spare: tuple[asyncio.AbstractEventLoop, asyncio.subprocess.Process] | None = None
"""An export process started ahead of the next streamed download, its writers already loaded
(they take about 2 s to import): it waits for its request on standard input."""


async def _start_export() -> asyncio.subprocess.Process:
    # C's stdout stays buffered: unbuffered (Python's -u, as systemd units often set), GDAL's
    # /vsistdout/ would make one write(2) per feature and per attribute
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "geojobs.export", "--stdin", env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def _export_process() -> asyncio.subprocess.Process:
    """The spare export process (or a new one when there is none, or it died), and a new spare
    for the next download."""
    global _spare
    loop = asyncio.get_running_loop()
    child = None
    if _spare is not None:
        spare_loop, spare = _spare
        if spare_loop is loop and spare.returncode is None:
            child = spare
        elif spare.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                spare.kill()
    _spare = (loop, await _start_export())
    return child or await _start_export()


async def _stream(table: str, fmt: ExportFormat, dsn: str, metadata: dict[str, str], field: str,
                  filename: str) -> Response:
    child = await _export_process()
    assert child.stdin is not None
    request = {"format": fmt.key, "table": table, "field": field, "database_url": dsn,
               "metadata": metadata}
    child.stdin.write(json.dumps(request).encode() + b"\n")  # never on a command line
    child.stdin.close()
    assert child.stdout is not None and child.stderr is not None
    stderr = asyncio.ensure_future(child.stderr.read())  # read as it comes: a full pipe blocks
    try:
        first = await child.stdout.read(CHUNK)
        if not first:
            await _check(child, await stderr, table)
    except BaseException:
        await _end(child, stderr)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            while chunk := await child.stdout.read(CHUNK):  # type: ignore[union-attr]
                yield chunk
            await _check(child, await stderr, table)
        finally:
            await _end(child, stderr)

    headers = {**_NO_STORE, "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(body(), media_type=fmt.media_type, headers=headers)


async def _check(child: asyncio.subprocess.Process, stderr: bytes, table: str) -> None:
    """Raise the child's error: a :class:`GeojobsError` as it was, anything else logged."""
    if await child.wait() == 0:
        return
    text = stderr.decode(errors="replace").strip()
    try:
        error = json.loads(text.splitlines()[-1])
        cls = getattr(errors, error["error"])
    except (IndexError, ValueError, KeyError, AttributeError, TypeError):
        cls = None
    if isinstance(cls, type) and issubclass(cls, errors.GeojobsError):
        try:
            known = cls(error["detail"], field=error["field"])
        except TypeError:  # a class with another constructor: reported as unexpected below
            pass
        else:
            raise known
    log.error("export of %s failed (exit status %s): %s", table, child.returncode, text[-2000:])
    raise RuntimeError(f"export of {table} failed")


async def _end(child: asyncio.subprocess.Process, stderr: asyncio.Future[bytes]) -> None:
    """Stop the child if it still runs (the client went away) and reap it."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    await child.wait()
    with contextlib.suppress(BaseException):
        await stderr
