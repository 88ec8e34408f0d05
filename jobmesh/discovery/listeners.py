"""Delivery of topology events to the discovery actor's listeners, one task each.

Sling's TopologyEventListener contract (INIT first, every event in order, sync or async
callbacks) is kept by ``ListenerHub`` in the pure core; what is left is I/O: a queue and a
task per listener, so a slow or failing listener never holds up the actor or the others.
Kept apart from ``actor.py`` because it is plain delivery machinery, not the actor itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

import structlog

from .view import TopologyEvent

log = structlog.get_logger("jobmesh.discovery")

LISTENER_QUEUE_LIMIT = 10_000

Listener = Callable[[TopologyEvent], Any]


class _ListenerTask:
    """One listener's queue and the task delivering to it, in order."""

    def __init__(self, callback: Listener, node: str) -> None:
        self.callback = callback
        self.queue: deque[TopologyEvent] = deque()
        self.wakeup = asyncio.Event()
        self.log = log.bind(node=node)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"topology-listener:{node}")

    def put(self, event: TopologyEvent) -> None:
        if len(self.queue) >= LISTENER_QUEUE_LIMIT:
            self.log.error("topology listener is not keeping up; oldest event dropped")
            self.queue.popleft()
        self.queue.append(event)
        self.wakeup.set()

    async def _run(self) -> None:
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            event = self.queue.popleft()
            try:
                result = self.callback(event)
                if asyncio.iscoroutine(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("topology listener failed", kind=event.type.value)



__all__ = ["LISTENER_QUEUE_LIMIT", "Listener"]
