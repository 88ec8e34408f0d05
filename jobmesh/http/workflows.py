"""REST routes for workflows (issue 6), mounted by ``jobmesh.http.app``.

``GET /api/v1/workflows`` (``?state=&workflow=&limit=``), ``POST /api/v1/workflows``
``{"workflow": name, "properties": {...}}`` → 201 instance, ``GET /api/v1/workflows/{id}``,
``POST /api/v1/workflows/{id}/abort`` (optional body ``{"reason": "..."}``),
``GET /api/v1/workflow-definitions``. Handlers only translate; the rules live in
``jobmesh.workflow``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import ValidationError
from .api import json_response, node_service, path_id, read_json
from .validation import decode_json

def _workflows(request: web.Request) -> Any:
    return node_service(request, "workflows", "workflows")


def _id(request: web.Request) -> str:
    return path_id(request, "workflow instance")


def _limit(text: str | None) -> int:
    if text is None or text == "":
        return 100
    try:
        return int(text)
    except ValueError:
        raise ValidationError(f"limit must be a whole number, got {text!r}") from None


async def list_instances(request: web.Request) -> web.Response:
    q = request.query
    instances = await _workflows(request).list(
        state=q.get("state") or None, workflow=q.get("workflow") or None, limit=_limit(q.get("limit")))
    return json_response({"workflows": [i.to_json() for i in instances]})


async def start_instance(request: web.Request) -> web.Response:
    svc = _workflows(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValidationError('expected a JSON object {"workflow": NAME, "properties": {...}}')
    unknown = set(body) - {"workflow", "properties", "payload"}
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(sorted(unknown))}")
    name = body.get("workflow")
    if not isinstance(name, str) or not name:
        raise ValidationError("'workflow' must be the name of a defined workflow")
    props = body.get("properties")
    if props is not None and not isinstance(props, dict):
        raise ValidationError("'properties' must be a JSON object")
    payload = body.get("payload")
    if payload is not None and (not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values())):
        raise ValidationError("'payload' must be a JSON object of names to blob ids (POST /api/v1/blobs)")
    inst = await svc.start(name, props, payload=payload or None)
    return json_response(inst.to_json(), status=201, headers={"Location": f"/api/v1/workflows/{inst.id}"})


async def get_instance(request: web.Request) -> web.Response:
    return json_response((await _workflows(request).get(_id(request))).to_json())


async def abort_instance(request: web.Request) -> web.Response:
    svc = _workflows(request)
    iid = _id(request)
    reason = "aborted on request"
    raw = await request.read()
    if raw.strip():
        body = decode_json(raw)
        if body is not None:
            if not isinstance(body, dict) or set(body) - {"reason"}:
                raise ValidationError('expected no body or {"reason": "..."}')
            if body.get("reason") is not None:
                if not isinstance(body["reason"], str):
                    raise ValidationError("'reason' must be a string")
                reason = body["reason"]
    return json_response((await svc.abort(iid, reason)).to_json())


async def list_definitions(request: web.Request) -> web.Response:
    return json_response({"definitions": [w.to_json() for w in _workflows(request).definitions()]})


def add_routes(app: web.Application, node: Any) -> None:
    """Mount the workflow routes on the node's app (``node`` is reached via ``app[NODE]``)."""
    app.router.add_get("/api/v1/workflows", list_instances)
    app.router.add_post("/api/v1/workflows", start_instance)
    app.router.add_get("/api/v1/workflows/{id}", get_instance)
    app.router.add_post("/api/v1/workflows/{id}/abort", abort_instance)
    app.router.add_get("/api/v1/workflow-definitions", list_definitions)
