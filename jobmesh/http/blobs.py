"""Job payload over HTTP (DESIGN §5.2): ``POST /api/v1/blobs`` (raw body, streamed to disk),
``GET /api/v1/blobs/{id}`` and ``GET /api/v1/jobs/{id}/payload/{name}`` (streamed back).

An upload is hashed as it is written to a temporary file (``BlobStore.writer``) and renamed
into place once whole: nothing is held in memory but one chunk. Limits: ``[node]
max_blob_size`` (413), the store's quota or a full disk (507). A blob id that is not
``sha256:<64 hex>`` (``../`` included) is a 400, an unknown one a 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..blobs.store import BlobTooLarge, check_id, check_name
from ..errors import NotFound, ValidationError
from .api import json_response, path_id
from .keys import NODE

READ_CHUNK = 1 << 20
UNTIMED_PREFIXES = ("/api/v1/blobs",)  # large bodies: no 30 s request timeout (the payload routes too)


def _blobs(request: web.Request) -> Any:
    node = request.app[NODE]
    blobs = getattr(node, "blobs", None)
    if blobs is None:
        raise NotFound("this node has no blob store")
    return blobs.store


async def post_blob(request: web.Request) -> web.Response:
    node = request.app[NODE]
    store = _blobs(request)
    limit = int(getattr(node.config, "max_blob_size", 1 << 30))
    length = request.content_length
    if length is not None and length > limit:
        raise BlobTooLarge(f"blob of {length} bytes exceeds max_blob_size ({limit} bytes)")
    loop = asyncio.get_running_loop()
    writer = await loop.run_in_executor(None, store.writer, limit)
    try:
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                break
            await loop.run_in_executor(None, writer.write, chunk)
        ref = await loop.run_in_executor(None, writer.commit)
    except BaseException:
        writer.abort()
        raise
    return json_response(ref.to_json(), status=201, headers={"Location": f"/api/v1/blobs/{ref.id}"})


def _file_response(path: Any, name: str | None = None) -> web.FileResponse:
    headers = {"Content-Type": "application/octet-stream"}
    if name:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return web.FileResponse(path, headers=headers)


async def get_blob(request: web.Request) -> web.StreamResponse:
    blob_id = check_id(request.match_info["blob"])
    store = _blobs(request)
    store.ref_of(blob_id)  # NotFound
    return _file_response(store.path(blob_id))


async def get_job_payload(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    name = check_name(request.match_info["name"])
    job_id = path_id(request, "job")
    resolve = getattr(node.jobs, "resolve_id", None)
    if resolve is not None:
        job_id = await resolve(job_id)
    path = await node.jobs.payload(job_id, name)
    return _file_response(path, name)


async def bad_blob_path(request: web.Request) -> web.Response:
    raise ValidationError(f"not a blob id: {request.match_info.get('rest', '')[:80]!r}")


def add_routes(app: web.Application, node: Any) -> None:
    r = app.router
    r.add_post("/api/v1/blobs", post_blob)
    r.add_get("/api/v1/blobs/{blob}", get_blob)
    r.add_get("/api/v1/blobs/{rest:.+}", bad_blob_path)  # '../x', 'a/b': a 400, not a 404
    r.add_get("/api/v1/jobs/{id}/payload/{name}", get_job_payload)


def untimed(path: str) -> bool:
    return path.startswith(UNTIMED_PREFIXES) or ("/payload/" in path and path.startswith("/api/v1/jobs/"))
