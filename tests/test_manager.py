"""The engine end to end on one embedded node (real SQLite file, no sockets)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import jobmesh
from jobmesh import Conflict, JobResult, JobState, NotFound, QueueConfig, ValidationError


def fast_main(**kw) -> QueueConfig:
    return QueueConfig(name="main", retry_delay=0.01, **kw)


@jobmesh.consumer("t/ok")
async def ok(job):
    return None


async def test_add_run_succeed_get_find_wait(node_factory):
    node = await node_factory([ok])
    job = await node.jobs.add("t/ok", {"x": 1})
    assert job.state is JobState.QUEUED and job.queue == "main" and job.origin == "n1"
    done = await node.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.SUCCEEDED and done.target == "n1" and done.started and done.finished
    assert (await node.jobs.get(job.id)).state is JobState.SUCCEEDED
    assert [j.id for j in await node.jobs.find(state="SUCCEEDED", topic="t/ok")] == [job.id]
    js = done.to_json()
    assert js["created"].endswith("Z") and js["progress"] == {"steps": None, "step": 0, "eta": None, "log": []}


async def test_add_many_in_order_and_validation(node_factory):
    node = await node_factory([ok])
    jobs = await node.jobs.add_many([("t/ok", {"i": i}) for i in range(50)])
    assert [j.properties["i"] for j in jobs] == list(range(50))
    for j in jobs:
        assert (await node.jobs.wait(j.id, timeout=5)).state is JobState.SUCCEEDED
    with pytest.raises(ValidationError):
        await node.jobs.add("bad//topic")
    with pytest.raises(ValidationError):
        await node.jobs.add("t/*")
    with pytest.raises(ValidationError):
        await node.jobs.add("t/ok", {"x": object()})
    with pytest.raises(ValidationError):
        await node.jobs.add("t/ok", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await node.jobs.find(state="NOPE")
    with pytest.raises(NotFound):
        await node.jobs.wait("nope")
    assert await node.jobs.get("nope") is None


async def test_exception_is_failed_with_traceback_then_succeeds(node_factory):
    calls = []

    @jobmesh.consumer("t/flaky")
    async def flaky(job):
        calls.append(job.retry_count)
        if len(calls) < 3:
            raise RuntimeError("not yet")

    node = await node_factory([flaky], queues=[fast_main()])
    sub = node.events.subscribe()
    job = await node.jobs.add("t/flaky")
    done = await node.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.SUCCEEDED and done.retry_count == 2 and calls == [0, 1, 2]
    assert any("RuntimeError: not yet" in line and "Traceback" in line for line in done.progress.log)
    topics = []
    while (n := sub.get_nowait()) is not None:
        topics.append(n.topic)
    assert topics == ["job/added", "job/started", "job/failed", "job/started", "job/failed",
                      "job/started", "job/finished"]
    stats = await node.jobs.statistics()
    assert stats["overall"]["failed"] == 2 and stats["overall"]["finished"] == 1
    assert stats["topics"]["t/flaky"]["processed"] == 1


async def test_a_failed_write_of_a_retry_is_healed_by_the_jobs_next_end(node_factory):
    """The commit of a failed run's retry record fails (disk full, I/O error): the job still runs
    again and ends OK, and its row then gets the whole record (the retry counted), not only the
    end's own columns."""
    calls = []

    @jobmesh.consumer("t/once")
    async def once(job):
        calls.append(job.retry_count)
        if len(calls) < 2:
            raise RuntimeError("first time")

    node = await node_factory([once], queues=[fast_main()])
    store = node.store
    real, failed = store._commit, []

    def commit(batch):
        if not failed and any(row[0] == "QUEUED" for row in batch.updates.values()):  # the retry record
            failed.append(batch)
            raise OSError("disk full")
        return real(batch)

    store._commit = commit
    job = await node.jobs.add("t/once")
    done = await node.jobs.wait(job.id, timeout=5)
    assert failed and calls == [0, 1] and done.state is JobState.SUCCEEDED
    row = store.get(job.id)
    assert (row.state, row.retry_count) == (JobState.SUCCEEDED, 1)


async def test_given_up_after_retries(node_factory):
    @jobmesh.consumer("t/bad")
    async def bad(job, ctx):
        return ctx.result().message("nope").failed(retry_delay=0)

    node = await node_factory([bad], queues=[fast_main(retries=2)])
    job = await node.jobs.add("t/bad")
    assert job.max_retries == 2
    done = await node.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.GIVEN_UP and done.retry_count == 2 and done.result_message == "nope"
    assert (await node.jobs.statistics())["overall"]["cancelled"] == 1


async def test_cancel_result_is_error_without_retry(node_factory):
    runs = []

    @jobmesh.consumer("t/cancel")
    async def cancel(job):
        runs.append(1)
        return JobResult.CANCEL

    node = await node_factory([cancel])
    done = await node.jobs.wait((await node.jobs.add("t/cancel")).id, timeout=5)
    assert done.state is JobState.ERROR and runs == [1]


async def test_retry_delay_precedence_consumer_over_property_over_queue(node_factory):
    starts: dict[str, list[float]] = {}

    @jobmesh.consumer("t/delay/*")
    async def delayed(job, ctx):
        starts.setdefault(job.topic, []).append(time.monotonic())
        if len(starts[job.topic]) == 1:
            if job.topic == "t/delay/consumer":
                return ctx.result().failed(retry_delay=0.05)
            return JobResult.FAILED

    node = await node_factory([delayed], queues=[QueueConfig(name="main", retry_delay=1.0)])
    a = await node.jobs.add("t/delay/consumer", {"retry_delay": 5})
    b = await node.jobs.add("t/delay/property", {"retry_delay": 0.05})
    c = await node.jobs.add("t/delay/queue")
    for j in (a, b, c):
        assert (await node.jobs.wait(j.id, timeout=5)).state is JobState.SUCCEEDED
    gap = {t: s[1] - s[0] for t, s in starts.items()}
    assert gap["t/delay/consumer"] < 0.8
    assert gap["t/delay/property"] < 0.8
    assert gap["t/delay/queue"] >= 0.95


async def test_backoff_grows(node_factory):
    starts = []

    @jobmesh.consumer("t/backoff")
    async def fail3(job):
        starts.append(time.monotonic())
        if len(starts) < 4:
            raise ValueError("x")

    node = await node_factory([fail3], queues=[QueueConfig(name="main", retry_delay=0.02, retry_backoff=3,
                                                       retry_jitter=False)])  # exact delays here
    await node.jobs.wait((await node.jobs.add("t/backoff")).id, timeout=5)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.06 and gaps[2] >= 0.18 and gaps[2] > gaps[0]


async def test_progress_and_context(node_factory):
    seen = {}

    @jobmesh.consumer("t/progress")
    async def prog(job, ctx: jobmesh.ExecutionContext):
        ctx.init_progress(steps=3, eta=10)
        ctx.increment_progress()
        ctx.increment_progress(2)
        ctx.update_progress(eta=1)
        ctx.log("rendered %s of %d", "page", 3)
        seen["stopped"] = ctx.is_stopped()
        return ctx.result().message("ok").succeeded()

    node = await node_factory([prog])
    done = await node.jobs.wait((await node.jobs.add("t/progress")).id, timeout=5)
    assert done.progress.steps == 3 and done.progress.step == 3 and done.progress.eta > time.time() - 1
    assert done.progress.log == ["rendered page of 3"] and done.result_message == "ok"
    assert seen["stopped"] is False


async def test_running_progress_visible_through_get(node_factory):
    gate = asyncio.Event()

    @jobmesh.consumer("t/slowprog")
    async def slowprog(job, ctx):
        ctx.init_progress(10)
        ctx.increment_progress(4)
        await asyncio.wait_for(gate.wait(), 5)

    node = await node_factory([slowprog])
    job = await node.jobs.add("t/slowprog")
    for _ in range(1000):  # up to 10 s: the machine may be busy
        cur = await node.jobs.get(job.id)
        if cur.state is JobState.ACTIVE and cur.progress.step == 4:
            break
        await asyncio.sleep(0.01)
    assert cur.state is JobState.ACTIVE and cur.progress.step == 4
    assert [j.id for j in await node.jobs.find(state="ACTIVE")] == [job.id]
    gate.set()
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.SUCCEEDED


async def test_sync_consumer_runs_in_a_thread(node_factory):
    threads = []

    @jobmesh.consumer("t/sync")
    def blocking(job, ctx):
        threads.append(threading.current_thread().name)
        time.sleep(0.01)
        ctx.log("from a thread")
        return ctx.result().succeeded()

    node = await node_factory([blocking])
    done = await node.jobs.wait((await node.jobs.add("t/sync")).id, timeout=5)
    assert done.state is JobState.SUCCEEDED and done.progress.log == ["from a thread"]
    assert threads and threads[0] != threading.main_thread().name


async def test_consumer_actor_lifecycle_and_serial_state(node_factory):
    class Counter(jobmesh.ConsumerActor):
        topics = ["t/count/**"]

        async def on_start(self):
            self.started = True
            self.total = 0
            self.concurrent = 0
            self.max_concurrent = 0

        async def process(self, job, ctx):
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            await asyncio.sleep(0.005)
            self.total += job.properties["n"]
            self.concurrent -= 1
            ctx.log("total %d", self.total)

    actor = Counter()
    node = await node_factory([actor])
    jobs = await node.jobs.add_many([("t/count/a/b", {"n": i}) for i in range(10)])
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert actor.started and actor.total == 45 and actor.max_concurrent == 1
    assert "t/count/**" in node.consumer_topics()


async def test_stop_queued_and_cooperative_active(node_factory):
    started = asyncio.Event()

    @jobmesh.consumer("t/coop")
    async def coop(job, ctx):
        started.set()
        while not ctx.is_stopped():
            await asyncio.sleep(0.01)
        return ctx.result().cancelled()

    node = await node_factory([coop], queues=[QueueConfig(name="main", type="ordered")])
    a = await node.jobs.add("t/coop")
    b = await node.jobs.add("t/coop")
    await asyncio.wait_for(started.wait(), 5)
    stopped_b = await node.jobs.stop(b.id)
    assert stopped_b.state is JobState.STOPPED
    cur = await node.jobs.stop(a.id)
    assert cur.state is JobState.ACTIVE  # asked; the consumer decides when
    done = await node.jobs.wait(a.id, timeout=5)
    assert done.state is JobState.STOPPED
    with pytest.raises(Conflict):
        await node.jobs.stop(a.id)


async def test_stop_ignored_is_cancelled_after_grace(node_factory):
    cancelled = []

    @jobmesh.consumer("t/stubborn")
    async def stubborn(job):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(job.id)
            raise

    node = await node_factory([stubborn], stop_grace=0.1)
    job = await node.jobs.add("t/stubborn")
    for _ in range(1000):  # up to 10 s: the machine may be busy
        if (await node.jobs.get(job.id)).state is JobState.ACTIVE:
            break
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await node.jobs.stop(job.id)
    done = await node.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.STOPPED and cancelled == [job.id] and time.monotonic() - t0 < 4


async def test_remove_queued_active_final(node_factory):
    gate = asyncio.Event()

    @jobmesh.consumer("t/rm")
    async def rm(job, ctx):
        while not ctx.is_stopped() and not gate.is_set():
            await asyncio.sleep(0.01)

    node = await node_factory([rm], queues=[QueueConfig(name="main", type="ordered")])
    sub = node.events.subscribe(topics=["job/removed"])
    a = await node.jobs.add("t/rm")
    b = await node.jobs.add("t/rm")
    for _ in range(1000):  # up to 10 s: the machine may be busy
        if (await node.jobs.get(a.id)).state is JobState.ACTIVE:
            break
        await asyncio.sleep(0.01)
    assert (await node.jobs.remove(b.id)).state is JobState.DROPPED
    await node.jobs.remove(a.id)
    assert (await node.jobs.wait(a.id, timeout=5)).state is JobState.DROPPED
    assert await node.jobs.remove(a.id) is None  # final: deleted
    assert await node.jobs.get(a.id) is None
    with pytest.raises(NotFound):
        await node.jobs.remove(a.id)
    n1 = await sub.get(timeout=2)
    n2 = await sub.get(timeout=2)
    assert {n1.job_id, n2.job_id} == {a.id, b.id}


async def test_manual_retry(node_factory):
    attempts = []

    @jobmesh.consumer("t/retry")
    async def once_bad(job):
        attempts.append(1)
        if len(attempts) == 1:
            return JobResult.CANCEL

    node = await node_factory([once_bad])
    job = await node.jobs.add("t/retry")
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.ERROR
    again = await node.jobs.retry(job.id)
    assert again.state is JobState.QUEUED and again.retry_count == 0 and again.id == job.id
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.SUCCEEDED
    with pytest.raises(Conflict):
        await node.jobs.retry(job.id)  # succeeded jobs are not retried
    with pytest.raises(NotFound):
        await node.jobs.retry("nope")


async def test_ordered_queue_head_of_line(node_factory):
    order = []

    @jobmesh.consumer("o/**")
    async def ordered(job):
        order.append(job.properties["i"])
        if job.properties["i"] == 1 and order.count(1) < 3:
            raise RuntimeError("head fails twice")
        await asyncio.sleep(0.001)

    node = await node_factory([ordered], queues=[
        fast_main(), QueueConfig(name="ord", topics=["o/**"], type="ordered", retry_delay=0.02, max_parallel=8)])
    jobs = await node.jobs.add_many([(f"o/{i % 3}", {"i": i}) for i in range(6)])
    assert {j.queue for j in jobs} == {"ord"}
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert order == [0, 1, 1, 1, 2, 3, 4, 5]


async def test_ordered_given_up_head_releases_the_rest(node_factory):
    order = []

    @jobmesh.consumer("g/x")
    async def c(job):
        order.append(job.properties["i"])
        if job.properties["i"] == 0:
            raise RuntimeError("always")

    node = await node_factory([c], queues=[QueueConfig(name="main", type="ordered", retries=1, retry_delay=0.01)])
    jobs = await node.jobs.add_many([("g/x", {"i": i}) for i in range(3)])
    states = [(await node.jobs.wait(j.id, timeout=5)).state for j in jobs]
    assert states == [JobState.GIVEN_UP, JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert order == [0, 0, 1, 2]


async def test_unordered_max_parallel(node_factory):
    running = 0
    peak = 0

    @jobmesh.consumer("p/x")
    async def par(job):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    node = await node_factory([par], capacity=16, queues=[QueueConfig(name="main", max_parallel=3)])
    jobs = await node.jobs.add_many([("p/x", None)] * 20)
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert peak == 3


async def test_topic_round_robin_interleaves(node_factory):
    order = []

    @jobmesh.consumer("rr/*")
    async def rr(job):
        order.append(job.topic)

    node = await node_factory([rr], queues=[QueueConfig(name="main", type="topic_round_robin", max_parallel=1)])
    await node.jobs.queues()  # started
    await node.jobs.suspend_queue("main")  # let all arrive first
    jobs = await node.jobs.add_many([("rr/a", None)] * 3 + [("rr/b", None)] * 3)
    await node.jobs.resume_queue("main")
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    assert order == ["rr/a", "rr/b"] * 3


async def test_priority_gets_free_slots_first(node_factory):
    order = []

    @jobmesh.consumer("pri/*")
    async def pri(job):
        order.append(job.topic)
        await asyncio.sleep(0.002)

    node = await node_factory([pri], capacity=1, queues=[
        QueueConfig(name="main"),
        QueueConfig(name="low", topics=["pri/low"], priority=0),
        QueueConfig(name="high", topics=["pri/high"], priority=10),
    ])
    for q in ("low", "high"):
        await node.jobs.suspend_queue(q)
    low = await node.jobs.add_many([("pri/low", None)] * 5)
    high = await node.jobs.add_many([("pri/high", None)] * 5)
    await node.jobs.resume_queue("low")
    await node.jobs.resume_queue("high")
    for j in low + high:
        await node.jobs.wait(j.id, timeout=5)
    # the slot may already hold one low job; after that every high job goes before the rest
    assert order.index("pri/high") <= 1 and order[-1] == "pri/low"
    assert order[:order.index("pri/high")].count("pri/low") <= 1


async def test_suspend_resume_and_queue_info(node_factory):
    node = await node_factory([ok])
    info = await node.jobs.suspend_queue("main")
    assert info["suspended"] is True and info["name"] == "main" and "statistics" in info
    job = await node.jobs.add("t/ok")
    await asyncio.sleep(0.1)
    assert (await node.jobs.get(job.id)).state is JobState.QUEUED
    await node.jobs.resume_queue("main")
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.SUCCEEDED
    with pytest.raises(NotFound):
        await node.jobs.suspend_queue("nope")
    qs = await node.jobs.queues()
    assert [q["name"] for q in qs] == ["main"] and qs[0]["statistics"]["finished"] == 1


async def test_no_consumer_waits_until_one_is_added(node_factory):
    node = await node_factory([])
    job = await node.jobs.add("t/late")
    await asyncio.sleep(0.05)
    assert (await node.jobs.get(job.id)).state is JobState.QUEUED

    @jobmesh.consumer("t/late")
    async def late(job):
        return None

    node.add_consumer(late)
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.SUCCEEDED


async def test_statistics_fields(node_factory):
    node = await node_factory([ok])
    jobs = await node.jobs.add_many([("t/ok", None)] * 5)
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    s = await node.jobs.statistics()
    o = s["overall"]
    assert set(o) == {"start_time", "last_activated", "last_finished", "queued", "active", "finished", "failed",
                      "cancelled", "processed", "average_waiting_time", "average_processing_time"}
    assert (o["queued"], o["active"], o["finished"], o["processed"]) == (0, 0, 5, 5)
    assert s["queues"]["main"]["finished"] == 5 and s["topics"]["t/ok"]["finished"] == 5
    assert o["average_waiting_time"] >= 0 and o["last_finished"].endswith("Z")


async def test_notification_json_and_listener_order(node_factory):
    got = []
    node = await node_factory([ok])
    node.events.add_listener(lambda n: got.append(n))
    job = await node.jobs.add("t/ok")
    await node.jobs.wait(job.id, timeout=5)
    await asyncio.sleep(0.01)
    assert [n.topic for n in got] == ["job/added", "job/started", "job/finished"]
    js = got[1].to_json()
    assert js["job_id"] == job.id and js["job_topic"] == "t/ok" and js["queue"] == "main" and js["node"] == "n1"
    assert js["waiting_time"] is not None and got[2].to_json()["processing_time"] is not None


async def test_slow_subscriber_drops_oldest(node_factory):
    node = await node_factory([ok])
    sub = node.events.subscribe(topics=["job/added"], maxsize=3)
    await node.jobs.add_many([("t/ok", {"i": i}) for i in range(10)])
    got = []
    while (n := sub.get_nowait()) is not None:
        got.append(n)
    assert len(got) == 3 and sub.dropped == 7
    sub.close()


async def test_history_retention(node_factory):
    @jobmesh.consumer("h/*")
    async def h(job):
        if job.topic == "h/fail":
            return JobResult.CANCEL

    node = await node_factory([h], history_ttl=0.05, failed_history_ttl=3600,
                              queues=[QueueConfig(name="main"), QueueConfig(name="keep", topics=["h/keep"], keep_jobs=True)])
    jobs = await node.jobs.add_many([("h/ok", None), ("h/fail", None), ("h/keep", None)])
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    await asyncio.sleep(0.1)
    removed = await node.jobs.purge_history()
    assert removed == 1
    assert await node.jobs.get(jobs[0].id) is None  # succeeded, past history_ttl
    assert (await node.jobs.get(jobs[1].id)).state is JobState.ERROR  # failed_history_ttl not reached
    assert (await node.jobs.get(jobs[2].id)).state is JobState.SUCCEEDED  # keep_jobs


async def test_restart_keeps_queued_jobs_and_stats(node_factory, tmp_path):
    node = await node_factory([], name="r")
    jobs = await node.jobs.add_many([("t/ok", {"i": i}) for i in range(30)])
    await node.stop()
    node2 = await node_factory([ok], name="r")
    assert (await node2.jobs.statistics())["overall"]["queued"] in range(0, 31)
    for j in jobs:
        assert (await node2.jobs.wait(j.id, timeout=5)).state is JobState.SUCCEEDED


async def test_window_refills_from_store(tmp_path):
    import jobmesh.engine.core as core
    node = jobmesh.Node(name="w", data_dir=tmp_path / "w")
    node.engine.window = 16  # a tiny window (refilled below 4): most jobs wait in the store
    async with node:
        jobs = await node.jobs.add_many([("t/ok", {"i": i}) for i in range(200)])
        info = await node.jobs.suspend_queue("main")
        assert info["in_memory"] <= 16
        await node.jobs.resume_queue("main")
        node.add_consumer(ok)
        for j in jobs:
            assert (await node.jobs.wait(j.id, timeout=10)).state is JobState.SUCCEEDED
    assert core.WINDOW >= 1024


async def test_capacity_snapshot_and_topology(node_factory):
    node = await node_factory([ok], capacity=4)
    jobs = await node.jobs.add_many([("t/ok", None)] * 20)
    for j in jobs:
        await node.jobs.wait(j.id, timeout=5)
    snap = node.capacity_snapshot()
    assert snap["slots"] == 4 and snap["active"] == 0 and snap["queued"] == 0 and snap["throughput"] > 0
    view = node.topology
    assert view.local == "n1" and view.leader == "n1" and view.instances[0].topics == ("t/ok",)
    events = []
    node.add_topology_listener(events.append)
    assert events[0].type.value == "TOPOLOGY_INIT"
    node.set_property("color", "blue")
    assert node.topology.instances[0].properties["color"] == "blue"
    assert node.started_at <= time.time()


async def test_shutdown_drain_lets_running_finish_and_keeps_the_rest(node_factory, tmp_path):
    @jobmesh.consumer("d/slow")
    async def slow(job):
        await asyncio.sleep(0.2)

    node = await node_factory([slow], name="d", capacity=2, queues=[QueueConfig(name="main", max_parallel=2)])
    jobs = await node.jobs.add_many([("d/slow", None)] * 6)
    await asyncio.sleep(0.05)
    await node.stop(grace=5)
    node2 = await node_factory([], name="d")
    after = [await node2.jobs.get(j.id) for j in jobs]
    states = [j.state for j in after]
    assert states.count(JobState.SUCCEEDED) == 2 and states.count(JobState.QUEUED) == 4
    assert all(j.retry_count == 0 for j in after)


async def test_shutdown_grace_over_requeues_without_counting_a_retry(node_factory):
    @jobmesh.consumer("d/forever")
    async def forever(job):
        await asyncio.sleep(60)

    node = await node_factory([forever], name="g")
    job = await node.jobs.add("d/forever")
    for _ in range(1000):  # up to 10 s: the machine may be busy
        if (await node.jobs.get(job.id)).state is JobState.ACTIVE:
            break
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await node.stop(grace=0.1)
    assert time.monotonic() - t0 < 5
    node2 = await node_factory([], name="g")
    j = await node2.jobs.get(job.id)
    assert j.state is JobState.QUEUED and j.retry_count == 0


async def test_add_after_stop_is_refused(node_factory):
    node = await node_factory([ok])
    await node.stop()
    with pytest.raises(Conflict):
        await node.jobs.add("t/ok")


async def test_suspend_holds_jobs_already_handed_to_the_pool(node_factory):
    gate = asyncio.Event()
    started = []

    @jobmesh.consumer("sus/x")
    async def held(job):
        started.append(job.id)
        await asyncio.wait_for(gate.wait(), 5)

    node = await node_factory([held], capacity=8, queues=[QueueConfig(name="main", max_parallel=2)])
    jobs = await node.jobs.add_many([("sus/x", None)] * 10)
    for _ in range(1000):  # up to 10 s: the machine may be busy
        if len(started) == 2:
            break
        await asyncio.sleep(0.01)
    await node.jobs.suspend_queue("main")
    gate.set()
    await asyncio.sleep(0.2)
    assert len(started) == 2  # the two running ones finished; nothing new started
    states = [(await node.jobs.get(j.id)).state for j in jobs]
    assert states.count(JobState.SUCCEEDED) == 2 and states.count(JobState.QUEUED) == 8
    await node.jobs.resume_queue("main")
    for j in jobs:
        assert (await node.jobs.wait(j.id, timeout=5)).state is JobState.SUCCEEDED


async def test_node_restarts_in_the_same_process(node_factory):
    node = await node_factory([ok], name="again")
    await node.stop()
    await node.start()
    job = await node.jobs.add("t/ok")
    assert (await node.jobs.wait(job.id, timeout=5)).state is JobState.SUCCEEDED


async def test_jobs_of_a_queue_no_longer_configured_move_to_the_matching_one(node_factory):
    node = await node_factory([], name="cfg", queues=[QueueConfig(name="main"),
                                                      QueueConfig(name="old", topics=["t/**"])])
    job = await node.jobs.add("t/ok")
    assert job.queue == "old"
    await node.stop()
    node2 = await node_factory([ok], name="cfg", queues=[QueueConfig(name="main")])
    done = await node2.jobs.wait(job.id, timeout=5)
    assert done.state is JobState.SUCCEEDED and done.queue == "main"


async def test_full_durability_end_to_end(node_factory):
    node = await node_factory([ok], durability="full")
    jobs = await node.jobs.add_many([("t/ok", None)] * 20)
    for j in jobs:
        assert (await node.jobs.wait(j.id, timeout=5)).state is JobState.SUCCEEDED


async def test_a_bug_in_the_managers_bookkeeping_is_logged_and_the_engine_goes_on(node_factory, monkeypatch):
    """The engine hands its messages to the job manager in its own turn (no mailbox hop): a handler
    that raises is logged there, and the engine neither crashes nor stops running jobs."""
    from structlog.testing import capture_logs

    import jobmesh.manager_inbox as inbox
    from jobmesh.engine import instructions as ins

    node = await node_factory([ok])
    real, broken = inbox._HANDLERS[ins.JobsStarted], []

    def started(manager, msg):
        if not broken:
            broken.append(True)
            raise RuntimeError("planted: bookkeeping bug")
        real(manager, msg)

    monkeypatch.setitem(inbox._HANDLERS, ins.JobsStarted, started)
    with capture_logs() as entries:
        first = await node.jobs.add("t/ok")
        assert (await node.jobs.wait(first.id, timeout=5)).state is JobState.SUCCEEDED
        second = await node.jobs.add("t/ok")
        assert (await node.jobs.wait(second.id, timeout=5)).state is JobState.SUCCEEDED
    assert broken == [True]
    [entry] = [e for e in entries if e["event"].startswith("job manager could not take an engine message")]
    assert entry["message"] == "JobsStarted" and "planted" in entry["error"]
    assert not [e for e in entries if "crash" in e["event"] or "restart" in e["event"]]
    # the statistics were counted anew from the store: no job stays counted as QUEUED or ACTIVE
    overall = (await node.jobs.statistics())["overall"]
    assert (overall["queued"], overall["active"]) == (0, 0)
