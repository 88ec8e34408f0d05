"""The replication example: every item delivered exactly once, in order, through receiver outages.

Real parts: a ``jobmesh node`` process with the example's ordered retry-forever queue and
agent, a real aiohttp receiver on loopback that the test takes down and brings back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers import wait_until_async

from examples.replication.receiver import Receiver, ReceiverState
from examples.replication.run import TOPIC, run, start_node, stop_node

pytestmark = pytest.mark.slow


async def _until(predicate, timeout: float) -> None:
    await wait_until_async(predicate, timeout, 0.02)


def test_receiver_state_is_idempotent():
    state = ReceiverState()
    assert state.store({"id": "a", "seq": 0, "path": "/a"}) is True
    assert state.store({"id": "a", "seq": 0, "path": "/a"}) is False
    assert state.store({"id": "b", "seq": 1, "path": "/b"}) is True
    assert [i["id"] for i in state.items] == ["a", "b"] and state.duplicates == 1 and state.requests == 3


async def test_the_runner_delivers_everything_in_order_through_an_outage(tmp_path):
    summary = await run(items=24, outage=1.0, batch=4, workdir=tmp_path, timeout=30.0)
    assert summary["ok"], summary
    assert summary["stored"] == 24 and summary["in_order"] and summary["job_states"] == {"SUCCEEDED": 24}
    assert summary["failed_attempts"] >= 1  # the outage was felt: some attempts failed and were retried


class LossyReceiver(Receiver):
    """Stores an item, then answers 503 the first time for chosen ids: the ack is lost, the agent resends."""

    def __init__(self, lose_ack_for: set[str]) -> None:
        super().__init__()
        self.lose_ack_for = set(lose_ack_for)

    async def _replicate(self, request: web.Request) -> web.Response:
        resp = await super()._replicate(request)
        item_id = (await request.json())["id"]
        if item_id in self.lose_ack_for:
            self.lose_ack_for.discard(item_id)
            return web.json_response({"error": "lost"}, status=503)
        return resp


async def test_outage_and_lost_acks_mid_stream(tmp_path: Path):
    receiver = await LossyReceiver({"i-0003", "i-0011"}).start()
    proc, url, log = await start_node(tmp_path)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def submit(lo: int, hi: int) -> None:
                body = [{"topic": TOPIC, "properties": {"receiver": receiver.url, "id": f"i-{n:04d}", "seq": n,
                                                        "path": f"/content/p{n}", "payload": {"n": n}}}
                        for n in range(lo, hi)]
                async with http.post(url + "/api/v1/jobs", json=body) as r:
                    assert r.status == 201

            await submit(0, 8)
            await _until(lambda: len(receiver.state.items) >= 6, 15)
            await receiver.stop()  # down mid-stream
            await submit(8, 20)
            await asyncio.sleep(1.0)
            stalled = len(receiver.state.items)
            assert stalled <= 8  # nothing arrives while it is down
            await receiver.start()  # back on the same port
            await _until(lambda: len(receiver.state.items) >= 20, 20)
            await asyncio.sleep(0.3)  # nothing more arrives after the last one
            async with http.get(url + "/api/v1/jobs", params={"topic": TOPIC, "limit": "50"}) as r:
                jobs = (await r.json())["jobs"]
        assert [i["seq"] for i in receiver.state.items] == list(range(20))  # exactly once, in order
        assert receiver.state.duplicates >= 2  # the lost acks were resent and refused as duplicates
        assert {j["state"] for j in jobs} == {"SUCCEEDED"} and len(jobs) == 20
    finally:
        await stop_node(proc)
        await receiver.stop()
