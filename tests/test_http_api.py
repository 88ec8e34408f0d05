"""The HTTP API over real loopback HTTP against a real in-process Node (DESIGN §5.2)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

import jobmesh
from jobmesh.actor import ActorSystem
from jobmesh.config import NodeConfig, QueueConfig
from jobmesh.errors import ValidationError
from jobmesh.http import HttpActor

JOB_KEYS = {
    "id", "topic", "properties", "state", "queue", "origin", "target", "created", "started",
    "finished", "retry_count", "max_retries", "progress", "result_message",
}

release = asyncio.Event()


@jobmesh.consumer("test/ok")
async def ok_consumer(job: jobmesh.Job) -> None:
    return None


@jobmesh.consumer("test/cancel")
async def cancel_consumer(job: jobmesh.Job) -> jobmesh.JobResult:
    return jobmesh.JobResult.CANCEL


@jobmesh.consumer("test/block")
async def block_consumer(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
    for _ in range(400):  # bounded: 20 s at most
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.05)
    return None


def make_node(tmp_path: Path, token: str | None = None, name: str = "h1") -> Any:
    config = NodeConfig(name=name)
    config.security.http_token = token
    config.queues = [QueueConfig(name="slow", topics=["test/slow/**"])]
    node = jobmesh.Node(
        name=name, data_dir=str(tmp_path / name), bind=None, http="127.0.0.1:0", config=config
    )
    for fn in (ok_consumer, cancel_consumer, block_consumer):
        node.add_consumer(fn)
    return node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Any]:
    n = make_node(tmp_path)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def http(node: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=node.http_url, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def wait_state(http: aiohttp.ClientSession, job_id: str, states: set[str], timeout: float = 5.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with http.get(f"/api/v1/jobs/{job_id}") as r:
            job = await r.json()
        if job["state"] in states:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} stayed {job['state']}, wanted {states}")
        await asyncio.sleep(0.02)


async def error_of(resp: aiohttp.ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


async def test_health_and_real_port(node: Any, http: aiohttp.ClientSession) -> None:
    assert node.http_url.startswith("http://127.0.0.1:") and not node.http_url.endswith(":0")
    async with http.get("/api/v1/health") as r:
        assert r.status == 200
        assert await r.json() == {"node": "h1", "status": "ready"}


async def test_add_one_job_runs_and_reads_back(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/jobs", json={"topic": "test/ok", "properties": {"n": 1}}) as r:
        assert r.status == 201
        job = await r.json()
        assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert JOB_KEYS <= set(job)  # the §5.2 fields; later parts may add more
    assert job["topic"] == "test/ok" and job["properties"] == {"n": 1} and job["origin"] == "h1"
    done = await wait_state(http, job["id"], {"SUCCEEDED"})
    assert done["created"].endswith("Z") and done["finished"].endswith("Z")
    assert set(done["progress"]) == {"steps", "step", "eta", "log"}


async def test_add_list_in_order_and_find_filters(http: aiohttp.ClientSession) -> None:
    body = [{"topic": "test/ok", "properties": {"i": i}} for i in range(5)] + [{"topic": "test/cancel"}]
    async with http.post("/api/v1/jobs", json=body) as r:
        assert r.status == 201
        jobs = await r.json()
    assert [j["properties"].get("i") for j in jobs] == [0, 1, 2, 3, 4, None]
    async with http.post("/api/v1/jobs", json=[]) as r:
        assert r.status == 201 and await r.json() == []
    for j in jobs[:5]:
        await wait_state(http, j["id"], {"SUCCEEDED"})
    cancelled = await wait_state(http, jobs[5]["id"], {"GIVEN_UP", "ERROR"})
    async with http.get("/api/v1/jobs", params={"topic": "test/ok", "limit": "3"}) as r:
        found = (await r.json())["jobs"]
    assert len(found) == 3 and all(j["topic"] == "test/ok" for j in found)
    async with http.get("/api/v1/jobs", params={"state": cancelled["state"].lower()}) as r:
        found = (await r.json())["jobs"]
    assert [j["id"] for j in found] == [jobs[5]["id"]]
    async with http.get("/api/v1/jobs", params={"state": "SUCCEEDED", "topic": "test/cancel"}) as r:
        assert (await r.json())["jobs"] == []


@pytest.mark.parametrize(
    "data, status, fragment",
    [
        (b"{not json", 400, "invalid JSON"),
        (b"", 400, "empty"),
        (b'"a string"', 400, "expected a JSON object"),
        (b"[1, 2]", 400, "jobs[0]"),
        (b'{"properties": {}}', 400, "missing field 'topic'"),
        (b'{"topic": 7}', 400, "topic must be a string"),
        (b'{"topic": "a//b"}', 400, "empty segment"),
        (b'{"topic": "a/**"}', 400, "wildcard"),
        (b'{"topic": "a", "properties": [1]}', 400, "properties must be a JSON object"),
        (b'{"topic": "a", "prio": 3}', 400, "unknown field"),
        (b'{"topic": "a", "priority": "high"}', 400, "priority must be a whole number"),
    ],
)
async def test_bad_job_bodies_are_4xx_json(http: aiohttp.ClientSession, data: bytes, status: int, fragment: str) -> None:
    async with http.post("/api/v1/jobs", data=data, headers={"Content-Type": "application/json"}) as r:
        assert fragment in await error_of(r, status)


async def test_oversize_body_is_413_json_and_node_keeps_serving(http: aiohttp.ClientSession) -> None:
    big = json.dumps({"topic": "test/ok", "properties": {"blob": "x" * (2 * 1024 * 1024)}}).encode()
    async with http.post("/api/v1/jobs", data=big, headers={"Content-Type": "application/json"}) as r:
        assert "too large" in await error_of(r, 413)
    async with http.get("/api/v1/health") as r:
        assert r.status == 200


async def test_bad_queries_and_unknown_ids(http: aiohttp.ClientSession) -> None:
    for params, fragment in (({"limit": "lots"}, "limit"), ({"limit": "0"}, "limit"), ({"state": "DONE"}, "unknown state")):
        async with http.get("/api/v1/jobs", params=params) as r:
            assert fragment in await error_of(r, 400)
    async with http.get("/api/v1/jobs/nope-123") as r:
        assert "nope-123" in await error_of(r, 404)
    for method, path in (("POST", "/stop"), ("POST", "/retry"), ("DELETE", "")):
        async with http.request(method, f"/api/v1/jobs/nope-123{path}") as r:
            await error_of(r, 404)


async def test_schedule_routes_are_mounted(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/schedules") as r:
        assert r.status == 200, await r.text()
        assert "schedules" in await r.json()
    async with http.post("/api/v1/schedules", data=b"{") as r:
        await error_of(r, 400)


async def test_unknown_routes_and_methods_are_json(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/nothing-here") as r:
        assert "no such endpoint" in await error_of(r, 404)
    async with http.put("/api/v1/jobs") as r:
        assert "not allowed" in await error_of(r, 405)
    async with http.get("/") as r:
        assert r.status == 200 and "text/html" in r.headers["Content-Type"]


async def test_stop_retry_remove(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/jobs", json={"topic": "test/block"}) as r:
        job = await r.json()
    await wait_state(http, job["id"], {"ACTIVE"})
    async with http.post(f"/api/v1/jobs/{job['id']}/stop") as r:
        assert r.status == 200
        assert (await r.json())["id"] == job["id"]
    stopped = await wait_state(http, job["id"], {"STOPPED"})
    assert stopped["finished"] is not None

    async with http.post(f"/api/v1/jobs/{job['id']}/retry") as r:
        assert r.status == 200
        assert (await r.json())["retry_count"] == 0
    await wait_state(http, job["id"], {"ACTIVE"})
    async with http.delete(f"/api/v1/jobs/{job['id']}") as r:  # active -> DROPPED, still readable
        assert r.status == 200
        assert (await r.json())["id"] == job["id"]
    await wait_state(http, job["id"], {"DROPPED"})
    async with http.delete(f"/api/v1/jobs/{job['id']}") as r:  # final -> deleted
        assert await r.json() == {"id": job["id"], "deleted": True}
    async with http.get(f"/api/v1/jobs/{job['id']}") as r:
        await error_of(r, 404)

    async with http.post("/api/v1/jobs", json={"topic": "test/ok"}) as r:
        ok = await r.json()
    await wait_state(http, ok["id"], {"SUCCEEDED"})
    async with http.post(f"/api/v1/jobs/{ok['id']}/retry") as r:  # retry a success: conflict
        await error_of(r, 409)


async def test_topology_queues_stats(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/topology") as r:
        topo = await r.json()
    assert topo["local"] == "h1" and topo["leader"] == "h1"
    (inst,) = topo["instances"]
    assert {"name", "leader", "local", "endpoint", "topics", "offload_topics", "capacity"} <= set(inst)
    assert inst["name"] == "h1" and inst["local"] and inst["leader"]
    assert set(inst["topics"]) >= {"test/ok", "test/cancel", "test/block"}

    async with http.get("/api/v1/queues") as r:
        queues = (await r.json())["queues"]
    names = [q["name"] for q in queues]
    assert "main" in names and "slow" in names
    main = next(q for q in queues if q["name"] == "main")
    assert {"name", "type", "topics", "max_parallel", "retries", "retry_delay", "suspended", "statistics"} <= set(main)

    async with http.post("/api/v1/queues/slow/suspend") as r:
        assert r.status == 200 and (await r.json())["suspended"] is True
    async with http.post("/api/v1/queues/slow/resume") as r:
        assert (await r.json())["suspended"] is False
    async with http.post("/api/v1/queues/nosuch/suspend") as r:
        await error_of(r, 404)

    async with http.post("/api/v1/jobs", json={"topic": "test/ok"}) as r:
        job = await r.json()
    await wait_state(http, job["id"], {"SUCCEEDED"})
    async with http.get("/api/v1/stats") as r:
        stats = await r.json()
    overall = stats["overall"]
    for key in ("queued", "active", "finished", "failed", "cancelled", "processed",
                "average_waiting_time", "average_processing_time"):
        assert key in overall
    assert overall["finished"] >= 1 and "test/ok" in stats["topics"]


async def test_offloading_view_and_put(node: Any, http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/offloading") as r:
        view = await r.json()
    assert view["local"] == "h1"
    (me,) = view["nodes"]
    assert me["name"] == "h1"
    assert {t["topic"] for t in me["topics"]} >= {"test/ok"}
    assert all(isinstance(t["enabled"], bool) for t in me["topics"])

    async with http.put("/api/v1/offloading/h1/test/ok", json={"enabled": "yes"}) as r:
        await error_of(r, 400)
    async with http.put("/api/v1/offloading/h1/test/ok", data=b"{") as r:
        await error_of(r, 400)
    async with http.put("/api/v1/offloading/ghost/test/ok", json={"enabled": False}) as r:
        assert "ghost" in await error_of(r, 404)
    async with http.put("/api/v1/offloading/h1/test/ok", json={"enabled": False}) as r:
        if hasattr(node, "set_offloading"):
            assert r.status == 200
            assert (await r.json())["mode"] == "disabled"
        else:
            assert "not available" in await error_of(r, 501)


async def read_events(resp: aiohttp.ClientResponse, until: Any, timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse the SSE stream until ``until(events)`` is true; returns events and comment lines."""
    events: list[dict[str, Any]] = []
    comments: list[str] = []

    async def run() -> None:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            elif line.startswith(":"):
                comments.append(line)
            if until(events, comments):
                return

    await asyncio.wait_for(run(), timeout)
    return events, comments


async def test_events_stream_notifications_and_heartbeats(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/events", params={"heartbeat": "0.2"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async with http.post("/api/v1/jobs", json={"topic": "test/ok"}) as r:
            job_id = (await r.json())["id"]

        def finished(evs: list[dict[str, Any]], comments: list[str]) -> bool:
            return any(e["topic"] == "job/finished" and e["job_id"] == job_id for e in evs) and any(
                "keep-alive" in c for c in comments
            )

        events, _ = await read_events(resp, finished)
    mine = [e["topic"] for e in events if e["job_id"] == job_id]
    assert mine == ["job/added", "job/started", "job/finished"]
    started = next(e for e in events if e["topic"] == "job/started")
    assert started["node"] == "h1" and started["job_topic"] == "test/ok" and started["waiting_time"] is not None


async def test_events_topic_filter(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/events", params={"topics": "job/finished"}) as resp:
        async with http.post("/api/v1/jobs", json=[{"topic": "test/ok"}, {"topic": "test/ok"}]) as r:
            ids = {j["id"] for j in await r.json()}
        events, _ = await read_events(resp, lambda evs, _c: {e["job_id"] for e in evs} >= ids)
    assert {e["topic"] for e in events} == {"job/finished"}


async def test_event_stream_ends_when_the_node_stops(tmp_path: Path) -> None:
    n = make_node(tmp_path, name="h2")
    await n.start()
    stopped = False
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(n.http_url + "/api/v1/events") as resp:
                await resp.content.readline()  # "retry: ..." : the stream is open
                t0 = asyncio.get_running_loop().time()
                await n.stop()
                stopped = True
                rest = await asyncio.wait_for(resp.content.read(), 5)  # EOF, not a hang
                assert isinstance(rest, bytes)
                assert asyncio.get_running_loop().time() - t0 < 5
    finally:
        if not stopped:
            await n.stop()


def parse_metrics(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


async def test_metrics_endpoint(http: aiohttp.ClientSession) -> None:
    async with http.get("/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        first = parse_metrics(await r.text())
    assert first["jobmesh_node_info{node=h1}"] == 1
    assert first["jobmesh_topology_instances{}"] == 1
    assert "jobmesh_jobs{queue=main,state=QUEUED}" in first
    assert "jobmesh_queue_suspended{queue=slow}" in first
    assert "jobmesh_actor_mailbox_depth{actor=http}" in first
    assert "jobmesh_actor_mailbox_depth{actor=engine}" in first, sorted(first)
    assert first["jobmesh_capacity{kind=slots}"] >= 1
    async with http.post("/api/v1/jobs", json=[{"topic": "test/ok"}] * 3) as r:
        jobs = await r.json()
    for j in jobs:
        await wait_state(http, j["id"], {"SUCCEEDED"})
    async with http.get("/metrics") as r:
        second = parse_metrics(await r.text())
    assert second["jobmesh_jobs_added_total{queue=main}"] == 3
    assert second["jobmesh_jobs_finished_total{queue=main}"] == 3
    assert second["jobmesh_job_waiting_seconds_count{queue=main}"] == 3
    assert second["jobmesh_job_processing_seconds_count{queue=main}"] == 3
    assert second["jobmesh_queue_jobs_total{outcome=finished,queue=main}"] >= 3


async def test_token_protects_api_and_metrics(tmp_path: Path) -> None:
    n = make_node(tmp_path, token="s3cret", name="h3")
    await n.start()
    try:
        async with aiohttp.ClientSession(base_url=n.http_url, timeout=aiohttp.ClientTimeout(total=10)) as s:
            for path in ("/api/v1/health", "/api/v1/jobs", "/metrics", "/api/v1/events", "/api/v1/nope"):
                async with s.get(path) as r:
                    assert "token" in await error_of(r, 401)
            async with s.get("/api/v1/health", headers={"Authorization": "Bearer wrong"}) as r:
                await error_of(r, 401)
            async with s.get("/api/v1/health", params={"token": "s3cret"}) as r:  # only SSE takes ?token=
                await error_of(r, 401)
            auth = {"Authorization": "Bearer s3cret"}
            async with s.get("/api/v1/health", headers=auth) as r:
                assert r.status == 200
            async with s.get("/metrics", headers=auth) as r:
                assert r.status == 200
            async with s.get("/api/v1/events", params={"token": "s3cret", "heartbeat": "0.1"}) as r:
                assert r.status == 200
                _, comments = await read_events(r, lambda _e, c: any("keep-alive" in x for x in c))
            async with s.get("/") as r:  # the console page itself is public; its API calls are not
                assert r.status == 200
    finally:
        await n.stop()


async def test_http_actor_on_a_busy_port_fails_clearly(node: Any) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        port = sock.getsockname()[1]
        actor = HttpActor(node, f"127.0.0.1:{port}")
        with pytest.raises(ValidationError, match="cannot serve HTTP"):
            await ActorSystem().start(actor)
    finally:
        sock.close()


async def test_event_stream_subscription_is_released_when_the_client_leaves(node: Any, http: aiohttp.ClientSession) -> None:
    assert not node.events.active
    async with http.get("/api/v1/events", params={"heartbeat": "0.1"}) as resp:
        await resp.content.readline()
        assert node.events.active
    for _ in range(100):  # the next heartbeat write notices the closed connection
        if not node.events.active:
            break
        await asyncio.sleep(0.05)
    assert not node.events.active


async def test_unexpected_errors_and_slow_handlers_are_json(node: Any) -> None:
    """Extra routes on the real app: a crash is a 500 without a traceback, a hang a 504."""
    from aiohttp import web

    from jobmesh.http import build_app

    app = build_app(node, request_timeout=0.2)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(text="late")

    app.router.add_get("/api/v1/test-boom", boom)
    app.router.add_get("/api/v1/test-hang", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as s:
            async with s.get("/api/v1/test-boom") as r:
                assert await error_of(r, 500) == "internal error"
            async with s.get("/api/v1/test-hang") as r:
                assert "in time" in await error_of(r, 504)
            async with s.get("/api/v1/health") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()


async def test_event_stream_tells_a_client_it_missed_notifications(node: Any) -> None:
    """A burst larger than the subscriber's buffer: oldest lost, then a stream/overflow note."""
    from aiohttp import web

    from jobmesh.http import build_app

    app = build_app(node, sse_queue=5)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            async with s.get(f"http://127.0.0.1:{port}/api/v1/events", params={"topics": "job/added"}) as resp:
                await resp.content.readline()
                await node.jobs.add_many([("test/ok", {"i": i}) for i in range(20)])  # 20 in one publish burst
                events, _ = await read_events(resp, lambda evs, _c: any(e["topic"] == "stream/overflow" for e in evs))
        overflow = next(e for e in events if e["topic"] == "stream/overflow")
        assert overflow["dropped"] == 15
        assert [e["topic"] for e in events].count("job/added") == 5
    finally:
        await runner.cleanup()


async def test_health_says_stopping_while_the_node_drains(tmp_path: Path) -> None:
    n = make_node(tmp_path, name="h4")
    await n.start()
    stop_task: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession(base_url=n.http_url, timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.post("/api/v1/jobs", json={"topic": "test/block"}) as r:
                job_id = (await r.json())["id"]
            await wait_state(s, job_id, {"ACTIVE"})
            stop_task = asyncio.ensure_future(n.stop(grace=1.0))  # the running job holds the drain
            for _ in range(50):
                async with s.get("/api/v1/health") as r:
                    if r.status == 503:
                        assert await r.json() == {"node": "h4", "status": "stopping"}
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("health never reported stopping")
            async with s.post("/api/v1/jobs", json={"topic": "test/ok"}) as r:
                assert "shutting down" in await error_of(r, 409)
    finally:
        if stop_task is not None:
            await stop_task
        else:
            await n.stop()
