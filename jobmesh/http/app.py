"""The node's aiohttp application: routes, error mapping, token check, request timeout.

Error policy (DESIGN §3, §5.2): a client never sees a traceback and a bad request
never hurts the node. ``JobmeshError`` subclasses become their ``http_status`` with
``{"error": message}``; aiohttp's own HTTP errors under ``/api`` and ``/metrics``
(404 unknown route, 405, 413 oversize body) are answered as JSON too; anything
unexpected is logged with its traceback and answered 500 ``{"error": "internal
error"}``. Every request except the event stream runs under a timeout (504).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

from ..errors import JobmeshError
from . import api, sse
from .blobs import untimed
from .keys import CLOSING, NODE, SETTINGS
from .metrics import NodeMetrics

log = structlog.get_logger("jobmesh.http")

MAX_BODY = 1024 * 1024  # 1 MiB; a larger request body is answered 413
REQUEST_TIMEOUT = 30.0  # seconds any API call may take before it is answered 504
SSE_HEARTBEAT = 15.0
EVENTS_PATH = "/api/v1/events"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

METRICS: web.AppKey[NodeMetrics] = web.AppKey("jobmesh_metrics", NodeMetrics)


def _is_api(path: str) -> bool:
    return path.startswith("/api/") or path == "/api" or path == "/metrics"


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The error policy, the token check and the request timeout, in this order, as one layer:
    aiohttp wraps each middleware around every request, and three layers cost the hot
    ``POST /api/v1/jobs`` about a tenth of its time on the loop (benchmarks/client.py)."""
    try:
        settings = request.app[SETTINGS]
        path = request.path
        token: str | None = settings["token"]
        if token and _is_api(path) and not _token_ok(request, path, token):
            return api.json_response(
                {"error": "missing or wrong token: send Authorization: Bearer <token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="jobmesh"'},
            )
        if path == EVENTS_PATH or untimed(path):  # event stream, payload up- and downloads
            return await handler(request)
        async with asyncio.timeout(settings["request_timeout"]):
            return await handler(request)
    except JobmeshError as e:
        return api.json_response({"error": str(e) or type(e).__name__}, status=e.http_status)
    except web.HTTPException as e:
        if not _is_api(request.path) or e.status < 400:
            raise
        reason = e.reason
        if e.status == 413:
            reason = f"request body too large (limit {request.app[SETTINGS]['max_body']} bytes)"
        elif e.status == 404:
            reason = f"no such endpoint: {request.method} {request.path}"
        elif e.status == 405:
            reason = f"method {request.method} not allowed on {request.path}"
        return api.json_response({"error": reason}, status=e.status, headers=_allow(e))
    except asyncio.TimeoutError:
        log.warning("request timed out", method=request.method, path=request.path)
        return api.json_response({"error": "the node did not answer in time"}, status=504)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return api.json_response({"error": "internal error"}, status=500)


def _allow(e: web.HTTPException) -> dict[str, str] | None:
    allow = e.headers.get("Allow")
    return {"Allow": allow} if allow else None


def _token_ok(request: web.Request, path: str, token: str) -> bool:
    """With ``[security] http_token`` set, /api and /metrics need ``Authorization: Bearer``."""
    given = ""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif path == EVENTS_PATH:  # EventSource cannot set headers
        given = request.query.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


async def metrics_handler(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


INDEX_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>jobmesh {node}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>jobmesh node <code>{node}</code></h1>
<p>The web console is not installed on this node. The API:</p>
<ul>
<li><a href="/api/v1/health">/api/v1/health</a></li>
<li><a href="/api/v1/jobs">/api/v1/jobs</a></li>
<li><a href="/api/v1/queues">/api/v1/queues</a></li>
<li><a href="/api/v1/stats">/api/v1/stats</a></li>
<li><a href="/api/v1/topology">/api/v1/topology</a></li>
<li><a href="/api/v1/offloading">/api/v1/offloading</a></li>
<li><a href="/api/v1/events">/api/v1/events</a> (server-sent events)</li>
<li><a href="/metrics">/metrics</a> (Prometheus)</li>
</ul></body></html>
"""


async def index(request: web.Request) -> web.Response:
    import html

    return web.Response(text=INDEX_HTML.format(node=html.escape(request.app[NODE].name)), content_type="text/html")


def _mount_optional(module_name: str, app: web.Application, node: Any) -> bool:
    """Call ``module.add_routes(app, node)`` if the module exists (parts land one by one)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the module itself is absent
            return False
        log.error("optional routes failed to import", module=module_name, error=repr(e))
        return False
    except ImportError as e:
        log.error("optional routes failed to import", module=module_name, error=repr(e))
        return False
    add = getattr(module, "add_routes", None)
    if add is None:
        return False
    add(app, node)
    return True


def build_app(
    node: Any,
    *,
    token: str | None = None,
    max_body: int = MAX_BODY,
    request_timeout: float = REQUEST_TIMEOUT,
    sse_heartbeat: float = SSE_HEARTBEAT,
    sse_queue: int = sse.SUBSCRIBER_QUEUE,
    metrics: NodeMetrics | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=max_body,
        middlewares=[api_middleware],
    )
    app[NODE] = node
    app[CLOSING] = asyncio.Event()
    app[SETTINGS] = {
        "token": token,
        "max_body": max_body,
        "request_timeout": request_timeout,
        "sse_heartbeat": sse_heartbeat,
        "sse_queue": sse_queue,
    }
    app[METRICS] = metrics or NodeMetrics(node)
    api.add_routes(app)
    app.router.add_get(EVENTS_PATH, sse.events)
    app.router.add_get("/metrics", metrics_handler)
    _mount_optional("jobmesh.http.blobs", app, node)
    _mount_optional("jobmesh.http.schedules", app, node)
    _mount_optional("jobmesh.http.workflows", app, node)
    if not _mount_optional("jobmesh.console", app, node):
        app.router.add_get("/", index)

    async def on_shutdown(app: web.Application) -> None:
        app[CLOSING].set()  # event streams end, so the shutdown does not wait for them

    app.on_shutdown.append(on_shutdown)
    return app
