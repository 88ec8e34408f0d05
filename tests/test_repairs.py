"""Node-local level-triggered repair (issue 9): the engine's watchdog, and why a stale object
can no longer put a stopped job back to work.

The watchdog compares what the engine believes (its windows, its slots) with the committed
rows and converges: a runnable job nobody dispatches is put back and counted. The second case
(a stop crossing the last run's result) was a door check on the queue actor; with one engine
owning every job record there is no second object to be stale, and a late message about the
job finds it final.
"""

from __future__ import annotations

import asyncio
import copy

import jobmesh
from jobmesh import Job, JobState
from helpers import wait_until_async
from jobmesh.engine.events import HandoffReturned, WatchdogDue


async def test_a_queued_job_no_queue_was_told_about_is_put_back_counted_and_run(tmp_path) -> None:
    ran: list[str] = []

    @jobmesh.consumer("rep/work")
    async def work(job: Job) -> None:
        ran.append(job.id)

    async with jobmesh.Node(name="w", data_dir=tmp_path / "w") as node:
        node.add_consumer(work)
        node.engine.watchdog_period = 0.2  # from the next round on
        node.engine.tell(WatchdogDue())
        # a job committed behind the queue's back: the transition that should have told it is "lost"
        job = Job(id=node.jobs.ids.next(), topic="rep/work", properties={}, queue="main", origin="w",
                  created=node.clock(), max_retries=10)
        await node.store.insert([job])
        await wait_until_async(lambda: ran == [job.id], timeout=5.0, what="the lost job ran")
        assert node.repairs()["watchdog_requeue"] == 1
        stored = await node.jobs.get(job.id)
        assert stored is not None and stored.state is not JobState.QUEUED


async def test_a_job_sent_back_to_its_queue_after_it_was_stopped_is_not_taken(tmp_path) -> None:
    """A stop that crosses the result of the job's last run: the part that requeues it holds an
    object that still says QUEUED while the row says STOPPED (found by the simulator)."""
    ran: list[str] = []

    @jobmesh.consumer("rep/late")
    async def late(job: Job) -> None:
        ran.append(job.id)

    async with jobmesh.Node(name="s", data_dir=tmp_path / "s") as node:
        added = await node.jobs.add("rep/late", {})  # no consumer yet: it waits in the window
        stale = await node.jobs.get(added.id)
        assert stale is not None and stale.state is JobState.QUEUED
        stale = copy.copy(stale)
        stopped = await node.jobs.stop(added.id)
        assert stopped.state is JobState.STOPPED
        # what used to carry the stale object back: a job coming home from a peer, after the stop
        node.engine.tell(HandoffReturned([(stale.id, stale.attempt)], "target left the topology"))
        node.add_consumer(late)
        await asyncio.sleep(0.3)
        assert ran == []
        final = await node.jobs.get(added.id)
        assert final is not None and final.state is JobState.STOPPED
