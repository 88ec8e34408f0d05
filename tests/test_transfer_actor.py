"""The transfer and offloader actors with two or three real nodes in one process (real
ZeroMQ sockets on loopback, real SQLite files): stop reaching the target, a failed
remote run going through the origin's retry decision, balancing by capacity, workflow
local steps staying home, remote submission, and garbage on the ROUTER."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

import jobmesh
from jobmesh.config import NodeConfig
from jobmesh.job import JobState
from jobmesh.transport import Dealer

from helpers import free_port_pair

pytestmark = pytest.mark.timeout(60)


class Mesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes: list[jobmesh.Node] = []

    async def node(self, name: str, consumers: list[Any] = (), capacity: int = 4,
                   seeds: list[jobmesh.Node] = (), queues: list[Any] | None = None) -> jobmesh.Node:
        cfg = NodeConfig()
        if queues is not None:
            cfg.queues = list(queues)
        cfg.name, cfg.data, cfg.http, cfg.capacity = name, str(self.tmp / name), None, capacity
        cfg.bind = f"tcp://127.0.0.1:{free_port_pair()}"
        cfg.seeds = [s.config.bind for s in seeds]
        cfg.discovery.heartbeat_interval = 0.1
        cfg.discovery.heartbeat_timeout = 0.6
        node = jobmesh.Node(config=cfg)
        for c in consumers:
            node.add_consumer(c)
        await node.start()
        self.nodes.append(node)
        return node

    async def joined(self, *nodes: jobmesh.Node, timeout: float = 10.0) -> None:
        names = sorted(n.name for n in nodes)
        await until(lambda: all(sorted(n.topology.names) == names and n.topology.current for n in nodes), timeout)


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        for n in reversed(m.nodes):
            await n.stop(grace=1.0)


async def test_stop_reaches_the_target_and_the_origin_records_stopped(mesh: Mesh) -> None:
    saw_stop = asyncio.Event()

    @jobmesh.consumer("tr/long")
    async def long(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
        for _ in range(200):
            if ctx.is_stopped():
                saw_stop.set()
                return ctx.result().cancelled()
            await asyncio.sleep(0.02)
        return None

    a = await mesh.node("a")
    b = await mesh.node("b", [long], seeds=[a])
    await mesh.joined(a, b)
    job = await a.jobs.add("tr/long")
    await until(lambda: a.engine.snapshot(job.id) is not None)
    j = await a.jobs.get(job.id)
    assert j.state is JobState.ACTIVE and j.target == "b"
    await a.jobs.stop(job.id)
    await asyncio.wait_for(saw_stop.wait(), 5)
    done = await a.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.STOPPED and done.target == "b"
    await until(lambda: b.transfer.foreign_copies() == 0)


async def test_a_failed_remote_run_is_retried_by_the_origin(mesh: Mesh) -> None:
    runs: list[int] = []

    @jobmesh.consumer("tr/flaky")
    async def flaky(job: jobmesh.Job) -> Any:
        runs.append(job.retry_count)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return None

    a = await mesh.node("a")
    b = await mesh.node("b", [flaky], seeds=[a])
    await mesh.joined(a, b)
    job = await a.jobs.add("tr/flaky", {"retry_delay": 0})
    done = await a.jobs.wait(job.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.retry_count == 1
    assert runs == [0, 1]  # the target ran it once per handoff; the origin decided the retry
    assert any("RuntimeError: first run fails" in line for line in done.progress.log)  # the traceback came back
    stats = await a.jobs.statistics()
    assert stats["overall"]["failed"] == 1 and stats["overall"]["finished"] == 1


async def test_a_busy_small_node_moves_work_to_bigger_idle_ones(mesh: Mesh) -> None:
    where: dict[str, str] = {}

    def make(name: str) -> Any:
        @jobmesh.consumer("tr/work")
        async def work(job: jobmesh.Job) -> None:
            where[job.id] = name
            await asyncio.sleep(0.1)
        return work

    a = await mesh.node("a", [make("a")], capacity=1)
    b = await mesh.node("b", [make("b")], capacity=4, seeds=[a])
    c = await mesh.node("c", [make("c")], capacity=4, seeds=[a])
    await mesh.joined(a, b, c)
    await asyncio.sleep(0.5)  # capacities advertised
    t0 = time.monotonic()
    jobs = await a.jobs.add_many([("tr/work", {"i": i}) for i in range(45)])
    done = [await a.jobs.wait(j.id, timeout=20) for j in jobs]
    makespan = time.monotonic() - t0
    assert {d.state for d in done} == {JobState.SUCCEEDED}
    assert set(where.values()) == {"a", "b", "c"}
    assert makespan < 45 * 0.1 / 2  # far from the 4.5 s it takes at a alone
    assert a.offloader.moves_out == sum(1 for n in where.values() if n != "a")
    # a job marked as a workflow's local step never leaves its node
    local = await a.jobs.add_many([("tr/work", {"jobmesh:local": True}) for _ in range(8)])
    for j in local:
        await a.jobs.wait(j.id, timeout=20)
        assert where[j.id] == "a"


async def test_remote_submission_makes_the_receiver_the_origin(mesh: Mesh) -> None:
    @jobmesh.consumer("tr/sub")
    async def sub(job: jobmesh.Job) -> None:
        return None

    a = await mesh.node("a")
    b = await mesh.node("b", [sub], seeds=[a])
    await mesh.joined(a, b)
    job_id = await a.transfer.submit("b", "tr/sub", {"k": 1}, timeout=5)
    done = await b.jobs.wait(job_id, timeout=5)
    assert done.origin == "b" and done.state is JobState.SUCCEEDED and done.properties == {"k": 1}
    with pytest.raises(jobmesh.errors.Conflict):
        await a.transfer.submit("b", "not a valid//topic", {}, timeout=5)


async def test_garbage_on_the_router_changes_nothing(mesh: Mesh) -> None:
    @jobmesh.consumer("tr/ok")
    async def ok(job: jobmesh.Job) -> None:
        return None

    a = await mesh.node("a")
    b = await mesh.node("b", [ok], seeds=[a])
    await mesh.joined(a, b)
    d = Dealer(b.discovery.transport, b.config.bind)
    try:
        await d.send("handoff", {"from": "a", "items": [{"id": "x"}]})  # malformed item
        await d.send("result", {"from": "a", "items": "nope"})
        await d.send("handoff", {"items": []})  # no sender
        await d.send("result_ack", {"from": "ghost", "items": [{"id": "x", "attempt": 1}]})
        await until(lambda: b.transfer.received >= 3, timeout=5)  # (no linger: let them leave first)
    finally:
        d.close()
    job = await a.jobs.add("tr/ok")
    done = await a.jobs.wait(job.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.target == "b"
    assert b.transfer.received >= 3


async def test_a_job_nobody_can_run_waits_until_a_capable_node_joins(mesh: Mesh) -> None:
    @jobmesh.consumer("tr/late")
    async def late(job: jobmesh.Job) -> None:
        return None

    a = await mesh.node("a")
    b = await mesh.node("b", seeds=[a])
    await mesh.joined(a, b)
    job = await a.jobs.add("tr/late")
    await asyncio.sleep(0.5)
    assert (await a.jobs.get(job.id)).state is JobState.QUEUED
    c = await mesh.node("c", [late], seeds=[a])
    await mesh.joined(a, b, c)
    done = await a.jobs.wait(job.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.target == "c"


async def test_a_balanced_topology_moves_nothing_and_settings_stay_local(mesh: Mesh) -> None:
    ran: dict[str, str] = {}

    def make(name: str) -> Any:
        @jobmesh.consumer("tr/even")
        async def even(job: jobmesh.Job) -> None:
            ran[job.id] = name
            await asyncio.sleep(0.05)
        return even

    a = await mesh.node("a", [make("a")], capacity=4)
    b = await mesh.node("b", [make("b")], capacity=4, seeds=[a])
    await mesh.joined(a, b)
    await asyncio.sleep(0.3)
    ja = await a.jobs.add_many([("tr/even", None)] * 4)
    jb = await b.jobs.add_many([("tr/even", None)] * 4)
    for j in ja:
        await a.jobs.wait(j.id, timeout=10)
    for j in jb:
        await b.jobs.wait(j.id, timeout=10)
    assert all(ran[j.id] == "a" for j in ja) and all(ran[j.id] == "b" for j in jb)
    assert a.offloader.moves_out == 0 and b.offloader.moves_out == 0
    # exclusive on b for another topic: tr/even no longer runs there, a's heartbeat view shows it
    await a.set_offloading("b", "tr/other", "exclusive")
    await until(lambda: a.topology.instance("b").offload_topics == ("tr/other",), timeout=5)
    jobs = await b.jobs.add_many([("tr/even", None)] * 3)
    for j in jobs:
        done = await b.jobs.wait(j.id, timeout=10)
        assert done.target == "a" and ran[j.id] == "a"
    assert (Path(b.config.data) / "offloading.json").exists()
    with pytest.raises(jobmesh.errors.ValidationError):
        await b.set_offloading("b", "tr/even", "sometimes")


async def test_an_ordered_queue_moves_whole_and_keeps_its_order(mesh: Mesh) -> None:
    order: list[int] = []

    @jobmesh.consumer("tr/seq")
    async def seq(job: jobmesh.Job) -> None:
        order.append(job.properties["n"])
        await asyncio.sleep(0.01)

    # a has no consumer: the whole queue goes to one capable node
    queues = [jobmesh.QueueConfig(name="ord", topics=["tr/seq"], type="ordered")]
    a = await mesh.node("a", queues=queues)
    b = await mesh.node("b", [seq], seeds=[a], queues=queues)
    c = await mesh.node("c", [seq], seeds=[a], queues=queues)
    await mesh.joined(a, b, c)
    jobs = await a.jobs.add_many([("tr/seq", {"n": i}) for i in range(30)])
    done = [await a.jobs.wait(j.id, timeout=20) for j in jobs]
    assert len({d.target for d in done}) == 1  # never split across nodes
    assert order == list(range(30))


async def test_progress_of_a_sync_consumer_at_the_target_reaches_the_origin(mesh: Mesh) -> None:
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    @jobmesh.consumer("tr/sync")
    def sync(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> None:  # runs in a thread at b
        ctx.init_progress(steps=2)
        ctx.log("half way")
        ctx.increment_progress()
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
        ctx.increment_progress()

    a = await mesh.node("a")
    b = await mesh.node("b", [sync], seeds=[a])
    await mesh.joined(a, b)
    job = await a.jobs.add("tr/sync")

    async def seen() -> jobmesh.Job:
        return await a.jobs.get(job.id)

    deadline = time.monotonic() + 10
    while True:
        j = await seen()
        if j.state is JobState.ACTIVE and j.progress.log == ["half way"] and j.progress.step == 1:
            break
        assert time.monotonic() < deadline, f"no live progress at the origin: {j.state} {j.progress}"
        await asyncio.sleep(0.02)
    assert j.target == "b" and j.progress.steps == 2
    gate.set()
    done = await a.jobs.wait(job.id, timeout=10)
    assert done.state is JobState.SUCCEEDED and done.progress.step == 2 and done.progress.log == ["half way"]


async def test_the_origins_row_of_an_offloaded_job_is_its_record(mesh: Mesh) -> None:
    """The origin writes a remote start and an OK result narrow (only the columns they change):
    the row it keeps must still read back as the whole record, with or without a start message."""

    @jobmesh.consumer("tr/answer")
    async def answer(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
        ctx.log("ran at the target")
        await asyncio.sleep(0.05)  # its start message reaches the origin before its result
        return {"answer": job.properties["n"]}

    a = await mesh.node("a")
    b = await mesh.node("b", [answer], seeds=[a])
    await mesh.joined(a, b)
    added = [await a.jobs.add("tr/answer", {"n": i}) for i in range(5)]
    done = [await a.jobs.wait(j.id, timeout=10) for j in added]
    for j in done:
        assert j.state is JobState.SUCCEEDED and j.target == "b" and j.result == {"answer": j.properties["n"]}
        row = a.store.get(j.id)
        assert row is not None
        assert (row.state, row.target, row.attempt, row.started, row.finished, row.result, row.result_message,
                row.retry_count, row.progress.log) == \
            (j.state, j.target, j.attempt, j.started, j.finished, j.result, j.result_message, j.retry_count,
             j.progress.log)
        assert row.started is not None and row.finished is not None and "ran at the target" in row.progress.log[-1]


async def test_a_copys_result_committed_as_the_engine_actor_crashed_still_reaches_its_origin(mesh: Mesh) -> None:
    """The engine actor crashes (and is restarted) right as a copy's result is durable: the
    commit's ``then``, which hands the result to the transfer actor, is lost with it. The restart
    hands every result the store holds to the transfer again, so the origin gets it now, not at the
    target's next process start."""

    @jobmesh.consumer("tr/quick")
    async def quick(job: jobmesh.Job) -> Any:
        return {"ran": True}

    a = await mesh.node("a")
    b = await mesh.node("b", [quick], seeds=[a])
    await mesh.joined(a, b)
    engine, crashed = b.engine, []
    real_after = engine._after

    def after(c: Any, error: str | None) -> None:
        if c.outbox and error is None and not crashed:
            crashed.append(True)
            engine._crash = RuntimeError("planted: crashed as a copy's result committed")
            engine._wakeup.set()
            return  # the result never reaches the transfer actor from here
        real_after(c, error)

    engine._after = after  # type: ignore[method-assign]
    job = await a.jobs.add("tr/quick")
    done = await a.jobs.wait(job.id, timeout=10)
    assert crashed == [True]
    assert done.state is JobState.SUCCEEDED and done.target == "b" and done.result == {"ran": True}
    await until(lambda: b.transfer.foreign_copies() == 0)
