"""Offloading on ``/metrics``: the pure families from transfer/offloader/discovery stats,
and two real nodes (ZeroMQ on loopback, SQLite files, aiohttp) where jobs added on one
node run on the other and both nodes' scrapes show it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobmesh
from jobmesh.config import NodeConfig
from jobmesh.http.metrics import JobMetricsRecorder, Snapshot, build_families, offloading_families
from jobmesh.job import JobState

from helpers import free_port_pair

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(fams: list[Any]) -> dict[str, Any]:
    return {f.name: f for f in fams}


# -- pure ---------------------------------------------------------------------------------------


TRANSFER_STATS = {
    "offloaded_out": 7, "offloaded_in": 2, "in_flight_out": 5, "in_flight_by_peer": {"b": 3, "c": 0},
    "copies_in": 1, "outbox": 4, "results_in": 6, "results_out": 2, "stale_results": 1, "requeued": 3,
    "queue_depth": 9, "messages_sent": 40, "messages_dropped": 2, "messages_received": 30,
}


def test_offloading_families_name_every_counter() -> None:
    snap = Snapshot(
        transfer=TRANSFER_STATS,
        offloader={"moves_out": 8, "moves_in": 2, "decisions": 3, "steal_requests": 1},
        discovery={"loop_lag": 0.012, "heartbeats_received": 55, "messages_dropped": 4},
    )
    fams = by_name(offloading_families(snap))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert got[("jobmesh_offloaded_jobs_total", (("direction", "out"),))] == 7
    assert got[("jobmesh_offloaded_jobs_total", (("direction", "in"),))] == 2
    assert got[("jobmesh_offload_results_total", (("direction", "in"),))] == 6
    assert got[("jobmesh_offload_results_total", (("direction", "out"),))] == 2
    assert got[("jobmesh_offload_stale_results_total", ())] == 1
    assert got[("jobmesh_offload_requeued_total", ())] == 3
    assert got[("jobmesh_transfer_in_flight", (("peer", "b"),))] == 3
    assert got[("jobmesh_transfer_in_flight", (("peer", "c"),))] == 0
    # 5 in flight, 3 named: the 2 the stats could not place still show up
    assert got[("jobmesh_transfer_in_flight", (("peer", "unknown"),))] == 2
    assert got[("jobmesh_transfer_foreign_copies", ())] == 1
    assert got[("jobmesh_transfer_outbox", ())] == 4
    assert got[("jobmesh_transfer_queue_depth", ())] == 9
    assert got[("jobmesh_transfer_messages_total", (("kind", "dropped"),))] == 2
    assert got[("jobmesh_transfer_messages_total", (("kind", "sent"),))] == 40
    assert got[("jobmesh_offloader_moves_total", (("direction", "out"),))] == 8
    assert got[("jobmesh_offloader_moves_total", (("direction", "in"),))] == 2
    assert got[("jobmesh_offloader_decisions_total", ())] == 3
    assert got[("jobmesh_offloader_steal_requests_total", ())] == 1
    assert got[("jobmesh_discovery_loop_lag_seconds", ())] == 0.012
    assert got[("jobmesh_discovery_heartbeats_received_total", ())] == 55
    assert got[("jobmesh_discovery_messages_dropped_total", ())] == 4
    for f in fams.values():
        assert f.documentation  # every family says what it counts


def test_a_node_without_bind_exports_no_offloading_families() -> None:
    names = {f.name for f in build_families(Snapshot(), JobMetricsRecorder())}
    assert not {n for n in names if "offload" in n or "transfer" in n or "discovery" in n}
    # a discovery without the attributes exports only what it has
    fams = by_name(offloading_families(Snapshot(discovery={"heartbeats_received": 3})))
    assert set(fams) == {"jobmesh_discovery_heartbeats_received"}


# -- two real nodes -------------------------------------------------------------------------------


async def until(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[jobmesh.Node]]:
    started: list[jobmesh.Node] = []
    try:
        yield started
    finally:
        for n in reversed(started):
            await n.stop(grace=1.0)


async def start(started: list[jobmesh.Node], tmp: Path, name: str, consumers: list[Any] = (),
                seeds: list[jobmesh.Node] = ()) -> jobmesh.Node:
    cfg = NodeConfig()
    cfg.name, cfg.data, cfg.http, cfg.capacity = name, str(tmp / name), "127.0.0.1:0", 4
    cfg.bind = f"tcp://127.0.0.1:{free_port_pair()}"
    cfg.seeds = [s.config.bind for s in seeds]
    cfg.discovery.heartbeat_interval = 0.1
    cfg.discovery.heartbeat_timeout = 0.6
    node = jobmesh.Node(config=cfg)
    for c in consumers:
        node.add_consumer(c)
    await node.start()
    started.append(node)
    return node


@pytest.mark.timeout(60)
async def test_metrics_show_jobs_offloaded_out_and_in(nodes: list[jobmesh.Node], tmp_path: Path) -> None:
    ran_at: list[str] = []

    @jobmesh.consumer("mo/work")
    async def work(job: jobmesh.Job) -> Any:
        ran_at.append("b")
        return None

    a = await start(nodes, tmp_path, "a")  # no consumer for mo/work: its jobs must go to b
    b = await start(nodes, tmp_path, "b", [work], seeds=[a])
    names = ["a", "b"]
    await until(lambda: all(sorted(n.topology.names) == names and n.topology.current for n in (a, b)))

    n_jobs = 6
    jobs = [await a.jobs.add("mo/work", {"n": i}) for i in range(n_jobs)]
    for job in jobs:
        done = await a.jobs.wait(job.id, timeout=10)
        assert done.state is JobState.SUCCEEDED and done.target == "b"
    assert ran_at == ["b"] * n_jobs

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async def scrape(node: jobmesh.Node) -> Samples:
            async with http.get(f"{node.http_url}/metrics") as r:
                assert r.status == 200
                return samples(await r.text())

        # the origin's bookkeeping (result committed, outbox acknowledged) settles just after the wait
        async def settled() -> tuple[Samples, Samples] | None:
            sa, sb = await scrape(a), await scrape(b)
            done = (sa.get(("jobmesh_transfer_in_flight", (("peer", "b"),))) == 0
                    and sb.get(("jobmesh_transfer_outbox", ())) == 0
                    and sb.get(("jobmesh_transfer_foreign_copies", ())) == 0
                    # heartbeats flow on their own PUB/SUB sockets: a join needs none, so wait for one
                    and all(s.get(("jobmesh_discovery_heartbeats_received_total", ()), 0) > 0 for s in (sa, sb)))
            return (sa, sb) if done else None

        sa, sb = await until(settled, timeout=10)

    out, into = (("direction", "out"),), (("direction", "in"),)
    # origin a: every job went out, every result came back, nothing came in
    assert sa[("jobmesh_offloaded_jobs_total", out)] == n_jobs
    assert sa[("jobmesh_offloaded_jobs_total", into)] == 0
    assert sa[("jobmesh_offload_results_total", into)] == n_jobs
    assert sa[("jobmesh_offload_results_total", out)] == 0
    assert sa[("jobmesh_offload_stale_results_total", ())] == 0
    assert sa[("jobmesh_offloader_moves_total", out)] == n_jobs
    assert sa[("jobmesh_offloader_moves_total", into)] == 0
    assert sa[("jobmesh_offloader_decisions_total", ())] >= 1
    assert sa[("jobmesh_transfer_messages_total", (("kind", "sent"),))] > 0
    # target b: the mirror image
    assert sb[("jobmesh_offloaded_jobs_total", into)] == n_jobs
    assert sb[("jobmesh_offloaded_jobs_total", out)] == 0
    assert sb[("jobmesh_offload_results_total", out)] == n_jobs
    assert sb[("jobmesh_offloader_moves_total", into)] == n_jobs
    assert sb[("jobmesh_offloader_moves_total", out)] == 0
    assert sb[("jobmesh_transfer_in_flight", (("peer", "a"),))] == 0
    assert sb[("jobmesh_transfer_messages_total", (("kind", "received"),))] > 0
    # the scrape read the same numbers the actors keep
    assert a.transfer.stats()["offloaded_out"] == n_jobs and b.transfer.stats()["offloaded_in"] == n_jobs
    for s in (sa, sb):
        assert s[("jobmesh_discovery_heartbeats_received_total", ())] > 0
        assert s[("jobmesh_discovery_loop_lag_seconds", ())] >= 0
        assert s[("jobmesh_transfer_queue_depth", ())] >= 0
        assert s[("jobmesh_metrics_scrape_error", ())] == 0
