"""The web console: ``GET /console``, one static page served by the API.

The page (``geojobs/api/static/console/``) is plain JavaScript with no build step; MapLibre GL JS
is vendored from the npm registry into ``geojobs/api/static/vendor/`` at a pinned version
(``make vendor-js``). The page asks for an API key and then talks to the same API as any client.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from geojobs.api.settings import ApiSettings

__all__ = ["STATIC", "mount_console", "render_page"]

STATIC = Path(str(resources.files("geojobs.api") / "static"))
"""The console's files and the vendored JavaScript libraries."""


@cache
def _page() -> str:
    return (STATIC / "console" / "index.html").read_text(encoding="utf-8")


def render_page(root: str, settings: ApiSettings) -> str:
    """The console's HTML for an API served at ``root`` (its root path, '' at the top)."""
    values = {"static": f"{root}/console/static", "root": root,
              "basemap": settings.console_basemap,
              "basemap_attribution": settings.console_basemap_attribution}
    html = _page()
    for name, value in values.items():
        html = html.replace("{{" + name + "}}", escape(value, quote=True))
    return html


class _Revalidated(StaticFiles):
    """Static files a browser may keep but must revalidate (ETag / Last-Modified)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_console(app: FastAPI) -> None:
    """Add ``/console`` and its static files to ``app``."""

    async def console(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(render_page(root, request.app.state.settings),
                            headers={"Cache-Control": "no-cache"})

    for path in ("/console", "/console/"):
        app.add_api_route(path, console, methods=["GET"], include_in_schema=path == "/console",
                          summary="Web console (HTML page)", tags=["Console"],
                          response_class=HTMLResponse)
    app.mount("/console/static", _Revalidated(directory=STATIC), name="console-static")
