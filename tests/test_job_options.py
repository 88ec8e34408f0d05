"""Per-job options of issue 12 through node.jobs and HTTP: delay/at, key, timeout, priority.

A delayed job is QUEUED with ``not_before`` and starts no earlier (nor much later); a ``key``
equal to an open job's returns that job (HTTP 200 instead of 201); the options survive a
restart; add_many takes them per item and for all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

import jobmesh
from jobmesh.errors import ValidationError
from jobmesh.job_options import JobRequest

started_at: dict[str, float] = {}


@jobmesh.consumer("opt/**")
async def record(job: jobmesh.Job) -> None:
    started_at[job.id] = time.time()


@jobmesh.consumer("hold/**")
async def hold(job: jobmesh.Job) -> None:
    await asyncio.sleep(30)


async def test_delay_and_at_wait_queued_then_start_on_time(node_factory) -> None:
    node = await node_factory([record])
    t0 = time.time()
    delayed = await node.jobs.add("opt/delay", {"n": 1}, delay=0.6)
    at = await node.jobs.add("opt/at", at=jobmesh_iso(t0 + 0.4))
    now = await node.jobs.add("opt/now")
    assert delayed.state is jobmesh.JobState.QUEUED and abs(delayed.not_before - (t0 + 0.6)) < 0.2
    assert delayed.to_json()["not_before"] is not None and now.to_json()["not_before"] is None
    await node.jobs.wait(now.id, timeout=5)
    assert (await node.jobs.get(delayed.id)).state is jobmesh.JobState.QUEUED
    for job, due in ((at, t0 + 0.4), (delayed, t0 + 0.6)):
        done = await node.jobs.wait(job.id, timeout=5)
        assert done.state is jobmesh.JobState.SUCCEEDED
        assert due - 0.01 <= started_at[job.id] <= due + 0.5, (started_at[job.id] - due)
    assert started_at[now.id] < started_at[at.id] < started_at[delayed.id]


def jobmesh_iso(ts: float) -> str:
    from jobmesh.job import iso
    return iso(ts)  # type: ignore[return-value]


async def test_a_delayed_job_survives_a_restart(node_factory, tmp_path: Path) -> None:
    node = await node_factory([record], name="r")
    job = await node.jobs.add("opt/later", delay=1.5, key="once", timeout=9, priority=3)
    await node.stop()
    node2 = await node_factory([record], name="r", data=tmp_path / "r")
    again = await node2.jobs.get(job.id)
    assert again.state is jobmesh.JobState.QUEUED and abs(again.not_before - job.not_before) < 1e-6
    assert (again.key, again.timeout, again.priority) == ("once", 9.0, 3)
    done = await node2.jobs.wait(job.id, timeout=10)
    assert done.state is jobmesh.JobState.SUCCEEDED and started_at[job.id] >= job.not_before - 0.01


async def test_key_returns_the_open_job_until_it_is_final(node_factory) -> None:
    node = await node_factory([record, hold])
    a, b = await asyncio.gather(node.jobs.add("hold/x", {"n": 1}, key="k1"), node.jobs.add("hold/x", {"n": 2}, key="k1"))
    assert a.id == b.id and b.properties == {"n": 1}  # concurrent adds: one job
    c = await node.jobs.add("hold/x", key="k1")
    assert c.id == a.id
    other = await node.jobs.add("hold/x", key="k2")
    assert other.id != a.id
    pairs = await node.jobs.submit([JobRequest("hold/x", None, key="k3"), JobRequest("hold/x", None, key="k3"),
                                    JobRequest("hold/x", None, key="k1")])
    assert [created for _, created in pairs] == [True, False, False]
    assert pairs[0][0].id == pairs[1][0].id and pairs[2][0].id == a.id
    await node.jobs.stop(a.id)
    await node.jobs.wait(a.id, timeout=10)
    fresh = await node.jobs.add("hold/x", key="k1")  # the keyed job is final: a new one
    assert fresh.id != a.id


async def test_add_many_options_per_item_and_for_all(node_factory) -> None:
    node = await node_factory([record])
    jobs = await node.jobs.add_many([("opt/a", None), {"topic": "opt/b", "priority": 5, "delay": 30}], delay=20,
                                    priority=1, timeout=4)
    assert [(j.priority, j.timeout) for j in jobs] == [(1, 4.0), (5, 4.0)]
    assert jobs[1].not_before - jobs[0].not_before == pytest.approx(10, abs=0.5)
    with pytest.raises(ValidationError, match="item 1: delay must be between 0"):
        await node.jobs.add_many([("opt/a", None), {"topic": "opt/a", "delay": -1}])
    with pytest.raises(ValidationError, match="give delay or at, not both"):
        await node.jobs.add("opt/a", delay=1, at="2031-01-01T00:00:00Z")
    with pytest.raises(ValidationError, match="unknown field"):
        await node.jobs.add_many([{"topic": "opt/a", "eta": 3}])


async def test_http_options_key_200_and_long_poll(node_factory) -> None:
    node = await node_factory([record, hold], http="127.0.0.1:0")
    async with aiohttp.ClientSession(node.http_url) as http:
        body = {"topic": "hold/h", "properties": {"a": 1}, "key": "order-7", "timeout": 30, "priority": 2,
                "delay": 0}
        async with http.post("/api/v1/jobs", json=body) as r:
            assert r.status == 201
            first = await r.json()
        assert (first["key"], first["timeout"], first["priority"], first["result"]) == ("order-7", 30.0, 2, None)
        async with http.post("/api/v1/jobs", json=body) as r:
            assert r.status == 200 and (await r.json())["id"] == first["id"]
        async with http.post("/api/v1/jobs", json=[body, {"topic": "opt/x", "at": "2031-12-01T09:00:00Z"}]) as r:
            assert r.status == 201
            listed = await r.json()
        assert listed[0]["id"] == first["id"] and listed[1]["not_before"] == "2031-12-01T09:00:00.000Z"
        quick = (await node.jobs.add("opt/q")).id
        t0 = time.monotonic()
        async with http.get(f"/api/v1/jobs/{quick}", params={"wait": "5"}) as r:
            assert (await r.json())["state"] == "SUCCEEDED" and time.monotonic() - t0 < 4
        t0 = time.monotonic()
        async with http.get(f"/api/v1/jobs/{first['id']}", params={"wait": "0.3"}) as r:
            assert (await r.json())["state"] in ("QUEUED", "ACTIVE") and time.monotonic() - t0 >= 0.25


order: list[int] = []


@jobmesh.consumer("prio/**")
async def note(job: jobmesh.Job) -> None:
    order.append(job.properties["n"])


async def test_priority_within_a_queue_higher_first_and_an_ordered_queue_keeps_order(node_factory) -> None:
    node = await node_factory([note], capacity=1, queues=[
        jobmesh.QueueConfig(name="main", max_parallel=1),
        jobmesh.QueueConfig(name="line", topics=["prio/ordered"], type="ordered")])
    await node.jobs.suspend_queue("main")
    await node.jobs.suspend_queue("line")
    await node.jobs.add_many([("prio/x", {"n": 1}), ("prio/x", {"n": 2})])
    await node.jobs.add("prio/x", {"n": 3}, priority=5)
    await node.jobs.add("prio/x", {"n": 4}, priority=-5)
    await node.jobs.add("prio/x", {"n": 5}, priority=5)
    await node.jobs.resume_queue("main")
    await node.jobs.join(timeout=10)
    assert order == [3, 5, 1, 2, 4]
    order.clear()
    await node.jobs.add("prio/ordered", {"n": 1})
    await node.jobs.add("prio/ordered", {"n": 2}, priority=9)
    await node.jobs.resume_queue("line")
    await node.jobs.join(timeout=10)
    assert order == [1, 2]
