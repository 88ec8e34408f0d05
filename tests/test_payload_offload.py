"""The offloader knows payload (issue 14, "what to build" 3), on in-process nodes (real ZeroMQ):
a job whose payload would take longer to send than the wait it saves stays home while jobs
without payload move; a job goes to the node that already holds its blobs rather than one that
would need them sent. Transfer rates are set low so that small blobs stand for big ones."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

import jobmesh
from jobmesh.config import DiscoveryConfig, NodeConfig

from helpers import free_port_pair, wait_until_async

pytestmark = pytest.mark.timeout(60)


@jobmesh.consumer("po/work")
async def work(job, ctx):
    await asyncio.sleep(float(job.properties.get("sleep", 0.25)))


@jobmesh.consumer("po/only-c")
async def only_c(job, ctx):
    ctx.payload("in")


def _cfg(tmp: Path, name: str, seeds: list[str], capacity: int) -> NodeConfig:
    c = NodeConfig(name=name, data=str(tmp / name), bind=f"tcp://127.0.0.1:{free_port_pair()}", seeds=seeds,
                   http=None, capacity=capacity)
    c.discovery = DiscoveryConfig(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    return c


async def _mesh(tmp: Path, specs: list[tuple[str, int, list]]) -> list[jobmesh.Node]:
    nodes: list[jobmesh.Node] = []
    for name, capacity, consumers in specs:
        n = jobmesh.Node(config=_cfg(tmp, name, [nodes[0].config.bind] if nodes else [], capacity))
        for c in consumers:
            n.add_consumer(c)
        await n.start()
        nodes.append(n)
    await wait_until_async(lambda: all(len(n.topology.instances) == len(nodes) for n in nodes), 15)
    return nodes


def _slow_transfers(node: jobmesh.Node, rate: float) -> None:
    node.offloader.cfg = dataclasses.replace(node.offloader.cfg, transfer_rate=rate)


async def _stop(nodes: list[jobmesh.Node]) -> None:
    for n in reversed(nodes):
        await n.stop()


async def test_a_payload_that_costs_more_than_it_saves_stays_home(tmp_path: Path) -> None:
    a, b = await _mesh(tmp_path, [("a", 1, [work]), ("b", 4, [work])])
    try:
        _slow_transfers(a, 2_000.0)  # 2 kB/s: 50 kB take 25 s, more than any wait here saves
        heavy = [await a.jobs.add("po/work", {"i": i}, payload={"in": bytes([i]) * 50_000}) for i in range(4)]
        light = await a.jobs.add_many([("po/work", {"j": j}) for j in range(6)])
        done = [await a.jobs.wait(j.id, timeout=30) for j in heavy + light]
        assert all(d.state is jobmesh.JobState.SUCCEEDED for d in done)
        assert {d.target for d in done[:4]} == {"a"}  # the payload jobs ran where their bytes are
        assert "b" in {d.target for d in done[4:]}  # the others were moved to the idle node
        assert a.offloader.stats()["kept_for_payload"] >= 1
        assert b.blobs.stats()["bytes_received"] == 0  # nothing was sent for nothing
    finally:
        await _stop([a, b])


async def test_a_job_goes_to_the_node_that_holds_its_blobs(tmp_path: Path) -> None:
    a, b, c = await _mesh(tmp_path, [("a", 1, [work]), ("b", 2, [work]), ("c", 2, [work, only_c])])
    try:
        blob = bytes(range(256)) * 400  # 100 kB
        first = await a.jobs.add("po/only-c", {}, payload={"in": blob})  # only c can run it: c gets the blob
        assert (await a.jobs.wait(first.id, timeout=20)).target == "c"
        _slow_transfers(a, 4_000.0)  # 100 kB to b would take 25 s: more than it saves; to c: nothing
        jobs = [await a.jobs.add("po/work", {"k": k}, payload={"in": blob}) for k in range(6)]
        done = [await a.jobs.wait(j.id, timeout=30) for j in jobs]
        assert all(d.state is jobmesh.JobState.SUCCEEDED for d in done)
        targets = [d.target for d in done]
        assert "c" in targets and "b" not in targets, targets
        assert b.blobs.stats()["bytes_received"] == 0
        assert c.blobs.stats()["bytes_received"] == len(blob)  # sent once, for the first job
    finally:
        await _stop([a, b, c])
