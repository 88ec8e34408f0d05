"""Job payload with real ``jobmesh node`` processes (issue 14): the content goes with the job to
the target and its output comes back — through the CLI and HTTP, at 0 bytes, 10 MiB and 200 MiB;
a blob used by 1,000 jobs is stored and sent once per node; kill -9 of the target mid-transfer
and mid-run, kill -9 of the origin while outputs are on their way.

Sizes: the 200 MiB case writes its input file once (sparse-free, ~0.2 s) and streams it; the
kill cases use 64 MiB, enough for a transfer that is caught in the middle on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers import NodeProcess, stop_all, wait_until

pytestmark = pytest.mark.timeout(180)

CONSUMERS = '''
import hashlib, time, jobmesh

@jobmesh.consumer("pay/echo")
def echo(job, ctx):
    data = ctx.payload("in").read_bytes()
    if job.properties.get("sleep"):
        time.sleep(float(job.properties["sleep"]))
    ctx.output_payload("digest", hashlib.sha256(data).hexdigest().encode())
    if job.properties.get("reverse"):
        ctx.output_payload("reversed", data[::-1])
    return ctx.result().message("ok").succeeded()

@jobmesh.consumer("pay/count")
def count(job, ctx):
    assert ctx.payload("in").stat().st_size == int(job.properties["size"])
'''

CONFIG = """
[node]
capacity = 4
blob_gc_grace = 600
[discovery]
heartbeat_interval = 0.2
heartbeat_timeout = 1.0
"""


def _cli(node: NodeProcess, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JOBMESH_URL": node.url or ""}
    return subprocess.run([sys.executable, "-m", "jobmesh", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=node.workdir)


def _metric(node: NodeProcess, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(node.url + "/metrics", timeout=5) as r:  # type: ignore[operator]
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _mesh(tmp: Path, name_a: str = "a", name_b: str = "b") -> tuple[NodeProcess, NodeProcess]:
    (tmp / "pay_consumers.py").write_text(textwrap.dedent(CONSUMERS))
    cfg = tmp / "node.toml"
    cfg.write_text(textwrap.dedent(CONFIG))
    # the origin has no consumer for pay/*: every job goes to the target, with its payload
    a = NodeProcess(tmp, name_a, bind=True, config=cfg).start()
    b = NodeProcess(tmp, name_b, bind=True, config=cfg, seeds=[a.endpoint or ""], consumers=["pay_consumers"]).start()
    wait_until(lambda: len(a.api("GET", "/api/v1/topology")[1]["instances"]) == 2, 15, what="two members")
    return a, b


def _file(path: Path, size: int, seed: int = 7) -> str:
    """A file of ``size`` pseudo-random bytes, written in 1 MiB pieces; its sha256 hex."""
    h = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    with open(path, "wb") as f:
        left = size
        i = 0
        while left > 0:
            piece = bytes([i % 251]) + block[1:min(left, len(block))]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
            i += 1
    return h.hexdigest()


def _wait_final(node: NodeProcess, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return wait_until(lambda: (lambda j: j if j["state"] in ("SUCCEEDED", "GIVEN_UP", "ERROR") else None)(
        node.api("GET", f"/api/v1/jobs/{job_id}")[1]), timeout, 0.05, f"job {job_id} final")


@pytest.fixture
def mesh(tmp_path: Path):
    a, b = _mesh(tmp_path)
    yield a, b
    stop_all([a, b])


def test_cli_payload_of_0_bytes_10_mib_and_200_mib_goes_to_the_target_and_the_output_comes_back(
        mesh: tuple[NodeProcess, NodeProcess], tmp_path: Path) -> None:
    a, b = mesh
    for size, reverse in ((0, True), (10 << 20, True), (200 << 20, False)):
        src = tmp_path / f"in-{size}.bin"
        digest = _file(src, size)
        props = ["-p", "reverse=1"] if reverse else []
        r = _cli(a, "submit", "pay/echo", *props, "--payload", f"in={src}", "--wait", "--json", "--wait-timeout", "120")
        assert r.returncode == 0, r.stderr + r.stdout
        job = json.loads(r.stdout)
        assert job["state"] == "SUCCEEDED" and job["target"] == "b", job
        assert job["payload"]["in"] == {"id": f"sha256:{digest}", "size": size}
        out = tmp_path / f"saved-{size}"
        r = _cli(a, "job", job["id"], "--save-payload", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / "digest").read_bytes() == digest.encode()
        assert hashlib.sha256((out / "in").read_bytes()).hexdigest() == digest
        if reverse:
            assert (out / "reversed").read_bytes() == src.read_bytes()[::-1]
        # the target kept no path outside its blob store: the input arrived through the transfer
        assert (b.data / "blobs" / "sha256" / digest[:2] / digest).is_file()
        with urllib.request.urlopen(a.url + f"/api/v1/jobs/{job['id']}/payload/digest") as resp:  # type: ignore[operator]
            assert resp.read() == digest.encode()
    assert _metric(b, "jobmesh_blob_chunks_corrupt_total") == 0


def test_one_blob_for_1000_jobs_is_stored_and_sent_once(mesh: tuple[NodeProcess, NodeProcess]) -> None:
    a, b = mesh
    data = os.urandom(3 << 20)
    req = urllib.request.Request(a.url + "/api/v1/blobs", data=data, method="POST")  # type: ignore[operator]
    with urllib.request.urlopen(req) as resp:
        blob = json.loads(resp.read())
    status, jobs = a.api("POST", "/api/v1/jobs", [
        {"topic": "pay/count", "properties": {"size": len(data)}, "payload": {"in": blob["id"]}}
        for _ in range(1000)], timeout=30)
    assert status == 201 and len(jobs) == 1000
    wait_until(lambda: a.api("GET", "/api/v1/jobs?state=SUCCEEDED&topic=pay/count&limit=1000")[1]["total"] == 1000,
               120, 0.2, "1000 jobs SUCCEEDED")
    assert _metric(b, "jobmesh_blob_transfer_bytes_total", '{direction="in"}') == len(data)
    assert _metric(a, "jobmesh_blob_transfer_bytes_total", '{direction="out"}') == len(data)
    assert _metric(b, "jobmesh_blob_store_blobs") == 1 and _metric(a, "jobmesh_blob_store_blobs") == 1


def test_kill_9_of_the_target_mid_transfer_and_mid_run(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    try:
        src = tmp_path / "big.bin"
        digest = _file(src, 64 << 20, seed=3)
        r = _cli(a, "submit", "pay/echo", "-p", "reverse=1", "--payload", f"in={src}", "--json")
        assert r.returncode == 0, r.stderr
        job_id = json.loads(r.stdout)["id"]
        # mid-transfer: the target has part of the input
        wait_until(lambda: 0 < _metric(b, "jobmesh_blob_store_partial_bytes") < (64 << 20) or
                   _metric(b, "jobmesh_blob_transfer_bytes_total", '{direction="in"}') > 0, 30, 0.005,
                   "transfer under way")
        b.kill()
        b.start()
        job = _wait_final(a, job_id)
        assert job["state"] == "SUCCEEDED", job
        with urllib.request.urlopen(a.url + f"/api/v1/jobs/{job_id}/payload/reversed") as resp:  # type: ignore[operator]
            assert resp.read() == src.read_bytes()[::-1]
        # mid-run: kill the target while its consumer sleeps
        r = _cli(a, "submit", "pay/echo", "-p", "sleep=1.5", "--payload", f"in={src}", "--json")
        job_id = json.loads(r.stdout)["id"]
        wait_until(lambda: a.api("GET", f"/api/v1/jobs/{job_id}")[1]["state"] == "ACTIVE", 30, 0.05, "running at b")
        b.kill()
        b.start()
        job = _wait_final(a, job_id)
        assert job["state"] == "SUCCEEDED", job
        with urllib.request.urlopen(a.url + f"/api/v1/jobs/{job_id}/payload/digest") as resp:  # type: ignore[operator]
            assert resp.read() == digest.encode()
    finally:
        stop_all([a, b])


def test_kill_9_of_the_origin_while_outputs_are_on_their_way(tmp_path: Path) -> None:
    a, b = _mesh(tmp_path)
    try:
        src = tmp_path / "big.bin"
        _file(src, 64 << 20, seed=5)
        r = _cli(a, "submit", "pay/echo", "-p", "reverse=1", "--payload", f"in={src}", "--json")
        job_id = json.loads(r.stdout)["id"]
        # the input is at b; the reversed output (64 MiB) starts on its way back
        wait_until(lambda: _metric(b, "jobmesh_blob_transfer_bytes_total", '{direction="out"}') > 0, 60, 0.005,
                   "outputs on their way")
        a.kill()
        time.sleep(0.5)
        a.start()
        job = _wait_final(a, job_id)
        assert job["state"] == "SUCCEEDED", job
        with urllib.request.urlopen(a.url + f"/api/v1/jobs/{job_id}/payload/reversed") as resp:  # type: ignore[operator]
            assert resp.read() == src.read_bytes()[::-1]
    finally:
        stop_all([a, b])
