"""REST handlers of DESIGN §5.2 (one node's view): jobs, queues, stats, topology, offloading.

Handlers only translate: validate the request (``validation``), call the node's
public API (``node.jobs``, ``node.topology``, ``node.set_offloading``), shape the JSON.
Errors are raised as ``JobmeshError``s and turned into ``{"error": ...}`` by the
middleware in ``app``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from aiohttp import web

from ..errors import JobmeshError, NotFound, ValidationError
from ..job import FINAL_STATES
from ..job_text import job_json_text, jobs_json_text
from .keys import NODE
from .validation import (
    decode_json,
    parse_find_query,
    parse_job_body,
    parse_offload_topic,
    parse_offloading_body,
    parse_wait,
)


class NotImplementedYet(JobmeshError):
    """A feature this node does not have (yet): 501."""

    http_status = 501


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":"), default=str),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def json_text_response(text: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """An answer already written as JSON text (``job_text``: jobs without a dict per job)."""
    return web.Response(text=text, status=status, content_type="application/json", headers=headers)


async def read_json(request: web.Request) -> Any:
    """The body as JSON; oversize bodies raise aiohttp's 413, turned into JSON upstream."""
    return decode_json(await request.read())


MAX_ID = 200  # characters in an id taken from the URL path (job, schedule, workflow instance)


def path_id(request: web.Request, what: str) -> str:
    """The ``{id}`` of the route; empty or longer than ``MAX_ID`` is a 400 "invalid <what> id"."""
    item_id = request.match_info["id"]
    if not item_id or len(item_id) > MAX_ID:
        raise ValidationError(f"invalid {what} id")
    return item_id


def node_service(request: web.Request, attr: str, what: str) -> Any:
    """The node's optional part ``attr`` (``schedules``, ``workflows``); 501 when this node has none."""
    svc = getattr(request.app[NODE], attr, None)
    if svc is None:
        raise NotImplementedYet(f"{what} are not enabled on this node")
    return svc


def _job_id(request: web.Request) -> str:
    return path_id(request, "job")


async def health(request: web.Request) -> web.Response:
    """200 "ready" while the node runs; 503 once it is no longer taking jobs (draining)."""
    node = request.app[NODE]
    running = getattr(node, "running", True)
    accepting = getattr(getattr(node, "jobs", None), "accepting", True)
    if not running or accepting is False:
        return json_response({"node": node.name, "status": "stopping"}, status=503)
    return json_response({"node": node.name, "status": "ready"})


async def add_jobs(request: web.Request) -> web.Response:
    """201 with the job (a list: the jobs, in order). A body whose ``key`` belongs to a job of this
    node that is not final answers 200 with that job instead (in a list: that job in its place)."""
    node = request.app[NODE]
    specs, is_list = parse_job_body(await read_json(request))
    submit = getattr(node.jobs, "submit", None)
    if is_list:
        if not specs:
            return json_response([], status=201)
        if submit is not None:
            jobs = [j for j, _ in await submit(specs)]
        else:
            jobs = await node.jobs.add_many([(r.topic, r.properties) for r in specs])
        return json_text_response(jobs_json_text(jobs), status=201)
    req = specs[0]
    created = True
    if submit is not None and not req.plain:
        job, created = (await submit(specs))[0]
    else:
        job = await node.jobs.add(req.topic, req.properties)
    return json_text_response(job_json_text(job), status=201 if created else 200,
                         headers={"Location": f"/api/v1/jobs/{job.id}"})


async def find_jobs(request: web.Request) -> web.Response:
    """``{"jobs": [...], "total": N}``: ``total`` (added) is how many match in all, so a client can
    say "showing 100 of N"; ``topic`` may be a pattern (``demo/*``, ``demo/**``)."""
    node = request.app[NODE]
    q = parse_find_query(request.query)
    find_page = getattr(node.jobs, "find_page", None)
    if find_page is not None:
        jobs, total = await find_page(state=q["state"], topic=q["topic"], queue=q["queue"], limit=q["limit"])
        return json_text_response(f'{{"jobs":{jobs_json_text(jobs)},"total":{int(total)}}}')
    jobs = await node.jobs.find(state=q["state"], topic=q["topic"], queue=q["queue"], limit=q["limit"])
    return json_text_response(f'{{"jobs":{jobs_json_text(jobs)}}}')


async def _resolved_job_id(request: web.Request) -> str:
    """The route's job id, or the one id it is an unambiguous prefix of; a 404 for a job that ran
    here for another node names that origin (and its HTTP address when the topology knows it)."""
    node = request.app[NODE]
    job_id = _job_id(request)
    resolve = getattr(node.jobs, "resolve_id", None)
    if resolve is None:
        return job_id
    try:
        return await resolve(job_id)
    except NotFound as e:
        origin = getattr(e, "origin", None)
        url = _http_url_of(node, origin) if origin else None
        if url:
            raise NotFound(f"{e} (jobmesh job {job_id} --url {url})") from None
        raise


def _http_url_of(node: Any, name: str) -> str | None:
    try:
        inst = node.topology.instance(name)
    except Exception:
        return None
    if inst is None:
        return None
    props = inst.properties or {}
    url = props.get("http_url") or (props.get("schedules") or {}).get("url")
    return url if isinstance(url, str) else None


async def get_job(request: web.Request) -> web.Response:
    """The job; with ``?wait=S`` (added, a long poll) once it is final or S seconds passed."""
    node = request.app[NODE]
    wait = parse_wait(request.query)
    job_id = await _resolved_job_id(request)
    job = await node.jobs.get(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if wait and job.state.value not in _FINAL:
        try:
            job = await node.jobs.wait(job_id, timeout=wait)
        except asyncio.TimeoutError:
            job = await node.jobs.get(job_id) or job
    return json_text_response(job_json_text(job))


_FINAL = frozenset(s.value for s in FINAL_STATES)


async def stop_job(request: web.Request) -> web.Response:
    """The job as it is now; a running one also carries ``stop_grace`` (added): the seconds its
    consumer has to return before an async one is cancelled."""
    node = request.app[NODE]
    job = await node.jobs.stop(await _resolved_job_id(request))
    data = job.to_json()
    if data["state"] == "ACTIVE":
        data["stop_grace"] = getattr(node.config, "stop_grace", None)
    return json_response(data)


async def retry_job(request: web.Request) -> web.Response:
    job = await request.app[NODE].jobs.retry(await _resolved_job_id(request))
    return json_response(job.to_json())


async def remove_job(request: web.Request) -> web.Response:
    """Queued/active: stopped and recorded DROPPED (the job comes back); final: deleted."""
    node = request.app[NODE]
    job_id = await _resolved_job_id(request)
    job = await node.jobs.remove(job_id)
    if job is None:
        return json_response({"id": job_id, "deleted": True})
    data = job.to_json()
    if data["state"] == "ACTIVE":
        data["stop_grace"] = getattr(node.config, "stop_grace", None)
    return json_response(data)


async def topology(request: web.Request) -> web.Response:
    return json_response(request.app[NODE].topology.to_json())


async def queues(request: web.Request) -> web.Response:
    return json_response({"queues": await request.app[NODE].jobs.queues()})


async def suspend_queue(request: web.Request) -> web.Response:
    return json_response(await request.app[NODE].jobs.suspend_queue(request.match_info["name"]))


async def resume_queue(request: web.Request) -> web.Response:
    return json_response(await request.app[NODE].jobs.resume_queue(request.match_info["name"]))


async def stats(request: web.Request) -> web.Response:
    return json_response(await request.app[NODE].jobs.statistics())


def offloading_view(view: Any) -> dict[str, Any]:
    """Per node: its consumer topics and whether each is enabled for offloading."""
    nodes = []
    for inst in view.instances:
        enabled = set(inst.offload_topics)
        nodes.append(
            {
                "name": inst.name,
                "local": inst.local,
                "leader": inst.leader,
                "topics": [{"topic": t, "enabled": t in enabled} for t in inst.topics],
                "offload_topics": list(inst.offload_topics),
                "offloading": inst.properties.get("offloading"),
            }
        )
    return {"local": view.local, "nodes": nodes}


async def get_offloading(request: web.Request) -> web.Response:
    return json_response(offloading_view(request.app[NODE].topology))


async def put_offloading(request: web.Request) -> web.Response:
    node = request.app[NODE]
    node_name = request.match_info["node"]
    topic = parse_offload_topic(request.match_info["topic"])
    mode = parse_offloading_body(await read_json(request))
    if node.topology.instance(node_name) is None:
        raise NotFound(f"node {node_name} is not in the topology")
    setter = getattr(node, "set_offloading", None)
    if setter is None:
        raise NotImplementedYet("offloading settings are not available on this node yet")
    result = setter(node_name, topic, mode)
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, dict):
        return json_response(result)
    return json_response({"node": node_name, "topic": topic, "mode": mode})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/health", health)
    r.add_post("/api/v1/jobs", add_jobs)
    r.add_get("/api/v1/jobs", find_jobs)
    r.add_get("/api/v1/jobs/{id}", get_job)
    r.add_delete("/api/v1/jobs/{id}", remove_job)
    r.add_post("/api/v1/jobs/{id}/stop", stop_job)
    r.add_post("/api/v1/jobs/{id}/retry", retry_job)
    r.add_get("/api/v1/topology", topology)
    r.add_get("/api/v1/queues", queues)
    r.add_post("/api/v1/queues/{name}/suspend", suspend_queue)
    r.add_post("/api/v1/queues/{name}/resume", resume_queue)
    r.add_get("/api/v1/stats", stats)
    r.add_get("/api/v1/offloading", get_offloading)
    r.add_put("/api/v1/offloading/{node}/{topic:.+}", put_offloading)


__all__ = ["add_routes", "json_response", "read_json", "offloading_view", "NotImplementedYet"]
