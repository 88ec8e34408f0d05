"""Workflow HTTP routes and the ``jobmesh workflow`` CLI against a real in-process Node on loopback."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

import jobmesh
from jobmesh.cli import main as cli_main
from jobmesh.cli_workflow import render_definitions, render_instance, render_instances
from jobmesh.workflow import Step


@jobmesh.consumer("hw/upper")
async def upper(job, ctx):
    return ctx.result().output(upper=str(job.properties.get("word", "")).upper()).succeeded()


@jobmesh.consumer("hw/fail")
async def fail(job, ctx):
    return ctx.result().message("no luck").cancelled()  # ERROR at once: no retries


@jobmesh.consumer("hw/wait")
async def wait(job, ctx):
    for _ in range(1000):
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.01)
    return None


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Any]:
    n = jobmesh.Node(name="wh", data_dir=str(tmp_path / "wh"), http="127.0.0.1:0")
    for c in (upper, fail, wait):
        n.add_consumer(c)
    await n.start()
    n.workflows.define("shout", [Step("hw/upper"), Step("hw/upper", offloadable=False)], "upper twice")
    n.workflows.define("doomed", [Step("hw/upper"), Step("hw/fail")])
    n.workflows.define("long", [Step("hw/wait")])
    try:
        yield n
    finally:
        await n.stop(grace=1.0)


@pytest.fixture
async def http(node: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=node.http_url, timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def _final(http: aiohttp.ClientSession, iid: str) -> dict[str, Any]:
    for _ in range(500):
        async with http.get(f"/api/v1/workflows/{iid}") as r:
            body = await r.json()
        if body["state"] != "RUNNING":
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"workflow {iid} still running")


async def test_start_get_list_over_http(http):
    async with http.post("/api/v1/workflows", json={"workflow": "shout", "properties": {"word": "hi"}}) as r:
        assert r.status == 201
        started = await r.json()
        assert r.headers["Location"] == f"/api/v1/workflows/{started['id']}"
    assert started["state"] == "RUNNING" and started["workflow"] == "shout" and started["steps"] == 2
    done = await _final(http, started["id"])
    assert done["state"] == "COMPLETED" and done["data"] == {"word": "hi", "upper": "HI"}
    assert [h["state"] for h in done["history"]] == ["SUCCEEDED", "SUCCEEDED"]
    async with http.get(f"/api/v1/jobs/{done['history'][1]['job_id']}") as r:
        job = await r.json()
    assert job["properties"]["jobmesh:local"] is True and job["result"] == {"upper": "HI"}  # the step output is the result
    async with http.get("/api/v1/workflows", params={"state": "COMPLETED"}) as r:
        assert [w["id"] for w in (await r.json())["workflows"]] == [started["id"]]
    async with http.get("/api/v1/workflows", params={"workflow": "doomed"}) as r:
        assert (await r.json())["workflows"] == []
    async with http.get("/api/v1/workflow-definitions") as r:
        defs = (await r.json())["definitions"]
    assert [d["name"] for d in defs] == ["doomed", "long", "shout"]
    assert defs[2]["steps"][1] == {"topic": "hw/upper", "offloadable": False, "properties": {}, "name": None}


async def test_failure_and_abort_over_http(http):
    async with http.post("/api/v1/workflows", json={"workflow": "doomed"}) as r:
        doomed = await r.json()
    done = await _final(http, doomed["id"])
    assert done["state"] == "FAILED" and done["reason"] == "step 2 (hw/fail) ERROR: no luck"
    async with http.post("/api/v1/workflows", json={"workflow": "long", "properties": {}}) as r:
        long = await r.json()
    async with http.post(f"/api/v1/workflows/{long['id']}/abort", json={"reason": "enough"}) as r:
        assert r.status == 200
        aborted = await r.json()
    assert aborted["state"] == "ABORTED" and aborted["reason"] == "enough"
    async with http.post(f"/api/v1/workflows/{long['id']}/abort") as r:  # no body; already final
        assert r.status == 409 and "error" in await r.json()


@pytest.mark.parametrize("body, status", [
    ({"workflow": "nope"}, 404),
    ({"workflow": ""}, 400),
    ({"properties": {}}, 400),
    ({"workflow": "shout", "properties": [1]}, 400),
    ({"workflow": "shout", "extra": 1}, 400),
    (["shout"], 400),
])
async def test_bad_start_requests(http, body, status):
    async with http.post("/api/v1/workflows", json=body) as r:
        assert r.status == status
        assert isinstance((await r.json())["error"], str)


async def test_bad_requests(http):
    async with http.post("/api/v1/workflows", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    async with http.get("/api/v1/workflows/missing") as r:
        assert r.status == 404 and "not found" in (await r.json())["error"]
    async with http.post("/api/v1/workflows/missing/abort") as r:
        assert r.status == 404
    async with http.get("/api/v1/workflows", params={"state": "SLEEPY"}) as r:
        assert r.status == 400
    async with http.get("/api/v1/workflows", params={"limit": "many"}) as r:
        assert r.status == 400
    async with http.post("/api/v1/workflows", json={"workflow": "long"}) as r:
        iid = (await r.json())["id"]
    async with http.post(f"/api/v1/workflows/{iid}/abort", json={"reason": 5}) as r:
        assert r.status == 400
    async with http.post(f"/api/v1/workflows/{iid}/abort", json={"why": "x"}) as r:
        assert r.status == 400
    async with http.get("/api/v1/health") as r:
        assert r.status == 200  # the node keeps serving


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


async def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli_main, list(argv))
    out, err = capsys.readouterr()
    # the node runs in this process and logs to stdout too: keep only the command's output
    keep = [line for line in out.splitlines(keepends=True) if not _LOG_LINE.match(line)]
    return code, "".join(keep), err


async def test_cli_start_wait_show_list_abort(node, capsys):
    url = ["--url", node.http_url]
    code, out, err = await _cli(capsys, "workflow", "start", "shout", "-p", "word=yo", "--wait", "--json", *url)
    assert code == 0, err
    inst = json.loads(out)
    assert inst["state"] == "COMPLETED" and inst["data"]["upper"] == "YO"
    code, out, _ = await _cli(capsys, "workflow", "show", inst["id"], *url)
    assert code == 0 and "COMPLETED" in out and "hw/upper" in out and inst["id"] in out
    code, out, _ = await _cli(capsys, "workflow", "list", "--state", "completed", *url)
    assert code == 0 and inst["id"] in out
    code, out, _ = await _cli(capsys, "workflow", "definitions", *url)
    assert code == 0 and "hw/upper -> hw/upper (local)" in out
    code, out, _ = await _cli(capsys, "workflow", "start", "doomed", "--wait", *url)
    assert code == 1 and "FAILED" in out and "no luck" in out
    code, out, _ = await _cli(capsys, "workflow", "start", "long", *url)
    assert code == 0 and "RUNNING" in out
    iid = out.split()[0]
    code, out, _ = await _cli(capsys, "workflow", "abort", iid, "--reason", "stop it", *url)
    assert code == 0 and "ABORTED" in out and "stop it" in out
    code, out, err = await _cli(capsys, "workflow", "abort", iid, *url)
    assert code == 1 and err.startswith("jobmesh: ") and "HTTP 409" in err and len(err.strip().splitlines()) == 1
    code, _, err = await _cli(capsys, "workflow", "show", "missing", *url)
    assert code == 1 and "HTTP 404" in err
    code, _, err = await _cli(capsys, "workflow", "start", "nope", *url)
    assert code == 1 and "no workflow named" in err


async def test_cli_usage_errors(capsys):
    assert (await _cli(capsys, "workflow"))[0] == 2
    assert (await _cli(capsys, "workflow", "start"))[0] == 2
    assert (await _cli(capsys, "workflow", "start", "x", "-p", "novalue"))[0] == 2
    assert (await _cli(capsys, "workflow", "list", "--limit", "0"))[0] == 2
    assert (await _cli(capsys, "workflow", "start", "x", "--timeout", "-1"))[0] == 2


def test_renderers_handle_empty_and_full_answers():
    assert render_instances({"workflows": []}) == "no workflows"
    assert render_definitions({"definitions": []}) == "no workflow definitions"
    w = {"id": "w1", "workflow": "x", "state": "FAILED", "origin": "n", "current_step": 0, "steps": 1,
         "current_topic": "a/b", "created": "2026-01-01T00:00:00.000Z", "finished": None, "reason": "boom",
         "properties": {}, "data": {}, "history": [
             {"index": 0, "topic": "a/b", "job_id": "j", "state": "GIVEN_UP", "finished": None,
              "result_message": "boom"}]}
    text = render_instance(w)
    assert "reason:      boom" in text and "GIVEN_UP" in text
    assert "w1" in render_instances({"workflows": [w]})
