"""Queue logic, pure (no I/O, the clock is a parameter): which queue a topic goes to,
what happens to a failed job, and in which order a queue hands out its ready jobs.

The queue actor (``actor.py``) is the async shell around these: it feeds the windows
from the store, asks them for the next job and writes the decisions.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

from ..config import MAIN_QUEUE, QueueConfig
from ..job import Job, JobState
from ..topics import matches, specificity

# --------------------------------------------------------------------------- matching


class QueueMatcher:
    """Topic -> queue: the highest ``ranking`` wins, then the most specific pattern; else main."""

    def __init__(self, queues: list[QueueConfig]) -> None:
        self.queues = queues
        self.main = next((q for q in queues if q.name == MAIN_QUEUE), QueueConfig(name=MAIN_QUEUE))
        self.match = lru_cache(maxsize=65536)(self._match)

    def _match(self, topic: str) -> QueueConfig:
        best: tuple[int, tuple[int, int]] | None = None
        chosen = self.main
        for q in self.queues:
            for pattern in q.topics:
                if matches(pattern, topic):
                    key = (q.ranking, specificity(pattern))
                    if best is None or key > best:
                        best, chosen = key, q
        return chosen


# --------------------------------------------------------------------------- decisions

_SUCCEEDED = JobState.SUCCEEDED  # enum member lookups are slow on the hot path


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as the consumer pool reports it to the job's queue."""

    # "OK", "FAILED", "CANCEL", "STOPPED" (stop/remove requested), "ABORTED" (node shut down),
    # "INTERRUPTED" (the node crashed while it ran: found ACTIVE at the next start)
    kind: str
    message: str | None = None
    retry_delay: float | None = None  # the consumer's failed(retry_delay)
    stop_state: JobState = JobState.STOPPED  # STOPPED for stop, DROPPED for remove
    log: tuple[str, ...] = ()  # lines to append to the progress log (e.g. a traceback)
    output: dict[str, Any] | None = None  # OK only: the consumer's output properties


def retry_delay_for(job: Job, queue: QueueConfig, consumer_delay: float | None) -> float:
    """Sling's precedence: the consumer's delay > the job's ``retry_delay`` property > the queue's.

    Only the queue's delay is backed off (``retry_backoff`` per retry already made,
    capped at ``max_retry_delay``): an explicit delay is taken as meant.
    """
    if consumer_delay is not None and consumer_delay >= 0:
        return float(consumer_delay)
    prop = job.properties.get("retry_delay") if isinstance(job.properties, dict) else None
    if isinstance(prop, (int, float)) and not isinstance(prop, bool) and prop >= 0:
        return float(prop)
    delay = queue.retry_delay * (queue.retry_backoff ** job.retry_count)
    return min(delay, queue.max_retry_delay)


class Decision(NamedTuple):
    state: JobState
    retry_count: int
    not_before: float
    finished: float | None
    message: str | None


def decide(job: Job, outcome: Outcome, queue: QueueConfig, now: float) -> Decision:
    """The state an ACTIVE job goes to after a run (DESIGN §1)."""
    kind = outcome.kind
    if kind == "OK":
        return Decision(_SUCCEEDED, job.retry_count, job.not_before, now, outcome.message)
    if kind == "CANCEL":
        return Decision(JobState.ERROR, job.retry_count, job.not_before, now, outcome.message)
    if kind == "STOPPED":
        return Decision(outcome.stop_state, job.retry_count, job.not_before, now, outcome.message)
    if kind == "ABORTED":  # graceful shutdown interrupted it: not the job's fault, no retry counted
        return Decision(JobState.QUEUED, job.retry_count, 0.0, None, outcome.message)
    retries = job.max_retries
    if kind == "INTERRUPTED":  # a crash: counted as a retry (a poison job ends GIVEN_UP), no delay
        if retries == -1 or job.retry_count < retries:
            return Decision(JobState.QUEUED, job.retry_count + 1, 0.0, None, None)
        return Decision(JobState.GIVEN_UP, job.retry_count, job.not_before, now, outcome.message)
    # FAILED (an exception is a failure too)
    if retries == -1 or job.retry_count < retries:
        delay = retry_delay_for(job, queue, outcome.retry_delay)
        return Decision(JobState.QUEUED, job.retry_count + 1, now + delay, None, outcome.message)
    return Decision(JobState.GIVEN_UP, job.retry_count, job.not_before, now, outcome.message)


# --------------------------------------------------------------------------- windows

Runnable = Callable[[str], bool]


class Window:
    """The in-memory part of a queue: a bounded set of ready (or retry-delayed) jobs.

    ``add`` takes jobs in arrival order, ``take`` returns the next job that may start
    now and has a consumer (``runnable(topic)``), ``next_wakeup`` says when a delayed
    job becomes ready. Jobs without a consumer are parked, not spun over.
    """

    def __init__(self) -> None:
        self._ids: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._ids

    def jobs(self) -> Iterator[Job]:
        """The jobs in the window (a copy of the list: the caller may take some out meanwhile)."""
        return iter(list(self._ids.values()))

    def view(self) -> Iterator[Job]:
        """The jobs in the window, without a copy: the window must not change while it is read."""
        return iter(self._ids.values())

    def add(self, job: Job, now: float) -> None:
        raise NotImplementedError

    def take(self, now: float, runnable: Runnable) -> Job | None:
        raise NotImplementedError

    def remove(self, job_id: str) -> Job | None:
        raise NotImplementedError

    def next_wakeup(self) -> float | None:
        raise NotImplementedError

    def unpark(self, runnable: Runnable) -> None:
        """Consumers changed: parked jobs that now have one become ready again."""


class _DelayedMixin:
    _delayed: list[tuple[float, int, str]]
    _ids: dict[str, Job]

    def _push_delayed(self, job: Job) -> None:
        heapq.heappush(self._delayed, (job.not_before, job.seq, job.id))

    def _due(self, now: float) -> Iterator[Job]:
        d = self._delayed
        while d and d[0][0] <= now:
            _, _, jid = heapq.heappop(d)
            job = self._ids.get(jid)
            if job is not None and job.not_before <= now:
                yield job

    def _delayed_wakeup(self) -> float | None:
        d = self._delayed
        while d and d[0][2] not in self._ids:
            heapq.heappop(d)
        return d[0][0] if d else None


class UnorderedWindow(_DelayedMixin, Window):
    """First come, first served; retried jobs re-enter at the back once their delay passed."""

    def __init__(self) -> None:
        super().__init__()
        self._ready: deque[Job] = deque()
        self._delayed = []
        self._parked: dict[str, deque[Job]] = {}

    def add(self, job: Job, now: float) -> None:
        self._ids[job.id] = job
        if job.not_before > now:
            self._push_delayed(job)
        else:
            self._ready.append(job)

    def take(self, now: float, runnable: Runnable) -> Job | None:
        if self._delayed and self._delayed[0][0] <= now:
            for job in self._due(now):
                self._ready.append(job)
        ready, ids = self._ready, self._ids
        while ready:
            job = ready.popleft()
            if job.id not in ids or ids[job.id] is not job:
                continue  # removed (stop/remove) while waiting
            if not runnable(job.topic):
                self._parked.setdefault(job.topic, deque()).append(job)
                continue
            del ids[job.id]
            return job
        return None

    def remove(self, job_id: str) -> Job | None:
        return self._ids.pop(job_id, None)  # lazily skipped in take

    def next_wakeup(self) -> float | None:
        return self._delayed_wakeup()

    def unpark(self, runnable: Runnable) -> None:
        for topic in [t for t in self._parked if runnable(t)]:
            self._ready.extend(self._parked.pop(topic))

    @property
    def parked(self) -> int:
        return sum(len(d) for d in self._parked.values())


class OrderedWindow(Window):
    """Strict arrival order, head of line: nothing overtakes the head, not even while it
    waits out a retry delay or has no consumer."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[int, str]] = []

    def add(self, job: Job, now: float) -> None:
        self._ids[job.id] = job
        heapq.heappush(self._heap, (job.seq, job.id))

    def _head(self) -> Job | None:
        h = self._heap
        while h:
            job = self._ids.get(h[0][1])
            if job is not None:
                return job
            heapq.heappop(h)
        return None

    def take(self, now: float, runnable: Runnable) -> Job | None:
        job = self._head()
        if job is None or job.not_before > now or not runnable(job.topic):
            return None
        heapq.heappop(self._heap)
        del self._ids[job.id]
        return job

    def remove(self, job_id: str) -> Job | None:
        return self._ids.pop(job_id, None)

    def next_wakeup(self) -> float | None:
        job = self._head()
        return job.not_before if job is not None and job.not_before > 0 else None


class RoundRobinWindow(_DelayedMixin, Window):
    """One job per topic in turn (Sling's topic round robin), FIFO within a topic."""

    def __init__(self) -> None:
        super().__init__()
        self._topics: OrderedDict[str, deque[Job]] = OrderedDict()
        self._delayed = []

    def add(self, job: Job, now: float) -> None:
        self._ids[job.id] = job
        if job.not_before > now:
            self._push_delayed(job)
        else:
            self._topics.setdefault(job.topic, deque()).append(job)

    def take(self, now: float, runnable: Runnable) -> Job | None:
        if self._delayed and self._delayed[0][0] <= now:
            for job in self._due(now):
                self._topics.setdefault(job.topic, deque()).append(job)
        ids = self._ids
        for topic in list(self._topics):
            q = self._topics[topic]
            while q and (q[0].id not in ids or ids[q[0].id] is not q[0]):
                q.popleft()
            if not q:
                del self._topics[topic]
                continue
            if not runnable(topic):
                continue
            job = q.popleft()
            del ids[job.id]
            if q:
                self._topics.move_to_end(topic)  # next time, the other topics go first
            else:
                del self._topics[topic]
            return job
        return None

    def remove(self, job_id: str) -> Job | None:
        return self._ids.pop(job_id, None)

    def next_wakeup(self) -> float | None:
        return self._delayed_wakeup()


def make_window(queue_type: str) -> Window:
    if queue_type == "ordered":
        return OrderedWindow()
    if queue_type == "topic_round_robin":
        return RoundRobinWindow()
    return UnorderedWindow()
