"""Crash and shutdown of real ``jobmesh node`` processes: kill -9 loses nothing, SIGTERM drains,
a poison job that keeps killing its node ends GIVEN_UP."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import threading
import time
from pathlib import Path

import pytest

import jobmesh
from jobmesh import JobState, QueueConfig
from helpers import NodeProcess, wait_until

pytestmark = pytest.mark.slow

CONSUMERS = textwrap.dedent(
    """
    import asyncio, os
    import jobmesh

    START_LOG = os.environ.get("CRASH_START_LOG")

    @jobmesh.consumer("crash/work")
    async def work(job):
        if START_LOG:
            with open(START_LOG, "a") as f:
                f.write(job.id + "\\n")
        await asyncio.sleep(job.properties.get("sleep", 0.01))

    @jobmesh.consumer("crash/poison")
    async def poison(job):
        os.kill(os.getpid(), 9)
    """
)


def rows(db: Path) -> dict[str, tuple[str, int]]:
    conn = sqlite3.connect(db)
    try:
        return {i: (s, rc) for i, s, rc in conn.execute("SELECT id, state, retry_count FROM jobs")}
    finally:
        conn.close()


async def test_kill_9_with_hundreds_in_flight_loses_nothing(tmp_path, monkeypatch):
    (tmp_path / "crash_consumers.py").write_text(CONSUMERS)
    start_log = tmp_path / "starts.log"
    accepted: list[str] = []
    stop_submitting = threading.Event()
    node = NodeProcess(tmp_path, "k", consumers=["crash_consumers"], env={"CRASH_START_LOG": str(start_log)},
                       extra=["--capacity", "32"])
    try:
        node.start()

        def submit() -> None:
            i = 0
            while not stop_submitting.is_set():
                body = [{"topic": "crash/work", "properties": {"i": i + k, "sleep": 0.05}} for k in range(25)]
                i += 25
                try:
                    status, answer = node.api("POST", "/api/v1/jobs", body, timeout=5)
                except OSError:
                    return  # the node is gone
                if status == 201:
                    accepted.extend(j["id"] for j in answer)

        t = threading.Thread(target=submit, daemon=True)
        t.start()

        def busy() -> bool:
            status, stats = node.api("GET", "/api/v1/stats")
            o = stats["overall"]
            return len(accepted) >= 400 and o["active"] >= 10 and o["finished"] >= 50

        wait_until(busy, timeout=30, interval=0.05)
        node.kill()  # kill -9 in the middle of adds, starts and finishes
        stop_submitting.set()
        t.join(10)
    finally:
        stop_submitting.set()
        node.close()

    before = rows(tmp_path / "k" / "jobs.db")
    assert set(accepted) <= set(before)  # every add that returned is on disk
    active_at_crash = {i for i, (s, _) in before.items() if s == "ACTIVE"}
    assert active_at_crash  # there really were jobs in flight

    # Restart (in-process this time) with the same consumer: every job ends SUCCEEDED.
    import importlib.util
    monkeypatch.setenv("CRASH_START_LOG", str(start_log))
    spec = importlib.util.spec_from_file_location("crash_consumers_again", tmp_path / "crash_consumers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    async with jobmesh.Node(name="k", data_dir=tmp_path / "k", capacity=64,
                            queues=[QueueConfig(name="main", max_parallel=64)]) as n2:
        n2.add_consumer(mod.work)
        for i in active_at_crash:
            j = await n2.jobs.get(i)
            assert j.retry_count >= 1  # the interrupted run counted as a retry
        deadline = time.monotonic() + 60
        while (await n2.jobs.statistics())["overall"]["queued"] + (await n2.jobs.statistics())["overall"]["active"]:
            assert time.monotonic() < deadline, "jobs did not drain after restart"
            await asyncio.sleep(0.05)
    after = rows(tmp_path / "k" / "jobs.db")
    assert set(after) == set(before)
    assert {s for s, _ in after.values()} == {"SUCCEEDED"}
    started = set(start_log.read_text().split())
    assert set(accepted) <= started  # at least once


async def test_sigterm_drains_running_jobs_and_keeps_the_rest_queued(tmp_path):
    (tmp_path / "crash_consumers.py").write_text(CONSUMERS)
    node = NodeProcess(tmp_path, "t", consumers=["crash_consumers"], extra=["--capacity", "2"])
    try:
        node.start()
        status, jobs = node.api("POST", "/api/v1/jobs", [{"topic": "crash/work", "properties": {"sleep": 0.6}}] * 8)
        assert status == 201
        wait_until(lambda: node.api("GET", "/api/v1/stats")[1]["overall"]["active"] == 2, timeout=10)
        t0 = time.monotonic()
        code = node.terminate(timeout=20)
        assert code == 0 and time.monotonic() - t0 < 5
    finally:
        node.close()
    after = rows(tmp_path / "t" / "jobs.db")
    states = sorted(s for s, _ in after.values())
    assert states.count("SUCCEEDED") == 2 and states.count("QUEUED") == 6 and "ACTIVE" not in states
    assert all(rc == 0 for _, rc in after.values())


async def test_poison_job_ends_given_up_after_its_retries(tmp_path):
    (tmp_path / "crash_consumers.py").write_text(CONSUMERS)
    (tmp_path / "node.toml").write_text(textwrap.dedent(
        """
        [node]
        bind = ""

        [[queue]]
        name = "poison"
        topics = ["crash/poison"]
        retries = 2
        """
    ))
    cfg = jobmesh.NodeConfig.from_dict({"queue": [{"name": "poison", "topics": ["crash/poison"], "retries": 2}]})
    async with jobmesh.Node(name="p", data_dir=tmp_path / "p", queues=cfg.queues) as n:
        job = await n.jobs.add("crash/poison")
        ok = await n.jobs.add("crash/work")
    crashes = 0
    for _ in range(6):
        proc = NodeProcess(tmp_path, "p", consumers=["crash_consumers"], http=False, config=tmp_path / "node.toml")
        try:
            proc.start()
            try:
                proc.proc.wait(5)  # type: ignore[union-attr]
                crashes += 1
                continue
            except Exception:
                pass  # still alive: the poison job no longer runs
            wait_until(lambda: rows(tmp_path / "p" / "jobs.db")[ok.id][0] == "SUCCEEDED", timeout=10)
            break
        finally:
            proc.close()
    state, retry_count = rows(tmp_path / "p" / "jobs.db")[job.id]
    assert crashes == 3  # first run + 2 retries, each killed the node
    assert state == JobState.GIVEN_UP.value and retry_count == 2
