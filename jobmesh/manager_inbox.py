"""The job manager's inbox (``EngineInbox``, a base of ``JobManager``): the engine's messages
(``JobsStarted``, ``JobsTransitioned``, ``CopiesArrived``, ``CopiesLeft``; always after the
write committed) turned into statistics per scope, ``wait`` results, notifications and the
log lines of failed attempts. Apart from ``jobmesh/manager.py``, which keeps the API
(adds, queries, requests); the attributes used here are set by ``JobManager.__init__``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .consumers.context import failure_entries
from .engine import instructions as ins
from .events import EventBus, Notification, notification_topic
from .job import FINAL_STATES, Job, JobState
from .job_stats import Stats

MAX_TOPIC_STATS = 10_000  # per-topic statistics kept for at most this many distinct topics
_QUEUED, _ACTIVE, _SUCCEEDED = JobState.QUEUED, JobState.ACTIVE, JobState.SUCCEEDED


class EngineInbox:
    """``JobManager``'s half that takes the engine's messages (one handler per type)."""

    # set by JobManager.__init__
    node_name: str
    store: Any
    events: EventBus
    clock: Callable[[], float]
    log: Any
    overall: Stats
    _started_at: float
    _by_queue: dict[str, Stats]
    _by_topic: dict[str, Stats]
    _waiters: dict[str, list[asyncio.Future[Job]]]
    _ran_here: dict[str, str]
    _failures_logged: dict[str, int]

    def receive(self, msg: Any) -> None:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise TypeError(f"job manager: unknown message {type(msg).__name__}")
        handler(self, msg)

    def _copies_arrived(self, msg: ins.CopiesArrived) -> None:
        """Copies of other nodes' jobs, committed here: they queue and count like local jobs
        while here (no job/added: their origin announced them)."""
        for job in msg.jobs:
            for s in self._scopes(job.queue, job.topic):
                s.queued += 1

    def _copies_left(self, msg: ins.CopiesLeft) -> None:
        """Copies that ended or went here (their outcome went to the outbox; the origin records it)."""
        ran = self._ran_here
        agg: dict[tuple[str, str, JobState], int] = {}  # summed first: a batch has few topics
        for job, old in msg.items:
            ran[job.id] = job.origin
            if len(ran) > MAX_TOPIC_STATS:  # bounded: forget the oldest
                ran.pop(next(iter(ran)))
            key = (job.queue, job.topic, old)
            agg[key] = agg.get(key, 0) + 1
        for (queue, topic, old), n in agg.items():
            for s in self._scopes(queue, topic):
                if old is JobState.QUEUED:
                    s.queued -= n
                elif old is JobState.ACTIVE:
                    s.active -= n

    def _started(self, msg: ins.JobsStarted) -> None:
        """Jobs whose ACTIVE row committed. Statistics are summed per (queue, topic) first:
        a batch usually holds many jobs of few topics."""
        now = self.clock()
        wants = self.events.wants("job/started")
        agg: dict[tuple[str, str], list[float]] = {}
        for job, waiting_ms in msg.items:
            a = agg.get((job.queue, job.topic))
            if a is None:
                agg[(job.queue, job.topic)] = [1, waiting_ms]
            else:
                a[0] += 1
                a[1] += waiting_ms
            if wants:
                self.events.publish(Notification(
                    "job/started", job.id, job.topic, job.queue, self.node_name, "ACTIVE", now,
                    round(waiting_ms, 3), None, job.retry_count, None))
        for (queue, topic), (n, waiting) in agg.items():
            for st in self._scopes(queue, topic):
                st.queued -= n
                st.active += n
                st.last_activated = now
                st.waiting_total += waiting
                st.waiting_n += n

    def _transitioned(self, msg: ins.JobsTransitioned) -> None:
        now = self.clock()
        agg: dict[tuple[str, str, JobState, JobState, bool], list[float]] = {}
        waiters, events = self._waiters, self.events
        for job, old, new, processing_ms, how in msg.items:
            if how == "FAILED" and old is _ACTIVE and job.job is not None:
                self._log_failure(job.job, new, now)
            key = (job.queue, job.topic, old, new, how == "ABORTED")
            a = agg.get(key)
            if a is None:
                agg[key] = a = [0, 0.0, 0]
            a[0] += 1
            if processing_ms is not None:
                a[1] += processing_ms
                a[2] += 1
            if new in FINAL_STATES and job.id in waiters:
                final = self.store.get(job.id) or job.job  # committed: the job as it ended
                for fut in waiters.pop(job.id):
                    if not fut.done() and final is not None:
                        fut.set_result(final)
            if events.active:
                topic = notification_topic(old, new)
                if topic is not None and events.wants(topic):
                    events.publish(Notification(
                        topic, job.id, job.topic, job.queue, self.node_name, new.value, now, None,
                        round(processing_ms, 3) if processing_ms is not None else None,
                        job.retry_count, job.result_message))
        for (queue, topic, old, new, aborted), (n, proc_total, proc_n) in agg.items():
            for st in self._scopes(queue, topic):
                if old is _QUEUED:
                    st.queued -= n
                elif old is _ACTIVE:
                    st.active -= n
                if new is _QUEUED:
                    st.queued += n
                    if old is _ACTIVE and not aborted:
                        st.failed += n
                elif new is _SUCCEEDED:
                    st.finished += n
                    st.last_finished = now
                elif new in FINAL_STATES:
                    st.cancelled += n
                    st.last_finished = now
                if proc_n and not aborted:
                    st.processing_total += proc_total
                    st.processing_n += proc_n

    def _log_failure(self, job: Job, new: JobState, now: float) -> None:
        """A failed attempt is a WARNING with its attempt number, what happens next and its
        traceback (unless it repeats the previous attempt's), as Celery and Dramatiq workers do,
        read from the job's failure entries (the newest that this manager did not log yet)."""
        last = self._failures_logged.get(job.id, 0)
        entries = failure_entries(job, last)
        if new is not _QUEUED:
            self._failures_logged.pop(job.id, None)
        elif entries:
            self._failures_logged[job.id] = entries[0].attempt
            if len(self._failures_logged) > MAX_TOPIC_STATS:  # bounded: forget the oldest
                self._failures_logged.pop(next(iter(self._failures_logged)))
        fields: dict[str, Any] = {"job_id": job.id, "topic": job.topic}
        if entries:
            e = entries[0]
            fields.update(attempt=e.attempt, detail=e.detail, error=e.error)
            if e.traceback:
                fields["exception"] = e.traceback
        else:  # no entry (a result from another node, a trimmed log): what the record says now
            fields.update(attempt=job.attempt, retry=_retries(job), error=job.result_message)
        if new is _QUEUED:
            self.log.warning("job failed; retrying", **fields)
        elif new is JobState.GIVEN_UP and "exception" in fields:  # else the queue's "job given up" says it
            self.log.warning("job failed; no retries left", **fields)

    def _scopes(self, queue: str, topic: str) -> tuple[Stats, Stats, Stats]:
        return (self.overall, self._queue_stats(queue), self._topic_stats(topic))

    def _queue_stats(self, name: str) -> Stats:
        s = self._by_queue.get(name)
        if s is None:
            s = self._by_queue[name] = Stats(self._started_at)
        return s

    def _topic_stats(self, topic: str) -> Stats:
        s = self._by_topic.get(topic)
        if s is None:
            if len(self._by_topic) >= MAX_TOPIC_STATS:  # bounded memory: a scratch scope past the cap
                return Stats(self._started_at)
            s = self._by_topic[topic] = Stats(self._started_at)
        return s


def _retries(job: Job) -> str:
    return f"{job.retry_count}/forever" if job.max_retries < 0 else f"{job.retry_count}/{job.max_retries}"


_HANDLERS: dict[type, Callable[[EngineInbox, Any], None]] = {
    ins.JobsStarted: EngineInbox._started,
    ins.JobsTransitioned: EngineInbox._transitioned,
    ins.CopiesArrived: EngineInbox._copies_arrived,
    ins.CopiesLeft: EngineInbox._copies_left,
}
