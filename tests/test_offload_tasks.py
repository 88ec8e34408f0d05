"""Issue 12's per-job semantics where a target is involved, with real ``jobmesh node`` processes:
node a has no consumer for the ``far/*`` tasks, node b has them, so every such job added at a
runs at b. The result travels back to the origin, a delayed job starts at b no earlier than its
``not_before``, and b enforces the time limit."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import jobmesh
from helpers import NodeProcess, wait_until
from jobmesh.job import parse_iso

pytestmark = pytest.mark.timeout(120)

TASKS = '''
import asyncio, time, jobmesh

@jobmesh.task("far/answer")
async def answer(question: str) -> dict:
    return {"question": question, "answer": 42, "started": time.time()}

@jobmesh.task("far/list")
def listing(n: int) -> list:
    return list(range(n))

@jobmesh.task("far/bad")
async def bad() -> object:
    return {1, 2}          # a set: not JSON

@jobmesh.task("far/slow", timeout=0.5)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"

@jobmesh.task("far/blocking", timeout=0.5)
def blocking(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:   # a sync task busy in its thread
        time.sleep(0.01)
    return "done"
'''

CONFIG = """
[node]
capacity = 4
[discovery]
heartbeat_interval = 0.2
heartbeat_timeout = 1.0
[[queue]]
name = "main"
retries = 1
retry_delay = 0.1
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("far")
    (tmp / "far_tasks.py").write_text(TASKS)
    (tmp / "mesh.toml").write_text(textwrap.dedent(CONFIG))
    a = NodeProcess(tmp, "a", bind=True, config=tmp / "mesh.toml")
    b = None
    try:
        a.start()
        b = NodeProcess(tmp, "b", consumers=["far_tasks"], bind=True, seeds=[a.endpoint], config=tmp / "mesh.toml")
        b.start()

        def both_see_b() -> bool:
            for n in (a, b):
                status, topo = n.api("GET", "/api/v1/topology")
                if status != 200 or sorted(i["name"] for i in topo["instances"]) != ["a", "b"]:
                    return False
            return True

        wait_until(both_see_b, timeout=20, interval=0.1)
        yield a, b
    finally:
        for n in (a, b):
            if n is not None:
                n.close()


def submit(n: NodeProcess, body: dict[str, Any]) -> dict[str, Any]:
    status, job = n.api("POST", "/api/v1/jobs", body)
    assert status == 201, job
    return job


def final(n: NodeProcess, job_id: str, timeout: float = 15.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, j = n.api("GET", f"/api/v1/jobs/{job_id}?wait=1")
        assert status == 200, j
        return j if j["state"] in ("SUCCEEDED", "GIVEN_UP", "ERROR", "STOPPED", "DROPPED") else None
    return wait_until(done, timeout=timeout)


def test_the_result_travels_back_to_the_origin(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = mesh
    job = submit(a, {"topic": "far/answer", "properties": {"question": "life"}})
    done = final(a, job["id"])
    assert done["state"] == "SUCCEEDED" and done["target"] == "b" and done["origin"] == "a"
    assert done["result"]["answer"] == 42 and done["result"]["question"] == "life"
    lst = final(a, submit(a, {"topic": "far/list", "properties": {"n": 3}})["id"])
    assert lst["result"] == [0, 1, 2] and lst["target"] == "b"


def test_the_result_reaches_a_client_handle(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = mesh
    with jobmesh.SyncClient(a.url) as client:
        h = client.add("far/answer", {"question": "handle"})
        assert h.result(timeout=15)["answer"] == 42


def test_a_result_that_is_not_json_fails_the_run_saying_why(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = mesh
    done = final(a, submit(a, {"topic": "far/bad"})["id"])
    assert done["state"] == "GIVEN_UP" and done["result"] is None
    assert "return value is not JSON-compatible" in done["result_message"] and "set" in done["result_message"]


def test_a_delayed_job_starts_at_the_target_no_earlier_than_due(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = mesh
    job = submit(a, {"topic": "far/answer", "properties": {"question": "later"}, "delay": 1.5})
    due = parse_iso(job["not_before"])
    time.sleep(0.5)
    status, j = a.api("GET", f"/api/v1/jobs/{job['id']}")
    assert j["state"] == "QUEUED" and j["target"] is None  # not moved before it is due
    done = final(a, job["id"])
    assert done["state"] == "SUCCEEDED" and done["target"] == "b"
    started = done["result"]["started"]
    assert due - 0.05 <= started <= due + 1.5, started - due  # no earlier, and about a tick after at most


def test_the_target_enforces_the_time_limit(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, _ = mesh
    t0 = time.monotonic()
    slow = submit(a, {"topic": "far/slow", "properties": {"seconds": 30}})
    blocking = submit(a, {"topic": "far/blocking", "properties": {"seconds": 30}})
    own = submit(a, {"topic": "far/slow", "properties": {"seconds": 30}, "timeout": 0.3})
    fits = submit(a, {"topic": "far/slow", "properties": {"seconds": 1.0}, "timeout": 5})
    for j, limit in ((slow, 0.5), (blocking, 0.5), (own, 0.3)):
        done = final(a, j["id"], timeout=20)
        assert done["state"] == "GIVEN_UP" and done["target"] == "b", done
        assert done["result_message"] == f"time limit {limit:g} s exceeded" and done["retry_count"] == 1
    assert time.monotonic() - t0 < 15
    assert final(a, fits["id"])["result"] == "woke"  # the job's own, longer limit travelled with it
