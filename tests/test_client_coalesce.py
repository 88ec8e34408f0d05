"""``Client.add`` calls issued together go as one list (jobmesh/client_batch.py), and each call
still gets its own job or its own error. A real node over HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import jobmesh
from helpers import free_port


async def test_concurrent_adds_share_requests_and_each_gets_its_own_job(node_factory: Any) -> None:
    node = await node_factory(name="co", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        handles = await asyncio.gather(*(client.add("co/job", {"i": i}, priority=i % 3) for i in range(200)))
        assert client._adds is not None and client._adds.requests < 20  # 200 adds, a few POSTs
        for i, h in enumerate(handles):
            assert h.added is not None and h.added.properties == {"i": i} and h.added.priority == i % 3
        assert len({h.id for h in handles}) == 200
        stored = [await node.jobs.get(h.id) for h in handles]
        assert [j.properties["i"] for j in stored if j is not None] == list(range(200))
        # a lone add is one request of its own, as before
        before = client._adds.requests
        one = await client.add("co/job", {"alone": True})
        assert client._adds.requests == before + 1 and (await node.jobs.get(one.id)) is not None


async def test_a_bad_add_among_good_ones_fails_alone(node_factory: Any) -> None:
    node = await node_factory(name="bad", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        results = await asyncio.gather(
            client.add("co/ok", {"i": 1}),
            client.add("co//bad topic"),
            client.add("co/ok", {"i": 2}, delay=-5),
            client.add("co/ok", {"i": 3}),
            return_exceptions=True,
        )
    assert isinstance(results[1], jobmesh.ValidationError) and "topic" in str(results[1])
    assert isinstance(results[2], jobmesh.ValidationError) and "delay" in str(results[2])
    ok = [r for r in results if isinstance(r, jobmesh.JobHandle)]
    assert [h.added.properties["i"] for h in ok] == [1, 3]
    assert len(await node.jobs.find(topic="co/ok")) == 2  # nothing of the refused list was written twice


async def test_one_key_in_one_batch_gives_both_callers_the_same_job(node_factory: Any) -> None:
    node = await node_factory(name="key", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        a, b = await asyncio.gather(client.add("co/k", {"n": 1}, key="same"), client.add("co/k", {"n": 2}, key="same"))
    assert a.id == b.id and len(await node.jobs.find(topic="co/k")) == 1


async def test_without_coalescing_each_add_is_its_own_request(node_factory: Any) -> None:
    node = await node_factory(name="plain", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url, coalesce=False) as client:
        assert client._adds is None
        handles = await asyncio.gather(*(client.add("co/p", {"i": i}) for i in range(20)))
    assert [h.added.properties["i"] for h in handles] == list(range(20))


async def test_an_unreachable_node_is_every_callers_error() -> None:
    async with jobmesh.Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        results = await asyncio.gather(*(client.add("co/x", {"i": i}) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, jobmesh.NodeUnreachable) for r in results), results


async def test_close_waits_for_adds_on_their_way(node_factory: Any) -> None:
    node = await node_factory(name="close", http="127.0.0.1:0")
    client = jobmesh.Client(node.http_url)
    tasks = [asyncio.ensure_future(client.add("co/c", {"i": i})) for i in range(30)]
    await asyncio.sleep(0)  # the adds are made; their request is on its way
    await client.close()
    handles = await asyncio.gather(*tasks)
    assert len({h.id for h in handles}) == 30


@pytest.mark.parametrize("size", [300_000])
async def test_large_bodies_are_split_below_the_request_limit(node_factory: Any, size: int) -> None:
    node = await node_factory(name="big", http="127.0.0.1:0")
    text = "x" * (size // 4)
    async with jobmesh.Client(node.http_url) as client:
        handles = await asyncio.gather(*(client.add("co/big", {"t": text, "i": i}) for i in range(8)))
        assert client._adds is not None and client._adds.requests >= 2  # 8 x 75 KB: over MAX_BYTES once
    assert sorted(h.added.properties["i"] for h in handles) == list(range(8))


async def test_a_caller_cancelled_before_the_request_leaves_adds_nothing(node_factory: Any) -> None:
    node = await node_factory(name="cancel", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        kept = asyncio.ensure_future(client.add("co/kept"))
        gone = asyncio.ensure_future(client.add("co/gone"))
        await asyncio.sleep(0)  # both are in the batch now, not yet sent
        gone.cancel()
        await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert len(await node.jobs.find(topic="co/kept")) == 1
    assert await node.jobs.find(topic="co/gone") == []


async def test_a_close_that_times_out_does_not_strand_an_add(node_factory: Any) -> None:
    node = await node_factory(name="strand", http="127.0.0.1:0")
    client = jobmesh.Client(node.http_url)
    add = asyncio.ensure_future(client.add("co/s"))
    await asyncio.sleep(0)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(client.close(), 0.0001)
    handle = await asyncio.wait_for(add, 10)  # answered, not left hanging
    assert (await node.jobs.get(handle.id)) is not None
    await client.close()


async def test_properties_json_cannot_carry_are_the_callers_type_error(node_factory: Any) -> None:
    import datetime

    node = await node_factory(name="json", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        with pytest.raises(TypeError, match="must be JSON-compatible: Object of type datetime"):
            await client.add("co/when", {"when": datetime.datetime.now()})
    with jobmesh.SyncClient(node.http_url) as sync:
        with pytest.raises(TypeError, match="must be JSON-compatible"):
            await asyncio.to_thread(sync.add, "co/when", {"when": datetime.datetime.now()})


async def test_a_server_that_is_not_a_jobmesh_node_is_named_so() -> None:
    from aiohttp import web

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", status=404, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_json)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with jobmesh.Client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(jobmesh.JobmeshError, match="not JSON: is it a jobmesh node"):
                await client.add("co/x")
        with jobmesh.SyncClient(f"http://127.0.0.1:{port}") as sync:
            with pytest.raises(jobmesh.JobmeshError, match="not JSON: is it a jobmesh node"):
                await asyncio.to_thread(sync.get, "some-id")
    finally:
        await runner.cleanup()
