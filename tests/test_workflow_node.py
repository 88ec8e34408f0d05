"""Workflows on a real in-process Node: real store, queues, consumer pool, events, SQLite files."""

from __future__ import annotations

import asyncio
import types

import pytest

import jobmesh
from jobmesh.config import QueueConfig
from jobmesh.errors import Conflict, NotFound, ValidationError
from jobmesh.workflow import LOCAL_PROPERTY, WORKFLOW_PROPERTY, Step, Workflow, WorkflowState
from jobmesh.workflow.core import StepRecord, WorkflowInstance
from jobmesh.workflow.store import WorkflowStore


@jobmesh.consumer("wf/measure")
async def measure(job, ctx):
    return ctx.result().message("measured").output(size=len(job.properties["text"])).succeeded()


@jobmesh.consumer("wf/double")
def double(job, ctx):  # a sync consumer, run in a thread: output through ctx.output
    ctx.output["double"] = job.properties["size"] * 2


@jobmesh.consumer("wf/record")
async def record(job):
    # a consumer without a context: no output, the data still flows to the next step
    assert job.properties["double"] == job.properties["size"] * 2
    return None


@jobmesh.consumer("wf/broken")
async def broken(job):
    raise RuntimeError(f"cannot process {job.properties.get('text')}")


GATE: dict[str, asyncio.Event] = {}


@jobmesh.consumer("wf/slow")
async def slow(job, ctx):
    gate = GATE.setdefault("slow", asyncio.Event())
    for _ in range(3000):
        if gate.is_set() or ctx.is_stopped():
            break
        await asyncio.sleep(0.01)
    if ctx.is_stopped():
        return ctx.result().cancelled()
    return ctx.result().output(slow="done").succeeded()


TEXT_FLOW = Workflow("text", [Step("wf/measure"), Step("wf/double"), Step("wf/record", offloadable=False)],
                     description="measure, double, record")
CONSUMERS = [measure, double, record, broken, slow]


@pytest.fixture(autouse=True)
def _fresh_gate():
    GATE.clear()
    yield
    GATE.clear()


async def test_steps_run_in_order_and_outputs_merge(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define(TEXT_FLOW)
    inst = await node.workflows.start("text", {"text": "hello"})
    assert inst.state is WorkflowState.RUNNING and inst.history[0].job_id is not None
    done = await node.workflows.wait(inst.id, timeout=10)
    assert done.state is WorkflowState.COMPLETED, done.reason
    assert done.data == {"text": "hello", "size": 5, "double": 10}
    assert [h.state for h in done.history] == ["SUCCEEDED"] * 3
    assert done.history[0].output == {"size": 5} and done.history[0].result_message == "measured"
    assert done.history[1].output == {"double": 10}
    jobs = [await node.jobs.get(h.job_id) for h in done.history]
    assert [j.topic for j in jobs] == ["wf/measure", "wf/double", "wf/record"]
    assert jobs[0].output == {"size": 5}  # stored with the job's result too
    assert all(j.properties[WORKFLOW_PROPERTY]["id"] == inst.id for j in jobs)
    assert [j.properties[WORKFLOW_PROPERTY]["step"] for j in jobs] == [0, 1, 2]
    assert LOCAL_PROPERTY not in jobs[0].properties and jobs[2].properties[LOCAL_PROPERTY] is True
    assert jobs[1].properties["size"] == 5  # the previous output is the next input
    listed = await node.workflows.list()
    assert [i.id for i in listed] == [inst.id]
    assert (await node.workflows.list(state="completed"))[0].id == inst.id
    assert await node.workflows.list(state="RUNNING") == []
    assert (await node.workflows.get(inst.id)).to_json()["state"] == "COMPLETED"


async def test_many_instances_run_side_by_side(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define(TEXT_FLOW)
    insts = [await node.workflows.start("text", {"text": "x" * i}) for i in range(1, 21)]
    done = await asyncio.gather(*(node.workflows.wait(i.id, timeout=20) for i in insts))
    assert [d.data["double"] for d in done] == [2 * i for i in range(1, 21)]
    assert len(await node.workflows.list(limit=5)) == 5


async def test_failing_step_fails_the_workflow_after_its_retries(node_factory):
    queues = [QueueConfig(name="fragile", topics=["wf/broken"], retries=2, retry_delay=0.01)]
    node = await node_factory(CONSUMERS, queues=queues)
    node.workflows.define("breaks", [Step("wf/measure"), Step("wf/broken"), Step("wf/record")])
    inst = await node.workflows.start("breaks", {"text": "abc"})
    done = await node.workflows.wait(inst.id, timeout=10)
    assert done.state is WorkflowState.FAILED
    assert done.reason == "step 2 (wf/broken) GIVEN_UP: RuntimeError: cannot process abc"
    assert [h.state for h in done.history] == ["SUCCEEDED", "GIVEN_UP"]  # step 3 never started
    job = await node.jobs.get(done.history[1].job_id)
    assert job.state.value == "GIVEN_UP" and job.retry_count == 2  # it used its retries first
    assert await node.jobs.find(topic="wf/record") == []


async def test_abort_stops_the_running_step(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define("slowly", [Step("wf/slow"), Step("wf/record")])
    inst = await node.workflows.start("slowly", {})
    job_id = inst.history[0].job_id
    for _ in range(200):  # until the step job runs
        if (await node.jobs.get(job_id)).state.value == "ACTIVE":
            break
        await asyncio.sleep(0.01)
    aborted = await node.workflows.abort(inst.id, "changed my mind")
    assert aborted.state is WorkflowState.ABORTED and aborted.reason == "changed my mind"
    job = await node.jobs.wait(job_id, timeout=10)
    assert job.state.value in ("STOPPED", "ERROR")
    with pytest.raises(Conflict):
        await node.workflows.abort(inst.id)
    for _ in range(100):  # the stopped job is recorded in the history, nothing more starts
        if (await node.workflows.get(inst.id)).history[0].state != "QUEUED":
            break
        await asyncio.sleep(0.02)
    final = await node.workflows.get(inst.id)
    assert final.state is WorkflowState.ABORTED and len(final.history) == 1
    assert final.history[0].state == job.state.value
    assert await node.jobs.find(topic="wf/record") == []


async def test_bad_requests_are_clear_errors(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define(TEXT_FLOW)
    with pytest.raises(NotFound):
        await node.workflows.start("nope", {})
    with pytest.raises(ValidationError):
        await node.workflows.start("text", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await node.workflows.start("text", {"x": float("inf")})
    with pytest.raises(NotFound):
        await node.workflows.get("missing")
    with pytest.raises(NotFound):
        await node.workflows.abort("missing")
    with pytest.raises(ValidationError):
        await node.workflows.list(state="HAPPY")
    with pytest.raises(ValidationError):
        await node.workflows.list(limit=0)
    with pytest.raises(ValidationError):
        node.workflows.define("w")  # no steps
    with pytest.raises(ValidationError):
        node.workflows.define("w", [Step("bad//topic")])
    GATE["slow"] = asyncio.Event()
    node.workflows.define("slowly", [Step("wf/slow")])
    inst = await node.workflows.start("slowly", {})
    with pytest.raises(asyncio.TimeoutError):
        await node.workflows.wait(inst.id, timeout=0.05)
    GATE["slow"].set()
    assert (await node.workflows.wait(inst.id, timeout=10)).state is WorkflowState.COMPLETED
    assert node.workflows.alive  # none of it hurt the actor
    assert not node.events.active  # no step job open: the actor does not keep the engine building notifications


async def test_a_step_job_the_node_refuses_fails_the_workflow(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define("big", [Step("wf/measure", properties={"pad": "y" * 600_000})])
    inst = await node.workflows.start("big", {"text": "x" * 600_000})  # each fine, together over the job limit
    done = await node.workflows.wait(inst.id, timeout=5)
    assert done.state is WorkflowState.FAILED and "could not be added" in done.reason


async def test_survives_a_node_restart_mid_workflow(node_factory, tmp_path):
    GATE["slow"] = asyncio.Event()  # the slow step does not finish before the restart
    flow = Workflow("restartable", [Step("wf/measure"), Step("wf/slow"), Step("wf/double")])
    node = await node_factory(CONSUMERS, name="r1")
    node.workflows.define(flow)
    inst = await node.workflows.start("restartable", {"text": "abcd"})
    for _ in range(1000):
        cur = (await node.workflows.get(inst.id)).history
        if len(cur) == 2 and cur[1].job_id and (await node.jobs.get(cur[1].job_id)).state.value == "ACTIVE":
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the second step did not start")
    await node.stop(grace=0.1)  # the running step is interrupted: back to QUEUED
    GATE["slow"].set()
    again = await node_factory(CONSUMERS, name="r1")
    again.workflows.define(flow)
    done = await again.workflows.wait(inst.id, timeout=15)
    assert done.state is WorkflowState.COMPLETED, done.reason
    assert done.data == {"text": "abcd", "size": 4, "slow": "done", "double": 8}
    for topic in ("wf/measure", "wf/slow", "wf/double"):  # each step job added exactly once
        assert len(await again.jobs.find(topic=topic)) == 1, topic


async def test_restart_adopts_a_committed_step_job_and_adds_a_missing_one(node_factory, tmp_path):
    """The crash window: the instance saved its step PENDING; the job did or did not commit."""
    data = tmp_path / "c1"
    node = await node_factory(CONSUMERS, name="c1", data=data)
    adopted = await node.jobs.add("wf/measure", {"text": "hey", WORKFLOW_PROPERTY: {"id": "wf-a", "step": 0}})
    await node.stop()
    store = WorkflowStore(data / "workflows.sqlite")
    for iid in ("wf-a", "wf-b"):
        store.save(WorkflowInstance(id=iid, workflow=TEXT_FLOW, origin="c1", properties={"text": "hey"},
                                    data={"text": "hey"}, history=[StepRecord(0, "wf/measure")],
                                    created=1.0, updated=1.0))
    store.close()
    node = await node_factory(CONSUMERS, name="c1", data=data)
    a = await node.workflows.wait("wf-a", timeout=10)
    b = await node.workflows.wait("wf-b", timeout=10)
    assert a.state is b.state is WorkflowState.COMPLETED
    assert a.history[0].job_id == adopted.id  # found by its marker, not added again
    assert b.history[0].job_id != adopted.id
    assert len(await node.jobs.find(topic="wf/measure")) == 2  # one per instance


async def test_a_vanished_step_job_fails_the_workflow_on_restart(node_factory, tmp_path):
    data = tmp_path / "v1"
    GATE["slow"] = asyncio.Event()
    node = await node_factory(CONSUMERS, name="v1", data=data)
    node.workflows.define("slowly", [Step("wf/slow")])
    inst = await node.workflows.start("slowly", {})
    await node.stop(grace=0.1)
    store_path = data / "jobs.db"
    import sqlite3
    with sqlite3.connect(store_path) as conn:  # the job is gone (e.g. its file was restored from an old backup)
        conn.execute("DELETE FROM jobs WHERE id=?", (inst.history[0].job_id,))
    node = await node_factory(CONSUMERS, name="v1", data=data)
    done = await node.workflows.wait(inst.id, timeout=5)
    assert done.state is WorkflowState.FAILED and "disappeared" in done.reason


async def test_definitions_from_a_consumer_module(node_factory):
    mod = types.ModuleType("wf_test_module")

    async def thumb(job):
        return None

    thumb.__module__ = mod.__name__
    mod.thumb = jobmesh.consumer("mod/thumb")(thumb)
    mod.FLOW = Workflow("from-module", [Step("mod/thumb")])
    import sys
    sys.modules[mod.__name__] = mod
    try:
        node = await node_factory([], name="m1")
        node.add_consumers_from(mod)
        assert "from-module" in [w.name for w in node.workflows.definitions()]
        inst = await node.workflows.start("from-module", {})
        assert (await node.workflows.wait(inst.id, timeout=5)).state is WorkflowState.COMPLETED
    finally:
        sys.modules.pop(mod.__name__, None)


async def test_sweep_catches_a_missed_notification(node_factory):
    node = await node_factory(CONSUMERS)
    node.workflows.define("one", [Step("wf/measure")])
    node.workflows._follow_on = lambda: None  # never subscribe: every notification is lost
    inst = await node.workflows.start("one", {"text": "ab"})
    await node.jobs.wait(inst.history[0].job_id, timeout=5)
    await node.workflows.ask(("sweep",))
    assert (await node.workflows.wait(inst.id, timeout=2)).state is WorkflowState.COMPLETED
