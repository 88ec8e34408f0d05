"""Every CLI command as a real subprocess against a real ``jobmesh node`` subprocess.

One node process serves the whole module (module-scoped fixture) to keep the suite
fast; each command is a fresh ``python -m jobmesh`` process, as a user would run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import NodeProcess, fetch_json, free_port

CONSUMERS = textwrap.dedent(
    """
    import asyncio
    import jobmesh

    @jobmesh.consumer("cli/ok")
    async def ok(job):
        return None

    @jobmesh.consumer("cli/cancel")
    async def cancel(job):
        return jobmesh.JobResult.CANCEL

    @jobmesh.consumer("cli/block")
    async def block(job, ctx):
        for _ in range(600):  # at most 30 s
            if ctx.is_stopped():
                return ctx.result().cancelled()
            await asyncio.sleep(0.05)
    """
)


def start_node(workdir: Path, name: str, extra: list[str] = (), token: str | None = None) -> NodeProcess:
    """A node with the CLI test consumers, started and healthy; the caller closes it."""
    (workdir / "cli_consumers.py").write_text(CONSUMERS)
    node = NodeProcess(workdir, name, consumers=["cli_consumers"], bind=True, extra=extra, token=token)
    try:
        return node.start(timeout=15.0)
    except BaseException:
        node.close()
        raise


@pytest.fixture(scope="module")
def node_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("cli")
    node = start_node(workdir, "c1")
    try:
        assert node.url is not None
        yield node.url
    finally:
        node.terminate(15)
        node.close()


def jm(*args: str, url: str | None = None, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("JOBMESH_")}
    if url:
        full_env["JOBMESH_URL"] = url
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "jobmesh", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


def api_get(url: str, path: str) -> Any:
    """Read state directly (faster than a CLI process) where the CLI is not what is tested."""
    return fetch_json("GET", url + path, timeout=5)


def wait_job(url: str, job_id: str, states: set[str], timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = api_get(url, f"/api/v1/jobs/{job_id}")
        if job["state"] in states or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def jm_json(*args: str, url: str) -> Any:
    r = jm(*args, "--json", url=url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_submit_wait_succeeds_and_properties_are_typed(node_url: str) -> None:
    r = jm("submit", "cli/ok", "-p", "n=3", "-p", "flag=true", "-p", "path=/a/b.png", "-p", 'o={"k":[1]}', "--wait", url=node_url)
    assert r.returncode == 0, r.stderr
    job_id, state, topic = r.stdout.split()[:3]
    assert state == "SUCCEEDED" and topic == "cli/ok"
    job = jm_json("job", job_id, url=node_url)
    assert job["properties"] == {"n": 3, "flag": True, "path": "/a/b.png", "o": {"k": [1]}}
    shown = jm("job", job_id, url=node_url)
    assert shown.returncode == 0 and "state:       SUCCEEDED" in shown.stdout


def test_submit_wait_exits_1_unless_succeeded(node_url: str) -> None:
    r = jm("submit", "cli/cancel", "--wait", "--json", url=node_url)
    assert r.returncode == 1
    assert json.loads(r.stdout)["state"] in ("GIVEN_UP", "ERROR")


def test_submit_options_and_a_file_of_jobs(node_url: str, tmp_path: Path) -> None:
    job = jm_json("submit", "cli/ok", "-p", "n=1", "--delay", "30", "--key", "cli-k", "--timeout", "9",
                  "--priority", "3", url=node_url)
    assert (job["state"], job["key"], job["timeout"], job["priority"]) == ("QUEUED", "cli-k", 9.0, 3)
    assert job["not_before"] is not None
    again = jm_json("submit", "cli/ok", "--key", "cli-k", url=node_url)
    assert again["id"] == job["id"]  # the key's job is open: that job
    at = jm_json("submit", "cli/ok", "--at", "2031-12-01T09:00:00Z", url=node_url)
    assert at["not_before"] == "2031-12-01T09:00:00.000Z"
    lines = [json.dumps({"topic": "cli/ok", "properties": {"i": i}}) for i in range(1205)]
    lines.insert(3, json.dumps({"topic": "cli/ok", "properties": {"late": True}, "delay": 60}))
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    r = jm("submit", "--file", str(tmp_path / "jobs.jsonl"), "--priority", "1", "--json", url=node_url)
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert len(added) == 1206 and "1206 jobs from" in r.stderr
    assert [j["properties"].get("i") for j in added[:3]] == [0, 1, 2] and added[3]["not_before"] is not None
    assert {j["priority"] for j in added} == {1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"topic": "cli/ok"}\nnot json\n')
    r = jm("submit", "--file", str(bad), url=node_url)
    assert r.returncode == 2 and "bad.jsonl line 2: invalid JSON" in r.stderr
    r = jm("submit", "--file", str(bad), "cli/ok", url=node_url)
    assert r.returncode == 2 and "drop TOPIC" in r.stderr
    small = tmp_path / "two.jsonl"
    small.write_text('{"topic": "cli/ok"}\n{"topic": "cli/ok", "properties": {"n": 2}}\n')
    r = jm("submit", "--file", str(small), "--wait", url=node_url)
    assert r.returncode == 0 and r.stdout.count("SUCCEEDED") == 2, r.stdout + r.stderr


def test_stop_retry_remove_and_wait_timeout(node_url: str) -> None:
    r = jm("submit", "cli/block", "--wait", "--wait-timeout", "0.5", url=node_url)
    assert r.returncode == 1 and "not finished after 0.5 s" in r.stderr
    job_id = r.stdout.split()[0]
    stopped = jm("stop", job_id, url=node_url)
    assert stopped.returncode == 0 and job_id in stopped.stdout
    assert wait_job(node_url, job_id, {"STOPPED"})["state"] == "STOPPED"
    again = jm_json("retry", job_id, url=node_url)
    assert again["id"] == job_id and again["retry_count"] == 0
    removed = jm("remove", job_id, url=node_url)
    assert removed.returncode == 0 and job_id in removed.stdout


def test_jobs_list_with_filters(node_url: str) -> None:
    for job in fetch_json("POST", node_url + "/api/v1/jobs", [{"topic": "cli/ok"}] * 2, timeout=5):
        assert wait_job(node_url, job["id"], {"SUCCEEDED"})["state"] == "SUCCEEDED"
    r = jm("jobs", "--state", "SUCCEEDED", "--topic", "cli/ok", "--limit", "2", url=node_url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "STATE", "TOPIC"] and len(lines) == 4
    assert all(" SUCCEEDED " in line for line in lines[1:3])
    assert lines[3].startswith("showing the newest 2 of ")  # earlier tests made more cli/ok jobs
    data = jm_json("jobs", "--topic", "cli/ok", url=node_url)
    assert data["jobs"] and all(j["topic"] == "cli/ok" for j in data["jobs"])


def test_unknown_job_and_bad_state_are_one_line_errors(node_url: str) -> None:
    for cmd in (("job", "nope"), ("stop", "nope"), ("retry", "nope"), ("remove", "nope")):
        r = jm(*cmd, url=node_url)
        assert r.returncode == 1
        assert r.stderr.strip().endswith("(HTTP 404)") and r.stderr.count("\n") == 1
    r = jm("jobs", "--state", "DONE", url=node_url)
    assert r.returncode == 1 and "unknown state" in r.stderr


def test_topology_queues_stats(node_url: str) -> None:
    r = jm("topology", url=node_url)
    assert r.returncode == 0 and "local: c1" in r.stdout and "NAME" in r.stdout
    topo = jm_json("topology", url=node_url)
    assert topo["local"] == "c1" and "cli/ok" in topo["instances"][0]["topics"]

    r = jm("queues", url=node_url)
    assert r.returncode == 0 and r.stdout.startswith("NAME") and "main" in r.stdout
    r = jm("queues", "suspend", "main", url=node_url)
    assert r.returncode == 0 and "queue main: suspended" in r.stdout
    assert any(q["suspended"] for q in api_get(node_url, "/api/v1/queues")["queues"] if q["name"] == "main")
    r = jm("queues", "resume", "main", url=node_url)
    assert r.returncode == 0 and "queue main: running" in r.stdout
    r = jm("queues", "suspend", "nosuch", url=node_url)
    assert r.returncode == 1 and "(HTTP 404)" in r.stderr

    r = jm("stats", url=node_url)
    assert r.returncode == 0 and "overall" in r.stdout and "FINISHED" in r.stdout
    assert "overall" in jm_json("stats", url=node_url)


def test_offload(node_url: str) -> None:
    r = jm("offload", "disable", "cli/ok", url=node_url)
    if r.returncode == 0:  # the offloading part is in place
        assert "offloading of cli/ok on c1" in r.stdout
        assert jm("offload", "enable", "cli/ok", "--node", "c1", url=node_url).returncode == 0
    else:
        assert r.returncode == 1 and "(HTTP 501)" in r.stderr
    r = jm("offload", "enable", "cli/ok", "--node", "ghost", url=node_url)
    assert r.returncode == 1 and "ghost" in r.stderr


def test_unreachable_and_usage_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = jm("stats", url=url)
    assert r.returncode == 1 and r.stderr.strip() == f"jobmesh: cannot reach node at {url} (connection refused)"
    assert jm("submit", url=url).returncode == 2
    assert jm("nosuchcommand").returncode == 2
    r = jm("--help")
    assert r.returncode == 0 and "submit" in r.stdout
    r = jm()
    assert r.returncode == 0 and r.stdout.startswith("usage: jobmesh") and "submit" in r.stdout
    r = jm("--version")
    assert r.returncode == 0 and r.stdout.startswith("jobmesh 0.")


def test_node_with_config_token_and_graceful_sigterm(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text('[node]\ncapacity = 2\n[security]\nhttp_token = "tok"\n')
    node = start_node(tmp_path, "c2", ["--config", str(tmp_path / "node.toml")], token="tok")
    url = node.url
    try:
        r = jm("stats", url=url)
        assert r.returncode == 1 and "(HTTP 401)" in r.stderr
        r = jm("submit", "cli/ok", "--wait", url=url, env={"JOBMESH_TOKEN": "tok"})
        assert r.returncode == 0, r.stderr
        topo = json.loads(jm("topology", "--json", "--token", "tok", url=url).stdout)
        assert topo["instances"][0]["capacity"].get("slots", 2) == 2
    finally:
        code = node.terminate(15)
        node.close()
    assert code == 0
    lines = [line for line in (tmp_path / "c2.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # --log-format json: every line is a JSON object
    assert any(r.get("event") == "http serving" and r.get("node") == "c2" for r in records)
