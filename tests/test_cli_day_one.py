"""Day one (issue 13), client side, against a real two-node mesh: the origin ``a`` has no
consumers, the target ``b`` has them all, so every job runs offloaded. Each test runs the real
``jobmesh`` command and reads its exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import NodeProcess, fetch_json, stop_all, wait_until

CONSUMERS = textwrap.dedent(
    """
    import asyncio
    import jobmesh

    @jobmesh.consumer("d1/ok")
    async def ok(job):
        return None

    @jobmesh.consumer("d1/sleep")
    async def sleep(job, ctx):
        for _ in range(int(job.properties.get("seconds", 1) * 20)):
            if ctx.is_stopped():
                return ctx.result().cancelled()
            await asyncio.sleep(0.05)

    @jobmesh.consumer("d1/deaf")
    async def deaf(job):  # ignores stop requests: cancelled after the stop grace
        await asyncio.sleep(30)
    """
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    work = tmp_path_factory.mktemp("day1")
    (work / "d1_consumers.py").write_text(CONSUMERS)
    (work / "fast.toml").write_text("[node]\nstop_grace = 1.0\n[discovery]\nheartbeat_interval = 0.2\n"
                                    "heartbeat_timeout = 1.5\n")
    a = NodeProcess(work, "a", bind=True, config=work / "fast.toml")
    b = NodeProcess(work, "b", bind=True, consumers=["d1_consumers"], seeds=[a.endpoint or ""],  # type: ignore[list-item]
                    config=work / "fast.toml")
    nodes = {"a": a, "b": b}
    try:
        a.start(wait=False)
        b.start(wait=False)
        a.wait_healthy()
        b.wait_healthy()
        wait_until(lambda: len(fetch_json("GET", a.url + "/api/v1/topology")["instances"]) == 2 and
                   "d1/ok" in str(fetch_json("GET", a.url + "/api/v1/topology")), timeout=20, what="a sees b")
        yield nodes
    finally:
        stop_all(list(nodes.values()))
    for n in nodes.values():  # nothing left running
        assert n.proc is not None and n.proc.poll() is not None


def jm(*args: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMESH_")}
    env["JOBMESH_URL"] = url
    return subprocess.run([sys.executable, "-m", "jobmesh", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def add(url: str, topic: str, **props: Any) -> dict[str, Any]:
    return fetch_json("POST", url + "/api/v1/jobs", {"topic": topic, "properties": props})


def get(url: str, job_id: str) -> dict[str, Any]:
    return fetch_json("GET", url + f"/api/v1/jobs/{job_id}")


def test_submit_warns_when_no_node_can_run_the_topic(mesh: dict[str, NodeProcess]) -> None:
    r = jm("submit", "d1/slep", url=mesh["a"].url)  # type: ignore[arg-type]
    assert r.returncode == 0
    assert r.stderr.strip() == ("jobmesh: warning: no node in the topology has a consumer for d1/slep (did you "
                                "mean d1/sleep?); the job stays QUEUED until a node with one joins")
    r = jm("submit", "d1/ok", url=mesh["a"].url)  # type: ignore[arg-type]
    assert r.returncode == 0 and r.stderr == ""  # b has it: no word


def test_submit_wait_says_the_id_at_once_and_the_progress(mesh: dict[str, NodeProcess]) -> None:
    r = jm("submit", "d1/sleep", "-p", "seconds=0.6", "--wait", url=mesh["a"].url)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr
    job_id, state = r.stdout.split()[:2]
    err = r.stderr.splitlines()
    assert err[0] == f"job {job_id} added; waiting up to 5 min for it to finish (Ctrl-C stops waiting, not the job)"
    assert "  ACTIVE, on b" in err  # it ran at the target, and the origin said so while waiting
    assert state == "SUCCEEDED"


def test_a_target_answers_for_the_copy_it_runs_then_points_to_the_origin(mesh: dict[str, NodeProcess]) -> None:
    a, b = mesh["a"], mesh["b"]
    job = add(a.url, "d1/sleep", seconds=3)  # type: ignore[arg-type]  # long enough for two CLI runs on a busy machine
    wait_until(lambda: get(a.url, job["id"])["state"] == "ACTIVE", timeout=10, what="the job running at b")  # type: ignore[arg-type]
    r = jm("job", job["id"], url=b.url)  # type: ignore[arg-type]
    assert r.returncode == 0 and "origin:      a" in r.stdout and "target:      b" in r.stdout
    r = jm("jobs", url=b.url)  # type: ignore[arg-type]
    row = next(line for line in r.stdout.splitlines() if line.startswith(job["id"]))
    assert row.split()[-1] == "b"  # TARGET of a job b runs for a
    wait_until(lambda: get(a.url, job["id"])["state"] == "SUCCEEDED", timeout=10, what="the job done")  # type: ignore[arg-type]
    wait_until(lambda: jm("job", job["id"], url=b.url).returncode == 1, timeout=10, what="b to forget its copy")  # type: ignore[arg-type]
    r = jm("job", job["id"], url=b.url)  # type: ignore[arg-type]
    assert r.stderr.strip() == (f"jobmesh: job {job['id']} is not kept here: it ran here for its origin a, which keeps "
                                f"its record; ask a (jobmesh job {job['id']} --url {a.url}) (HTTP 404)")


def test_job_ids_take_a_prefix_and_topics_a_pattern(mesh: dict[str, NodeProcess]) -> None:
    url = mesh["a"].url
    job = add(url, "d1/ok")  # type: ignore[arg-type]
    ids = [j["id"] for j in fetch_json("GET", url + "/api/v1/jobs?limit=10000")["jobs"]]  # type: ignore[operator]
    unique = next(job["id"][:n] for n in range(4, len(job["id"]) + 1)
                  if sum(1 for i in ids if i.startswith(job["id"][:n])) == 1)
    r = jm("job", unique, "--json", url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == job["id"], r.stderr
    shared = os.path.commonprefix(ids)  # the ms-clock digits all these jobs share: ambiguous
    assert len(shared) >= 4 and len(ids) > 1
    r = jm("job", shared, url=url)  # type: ignore[arg-type]
    assert r.returncode == 1 and "is ambiguous" in r.stderr and "(HTTP 400)" in r.stderr
    r = jm("jobs", "--topic", "d1/*", "--json", url=url)  # type: ignore[arg-type]
    topics = {j["topic"] for j in json.loads(r.stdout)["jobs"]}
    assert r.returncode == 0 and "d1/ok" in topics and topics <= {"d1/ok", "d1/sleep", "d1/slep", "d1/deaf"}
    r = jm("jobs", "--topic", "d1/*", "--limit", "1", url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and "showing the newest 1 of " in r.stdout
    assert r.stdout.splitlines()[1].split()[6].endswith("Z")  # CREATED (date, time) keeps UTC's Z


def test_stop_says_what_happens_and_remove_what_it_did(mesh: dict[str, NodeProcess]) -> None:
    url = mesh["a"].url
    job = add(url, "d1/deaf")  # type: ignore[arg-type]
    wait_until(lambda: get(url, job["id"])["state"] == "ACTIVE", timeout=10, what="deaf running")  # type: ignore[arg-type]
    b = mesh["b"].url
    r = jm("stop", job["id"], url=b)  # type: ignore[arg-type]  # at the target, which runs it
    assert r.returncode == 0
    assert r.stdout.strip() == (f"{job['id']}  stopping: the consumer was asked to stop (ctx.is_stopped() is true); "
                                f"it has 1 s to return, then an async consumer is cancelled; then the job is "
                                f"STOPPED (jobmesh stop {job['id']} --wait waits for it)")
    r = jm("stop", job["id"], "--wait", url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and r.stdout.split()[:2] == [job["id"], "STOPPED"], (r.stdout, r.stderr)

    queued = add(url, "d1/slep")  # type: ignore[arg-type]  # nobody can run it: stays QUEUED
    r = jm("remove", queued["id"], url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and r.stdout.startswith(f"{queued['id']}  DROPPED: it will not run; its record stays")
    r = jm("remove", queued["id"], url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and r.stdout.strip() == f"{queued['id']}  deleted"


def test_topology_fits_100_columns_and_stats_say_failed_runs(mesh: dict[str, NodeProcess]) -> None:
    url = mesh["a"].url
    r = jm("topology", url=url)  # type: ignore[arg-type]
    assert r.returncode == 0 and max(len(line) for line in r.stdout.splitlines()) <= 100, r.stdout
    assert "a * (here)" in r.stdout and "d1/deaf" in r.stdout
    r = jm("stats", url=mesh["b"].url)  # type: ignore[arg-type]
    assert r.returncode == 0 and "FAILED RUNS" in r.stdout and "attempts that failed and were retried" in r.stdout
    assert " ms " in r.stdout or " s " in r.stdout  # durations rounded, with their unit
