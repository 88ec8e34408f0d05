"""Offloading with real ``jobmesh node`` processes (issue 4): routing by capability, progress
flowing back, offloading settings across the topology, and failover (kill -9 of a target,
kill -9 of an origin, SIGSTOP of a target longer than the heartbeat timeout)."""

from __future__ import annotations

import signal
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import NodeProcess, wait_until

pytestmark = pytest.mark.timeout(120)

CONSUMERS = '''
import asyncio, jobmesh

@jobmesh.consumer("off/slow")
async def slow(job, ctx):
    steps = int(job.properties.get("steps", 3))
    ctx.init_progress(steps=steps)
    for i in range(steps):
        ctx.log("step %d of %s", i + 1, job.properties.get("name", job.id))
        await asyncio.sleep(float(job.properties.get("step", 0.2)))
        ctx.increment_progress()
    return ctx.result().message("done").succeeded()

@jobmesh.consumer("off/fast")
async def fast(job):
    await asyncio.sleep(float(job.properties.get("sleep", 0.0)))
'''

ONLY_FAST = '''
import asyncio, jobmesh

@jobmesh.consumer("off/fast")
async def fast(job):
    await asyncio.sleep(float(job.properties.get("sleep", 0.0)))
'''

CONFIG = """
[node]
capacity = {capacity}
[discovery]
heartbeat_interval = 0.2
heartbeat_timeout = 1.0
"""


def config(tmp: Path, name: str, capacity: int = 4) -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(textwrap.dedent(CONFIG.format(capacity=capacity)))
    return p


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "off_consumers.py").write_text(CONSUMERS)
    (tmp_path / "off_fast.py").write_text(ONLY_FAST)
    started: list[NodeProcess] = []

    class Mesh:
        def node(self, name: str, consumers: list[str], seeds: list[NodeProcess] = (), capacity: int = 4,
                 data: Path | None = None) -> NodeProcess:
            n = NodeProcess(tmp_path, name, consumers=consumers, bind=True,
                            seeds=[s.endpoint for s in seeds], config=config(tmp_path, name, capacity), data=data)
            started.append(n)
            return n.start()

        def restart(self, old: NodeProcess, seeds: list[NodeProcess] = ()) -> NodeProcess:
            """The same node again (name, data, ports), joining through ``seeds``."""
            n = NodeProcess(tmp_path, old.name, http=False, data=old.data)
            n.bind_port, n.endpoint = old.bind_port, old.endpoint
            n.http_port, n.url = old.http_port, old.url
            n.args = list(old.args)
            for seed in seeds:
                if seed.endpoint not in n.args:
                    n.args += ["--seed", seed.endpoint]
            started.append(n)
            return n.start()

    try:
        yield Mesh()
    finally:
        for n in started:
            n.close()


def members(n: NodeProcess) -> list[str]:
    status, topo = n.api("GET", "/api/v1/topology")
    return sorted(i["name"] for i in topo["instances"]) if status == 200 else []


def wait_members(nodes: list[NodeProcess], names: list[str], timeout: float = 20.0) -> None:
    wait_until(lambda: all(members(n) == sorted(names) for n in nodes), timeout=timeout, interval=0.1)


def add(n: NodeProcess, items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    status, jobs = n.api("POST", "/api/v1/jobs", [{"topic": t, "properties": p} for t, p in items])
    assert status == 201, jobs
    return [j["id"] for j in jobs]


def job(n: NodeProcess, job_id: str) -> dict[str, Any]:
    status, j = n.api("GET", f"/api/v1/jobs/{job_id}")
    assert status == 200, j
    return j


def all_final(n: NodeProcess, ids: list[str]) -> list[dict[str, Any]] | None:
    jobs = [job(n, i) for i in ids]
    return jobs if all(j["state"] in ("SUCCEEDED", "GIVEN_UP", "ERROR", "STOPPED", "DROPPED") for j in jobs) else None


def test_job_added_where_nobody_consumes_runs_elsewhere_with_live_progress(mesh: Any) -> None:
    a = mesh.node("a", ["off_fast"])  # a has no consumer for off/slow
    b = mesh.node("b", ["off_consumers"], seeds=[a])
    wait_members([a, b], ["a", "b"])
    [jid] = add(a, [("off/slow", {"steps": 4, "step": 0.4, "name": "remote"})])

    # while it runs at b, a's record says ACTIVE at target b and shows b's progress and log
    def running_with_progress() -> dict[str, Any] | None:
        j = job(a, jid)
        return j if j["state"] == "ACTIVE" and j["progress"]["log"] and j["progress"]["steps"] == 4 else None

    j = wait_until(running_with_progress, timeout=10)
    assert j["target"] == "b" and j["origin"] == "a"
    assert j["progress"]["log"][0] == "step 1 of remote"
    done = wait_until(lambda: all_final(a, [jid]), timeout=10)[0]
    assert done["state"] == "SUCCEEDED" and done["target"] == "b"
    assert done["result_message"] == "done" and done["progress"]["step"] == 4
    assert [line for line in done["progress"]["log"]] == [f"step {i} of remote" for i in range(1, 5)]
    # statistics at the origin count it; the target keeps no record of it
    _, stats = a.api("GET", "/api/v1/stats")
    assert stats["topics"]["off/slow"]["finished"] == 1
    assert b.api("GET", f"/api/v1/jobs/{jid}")[0] == 404


def test_a_disabled_topic_never_runs_there_and_the_setting_survives_a_restart(mesh: Any) -> None:
    a = mesh.node("a", ["off_consumers"])
    b = mesh.node("b", ["off_consumers"], seeds=[a])
    wait_members([a, b], ["a", "b"])
    # set on b, for a: forwarded over transfer, in effect within a heartbeat everywhere
    status, answer = b.api("PUT", "/api/v1/offloading/a/off/fast", {"enabled": False})
    assert status == 200, answer

    def a_disabled(n: NodeProcess) -> bool:
        _, view = n.api("GET", "/api/v1/offloading")
        node_a = next(x for x in view["nodes"] if x["name"] == "a")
        return {t["topic"]: t["enabled"] for t in node_a["topics"]}.get("off/fast") is False

    wait_until(lambda: a_disabled(a) and a_disabled(b), timeout=5)
    ids = add(a, [("off/fast", {"sleep": 0.01}) for _ in range(30)])
    jobs = wait_until(lambda: all_final(a, ids), timeout=20)
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    assert {j["target"] for j in jobs} == {"b"}  # not one ran at a, although a added them

    a.terminate()
    a2 = mesh.restart(a, seeds=[b])
    wait_members([a2, b], ["a", "b"])
    wait_until(lambda: a_disabled(a2) and a_disabled(b), timeout=5)
    ids = add(a2, [("off/fast", {}) for _ in range(5)])
    jobs = wait_until(lambda: all_final(a2, ids), timeout=20)
    assert {j["target"] for j in jobs} == {"b"}
    # enabled again: a runs its own jobs (b busy with nothing is fine either way; a takes some)
    status, _ = a2.api("PUT", "/api/v1/offloading/a/off/fast", {"enabled": True})
    assert status == 200
    wait_until(lambda: not a_disabled(b), timeout=5)
    # an unknown node is a 404, a bad body a 400
    assert b.api("PUT", "/api/v1/offloading/nope/off/fast", {"enabled": True})[0] == 404
    assert b.api("PUT", "/api/v1/offloading/a/off/fast", {"enabled": "yes"})[0] == 400


def test_kill_9_of_a_target_mid_run_reassigns_its_jobs(mesh: Any) -> None:
    a = mesh.node("a", ["off_fast"])
    b = mesh.node("b", ["off_consumers"], seeds=[a])
    wait_members([a, b], ["a", "b"])
    ids = add(a, [("off/slow", {"steps": 12, "step": 0.25, "name": f"j{i}"}) for i in range(6)])
    wait_until(lambda: sum(job(a, i)["state"] == "ACTIVE" for i in ids) >= 3, timeout=10)
    c = mesh.node("c", ["off_consumers"], seeds=[a])
    wait_members([a, c], ["a", "b", "c"])
    running_at_b = [i for i in ids if job(a, i)["state"] == "ACTIVE" and job(a, i)["target"] == "b"]
    assert running_at_b
    b.kill()
    killed = time.monotonic()
    # running again elsewhere within the heartbeat timeout (1 s) plus a second
    wait_until(lambda: any(job(a, i)["state"] == "ACTIVE" and job(a, i)["target"] == "c" for i in ids),
               timeout=10, interval=0.05)
    assert time.monotonic() - killed < 1.0 + 1.0 + 0.8  # + polling slack on a shared machine
    jobs = wait_until(lambda: all_final(a, ids), timeout=30)
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    assert {j["target"] for j in jobs if j["id"] in running_at_b} == {"c"}


def test_kill_9_of_an_origin_mid_run_gets_its_results_when_back(mesh: Any) -> None:
    a = mesh.node("a", ["off_fast"])
    b = mesh.node("b", ["off_consumers"], seeds=[a])
    wait_members([a, b], ["a", "b"])
    ids = add(a, [("off/slow", {"steps": 3, "step": 0.3, "name": f"o{i}"}) for i in range(4)])
    wait_until(lambda: all(job(a, i)["state"] == "ACTIVE" for i in ids), timeout=10)
    a.kill()
    # b finishes them while a is away: the results wait in b's durable outbox
    outbox = b.data / "jobs.db"

    def in_outbox() -> int:
        with sqlite3.connect(outbox) as db:
            # results kept in their copy's row (schema 8), and any in the older outbox table
            return db.execute("SELECT (SELECT count(*) FROM transfer_outbox) + (SELECT count(*) FROM jobs WHERE outbox IS NOT NULL)").fetchone()[0]

    wait_until(lambda: in_outbox() == len(ids), timeout=15)
    a2 = mesh.restart(a, seeds=[b])
    jobs = wait_until(lambda: all_final(a2, ids), timeout=20)
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    # the results of the runs at b were applied: no re-run, nothing counted as a retry
    assert {j["retry_count"] for j in jobs} == {0} and {j["target"] for j in jobs} == {"b"}
    assert {j["result_message"] for j in jobs} == {"done"}
    wait_until(lambda: in_outbox() == 0, timeout=10)


def test_sigstop_of_a_target_longer_than_the_timeout_gives_one_final_state(mesh: Any) -> None:
    a = mesh.node("a", ["off_fast"])
    b = mesh.node("b", ["off_consumers"], seeds=[a])
    wait_members([a, b], ["a", "b"])
    ids = add(a, [("off/slow", {"steps": 10, "step": 0.4, "name": f"s{i}"}) for i in range(4)])
    wait_until(lambda: all(job(a, i)["state"] == "ACTIVE" for i in ids), timeout=10)
    c = mesh.node("c", ["off_consumers"], seeds=[a])
    wait_members([a, c], ["a", "b", "c"])
    assert b.proc is not None
    b.proc.send_signal(signal.SIGSTOP)
    try:
        # a declares b failed and runs the jobs at c
        seen: list[Any] = []

        def all_at_c() -> bool:
            seen[:] = [(job(a, i)["state"], job(a, i)["target"]) for i in ids]
            return all(t == "c" for _, t in seen)

        try:
            wait_until(all_at_c, timeout=10, interval=0.05)
        except AssertionError:
            raise AssertionError(f"jobs at a: {seen}\n{a.log_tail(60)}") from None
    finally:
        time.sleep(0.5)
        b.proc.send_signal(signal.SIGCONT)
    jobs = wait_until(lambda: all_final(a, ids), timeout=30)
    assert {j["state"] for j in jobs} == {"SUCCEEDED"}
    # b comes back and finishes its stale copies: their results are acknowledged, never recorded
    wait_members([a, b, c], ["a", "b", "c"])
    time.sleep(2.0)
    _, stats = a.api("GET", "/api/v1/stats")
    assert stats["topics"]["off/slow"]["finished"] == len(ids)  # each job finished exactly once
    assert stats["overall"]["active"] == 0 and stats["overall"]["queued"] == 0
    with sqlite3.connect(a.data / "jobs.db") as db:
        rows = db.execute("SELECT id, state FROM jobs WHERE topic='off/slow'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(ids) and {r[1] for r in rows} == {"SUCCEEDED"}
