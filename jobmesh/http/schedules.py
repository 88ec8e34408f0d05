"""REST routes for scheduled jobs (DESIGN §5.2), mounted by ``jobmesh.http.app``.

``GET/POST /api/v1/schedules``, ``GET/DELETE /api/v1/schedules/{id}``,
``POST /api/v1/schedules/{id}/suspend|resume``. Handlers only translate: the rules
(validation, identity by content hash) live in ``jobmesh.scheduler``. A POST answers
201 for a new schedule and 200 with the existing one for an identical request.
``GET /api/v1/schedules?records=1`` answers the replicated records (tombstones
included); peers pull it when the definitions are too large for a heartbeat.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import json_response, node_service, path_id, read_json

def _schedules(request: web.Request) -> Any:
    return node_service(request, "schedules", "scheduled jobs")


def _id(request: web.Request) -> str:
    return path_id(request, "schedule")


async def list_schedules(request: web.Request) -> web.Response:
    svc = _schedules(request)
    if request.query.get("records") in ("1", "true", "yes"):
        return json_response({"records": await svc.records()})
    return json_response({"schedules": await svc.list()})


async def add_schedule(request: web.Request) -> web.Response:
    svc = _schedules(request)
    body = await read_json(request)
    schedule, new = await svc.create(body)
    return json_response(
        schedule, status=201 if new else 200, headers={"Location": f"/api/v1/schedules/{schedule['id']}"}
    )


async def get_schedule(request: web.Request) -> web.Response:
    return json_response(await _schedules(request).get(_id(request)))


async def remove_schedule(request: web.Request) -> web.Response:
    return json_response(await _schedules(request).remove(_id(request)))


async def suspend_schedule(request: web.Request) -> web.Response:
    return json_response(await _schedules(request).suspend(_id(request)))


async def resume_schedule(request: web.Request) -> web.Response:
    return json_response(await _schedules(request).resume(_id(request)))


def add_routes(app: web.Application, node: Any) -> None:
    """Mount the schedule routes on the node's app (``node`` is reached via ``app[NODE]``)."""
    app.router.add_get("/api/v1/schedules", list_schedules)
    app.router.add_post("/api/v1/schedules", add_schedule)
    app.router.add_get("/api/v1/schedules/{id}", get_schedule)
    app.router.add_delete("/api/v1/schedules/{id}", remove_schedule)
    app.router.add_post("/api/v1/schedules/{id}/suspend", suspend_schedule)
    app.router.add_post("/api/v1/schedules/{id}/resume", resume_schedule)
