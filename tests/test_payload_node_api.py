"""Job payload through the Python API and HTTP on in-process nodes (real ZeroMQ): a corrupted
chunk is detected and fetched again, heartbeats keep arriving during a transfer, GC removes what
no job needs and nothing that one does, and bad input (unknown blob, oversize body, ``../``,
quota) is a clear 4xx/507."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import jobmesh
from jobmesh.config import DiscoveryConfig, NodeConfig

from helpers import free_port, free_port_pair, http_json, wait_until_async

pytestmark = pytest.mark.timeout(60)


@jobmesh.consumer("pay/rev")
def rev(job, ctx):
    data = ctx.payload("in").read_bytes()
    ctx.output_payload("out", data[::-1])


def _cfg(tmp: Path, name: str, seeds: list[str], **kw) -> NodeConfig:
    c = NodeConfig(name=name, data=str(tmp / name), bind=f"tcp://127.0.0.1:{free_port_pair()}", seeds=seeds,
                   http=None, **kw)
    c.discovery = DiscoveryConfig(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    return c


async def _pair(tmp: Path):
    a = jobmesh.Node(config=_cfg(tmp, "a", []))
    await a.start()
    b = jobmesh.Node(config=_cfg(tmp, "b", [a.config.bind]))
    b.add_consumer(rev)
    await b.start()
    await wait_until_async(lambda: len(a.topology.instances) == 2 and len(b.topology.instances) == 2, 10)
    return a, b


async def test_a_corrupted_chunk_is_detected_and_fetched_again(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        data = bytes(range(256)) * 8192  # 2 MiB: four chunks
        a.blobs.corrupt_chunks = 2  # the first two chunks a sends are damaged after their crc
        job = await a.jobs.add("pay/rev", {}, payload={"in": data})
        done = await a.jobs.wait(job.id, timeout=30)
        assert done.state.value == "SUCCEEDED" and done.target == "b"
        assert b.blobs.stats()["chunks_corrupt"] >= 1
        assert (await a.jobs.payload(job.id, "out")).read_bytes() == data[::-1]
        assert b.blobs.store.path(done.payload["in"].id).read_bytes() == data
    finally:
        await b.stop()
        await a.stop()


async def test_heartbeats_arrive_on_time_during_a_transfer(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        data = hashlib.sha256(b"x").digest() * (64 << 15)  # 64 MiB
        seen: list[float] = []
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def watch() -> None:
            last = None
            while not stop.is_set():
                inst = b.topology.instance("a")
                hb = getattr(b.discovery, "heartbeats_received", None)
                if hb != last:
                    seen.append(loop.time())
                    last = hb
                await asyncio.sleep(0.01)
                assert inst is not None, "a was declared failed during the transfer"

        w = asyncio.create_task(watch())
        job = await a.jobs.add("pay/rev", {}, payload={"in": data})
        done = await a.jobs.wait(job.id, timeout=40)
        deadline = loop.time() + 5
        while len(seen) <= 3 and loop.time() < deadline:  # a quick transfer (under 0.5 s) saw 3: go on a little
            await asyncio.sleep(0.05)
        stop.set()
        await w
        assert done.state.value == "SUCCEEDED"
        gaps = [y - x for x, y in zip(seen, seen[1:])]
        assert len(seen) > 3 and max(gaps) < 1.0, gaps  # heartbeat timeout is 1 s: never reached
    finally:
        await b.stop()
        await a.stop()


async def test_gc_removes_what_no_job_needs_and_nothing_that_one_does(tmp_path: Path) -> None:
    node = jobmesh.Node(name="g", data_dir=tmp_path / "g", blob_gc_grace=0.0)
    await node.start()
    try:
        store = node.blobs.store
        unused = store.put_bytes(b"nobody wants me")
        job = await node.jobs.add("nobody/consumes", {}, payload={"in": b"a job needs me"})  # stays QUEUED
        done = await node.jobs.add("gc/done", {}, payload={"in": b"a finished job had me"})
        await node.jobs.remove(done.id)  # DROPPED: still there (its payload readable)
        node.blobs.gc()
        assert not store.has(unused.id)
        assert store.has(job.payload["in"].id) and store.has(done.payload["in"].id)
        await node.jobs.remove(done.id)  # deleted: nothing needs its payload now
        node.blobs.gc()
        assert not store.has(done.payload["in"].id)
        assert store.has(job.payload["in"].id)
        assert (await node.jobs.get(job.id)).payload == job.payload
    finally:
        await node.stop()


async def test_bad_input_over_http(tmp_path: Path) -> None:
    port = free_port()
    node = jobmesh.Node(name="h", data_dir=tmp_path / "h", http=f"127.0.0.1:{port}", max_blob_size=1000,
                        blob_quota=1500)
    await node.start()
    url = f"http://127.0.0.1:{port}"

    def post(data: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(url + "/api/v1/blobs", data=data, method="POST")
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        status, ref = await asyncio.to_thread(post, b"x" * 1000)
        assert status == 201 and ref["size"] == 1000
        status, body = await asyncio.to_thread(post, b"y" * 1001)
        assert status == 413 and "max_blob_size" in body["error"]
        status, body = await asyncio.to_thread(post, b"z" * 900)
        assert status == 507 and "quota" in body["error"]
        assert not any((tmp_path / "h" / "blobs" / "tmp").iterdir())
        for path, code in [("/api/v1/blobs/../../etc/passwd", 400), ("/api/v1/blobs/sha256:..%2F..%2Fx", 400),
                           ("/api/v1/blobs/sha256:" + "0" * 64, 404)]:
            status, _ = await asyncio.to_thread(http_json, "GET", url + path)
            assert status == code, path
        got = await asyncio.to_thread(lambda: urllib.request.urlopen(url + f"/api/v1/blobs/{ref['id']}").read())
        assert got == b"x" * 1000
        status, body = await asyncio.to_thread(http_json, "POST", url + "/api/v1/jobs",
                                               {"topic": "a/b", "payload": {"in": "sha256:" + "1" * 64}})
        assert status == 400 and "unknown blob" in body["error"]
        status, body = await asyncio.to_thread(http_json, "POST", url + "/api/v1/jobs",
                                               {"topic": "a/b", "payload": {"../x": ref["id"]}})
        assert status == 400
        status, body = await asyncio.to_thread(http_json, "POST", url + "/api/v1/jobs",
                                               {"topic": "a/b", "payload": {"in": "../../etc/passwd"}})
        assert status == 400
        status, job = await asyncio.to_thread(http_json, "POST", url + "/api/v1/jobs",
                                              {"topic": "a/b", "payload": {"in": ref["id"]}})
        assert status == 201 and job["payload"] == {"in": ref}
        status, _ = await asyncio.to_thread(http_json, "GET", url + f"/api/v1/jobs/{job['id']}/payload/nope")
        assert status == 404
        with pytest.raises(jobmesh.errors.ValidationError):
            await node.jobs.add("a/b", {}, payload={"in": "not a blob"})
    finally:
        await node.stop()
