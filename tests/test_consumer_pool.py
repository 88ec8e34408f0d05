"""Consumer details: inline-run async consumers, return values, sync failures, stops seen in threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import jobmesh
from jobmesh import JobResult, JobState, QueueConfig, ValidationError
import contextvars

from jobmesh.consumers.registry import spec_of
from jobmesh.consumers.runner import outcome_of as _outcome_of
from jobmesh.consumers.stepping import first_step, resume


async def drive(coro):
    """What the runner does: run inline until the first wait, then resume it."""
    cvars = contextvars.copy_context()
    done, value = first_step(coro, cvars)
    if done:
        return value
    return await resume(coro, value, cvars)


async def test_resume_handles_futures_sleep0_exceptions_and_results():
    gate = asyncio.Event()

    async def c():
        await asyncio.sleep(0)
        await asyncio.wait_for(gate.wait(), 5)
        await asyncio.sleep(0.001)
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        return "done"

    task = asyncio.ensure_future(drive(c()))
    await asyncio.sleep(0.01)
    gate.set()
    assert await asyncio.wait_for(task, 5) == "done"


async def test_resume_delivers_cancellation_into_the_consumer():
    seen = []

    async def c():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.ensure_future(drive(c()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


def test_outcome_of_return_values():
    assert _outcome_of(None).kind == "OK"
    assert _outcome_of(True).kind == "OK"
    assert _outcome_of(False).kind == "FAILED"
    assert _outcome_of(JobResult.CANCEL).kind == "CANCEL"
    o = _outcome_of({"rows": 3})
    assert o.kind == "OK" and o.result == {"rows": 3} and o.message is None  # the value, not its repr
    assert _outcome_of((1, "a")).result == [1, "a"] and _outcome_of(0).result == 0
    assert _outcome_of(JobResult.OK.__class__(JobResult.OK.kind, "m", output={"k": 1})).result == {"k": 1}
    bad = _outcome_of({"s": {1, 2}})
    assert bad.kind == "FAILED" and "not JSON-compatible" in bad.message and "set" in bad.message
    assert _outcome_of(float("nan")).kind == "FAILED"
    big = _outcome_of("x" * 1_000_001)
    assert big.kind == "FAILED" and "more than 1000000" in big.message
    # the value as the job keeps it (its JSON read back), and one that can travel to an origin
    assert _outcome_of({1: (2, 3)}).result == {"1": [2, 3]}
    assert _outcome_of(2 ** 63 - 1).result == 2 ** 63 - 1
    for value in (2 ** 70, {"n": -(2 ** 64)}, "bad \udc80 text"):
        o = _outcome_of(value)
        assert o.kind == "FAILED" and "cannot be sent between nodes" in o.message, value


def test_spec_of_refuses_non_consumers():
    with pytest.raises(ValidationError):
        spec_of(lambda job: None)

    class NoTopics(jobmesh.ConsumerActor):
        async def process(self, job, ctx):
            return None

    with pytest.raises(ValidationError):
        spec_of(NoTopics)
    with pytest.raises(ValidationError):
        jobmesh.consumer("a/**/b")


async def test_sync_consumer_exception_is_a_failure_with_traceback(node_factory):
    @jobmesh.consumer("s/boom")
    def boom(job):
        raise KeyError("missing")

    node = await node_factory([boom], queues=[QueueConfig(name="main", retries=1, retry_delay=0.01)])
    done = await node.jobs.wait((await node.jobs.add("s/boom")).id, timeout=5)
    assert done.state is JobState.GIVEN_UP and done.retry_count == 1
    assert "KeyError" in done.result_message and any("Traceback" in line for line in done.progress.log)


async def test_sync_consumer_sees_stop(node_factory):
    running = threading.Event()

    @jobmesh.consumer("s/loop")
    def loop(job, ctx):
        running.set()
        deadline = time.monotonic() + 5
        while not ctx.is_stopped() and time.monotonic() < deadline:
            time.sleep(0.005)
        return ctx.result().cancelled()

    node = await node_factory([loop])
    job = await node.jobs.add("s/loop")
    assert await asyncio.get_running_loop().run_in_executor(None, running.wait, 5)
    await node.jobs.stop(job.id)
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.STOPPED


async def test_fast_and_waiting_consumers_share_the_slots(node_factory):
    """Inline-run fast consumers must not starve waiting ones (each wait wakes another worker)."""
    peak = 0
    running = 0

    @jobmesh.consumer("mix/slow")
    async def slow(job):
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    @jobmesh.consumer("mix/fast")
    async def fast(job):
        return None

    node = await node_factory([slow, fast], capacity=8, queues=[QueueConfig(name="main", max_parallel=8)])
    t0 = time.monotonic()
    jobs = await node.jobs.add_many([("mix/slow", None)] * 8 + [("mix/fast", None)] * 200)
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert peak == 8  # all slots busy at once: the slow ones ran in parallel
    assert time.monotonic() - t0 < 3.0


async def test_each_job_runs_in_its_own_context(node_factory):
    import contextvars
    var: contextvars.ContextVar[str | None] = contextvars.ContextVar("var", default=None)
    seen = []

    @jobmesh.consumer("ctxvar/x")
    async def setter(job):
        seen.append(var.get())
        var.set(job.id)
        await asyncio.sleep(0)
        seen.append(var.get() == job.id)

    node = await node_factory([setter], capacity=1, queues=[QueueConfig(name="main", max_parallel=1)])
    jobs = await node.jobs.add_many([("ctxvar/x", None)] * 3)
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert seen == [None, True, None, True, None, True]


async def test_a_consumer_runs_in_one_task_from_its_first_step_to_its_end(node_factory):
    """asyncio.timeout, current_task and aiohttp's timeouts need the task that runs the consumer
    to be there from its first step on, and to stay the same one after it waited."""
    seen = []

    @jobmesh.consumer("t/in-a-task")
    async def in_a_task(job):
        first = asyncio.current_task()
        async with asyncio.timeout(5):
            await asyncio.sleep(0.01)
        seen.append(first is not None and asyncio.current_task() is first)

    node = await node_factory([in_a_task])
    jobs = await node.jobs.add_many([("t/in-a-task", None)] * 5)
    for j in jobs:
        assert (await node.jobs.wait(j.id, timeout=10)).state is JobState.SUCCEEDED
    assert seen == [True] * 5
