"""The scheduler on a real in-process Node: real job store, consumers, HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from helpers import wait_until_async

import jobmesh
from jobmesh.config import NodeConfig
from jobmesh.job import iso
from jobmesh.scheduler.actor import SchedulerActor, attach, detach

ran: list[dict[str, Any]] = []


@jobmesh.consumer("sched/tick")
async def tick_consumer(job: jobmesh.Job) -> None:
    ran.append(dict(job.properties))


def make_node(tmp_path: Path, name: str = "s1", http: str | None = None) -> Any:
    config = NodeConfig(name=name)
    # no discovery here (bind=None); a short heartbeat timeout keeps the settle period short
    config.discovery.heartbeat_interval = 0.05
    config.discovery.heartbeat_timeout = 0.2
    node = jobmesh.Node(name=name, data_dir=str(tmp_path / name), bind=None, http=http, config=config)
    node.add_consumer(tick_consumer)
    return node


async def start_scheduler(node: Any) -> SchedulerActor:
    """The node's own scheduler when Node wires it, else one attached to it."""
    existing = getattr(node, "schedules", None)
    if isinstance(existing, SchedulerActor):
        return existing
    return await attach(node)


async def stop_node(node: Any) -> None:
    await detach(node)
    await node.stop()


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, name: str = "s1", http: str | None = None) -> AsyncIterator[Any]:
    """:func:`make_node` started, with its scheduler; detached and stopped on exit."""
    n = make_node(tmp_path, name, http)
    await n.start()
    await start_scheduler(n)
    try:
        yield n
    finally:
        await stop_node(n)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Any]:
    ran.clear()
    async with running_node(tmp_path) as n:
        yield n


async def wait_for(cond, timeout: float = 5.0, step: float = 0.02) -> None:
    await wait_until_async(cond, timeout, step)


async def scheduled_jobs(node: Any, topic: str = "sched/tick") -> list[Any]:
    return await node.jobs.find(topic=topic, limit=1000)


async def test_every_fires_real_jobs_that_consumers_run(node):
    s = await node.schedules.add("sched/tick", {"n": 7}, every=0.2)
    await wait_for(lambda: len(ran) >= 3)
    jobs = await scheduled_jobs(node)
    times = sorted(j.properties["scheduled_time"] for j in jobs)
    assert len(times) == len(set(times))  # one job per slot
    for j in jobs:
        assert j.properties["schedule_id"] == s["id"] and j.properties["n"] == 7
    done = await node.jobs.wait(jobs[-1].id, timeout=5)
    assert done.state == jobmesh.JobState.SUCCEEDED
    # slots are 200 ms apart on the epoch grid
    stamps = [jobmesh.job.parse_iso(t) for t in times]
    assert all(round((b - a) * 1000) % 200 == 0 and b > a for a, b in zip(stamps, stamps[1:]))


async def test_schedules_due_at_the_same_instant_all_fire(node):
    ids = [(await node.schedules.add("sched/tick", {"i": i}, every=0.2))["id"] for i in range(3)]
    await wait_for(lambda: all(sum(1 for r in ran if r.get("i") == i) >= 2 for i in range(3)))
    jobs = await scheduled_jobs(node)
    by_schedule: dict[str, set[str]] = {sid: set() for sid in ids}
    for j in jobs:
        by_schedule[j.properties["schedule_id"]].add(j.properties["scheduled_time"])
    common = set.intersection(*by_schedule.values())
    assert len(common) >= 1  # the same slot fired for all three (in one batch)
    assert sum(len(v) for v in by_schedule.values()) == len(jobs)  # and each slot once per schedule


async def test_suspended_schedule_does_not_fire_and_resume_goes_on(node):
    s = await node.schedules.add("sched/tick", {"k": "s"}, every=0.2)
    await node.schedules.suspend(s["id"])
    n0 = len(await scheduled_jobs(node))
    await asyncio.sleep(0.7)
    assert len(await scheduled_jobs(node)) == n0
    assert (await node.schedules.get(s["id"]))["next_fire"] is None
    await node.schedules.resume(s["id"])
    await wait_for(lambda: any(r.get("k") == "s" for r in ran))


async def test_at_fires_once_and_removes_itself(node):
    at = iso(time.time() + 0.4)
    s = await node.schedules.add("sched/tick", {"once": True}, at=at)
    await wait_for(lambda: any(r.get("once") for r in ran))
    await asyncio.sleep(0.3)
    jobs = [j for j in await scheduled_jobs(node) if j.properties.get("once")]
    assert len(jobs) == 1 and jobs[0].properties["scheduled_time"] == at
    assert await node.schedules.list() == []
    with pytest.raises(jobmesh.NotFound):
        await node.schedules.get(s["id"])


async def test_schedules_and_fired_slots_survive_a_restart(tmp_path):
    ran.clear()
    async with running_node(tmp_path, "r1") as n1:
        s = await n1.schedules.add("sched/tick", {"r": 1}, every=0.25)
        sus = await n1.schedules.add("sched/tick", {"r": 2}, cron="* * * * *")
        await n1.schedules.suspend(sus["id"])
        await wait_for(lambda: len(ran) >= 2)
        last_before = (await n1.schedules.get(s["id"]))["last_fired"]
    async with running_node(tmp_path, "r1") as n2:
        listed = {x["id"]: x for x in await n2.schedules.list()}
        assert set(listed) == {s["id"], sus["id"]} and listed[sus["id"]]["suspended"] is True
        assert listed[s["id"]]["last_fired"] >= last_before  # ISO strings sort by time
        fired_before = len(await scheduled_jobs(n2))
        await wait_for(lambda: len(ran) >= fired_before + 2)
        jobs = await scheduled_jobs(n2)  # the same store: jobs from before and after the restart
        times = [j.properties["scheduled_time"] for j in jobs]
        assert len(times) == len(set(times))  # no slot fired twice across the restart
        assert all(j.properties["r"] == 1 for j in jobs)


@pytest.fixture
async def http_node(tmp_path: Path) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    ran.clear()
    async with running_node(tmp_path, "h1", http="127.0.0.1:0") as n:
        async with aiohttp.ClientSession(base_url=n.http_url, timeout=aiohttp.ClientTimeout(total=10)) as s:
            yield n, s


async def test_http_api(http_node):
    node, http = http_node
    body = {"topic": "sched/tick", "properties": {"via": "http"}, "daily": {"hour": 3, "minute": 30}}
    async with http.post("/api/v1/schedules", json=body) as r:
        assert r.status == 201
        created = await r.json()
        assert r.headers["Location"] == f"/api/v1/schedules/{created['id']}"
    assert created["daily"] == {"hour": 3, "minute": 30} and created["suspended"] is False
    assert created["next_fire"].endswith("T03:30:00.000Z")
    async with http.post("/api/v1/schedules", json=body) as r:  # identical: the existing one
        assert r.status == 200 and (await r.json())["id"] == created["id"]
    async with http.get("/api/v1/schedules") as r:
        assert r.status == 200 and [s["id"] for s in (await r.json())["schedules"]] == [created["id"]]
    sid = created["id"]
    async with http.post(f"/api/v1/schedules/{sid}/suspend") as r:
        assert r.status == 200 and (await r.json())["suspended"] is True
    async with http.post(f"/api/v1/schedules/{sid}/resume") as r:
        assert r.status == 200 and (await r.json())["suspended"] is False
    async with http.get(f"/api/v1/schedules/{sid}") as r:
        assert r.status == 200 and (await r.json())["properties"] == {"via": "http"}
    async with http.get("/api/v1/schedules", params={"records": "1"}) as r:
        recs = (await r.json())["records"]
        assert len(recs) == 1 and recs[0]["spec"]["topic"] == "sched/tick"
    async with http.delete(f"/api/v1/schedules/{sid}") as r:
        assert r.status == 200 and (await r.json())["id"] == sid
    async with http.get(f"/api/v1/schedules/{sid}") as r:
        assert r.status == 404 and "error" in await r.json()
    async with http.delete(f"/api/v1/schedules/{sid}") as r:
        assert r.status == 404
    assert await node.schedules.list() == []


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        (b"not json", 400, "invalid json"),
        (b"[]", 400, "json object"),
        (b'{"topic": "a/b"}', 400, "exactly one of"),
        (b'{"topic": "a/b", "cron": "99 * * * *"}', 400, "cron"),
        (b'{"topic": "a/b", "every": 0.001}', 400, "between"),
        (b'{"topic": "a/b", "at": "2001-01-01T00:00:00Z"}', 400, "in the past"),
        (b'{"topic": "a/b", "weekly": {"weekday": "funday", "hour": 1, "minute": 1}}', 400, "weekday"),
    ],
)
async def test_http_rejects_bad_bodies_with_json_errors(http_node, body, status, fragment):
    node, http = http_node
    async with http.post("/api/v1/schedules", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == status
        err = (await r.json())["error"]
        assert fragment in err.lower()
    async with http.get("/api/v1/health") as r:
        assert r.status == 200  # the node keeps serving


async def test_cli_against_a_real_node(http_node):
    """``jobmesh schedule ...`` as a subprocess against the node's HTTP API."""
    import json
    import sys

    node, _ = http_node

    async def cli(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobmesh", "schedule", *argv, "--url", node.http_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
        return proc.returncode or 0, out.decode(), err.decode()

    rc, out, err = await cli("add", "sched/cli", "-p", "n=1", "--weekly", "fri", "17:00", "--json")
    assert rc == 0, err
    created = json.loads(out)
    assert created["weekly"] == {"weekday": "fri", "hour": 17, "minute": 0} and created["properties"] == {"n": 1}
    rc, out, _ = await cli("list")
    assert rc == 0 and created["id"] in out and "weekly fri 17:00 UTC" in out
    rc, out, _ = await cli("suspend", created["id"])
    assert rc == 0 and "suspended" in out
    rc, out, _ = await cli("resume", created["id"], "--json")
    assert rc == 0 and json.loads(out)["suspended"] is False
    rc, out, _ = await cli("remove", created["id"])
    assert rc == 0 and out.startswith("removed ")
    rc, _, err = await cli("remove", created["id"])
    assert rc == 1 and "HTTP 404" in err and err.count("\n") == 1
    rc, _, err = await cli("add", "sched/cli", "--cron", "61 * * * *")
    assert rc == 1 and "HTTP 400" in err
    rc, out, err = await cli("add", "sched/cli", "--daily", "06:00", "--tz", "Europe/Amsterdam")
    assert rc == 0 and "daily 06:00 Europe/Amsterdam" in out, err
    rc, _, err = await cli("add", "sched/cli", "--daily", "06:00", "--tz", "Europe/Amsterdm")
    assert rc == 1 and "unknown time zone" in err


async def test_a_schedule_in_a_zone_over_http_and_python(http_node):
    node, http = http_node
    s = await node.schedules.add("sched/tz", cron="0 6 * * *", tz="Europe/Amsterdam")
    assert s["tz"] == "Europe/Amsterdam" and s["next_fire"].endswith(("04:00:00.000Z", "05:00:00.000Z"))
    async with http.post("/api/v1/schedules", json={"topic": "sched/tz", "cron": "0 6 * * *",
                                                    "tz": "Europe/Amsterdam"}) as r:
        assert r.status == 200 and (await r.json())["id"] == s["id"]  # identical: the same schedule
    async with http.post("/api/v1/schedules", json={"topic": "sched/tz", "cron": "0 6 * * *", "tz": "Nowhere"}) as r:
        assert r.status == 400 and "unknown time zone" in (await r.json())["error"]
