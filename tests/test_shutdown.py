"""Shutdown that ends (issue 9): sync consumers run on daemon threads that nobody joins."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from jobmesh.consumers.threads import SyncThreads
from helpers import wait_until_async

# -- the daemon threads -------------------------------------------------------------------

async def test_sync_threads_run_calls_and_reuse_an_idle_thread():
    threads = SyncThreads("t")
    try:
        assert await asyncio.wait_for(threads.run(lambda: 41 + 1), 5) == 42
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(threads.run(lambda: 1 / 0), 5)
        for _ in range(5):
            await asyncio.wait_for(threads.run(lambda: None), 5)
        assert threads.threads() == 1  # one after the other: the same thread
        gate = threading.Event()
        both = [threads.run(lambda: gate.wait(5)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert threads.threads() == 2  # at once: one each
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(*both), 5) == [True, True]
    finally:
        threads.shutdown()


async def test_an_abandoned_call_returns_into_nothing_and_shutdown_does_not_wait():
    threads = SyncThreads("t")
    gate = threading.Event()
    done = threading.Event()

    def stuck():
        gate.wait(10)
        done.set()
        return "late"

    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    fut = threads.run(stuck)
    await asyncio.sleep(0.02)
    fut.cancel()  # what a cancelled slot worker does to the future it awaited
    t0 = time.monotonic()
    threads.shutdown()
    assert time.monotonic() - t0 < 0.1
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("t-"))
    gate.set()
    assert done.wait(5)
    await asyncio.sleep(0.05)  # the late result reaches the loop and is dropped
    assert fut.cancelled() and errors == []
    await wait_until_async(lambda: threads.threads() == 0, timeout=5, what="thread ended")
    with pytest.raises(RuntimeError):
        threads.run(lambda: None)


async def test_an_idle_thread_ends_after_a_while_and_a_new_one_starts_on_demand():
    threads = SyncThreads("t", idle_exit=0.05)
    try:
        assert await asyncio.wait_for(threads.run(lambda: 1), 5) == 1
        await wait_until_async(lambda: threads.threads() == 0, timeout=5, what="idle exit")
        assert await asyncio.wait_for(threads.run(lambda: 2), 5) == 2
    finally:
        threads.shutdown()
