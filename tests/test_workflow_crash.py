"""A workflow whose step's node is killed (kill -9) mid-step still completes: real ``jobmesh node`` processes.

Two cases. The origin runs the step and dies: it is restarted (its stores are on its
disk) and the workflow goes on from where it was, the interrupted step job run again
(same job, counted as a retry), no step job added twice. Another node runs an offloaded
step and dies: the origin takes the job back once the failure is detected and the
workflow completes without any restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from examples.asset_processing.run import MeshNode, api, wait_for, wait_healthy, wait_topology

pytestmark = pytest.mark.slow

FLOW_MODULE = '''
import asyncio
import jobmesh
from jobmesh.workflow import Step, Workflow


@jobmesh.consumer("crash/prepare")
async def prepare(job, ctx):
    return ctx.result().output(prepared_on=job.target).succeeded()


@jobmesh.consumer("crash/work")
async def work(job, ctx):
    for _ in range(int(float(job.properties.get("work_seconds", 2)) * 20)):  # bounded
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.05)
    return ctx.result().output(worked_on=job.target).succeeded()


@jobmesh.consumer("crash/finish")
async def finish(job, ctx):
    assert job.properties["prepared_on"] and job.properties["worked_on"]
    return ctx.result().output(finished_on=job.target).succeeded()


CRASHY = Workflow("crashy", [Step("crash/prepare"), Step("crash/work"), Step("crash/finish", offloadable=False)])
'''


def _mesh(tmp_path: Path, origin_args: list[str] | None = None, origin_works: bool = True) -> list[MeshNode]:
    """Three nodes loading the workflow module above; "ca" is the seed and the workflows' origin.
    With ``origin_works=False`` the origin has no consumer for ``crash/work``: that step must run elsewhere."""
    (tmp_path / "crash_flow.py").write_text(FLOW_MODULE)
    origin_module = "crash_flow"
    if not origin_works:
        start, end = FLOW_MODULE.index('@jobmesh.consumer("crash/work")'), FLOW_MODULE.index('@jobmesh.consumer("crash/finish")')
        (tmp_path / "crash_origin.py").write_text(FLOW_MODULE[:start] + FLOW_MODULE[end:])
        origin_module = "crash_origin"
    path = [str(tmp_path)]
    origin = MeshNode(tmp_path, "ca", [], [origin_module], path, origin_args)
    nodes = [origin]
    try:
        origin.start()
        for name in ("cb", "cc"):
            nodes.append(MeshNode(tmp_path, name, [origin.endpoint], ["crash_flow"], path).start())
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes


@contextlib.asynccontextmanager
async def _ready_mesh(tmp_path: Path, origin_works: bool = True) -> AsyncIterator[tuple[list[MeshNode], aiohttp.ClientSession]]:
    """:func:`_mesh`, healthy and agreed on its three members, with an HTTP session; every node
    is killed on exit."""
    nodes = _mesh(tmp_path, origin_works=origin_works)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for n in nodes:
                await wait_healthy(http, n)
            await wait_topology(http, nodes[0], ["ca", "cb", "cc"])
            yield nodes, http
    finally:
        for n in nodes:
            n.kill()


async def _step_job(http: aiohttp.ClientSession, origin: MeshNode, iid: str, step: int) -> dict[str, Any]:
    async def active() -> dict[str, Any] | None:
        _, inst = await api(http, "GET", f"{origin.url}/api/v1/workflows/{iid}")
        if inst["current_step"] != step or not inst["current_job"]:
            return None
        _, job = await api(http, "GET", f"{origin.url}/api/v1/jobs/{inst['current_job']}")
        return job if job["state"] == "ACTIVE" and job.get("target") else None
    return await wait_for(active, 20.0, f"step {step} of {iid} running", interval=0.05)


async def _completed(http: aiohttp.ClientSession, origin: MeshNode, iid: str, timeout: float) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        status, inst = await api(http, "GET", f"{origin.url}/api/v1/workflows/{iid}")
        return inst if status == 200 and inst["state"] != "RUNNING" else None
    return await wait_for(final, timeout, f"workflow {iid} final", interval=0.1)


async def test_origin_killed_mid_step_restarts_and_completes(tmp_path):
    async with _ready_mesh(tmp_path) as (nodes, http):
        origin = nodes[0]
        status, inst = await api(http, "POST", origin.url + "/api/v1/workflows",
                                 {"workflow": "crashy", "properties": {"work_seconds": 1.5}})
        assert status == 201, inst
        job = await _step_job(http, origin, inst["id"], 1)
        runner = next(n for n in nodes if n.name == job["target"])
        runner.kill()  # kill -9 of whichever node runs the step
        if runner is origin:
            origin.start()  # the origin's stores are on its disk: it picks up where it was
            await wait_healthy(http, origin)
        done = await _completed(http, origin, inst["id"], 40.0)
        assert done["state"] == "COMPLETED", done
        assert [h["state"] for h in done["history"]] == ["SUCCEEDED"] * 3
        assert done["history"][1]["job_id"] == job["id"]  # the same step job, not a new one
        assert done["data"]["finished_on"] == "ca"  # the local step ran on the origin
        _, jobs = await api(http, "GET", origin.url + "/api/v1/jobs?topic=crash/work")
        assert len(jobs["jobs"]) == 1
        if runner is origin:
            assert jobs["jobs"][0]["retry_count"] >= 1  # the interrupted run counted as a retry


async def test_remote_node_killed_mid_offloaded_step_completes(tmp_path):
    """The origin cannot run the work step (no consumer), so it is offloaded; kill -9 the node running it."""
    async with _ready_mesh(tmp_path, origin_works=False) as (nodes, http):
        origin = nodes[0]
        ids = []
        for _ in range(3):
            status, inst = await api(http, "POST", origin.url + "/api/v1/workflows",
                                     {"workflow": "crashy", "properties": {"work_seconds": 2.0}})
            assert status == 201, inst
            ids.append(inst["id"])
        victim: dict[str, Any] | None = None
        deadline = time.monotonic() + 8.0
        while victim is None and time.monotonic() < deadline:
            _, found = await api(http, "GET", origin.url + "/api/v1/jobs?topic=crash/work&state=ACTIVE")
            victim = next((j for j in found["jobs"] if j.get("target") not in (None, "ca")), None)
            if victim is None:
                await asyncio.sleep(0.05)
        if victim is None:
            pytest.skip("the offloader moved no work step within 8 s; nothing remote to kill")
        runner = next(n for n in nodes if n.name == victim["target"])
        runner.kill()
        finals = [await _completed(http, origin, iid, 60.0) for iid in ids]
        assert [f["state"] for f in finals] == ["COMPLETED"] * len(ids), [f["reason"] for f in finals]
        # the offloaded step's output came back with its result and reached the local last step
        assert {f["data"]["worked_on"] for f in finals} <= {"cb", "cc"}
        assert {f["data"]["finished_on"] for f in finals} == {"ca"}
        _, jobs = await api(http, "GET", origin.url + "/api/v1/jobs?topic=crash/work&limit=50")
        assert len(jobs["jobs"]) == len(ids)  # one work job per workflow: none added twice
        killed = next(j for j in jobs["jobs"] if j["id"] == victim["id"])
        assert killed["state"] == "SUCCEEDED" and killed["target"] != runner.name
