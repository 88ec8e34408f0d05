"""Tasks (@jobmesh.task), the default producer, jobmesh.Client / SyncClient / JobHandle, node.jobs.join.

Clients talk to a real node's HTTP API in this process (port 0); the SyncClient runs in a thread
(it blocks, and the node shares this loop).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

import jobmesh
import jobmesh.testing
from helpers import free_port
from jobmesh import tasks as tasks_mod
from jobmesh.consumers.registry import consumers_in_module

calls: list[tuple[Any, ...]] = []


@jobmesh.task("tc/mail", retries=2, priority=4)
async def send_mail(to: str, subject: str, body: str = "", *, cc: list[str] | None = None) -> dict[str, Any]:
    calls.append(("mail", to, subject, body, cc))
    return {"message_id": f"m-{to}"}


@jobmesh.task("tc/sync")
def add_numbers(a: int, b: int = 1) -> int:  # a sync task runs in a thread
    calls.append(("sync", a, b))
    return a + b


@jobmesh.task("tc/kw")
async def takes_kwargs(x: int, **extra: Any) -> None:
    calls.append(("kw", x, extra))


@jobmesh.consumer("tc/hold")
async def hold(job: jobmesh.Job) -> None:
    await asyncio.sleep(30)


@jobmesh.consumer("tc/fail")
async def fail(job: jobmesh.Job) -> None:
    raise RuntimeError("boom")


def test_arguments_bind_to_the_signature_in_the_producer() -> None:
    assert send_mail.properties("a@b.c", "hi") == {"to": "a@b.c", "subject": "hi"}  # defaults: the consumer's
    assert send_mail.properties("a@b.c", subject="hi", cc=["x"]) == {"to": "a@b.c", "subject": "hi", "cc": ["x"]}
    assert takes_kwargs.properties(1, y=2) == {"x": 1, "y": 2}
    with pytest.raises(TypeError, match=r"send_mail\(to, subject, body='', \*, cc=None\): missing a required argument: 'subject'"):
        send_mail.properties("a@b.c")
    with pytest.raises(TypeError, match="unexpected keyword argument 'bcc'"):
        send_mail.properties("a@b.c", "hi", bcc=1)
    with pytest.raises(TypeError, match="must be JSON-compatible"):
        send_mail.properties("a@b.c", object())
    # the consumer side: properties back to arguments; unknown ones left out, **extra takes them
    assert send_mail.call_args({"to": "t", "subject": "s", "schedule_id": "x"}) == ([], {"to": "t", "subject": "s"})
    assert takes_kwargs.call_args({"x": 1, "y": 2, "jobmesh:local": True}) == ([], {"x": 1, "y": 2})
    with pytest.raises(jobmesh.PropertiesMismatch, match="do not fit send_mail"):
        send_mail.call_args({"to": "t"})


async def test_calling_a_task_runs_the_function_here() -> None:
    assert await send_mail("a@b.c", "hi") == {"message_id": "m-a@b.c"}
    assert add_numbers(2, 3) == 5


def test_tasks_are_consumers_of_their_module() -> None:
    found = consumers_in_module(sys.modules[__name__])
    assert send_mail in found and add_numbers in found and hold in found
    with pytest.raises(jobmesh.ValidationError, match="not a pattern"):
        jobmesh.task("a/*")(lambda: None)
    with pytest.raises(jobmesh.ValidationError, match="throws takes exception classes"):
        jobmesh.task("a/b", throws=("ValueError",))


async def test_send_goes_to_the_node_running_here_and_runs_with_the_options(node_factory) -> None:
    calls.clear()
    node = await node_factory([send_mail, add_numbers, takes_kwargs], name="here")
    h = await send_mail.send("a@b.c", "hi", cc=["boss"])
    h2 = await add_numbers.send_with_options(args=(40,), kwargs={"b": 2}, delay=0.2, key="sum-1")
    h3 = await takes_kwargs.send(7, colour="red")
    job = await h.job()
    assert job.topic == "tc/mail" and job.properties == {"to": "a@b.c", "subject": "hi", "cc": ["boss"]}
    assert job.max_retries == 2 and job.priority == 4  # the task's options, applied where the job is added
    assert (await h2.job()).key == "sum-1"
    await node.jobs.join(timeout=10)
    assert ("mail", "a@b.c", "hi", "", ["boss"]) in calls and ("sync", 40, 2) in calls
    assert ("kw", 7, {"colour": "red"}) in calls
    assert (await h3.wait(5)).state is jobmesh.JobState.SUCCEEDED


async def test_join_times_out_saying_what_is_left(node_factory) -> None:
    node = await node_factory([hold], name="j")
    await node.jobs.add("tc/hold")
    await node.jobs.add("tc/none", delay=60)
    with pytest.raises(asyncio.TimeoutError, match=r"not idle after 0.3 s: 1 jobs queued, 1 active"):
        await node.jobs.join(timeout=0.3)


async def test_default_producer_without_a_node_is_jobmesh_url(node_factory, monkeypatch) -> None:
    node = await node_factory([send_mail, hold], name="u", http="127.0.0.1:0")
    monkeypatch.setattr(tasks_mod, "_running_nodes", [])
    monkeypatch.delenv("JOBMESH_URL", raising=False)
    with pytest.raises(RuntimeError, match="no jobmesh Node runs in this process and JOBMESH_URL is not set"):
        await send_mail.send("a", "b")
    monkeypatch.setenv("JOBMESH_URL", node.http_url)
    later = await send_mail.send_with_options(args=("x@y.z", "s"), key="once", delay=60)
    again = await send_mail.send_with_options(args=("x@y.z", "s"), key="once")
    assert isinstance(later, jobmesh.JobHandle) and again.id == later.id  # through HTTP: the key held
    assert (await later.stop()).state is jobmesh.JobState.STOPPED
    h = await send_mail.send("x@y.z", "now")
    assert (await h.wait(10)).state is jobmesh.JobState.SUCCEEDED


async def test_client_methods_and_errors(node_factory) -> None:
    node = await node_factory([send_mail, hold, fail], name="c", http="127.0.0.1:0", stop_grace=0.2,
                              queues=[jobmesh.QueueConfig(name="main", retries=0)])
    async with jobmesh.Client(node.http_url) as client:
        h = await client.add("tc/hold", {"n": 1}, key="k", priority=2, timeout=50, delay=0)
        assert isinstance(h.added, jobmesh.Job) and h.added.priority == 2 and h.added.timeout == 50
        assert (await client.add("tc/hold", key="k")).id == h.id
        many = await client.add_many([("tc/hold", {"i": 1}), {"topic": "tc/hold", "delay": 60}])
        assert len(many) == 2 and many[1].added.not_before > time.time() + 50
        e = await client.enqueue(send_mail, "e@f.g", "yo", _key="mail-e", _delay=0)
        assert (await e.wait(10)).state is jobmesh.JobState.SUCCEEDED
        with pytest.raises(TypeError):
            await client.enqueue(send_mail, "only-to")
        assert (await client.get(h.id)).id == h.id
        found = await client.find(topic="tc/hold")
        assert {j.id for j in found} >= {h.id, many[0].id}
        with pytest.raises(asyncio.TimeoutError, match="is not final after 0.2 s"):
            await h.result(timeout=0.2)
        stopped = await many[1].stop()
        assert stopped.state is jobmesh.JobState.STOPPED
        assert (await client.retry(many[1].id)).state is jobmesh.JobState.QUEUED
        assert (await client.remove(many[1].id)).state in (jobmesh.JobState.ACTIVE, jobmesh.JobState.DROPPED)
        assert (await client.wait(many[1].id, 10)).state is jobmesh.JobState.DROPPED
        assert await client.remove(many[1].id) is None
        with pytest.raises(jobmesh.NotFound):
            await client.get(many[1].id)
        with pytest.raises(jobmesh.ValidationError, match="delay must be between"):
            await client.add("tc/hold", delay=-1)
        f = await client.add("tc/fail")
        with pytest.raises(jobmesh.JobFailed, match=r"ended GIVEN_UP: RuntimeError: boom") as err:
            await f.result(timeout=10)
        assert err.value.job.state is jobmesh.JobState.GIVEN_UP and err.value.job.id == f.id
    dead = jobmesh.Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(jobmesh.NodeUnreachable, match="cannot reach node at"):
        await dead.get("x")
    await dead.close()


async def test_sync_client_is_the_blocking_twin(node_factory) -> None:
    node = await node_factory([add_numbers, fail], name="s", http="127.0.0.1:0",
                              queues=[jobmesh.QueueConfig(name="main", retries=0)])

    def use() -> list[Any]:
        with jobmesh.SyncClient(node.http_url) as client:
            h = client.enqueue(add_numbers, 1, b=2, _key="s-1")
            job = h.wait(10)
            again = client.add("tc/sync", {"a": 1}, key="s-2", priority=1)
            failed = client.add("tc/fail")
            with pytest.raises(jobmesh.JobFailed):
                failed.result(timeout=10)
            with pytest.raises(jobmesh.NotFound):
                client.get("nope-nope")
            return [job.state, again.job().priority, len(client.find(topic="tc/sync")) >= 2]

    assert await asyncio.to_thread(use) == [jobmesh.JobState.SUCCEEDED, 1, True]


async def test_a_tasks_return_value_is_its_result(node_factory) -> None:
    node = await node_factory([send_mail, add_numbers], name="r")
    assert await (await send_mail.send("r@s.t", "hi")).result(timeout=10) == {"message_id": "m-r@s.t"}
    h = await add_numbers.send(20, b=22)
    assert await h.result(timeout=10) == 42  # a sync task, from its thread
    job = await node.jobs.get(h.id)
    assert job.result == 42 and job.result_message is None and job.to_json()["result"] == 42


@jobmesh.consumer("tc/plain")
async def plain(job: jobmesh.Job) -> dict[str, Any]:  # a plain consumer's return value is its result too
    return {"rows": 3}


@jobmesh.consumer("tc/notjson")
async def not_json(job: jobmesh.Job) -> Any:
    return object()


async def test_results_of_plain_consumers_and_the_refusal_of_what_is_not_json(node_factory) -> None:
    node = await node_factory([plain, not_json], name="p", queues=[jobmesh.QueueConfig(name="main", retries=0)])
    ok = await node.jobs.wait((await node.jobs.add("tc/plain")).id, timeout=10)
    assert ok.result == {"rows": 3} and ok.output == {"rows": 3}  # an object result is a step's output
    bad = await node.jobs.wait((await node.jobs.add("tc/notjson")).id, timeout=10)
    assert bad.state is jobmesh.JobState.GIVEN_UP and "not JSON-compatible" in bad.result_message
    again = await node.jobs.retry(ok.id) if ok.state is not jobmesh.JobState.SUCCEEDED else None
    assert again is None


async def test_testing_run_gives_the_result_or_job_failed() -> None:
    import jobmesh.testing

    assert await jobmesh.testing.run(add_numbers, 1, b=5) == 6
    with pytest.raises(jobmesh.JobFailed, match="GIVEN_UP: the consumer's return value is not JSON"):
        await jobmesh.testing.run(jobmesh.task("tc/objects")(lambda: object()), retries=0)


@jobmesh.task("tc/throws", throws=(ValueError,), retries=5, retry_delay=0)
async def picky(n: int) -> int:
    if n < 0:
        raise ValueError(f"negative: {n}")
    raise RuntimeError("flaky")


@jobmesh.consumer("tc/throws-consumer", throws=KeyError)
def lookup(job: jobmesh.Job) -> None:
    raise KeyError("missing")


async def test_throws_ends_the_job_error_without_a_retry(node_factory) -> None:
    node = await node_factory([picky, lookup, send_mail], name="t")
    err = await node.jobs.wait((await picky.send(-1)).id, timeout=10)
    assert err.state is jobmesh.JobState.ERROR and err.retry_count == 0
    assert err.result_message == "ValueError: negative: -1 (listed in throws: not retried)"
    assert "ValueError: negative: -1" in err.progress.log[-1]  # the traceback is in the log
    retried = await node.jobs.wait((await picky.send(1)).id, timeout=10)
    assert retried.state is jobmesh.JobState.GIVEN_UP and retried.retry_count == 5  # others are retried
    assert (await node.jobs.wait((await node.jobs.add("tc/throws-consumer")).id, timeout=10)).state \
        is jobmesh.JobState.ERROR
    # properties that do not fit the task's signature: ERROR at once (it would fail the same way again)
    bad = await node.jobs.wait((await node.jobs.add("tc/mail", {"too": "x"})).id, timeout=10)
    assert bad.state is jobmesh.JobState.ERROR and "do not fit send_mail" in bad.result_message
    with pytest.raises(jobmesh.JobFailed, match="ERROR: ValueError: negative"):
        await jobmesh.testing.run(picky, -3)


@jobmesh.task("tc/nap", timeout=0.3, retries=1, retry_delay=0)
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


interrupted: list[str] = []


@jobmesh.task("tc/busy", timeout=0.3, retries=0)
def busy(seconds: float) -> str:
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            time.sleep(0.01)
    except jobmesh.TimeLimitExceeded:
        interrupted.append("busy")
        raise
    return "done"


@jobmesh.consumer("tc/limited")
async def limited(job: jobmesh.Job) -> None:
    await asyncio.sleep(float(job.properties["s"]))


async def test_time_limits_job_over_task_over_queue(node_factory) -> None:
    node = await node_factory([nap, busy, limited], name="tl", queues=[
        jobmesh.QueueConfig(name="main", retries=0, timeout=0.3),
    ])
    t0 = time.monotonic()
    over = await node.jobs.wait((await nap.send(5)).id, timeout=10)
    assert over.state is jobmesh.JobState.GIVEN_UP and over.retry_count == 1  # retried once, then given up
    assert over.result_message == "time limit 0.3 s exceeded" and time.monotonic() - t0 < 3
    fine = await nap.send_with_options(args=(0.5,), timeout=2)  # the job's own limit beats the task's
    assert await fine.result(timeout=10) == "rested"
    sync = await node.jobs.wait((await busy.send(5)).id, timeout=10)
    assert sync.state is jobmesh.JobState.GIVEN_UP and sync.result_message == "time limit 0.3 s exceeded"
    assert interrupted == ["busy"] and "TimeLimitExceeded" in sync.progress.log[-1]  # raised in its thread
    q = await node.jobs.wait((await node.jobs.add("tc/limited", {"s": 5})).id, timeout=10)
    assert q.state is jobmesh.JobState.GIVEN_UP and q.result_message == "time limit 0.3 s exceeded"
    ok = await node.jobs.wait((await node.jobs.add("tc/limited", {"s": 0.6}, timeout=3)).id, timeout=10)
    assert ok.state is jobmesh.JobState.SUCCEEDED
