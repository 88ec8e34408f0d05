"""Shutdown that ends (issue 9): a sync consumer stuck in its thread does not keep a stopped node
alive. Its run goes back to QUEUED as an interrupted run (not a retry), durably, before the
process exits; the thread's late return is ignored; no traceback on the way."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import jobmesh
from jobmesh import JobState
from jobmesh.consumers.threads import SyncThreads
from helpers import REPO, NodeProcess, wait_until, wait_until_async

SLEEPY = textwrap.dedent(
    """
    import time
    import jobmesh

    @jobmesh.consumer("sync/sleep")
    def sleepy(job):
        time.sleep(job.properties.get("seconds", 60))
    """
)


def rows(db: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(db)
    try:
        return {i: (s, rc) for i, s, rc in conn.execute("SELECT id, state, retry_count FROM jobs")}
    finally:
        conn.close()


# -- the daemon threads -------------------------------------------------------------------

async def test_sync_threads_run_calls_and_reuse_an_idle_thread():
    threads = SyncThreads("t")
    try:
        assert await asyncio.wait_for(threads.run(lambda: 41 + 1), 5) == 42
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(threads.run(lambda: 1 / 0), 5)
        for _ in range(5):
            await asyncio.wait_for(threads.run(lambda: None), 5)
        assert threads.threads() == 1  # one after the other: the same thread
        gate = threading.Event()
        both = [threads.run(lambda: gate.wait(5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert threads.threads() == 2  # at once: one each
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*both), 5) == [True, True]
    finally:
        threads.shutdown()


async def test_an_abandoned_call_returns_into_nothing_and_shutdown_does_not_wait():
    threads = SyncThreads("t")
    gate = threading.Event()
    done = threading.Event()

    def stuck():
        gate.wait(10)
        done.set()
        return "late"

    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    fut = threads.run(stuck)
    await asyncio.sleep(0.02)
    fut.cancel()  # what a cancelled slot worker does to the future it awaited
    t0 = time.monotonic()
    threads.shutdown()
    assert time.monotonic() - t0 < 0.1
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("t-"))
    gate.set()
    assert done.wait(5)
    await asyncio.sleep(0.05)  # the late result reaches the loop and is dropped
    assert fut.cancelled() and errors == []
    await wait_until_async(lambda: threads.threads() == 0, timeout=5, what="thread ended")
    with pytest.raises(RuntimeError):
        threads.run(lambda: None)


async def test_an_idle_thread_ends_after_a_while_and_a_new_one_starts_on_demand():
    threads = SyncThreads("t", idle_exit=0.05)
    try:
        assert await asyncio.wait_for(threads.run(lambda: 1), 5) == 1
        await wait_until_async(lambda: threads.threads() == 0, timeout=5, what="idle exit")
        assert await asyncio.wait_for(threads.run(lambda: 2), 5) == 2
    finally:
        threads.shutdown()


# -- an embedded node ---------------------------------------------------------------------

async def test_embedded_stop_returns_after_the_grace_and_ignores_the_late_result(tmp_path):
    gate = threading.Event()
    calls: list[str] = []

    @jobmesh.consumer("sync/gate")
    def gated(job):
        calls.append(job.id)
        if len(calls) == 1:
            gate.wait(20)  # the first run is stuck until the test lets it go
        return "done"

    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    node = jobmesh.Node(name="e", data_dir=tmp_path / "e")
    node.add_consumer(gated)
    await node.start()
    job = await node.jobs.add("sync/gate")
    await wait_until_async(lambda: calls, timeout=5, what="the run started")
    t0 = time.monotonic()
    await node.stop(grace=0.3)
    took = time.monotonic() - t0
    assert took < 2.0, took
    assert rows(tmp_path / "e" / "jobs.db")[job.id] == ("QUEUED", 0)  # interrupted, not a retry

    again = jobmesh.Node(name="e", data_dir=tmp_path / "e")
    again.add_consumer(gated)
    await again.start()
    try:
        done = await again.jobs.wait(job.id, timeout=10)  # run again (at-least-once) ...
        assert done.state is JobState.SUCCEEDED and done.retry_count == 0
        gate.set()  # ... and now the abandoned first run returns too: ignored
        await asyncio.sleep(0.2)
        stats = (await again.jobs.statistics())["overall"]
        assert stats["finished"] == 1 and stats["failed"] == 0
        assert (await again.jobs.get(job.id)).state is JobState.SUCCEEDED
    finally:
        gate.set()
        await again.stop()
    assert len(calls) == 2 and errors == []


def test_an_embedding_program_exits_after_stop_with_a_stuck_sync_thread(tmp_path):
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(
        f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        import jobmesh, sleepy

        async def main():
            node = jobmesh.Node(name="x", data_dir={str(tmp_path / "x")!r})
            node.add_consumer(sleepy.sleepy)
            await node.start()
            job = await node.jobs.add("sync/sleep", {{"seconds": 60}})
            while (await node.jobs.get(job.id)).state is not jobmesh.JobState.ACTIVE:
                await asyncio.sleep(0.02)
            t0 = time.monotonic()
            await node.stop(grace=0.5)
            print("stopped after", round(time.monotonic() - t0, 2), job.id, flush=True)

        asyncio.run(main())
        """
    ))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                         cwd=REPO)
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr[-3000:]
    assert took < 10, took  # not the consumer's 60 s
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("stopped after")][-1]
    _, _, after, job_id = line.split()
    assert float(after) < 2.0
    assert rows(tmp_path / "x" / "jobs.db")[job_id] == ("QUEUED", 0)


# -- jobmesh node processes ----------------------------------------------------------------

def _submit_and_wait_active(node: NodeProcess) -> str:
    status, job = node.api("POST", "/api/v1/jobs", {"topic": "sync/sleep", "properties": {"seconds": 60}})
    assert status == 201, job
    wait_until(lambda: node.api("GET", f"/api/v1/jobs/{job['id']}")[1]["state"] == "ACTIVE", timeout=10,
               what="the job ACTIVE")
    return job["id"]


@pytest.mark.slow
def test_second_sigterm_ends_a_node_with_a_stuck_sync_consumer_at_once(tmp_path):
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    node = NodeProcess(tmp_path, "s", consumers=["sleepy"], bind=True)  # a real mesh node, discovery on
    try:
        node.start()
        job_id = _submit_and_wait_active(node)
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(15)
        took = time.monotonic() - t0
    finally:
        node.close()
    log = node.log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert took < 4.0, took
    assert "Traceback" not in log and "ActorStopped" not in log, log[-3000:]
    assert rows(tmp_path / "s" / "jobs.db")[job_id] == ("QUEUED", 0)  # durable before the exit

    again = NodeProcess(tmp_path, "s2", consumers=["sleepy"], data=tmp_path / "s")
    try:
        again.start()
        _, job = again.api("GET", f"/api/v1/jobs/{job_id}")
        assert job["state"] in ("QUEUED", "ACTIVE") and job["retry_count"] == 0  # not counted as a retry
    finally:
        again.close()


@pytest.mark.slow
def test_one_sigterm_ends_a_node_once_its_grace_is_over(tmp_path):
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    config = tmp_path / "grace.toml"
    config.write_text('[node]\nbind = ""\nshutdown_grace = 1.0\n')
    node = NodeProcess(tmp_path, "g", consumers=["sleepy"], config=config)
    try:
        node.start()
        job_id = _submit_and_wait_active(node)
        assert node.proc is not None
        t0 = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(15)
        took = time.monotonic() - t0
    finally:
        node.close()
    log = node.log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert 1.0 <= took < 4.0, took  # the grace, then out
    assert "Traceback" not in log, log[-3000:]
    assert "its thread is left behind" in log
    assert rows(tmp_path / "g" / "jobs.db")[job_id] == ("QUEUED", 0)
