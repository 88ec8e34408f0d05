"""Job notifications (Sling's job events) and the bus that delivers them (``node.events``).

One notification per transition: ``job/added``, ``job/started``, ``job/finished``,
``job/failed`` (will retry), ``job/cancelled`` (given up / error), ``job/stopped``,
``job/removed``. Publishing is cheap when nobody listens (``EventBus.wants``), so
the engine skips building notifications on its hot path. A slow subscriber loses
its oldest notifications and never blocks the node.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import structlog

from .job import Job, JobState, iso

log = structlog.get_logger("jobmesh.events")

JOB_ADDED = "job/added"
JOB_STARTED = "job/started"
JOB_FINISHED = "job/finished"
JOB_FAILED = "job/failed"
JOB_CANCELLED = "job/cancelled"
JOB_STOPPED = "job/stopped"
JOB_REMOVED = "job/removed"
ALL_TOPICS = (JOB_ADDED, JOB_STARTED, JOB_FINISHED, JOB_FAILED, JOB_CANCELLED, JOB_STOPPED, JOB_REMOVED)


def notification_topic(old: JobState | None, new: JobState) -> str | None:
    """The notification a transition emits (None: a transition Sling does not announce)."""
    if old is None:
        return JOB_ADDED
    if new is JobState.ACTIVE:
        return JOB_STARTED
    if new is JobState.SUCCEEDED:
        return JOB_FINISHED
    if new is JobState.QUEUED:
        return JOB_FAILED if old is JobState.ACTIVE else JOB_ADDED  # manual retry re-adds it
    if new in (JobState.GIVEN_UP, JobState.ERROR):
        return JOB_CANCELLED
    if new is JobState.STOPPED:
        return JOB_STOPPED
    if new is JobState.DROPPED:
        return JOB_REMOVED
    return None


@dataclass(slots=True)
class Notification:
    """One transition, as listeners see it. (Not frozen: a frozen dataclass costs ~3x more to
    build, and one is built per transition whenever anyone listens. Treat it as read-only.)"""

    topic: str
    job_id: str
    job_topic: str
    queue: str
    node: str
    state: str
    time: float
    waiting_time: float | None = None  # ms, on job/started
    processing_time: float | None = None  # ms, on finished/failed/cancelled/stopped
    retry_count: int = 0
    message: str | None = None

    @classmethod
    def of(cls, topic: str, job: Job, node: str, now: float, waiting_ms: float | None = None,
           processing_ms: float | None = None) -> "Notification":
        return cls(topic, job.id, job.topic, job.queue, node, job.state.value, now,
                   waiting_ms, processing_ms, job.retry_count, job.result_message)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "job_id": self.job_id,
            "job_topic": self.job_topic,
            "queue": self.queue,
            "node": self.node,
            "state": self.state,
            "time": iso(self.time),
            "waiting_time": self.waiting_time,
            "processing_time": self.processing_time,
            "retry_count": self.retry_count,
            "message": self.message,
        }


class Subscription:
    """A bounded queue of notifications; ``async for n in sub`` until ``close()``."""

    def __init__(self, bus: "EventBus", topics: frozenset[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.topics = topics
        self._items: deque[Notification] = deque(maxlen=maxsize)
        self._event = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def _push(self, n: Notification) -> None:
        if self.topics is not None and n.topic not in self.topics:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(n)
        self._event.set()

    async def get(self, timeout: float | None = None) -> Notification:
        """The next notification; ``asyncio.TimeoutError`` after ``timeout``; StopAsyncIteration when closed."""
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._event.clear()
            if timeout is None:
                await self._event.wait()
            else:
                await asyncio.wait_for(self._event.wait(), timeout)
        return self._items.popleft()

    def get_nowait(self) -> Notification | None:
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> AsyncIterator[Notification]:
        return self

    async def __anext__(self) -> Notification:
        return await self.get()

    def close(self) -> None:
        self.closed = True
        self._event.set()
        self._bus._remove(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EventBus:
    """Fan-out of notifications to subscriptions and listener callbacks, in publish order."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._listeners: list[Callable[[Notification], Any]] = []
        self._topics: set[str] = set()
        self._all = False

    def subscribe(self, topics: list[str] | None = None, maxsize: int = 10000) -> Subscription:
        sub = Subscription(self, frozenset(topics) if topics is not None else None, maxsize)
        self._subs.append(sub)
        self._recompute()
        return sub

    def add_listener(self, callback: Callable[[Notification], Any]) -> None:
        """``callback(notification)`` is called synchronously, in order; an async one is scheduled."""
        self._listeners.append(callback)
        self._recompute()

    def remove_listener(self, callback: Callable[[Notification], Any]) -> None:
        if callback in self._listeners:
            self._listeners.remove(callback)
        self._recompute()

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self._recompute()

    def _recompute(self) -> None:
        self._all = bool(self._listeners) or any(s.topics is None for s in self._subs)
        self._topics = set().union(*(s.topics for s in self._subs if s.topics is not None)) if self._subs else set()

    @property
    def active(self) -> bool:
        return self._all or bool(self._topics)

    def wants(self, topic: str) -> bool:
        """Whether anyone would receive a notification of ``topic`` (skip building it if not)."""
        return self._all or topic in self._topics

    def publish(self, n: Notification) -> None:
        for sub in self._subs:
            sub._push(n)
        for cb in self._listeners:
            try:
                res = cb(n)
                if inspect.isawaitable(res):
                    asyncio.ensure_future(res)
            except Exception:
                log.exception("notification listener failed", listener=repr(cb))
