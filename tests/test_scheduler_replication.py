"""Scheduler actors replicating through heartbeat properties, with a fake clock.

Several ``SchedulerActor``s run in one process with real SQLite files. What discovery
would carry (each node's published ``schedules`` property, the leader) is played by
``Mesh``, so leader changes, lost leaders and late joiners are exact and instant;
ticks are driven by hand with a fake clock. The real-Node and multi-process tests
live in ``test_scheduler_node.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import serve_app

from jobmesh.actor import ActorSystem
from jobmesh.config import NodeConfig
from jobmesh.discovery.view import InstanceView, TopologyView
from jobmesh.errors import NotFound, ValidationError
from jobmesh.job import iso, parse_iso
from jobmesh.scheduler.actor import _TICK, PROPERTY, SchedulerActor


class FakeClock:
    def __init__(self, start: str) -> None:
        self.now = parse_iso(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class AddedJob:
    id: str
    topic: str
    properties: dict[str, Any]


class JobSink:
    """Where fired jobs land (the engine's JobManager is covered in test_scheduler_node)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.added: list[AddedJob] = []

    async def add(self, topic: str, properties: dict[str, Any] | None = None) -> AddedJob:
        job = AddedJob(f"{self.node}-{len(self.added)}", topic, dict(properties or {}))
        self.added.append(job)
        return job

    async def add_many(self, items: list[tuple[str, dict[str, Any] | None]]) -> list[AddedJob]:
        return [await self.add(t, p) for t, p in items]


@dataclass
class Member:
    name: str
    config: NodeConfig
    mesh: "Mesh"
    jobs: JobSink
    properties: dict[str, Any] = field(default_factory=dict)
    http_url: str | None = None
    schedules: SchedulerActor | None = None

    @property
    def topology(self) -> TopologyView:
        return self.mesh.view(self.name)

    def set_property(self, key: str, value: Any) -> None:
        self.properties[key] = value

    def add_topology_listener(self, cb: Any) -> None:
        self.mesh.listeners.append(cb)


class Mesh:
    """The members that see each other, oldest first; the oldest live one leads."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.listeners: list[Any] = []

    def view(self, local: str) -> TopologyView:
        insts = tuple(
            InstanceView(name=m.name, incarnation=i, properties=dict(m.properties),
                         leader=(i == 0), local=(m.name == local))
            for i, m in enumerate(self.members)
        )
        leader = self.members[0].name if self.members else local
        return TopologyView(local=local, leader=leader, instances=insts)


@pytest.fixture
async def cluster(tmp_path: Path):
    systems: list[ActorSystem] = []
    mesh = Mesh()
    clock = FakeClock("2026-01-01T00:00:00.5Z")

    async def start(name: str, join: bool = True) -> Member:
        cfg = NodeConfig(name=name, data=str(tmp_path / name))
        m = Member(name, cfg, mesh, JobSink(name))
        actor = SchedulerActor(m, clock=clock, max_sleep=3600.0, settle=0.0)
        system = ActorSystem()
        await system.start(actor)
        systems.append(system)
        m.schedules = actor
        if join:
            mesh.members.append(m)
        return m

    async def stop(m: Member) -> None:
        for s in systems:
            if m.schedules in s.actors:
                await s.stop_all()
        if m in mesh.members:
            mesh.members.remove(m)

    yield mesh, clock, start, stop
    for s in systems:
        await s.stop_all()


async def tick(*members: Member) -> None:
    for m in members:
        assert m.schedules is not None
        await m.schedules.ask(_TICK)


def scheduled_times(m: Member) -> list[str]:
    return [j.properties["scheduled_time"] for j in m.jobs.added]


async def test_single_leader_fires_each_slot_once_with_schedule_properties(cluster):
    mesh, clock, start, _ = cluster
    a = await start("a")
    s = await a.schedules.add("report/daily", {"kind": "full"}, every=1)
    for _ in range(9):  # 00:00:00.5 -> 00:00:02.75
        clock.advance(0.25)
        await tick(a)
    assert scheduled_times(a) == [f"2026-01-01T00:00:0{i}.000Z" for i in (1, 2)]
    job = a.jobs.added[0]
    assert job.topic == "report/daily"
    assert job.properties == {"kind": "full", "schedule_id": s["id"], "scheduled_time": "2026-01-01T00:00:01.000Z"}
    listed = await a.schedules.get(s["id"])
    assert listed["last_fired"] == "2026-01-01T00:00:02.000Z"
    assert listed["next_fire"] == "2026-01-01T00:00:03.000Z"


async def test_identical_add_returns_the_existing_schedule(cluster):
    _, clock, start, _ = cluster
    a = await start("a")
    first, new1 = await a.schedules.create({"topic": "t/x", "properties": {"a": 1}, "cron": "*/5 * * * *"})
    clock.advance(1)
    again, new2 = await a.schedules.create({"properties": {"a": 1}, "cron": "*/5  * * * *", "topic": "t/x"})
    assert new1 and not new2 and again["id"] == first["id"] and again["created"] == first["created"]
    assert len(await a.schedules.list()) == 1
    with pytest.raises(ValidationError):
        await a.schedules.create({"topic": "t/x", "cron": "nope"})
    with pytest.raises(NotFound):
        await a.schedules.get("0000000000000000")
    with pytest.raises(NotFound):
        await a.schedules.remove("0000000000000000")


async def test_only_the_leader_fires_and_definitions_reach_every_member(cluster):
    mesh, clock, start, _ = cluster
    a, b, c = await start("a"), await start("b"), await start("c")
    s = await b.schedules.add("t/replicated", every=1)  # added on a follower
    await tick(a, b, c)  # heartbeat properties carry the definition to a and c
    assert [x["id"] for x in await a.schedules.list()] == [s["id"]]
    assert [x["id"] for x in await c.schedules.list()] == [s["id"]]
    for _ in range(6):
        clock.advance(0.5)
        await tick(a, b, c)
    assert len(a.jobs.added) == 3 and b.jobs.added == [] and c.jobs.added == []


async def test_new_leader_neither_double_fires_nor_bursts(cluster):
    mesh, clock, start, stop = cluster
    a, b, c = await start("a"), await start("b"), await start("c")
    await a.schedules.add("t/minutely", cron="* * * * *")
    await tick(a, b, c)
    clock.now = parse_iso("2026-01-01T00:01:00.2Z")
    await tick(a)  # a fires 00:01 ...
    await tick(b, c)  # ... and b, c learn it from a's heartbeat property
    assert scheduled_times(a) == ["2026-01-01T00:01:00.000Z"]
    await stop(a)  # the leader dies; b is the oldest now
    clock.now = parse_iso("2026-01-01T00:01:05Z")
    await tick(b, c)
    assert b.jobs.added == [] and c.jobs.added == []  # 00:01 was fired by a: no double fire
    # nobody leads for five minutes (e.g. b was paused): one fire, not five
    clock.now = parse_iso("2026-01-01T00:06:30Z")
    await tick(b, c)
    assert scheduled_times(b) == ["2026-01-01T00:06:00.000Z"] and c.jobs.added == []
    clock.now = parse_iso("2026-01-01T00:07:00Z")
    await tick(b, c)
    assert scheduled_times(b)[-1] == "2026-01-01T00:07:00.000Z" and len(b.jobs.added) == 2


async def test_removal_and_suspension_replicate_and_win_over_older_versions(cluster):
    mesh, clock, start, _ = cluster
    a, b = await start("a"), await start("b")
    s = await a.schedules.add("t/s", every=10)
    await tick(a, b)
    clock.advance(1)
    await b.schedules.suspend(s["id"])
    await tick(a, b)
    assert (await a.schedules.get(s["id"]))["suspended"] is True
    clock.now = parse_iso("2026-01-01T00:01:00.5Z")
    await tick(a, b)
    assert a.jobs.added == []  # suspended everywhere: the leader does not fire it
    clock.advance(1)
    await a.schedules.remove(s["id"])
    await tick(a, b)
    assert await b.schedules.list() == []
    with pytest.raises(NotFound):
        await b.schedules.resume(s["id"])


async def test_at_fires_once_and_removes_itself_everywhere(cluster):
    mesh, clock, start, _ = cluster
    a, b = await start("a"), await start("b")
    s = await a.schedules.add("t/once", {"n": 1}, at="2026-01-01T00:00:03Z")
    await tick(a, b)
    for _ in range(10):
        clock.advance(1)
        await tick(a, b)
    assert [j.properties["scheduled_time"] for j in a.jobs.added] == ["2026-01-01T00:00:03.000Z"]
    assert await a.schedules.list() == [] and await b.schedules.list() == []
    with pytest.raises(NotFound):
        await a.schedules.get(s["id"])


async def test_state_survives_a_restart(cluster, tmp_path):
    mesh, clock, start, stop = cluster
    a = await start("a")
    s = await a.schedules.add("t/durable", every=1)
    sus = await a.schedules.add("t/suspended", every=1)
    await a.schedules.suspend(sus["id"])
    clock.advance(1)
    await tick(a)
    assert len(a.jobs.added) == 1
    await stop(a)
    a2 = await start("a")  # same data dir
    listed = {x["id"]: x for x in await a2.schedules.list()}
    assert set(listed) == {s["id"], sus["id"]}
    assert listed[sus["id"]]["suspended"] is True
    assert listed[s["id"]]["last_fired"] == "2026-01-01T00:00:01.000Z"
    await tick(a2)
    assert a2.jobs.added == []  # the slot fired before the restart does not fire again
    clock.advance(1)
    await tick(a2)
    assert scheduled_times(a2) == ["2026-01-01T00:00:02.000Z"]
    assert (Path(a2.config.data) / "schedules.sqlite").exists()


async def test_late_joiner_learns_definitions_and_fired_slots(cluster):
    mesh, clock, start, stop = cluster
    a = await start("a")
    await a.schedules.add("t/late", every=2)
    clock.advance(2)
    await tick(a)
    b = await start("b")
    await tick(b)
    [listed] = await b.schedules.list()
    assert listed["last_fired"] == "2026-01-01T00:00:02.000Z"
    await stop(a)
    clock.advance(0.5)
    await tick(b)
    assert b.jobs.added == []


async def test_large_definitions_are_pulled_over_http(cluster, tmp_path):
    """Beyond the inline limit the property carries only a digest and the peer's URL."""
    from aiohttp import web

    from jobmesh.http.keys import NODE
    from jobmesh.http.schedules import add_routes

    mesh, clock, start, _ = cluster
    a, b = await start("a"), await start("b")
    a.schedules.inline_limit = 10  # force the pull path
    app = web.Application()
    app[NODE] = a
    add_routes(app, a)
    async with serve_app(app) as url:
        a.http_url = url
        s = await a.schedules.add("t/pulled", {"big": "x" * 100}, every=5)
        assert a.properties[PROPERTY]["records"] is None and a.properties[PROPERTY]["url"] == a.http_url
        for _ in range(50):
            await tick(b)
            if await b.schedules.list():
                break
            await asyncio.sleep(0.02)
        assert [x["id"] for x in await b.schedules.list()] == [s["id"]]


async def test_junk_in_peer_properties_is_ignored(cluster):
    mesh, clock, start, _ = cluster
    a, b = await start("a"), await start("b")
    b.properties[PROPERTY] = {"digest": "x", "fired": {"id": "soon"}, "records": [{"spec": 3}, "junk"]}
    await tick(a)
    assert await a.schedules.list() == []
    b.properties[PROPERTY] = "not even a dict"
    await tick(a)
    assert a.schedules.alive


async def test_a_state_that_cannot_be_used_is_not_pulled_again_and_again(cluster):
    from aiohttp import web

    mesh, clock, start, _ = cluster
    a, b = await start("a"), await start("b")
    hits = []

    async def records(request: web.Request) -> web.Response:
        hits.append(request.query.get("records"))
        return web.json_response({"records": [{"spec": "from a newer version we cannot read"}]})

    app = web.Application()
    app.router.add_get("/api/v1/schedules", records)
    async with serve_app(app) as url:
        b.properties[PROPERTY] = {"digest": "other", "fired": {}, "records": None, "url": url}
        for _ in range(10):
            await tick(a)
            await asyncio.sleep(0.02)
        assert hits == ["1"]  # one pull; the unusable answer is not fetched again at once
        assert await a.schedules.list() == [] and a.schedules.alive
