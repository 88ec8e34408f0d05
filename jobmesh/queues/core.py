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
from .. import rng as _rng
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
    result: Any = None  # OK only: the consumer's return value (JSON-compatible; an object is a step's output)
    # OK only, a copy's run: its output payload {name: {"id", "size"}} (goes back with the result)
    output_payload: dict[str, Any] | None = None


def retry_delay_for(job: Job, queue: QueueConfig, consumer_delay: float | None,
                    rand: Callable[[], float] | None = None) -> float:
    """Sling's precedence: the consumer's delay > the job's ``retry_delay`` property > the queue's.

    Only the queue's delay is backed off (``retry_backoff`` per retry already made,
    capped at ``max_retry_delay``) and jittered: an explicit delay is taken as meant.
    With ``retry_jitter`` (default: on when ``retry_backoff`` > 1) the delay is drawn from
    [delay/2, delay], so jobs that failed together (an outage) do not all come back at once.
    ``rand`` is the uniform [0, 1) source: jobmesh.rng's (seeded in the simulator) by default.
    """
    if consumer_delay is not None and consumer_delay >= 0:
        return float(consumer_delay)
    prop = job.properties.get("retry_delay") if isinstance(job.properties, dict) else None
    if isinstance(prop, (int, float)) and not isinstance(prop, bool) and prop >= 0:
        return float(prop)
    delay = min(queue.retry_delay * (queue.retry_backoff ** job.retry_count), queue.max_retry_delay)
    jitter = queue.retry_jitter if queue.retry_jitter is not None else queue.retry_backoff > 1
    if jitter and delay > 0:
        delay *= 0.5 + 0.5 * (rand or _rng.current().random)()
    return delay


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

    def view(self) -> Iterator[Job]:
        """The jobs in the window, without a copy: the window must not change while it is read."""
        return iter(self._ids.values())

    def newest(self) -> Iterator[Job]:
        """``view`` newest first (the last added first), without a copy either."""
        return reversed(self._ids.values())

    def get(self, job_id: str) -> Job | None:
        return self._ids.get(job_id)

    def add(self, job: Job, now: float) -> None:
        raise NotImplementedError

    def take(self, now: float, runnable: Runnable) -> Job | None:
        raise NotImplementedError

    def take_many(self, now: float, runnable: Runnable, n: int) -> list[Job]:
        """Up to ``n`` jobs, each as ``take`` would give it next (fewer: the window has no more
        that may start now)."""
        taken: list[Job] = []
        while len(taken) < n:
            job = self.take(now, runnable)
            if job is None:
                break
            taken.append(job)
        return taken

    def remove(self, job_id: str) -> Job | None:
        raise NotImplementedError

    def next_wakeup(self) -> float | None:
        raise NotImplementedError

    def unpark(self, runnable: Runnable) -> None:
        """Consumers changed: parked jobs that now have one become ready again."""


class _DelayedMixin:
    _delayed: list[tuple[float, int, str]]
    _ids: dict[str, Job]

    def add(self, job: Job, now: float) -> None:
        """Ready now (the subclass orders it), or delayed until its ``not_before``."""
        self._ids[job.id] = job
        if job.not_before > now:
            self._push_delayed(job)
        else:
            self._push_ready(job)

    def _push_ready(self, job: Job) -> None:
        raise NotImplementedError

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
    """First come, first served within a priority; a higher ``job.priority`` goes first. Retried
    jobs re-enter at the back of their priority once their delay passed. Priority 0 (nearly every
    job) lives in ``_ready``; other priorities get a lane each, made on demand."""

    def __init__(self) -> None:
        super().__init__()
        self._ready: deque[Job] = deque()
        self._delayed = []
        self._parked: dict[str, deque[Job]] = {}
        self._lanes: dict[int, deque[Job]] = {}  # priority (not 0) -> its jobs in arrival order
        self._order: list[int] = []  # the lanes' priorities, highest first

    def _push_ready(self, job: Job) -> None:
        p = job.priority
        if not p:
            self._ready.append(job)
            return
        lane = self._lanes.get(p)
        if lane is None:
            lane = self._lanes[p] = deque()
            self._order = sorted(self._lanes, reverse=True)
        lane.append(job)

    def take(self, now: float, runnable: Runnable) -> Job | None:
        if self._delayed and self._delayed[0][0] <= now:
            for job in self._due(now):
                self._push_ready(job)
        if not self._lanes:
            return self._pop(self._ready, runnable)
        for p in self._order:
            if p < 0:  # below the default: only once priority 0 has nothing to start
                job = self._pop(self._ready, runnable)
                if job is not None:
                    return job
            job = self._pop(self._lanes[p], runnable)
            if job is not None:
                return job
        if self._order[-1] > 0:
            job = self._pop(self._ready, runnable)
            if job is not None:
                return job
        for p in [p for p, lane in self._lanes.items() if not lane]:  # drop empty lanes
            del self._lanes[p]
        self._order = sorted(self._lanes, reverse=True)
        return None

    def take_many(self, now: float, runnable: Runnable, n: int) -> list[Job]:
        if self._lanes or (self._delayed and self._delayed[0][0] <= now):
            return super().take_many(now, runnable, n)
        return self._pop_many(self._ready, runnable, n)  # the usual case: priority 0 only, none due

    def _pop(self, ready: deque[Job], runnable: Runnable) -> Job | None:
        taken = self._pop_many(ready, runnable, 1)
        return taken[0] if taken else None

    def _pop_many(self, ready: deque[Job], runnable: Runnable, n: int) -> list[Job]:
        """Up to ``n`` jobs from the front of ``ready`` that may start (``runnable`` asked once for
        a run of jobs of one topic); those without a consumer are parked, removed ones skipped."""
        ids, parked, taken = self._ids, self._parked, []
        topic, ok = None, False
        while ready and len(taken) < n:
            job = ready.popleft()
            if ids.get(job.id) is not job:
                continue  # removed (stop/remove) while waiting
            if job.topic != topic:
                topic, ok = job.topic, runnable(job.topic)
            if not ok:
                parked.setdefault(job.topic, deque()).append(job)
                continue
            del ids[job.id]
            taken.append(job)
        return taken

    def remove(self, job_id: str) -> Job | None:
        return self._ids.pop(job_id, None)  # lazily skipped in take

    def next_wakeup(self) -> float | None:
        return self._delayed_wakeup()

    def unpark(self, runnable: Runnable) -> None:
        for topic in [t for t in self._parked if runnable(t)]:
            for job in self._parked.pop(topic):
                self._push_ready(job)

    @property
    def parked(self) -> int:
        return sum(len(d) for d in self._parked.values())


class OrderedWindow(Window):
    """Strict arrival order, head of line: nothing overtakes the head, not even while it
    waits out a retry delay or a delay of its own, or has no consumer. Priorities are ignored:
    an ordered queue keeps its order."""

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
    """One job per topic in turn (Sling's topic round robin), FIFO within a topic and priority
    (a higher ``job.priority`` goes ahead of its topic's lower ones)."""

    def __init__(self) -> None:
        super().__init__()
        self._topics: OrderedDict[str, deque[Job]] = OrderedDict()
        self._delayed = []

    def _push_ready(self, job: Job) -> None:
        q = self._topics.get(job.topic)
        if q is None:
            q = self._topics[job.topic] = deque()
        if not q or q[-1].priority >= job.priority:
            q.append(job)  # the usual case: no priorities, or not above the last one
            return
        i = len(q)
        while i > 0 and q[i - 1].priority < job.priority:
            i -= 1
        q.insert(i, job)

    def take(self, now: float, runnable: Runnable) -> Job | None:
        if self._delayed and self._delayed[0][0] <= now:
            for job in self._due(now):
                self._push_ready(job)
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
