"""A cheap timed wait for one waiter: ``await w.wait(timeout)`` until ``w.set()`` or the timeout.

``asyncio.wait_for(event.wait(), t)`` wraps the wait in a task of its own each time (Python
3.11), which a loop that waits every quarter of a heartbeat interval pays for all day long.
This is a future and a timer handle, nothing more.
"""

from __future__ import annotations

import asyncio


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wakeup:
    __slots__ = ("_flag", "_fut")

    def __init__(self) -> None:
        self._flag = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def is_set(self) -> bool:
        return self._flag

    async def wait(self, timeout: float) -> bool:
        """True if ``set`` was called (before or during the wait); clears it."""
        if not self._flag:
            loop = asyncio.get_running_loop()
            fut = self._fut = loop.create_future()
            handle = loop.call_later(max(0.0, timeout), _wake, fut)
            try:
                await fut
            finally:
                handle.cancel()
                self._fut = None
        flagged, self._flag = self._flag, False
        return flagged
