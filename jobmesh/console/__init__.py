"""The web console (DESIGN §5.2 ``GET /``): Sling's job console and AEM's Offloading
Browser in one page, served by the node's own aiohttp app.

Plain HTML, CSS and JavaScript modules from ``static/`` — no build step and nothing
fetched from outside the machine. The page itself carries no data: it reads the
public REST API and the event stream like any other client, so it needs no access
of its own. That is why ``/`` and ``/console/*`` are not behind the API token (the
token guards ``/api`` and ``/metrics``); the page asks for the token and sends it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PREFIX = "/console/"

# The page loads only its own files and talks only to its own node.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def render_index(node_name: str) -> str:
    """index.html with the serving node's name filled in (escaped: names come from config)."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return template.replace("{{node}}", html.escape(node_name, quote=True))


def add_routes(app: web.Application, node: Any) -> None:
    """Serve the console at ``/`` and its assets under ``/console/`` on ``app``."""
    page = render_index(str(getattr(node, "name", "jobmesh")))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS)

    async def asset_headers(request: web.Request, response: web.StreamResponse) -> None:
        """A response hook, not a middleware: a middleware is one more coroutine layer around
        every API request, and only the assets need these headers."""
        if request.path.startswith(ASSETS_PREFIX):
            # Revalidate each load (ETag/Last-Modified make it cheap): a node upgrade
            # must not leave a browser running yesterday's script against today's API.
            response.headers.setdefault("Cache-Control", "no-cache")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")

    app.router.add_get("/", index)
    app.router.add_static(ASSETS_PREFIX, STATIC_DIR, name="console-static")
    app.on_response_prepare.append(asset_headers)


__all__ = ["add_routes", "render_index", "STATIC_DIR"]
