"""The job manager (``node.jobs``): the API facade of DESIGN §5.3.

It validates input and hands new jobs and requests (stop, remove, retry, suspend) to the
engine (``engine.actor``), which writes every job row; it answers queries from the store,
overlaid with the engine's snapshots of running jobs. As an actor it receives the
engine's messages (``JobsStarted``, ``JobsTransitioned``, ``CopiesArrived``,
``CopiesLeft``; always after the write committed) and turns them into statistics,
``wait`` results and notifications (``EngineInbox``, in ``manager_inbox.py``; the
statistics' ``Stats`` is in ``job_stats.py``).
"""

from __future__ import annotations

import asyncio
import os
from . import clock as _clock
from functools import lru_cache
from typing import Any, Callable


from .actor import Actor
from .config import NodeConfig
from .engine import events as ev
from .errors import ActorStopped, Conflict, NotFound, ValidationError
from .events import JOB_ADDED, EventBus, Notification
from .job import FINAL_STATES, Job, JobIdGenerator, JobState, new_job, properties_json
from .job_options import JobRequest, check_request, not_before, request_from
from .blobs.payload import payload_file, resolve_requests, with_payload
from .job_queries import JobQueries
from .queues.core import QueueMatcher
from .topics import TopicError, validate_topic
from .job_stats import Stats
# the engine's messages are handled in manager_inbox.py; MAX_TOPIC_STATS stays importable from here
from .manager_inbox import _ACTIVE, _SUCCEEDED, MAX_TOPIC_STATS, EngineInbox, _retries

MAX_BATCH = 10_000
_STATE_NAMES = {s.value: s for s in JobState}


@lru_cache(maxsize=16384)
def _valid_topic(topic: str) -> None:
    """validate_topic, remembered: most nodes see a handful of distinct topics."""
    try:
        validate_topic(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None


_check_properties = properties_json


class JobManager(EngineInbox, Actor):
    """``node.jobs``. Public coroutine methods are the API; the engine's messages come through
    ``receive`` (``EngineInbox``), called by the node in the engine's turn (``Node.notify``)."""

    REQUEST_TIMEOUT = 10.0  # s an engine request may take (it answers once its write is durable)

    def __init__(self, config: NodeConfig, store: Any, events: EventBus, engine: Actor,
                 clock: Callable[[], float] = _clock.wall, on_added: Callable[[], None] | None = None,
                 consumers: Any = None, blobs: Any = None) -> None:
        super().__init__("job-manager")
        self.config = config
        self.node_name = config.name
        self.store = store
        self.events = events
        self.engine = engine
        self.consumers = consumers  # the node's ConsumerIndex: a task's own options (queue, retries, priority)
        self.clock = clock
        self.matcher = QueueMatcher(config.all_queues())
        self.ids = JobIdGenerator(clock)
        self._failures_logged: dict[str, int] = {}  # job id -> the last failed attempt logged
        self._ran_here: dict[str, str] = {}  # other nodes' jobs that ran here: id -> origin (bounded)
        self.queries = JobQueries(store.path) if hasattr(store, "path") else None
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self.blobs = blobs  # the node's BlobStore (job payload: adds store it, reads show it)
        self._adding_keys: dict[str, Job] = {}  # keyed jobs being committed: a second add finds them
        self._warned_queues: set[str] = set()
        self._started_at = clock()
        self.overall = Stats(self._started_at)
        self._by_queue: dict[str, Stats] = {}
        self._by_topic: dict[str, Stats] = {}
        self.accepting = True
        # called after new jobs were committed (the node kicks its offloader: no waiting for a tick)
        self.on_added = on_added
        self.log = self.log.bind(node=self.node_name)

    async def on_start(self) -> None:
        """Statistics gauges from the store (what is QUEUED/ACTIVE survives restarts); start clean-up."""
        self.accepting = True
        self.recount()
        self.spawn(self._cleanup_loop(), name="job-manager:cleanup")

    def recount(self) -> None:
        """The statistics anew, their gauges (QUEUED, ACTIVE) from the store's committed rows: at
        start, and after a bug in taking an engine message left them half-updated."""
        self.overall = Stats(self._started_at)
        self._by_queue.clear()
        self._by_topic.clear()
        for queue, topic, state, n in self.store.open_counts():
            for s in self._scopes(queue, topic):
                if state == "QUEUED":
                    s.queued += n
                else:
                    s.active += n

    async def on_stop(self) -> None:
        if self.queries is not None:
            self.queries.close()

    # -- the API (DESIGN §5.3) ---------------------------------------------
    async def add(self, topic: str, properties: dict[str, Any] | None = None, *, delay: float | None = None,
                  at: Any = None, key: str | None = None, timeout: float | None = None,
                  priority: int | None = None, payload: dict[str, Any] | None = None) -> Job:
        """Add one job, committed on return. ``delay`` (s) or ``at`` (ISO/datetime): QUEUED until then;
        ``key``: while a job of this node with that key is open, that job is returned instead;
        ``timeout``: its time limit (s); ``priority``: higher starts first within its queue;
        ``payload``: ``{name: Path | bytes | blob id}``, stored before the job (issue 14)."""
        if (delay is None and at is None and key is None and timeout is None and priority is None
                and payload is None):
            return (await self._add_plain([(topic, properties)]))[0]
        return (await self.submit([JobRequest(topic, properties, delay, at, key, timeout, priority, payload)]))[0][0]

    async def add_many(self, items: list[Any], *, delay: float | None = None, at: Any = None,
                       timeout: float | None = None, priority: int | None = None,
                       payload: dict[str, Any] | None = None) -> list[Job]:
        """Validate all, write all in one transaction, return after commit (in order). An item is
        ``(topic, properties)``, ``(topic, properties, payload)``, a ``JobRequest`` or a dict like the
        HTTP body (with its own options); the keyword options apply to every item that does not set
        them (``payload`` is stored once and shared by those jobs)."""
        if not isinstance(items, (list, tuple)):
            raise ValidationError("add_many takes a list of (topic, properties) pairs")
        shared = (delay is not None or at is not None or timeout is not None or priority is not None
                  or payload is not None)
        if not shared and all(type(i) is tuple and len(i) == 2 for i in items):
            return await self._add_plain(items)
        reqs = []
        for i, item in enumerate(items):
            r = request_from(item, f"item {i}: ")
            if shared:
                r = r._replace(delay=r.delay if r.delay is not None or r.at is not None else delay,
                               at=r.at if r.at is not None or r.delay is not None else at,
                               timeout=r.timeout if r.timeout is not None else timeout,
                               priority=r.priority if r.priority is not None else priority,
                               payload=r.payload if r.payload is not None else payload)
            reqs.append(r)
        return [job for job, _ in await self.submit(reqs)]

    async def _add_plain(self, items: Any) -> list[Job]:
        """(topic, properties) pairs, no options: the hot path. What a job's topic decides (it is
        valid, its queue, retries and priority) is worked out once per topic of the call."""
        self._check_accepting(items)
        now = self.clock()
        jobs: list[Job] = []
        texts: list[str] = []
        ids = self.ids.next_many(len(items))
        node, tasky = self.node_name, self._task_options
        per_topic: dict[str, tuple[str, int, int]] = {}  # topic -> (queue, retries, priority)
        for i, item in enumerate(items):
            try:
                topic, props = item
            except (TypeError, ValueError):
                raise ValidationError(f"item {i}: expected (topic, properties)") from None
            if not isinstance(topic, str):
                raise ValidationError(f"item {i}: topic must be a string")
            decided = per_topic.get(topic)
            if decided is None:
                _valid_topic(topic)
                opts = tasky(topic)
                if opts is None:
                    q = self.matcher.match(topic)
                    decided = per_topic[topic] = (q.name, q.retries, 0)
                else:
                    decided = per_topic[topic] = opts
            texts.append("{}" if props is None or props == {} else _check_properties(props))
            jobs.append(new_job(ids[i], topic, props if props is not None else {}, decided[0], node, now,
                                decided[1], decided[2]))
        if not jobs:
            return []
        added = await self._request(ev.JobsAdded(jobs, texts))
        self._on_added(added)
        return added

    async def _request(self, event: Any, timeout: float | None = None) -> Any:
        """Hand a request to the engine; it answers (through ``event.reply``) once what it did is durable."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        event.reply = fut
        try:
            self.engine.tell(event)
        except ActorStopped:
            raise ActorStopped("the job store is closed (node stopped)") from None
        return await asyncio.wait_for(fut, timeout)

    def _check_accepting(self, items: Any) -> None:
        if not self.accepting:
            raise Conflict(f"node {self.node_name} is shutting down")
        if len(items) > MAX_BATCH * 10:
            raise ValidationError(f"at most {MAX_BATCH * 10} jobs per call")

    async def submit(self, requests: list[JobRequest]) -> list[tuple[Job, bool]]:
        """Add jobs with options: ``[(job, created)]`` in order. ``created`` is False when the
        request's ``key`` belongs to a job of this node that is not final (that job is returned; the
        HTTP API answers 200 instead of 201), or to an earlier request of the same call."""
        self._check_accepting(requests)
        now = self.clock()
        checked = []
        for i, r in enumerate(requests):
            where = f"item {i}: " if len(requests) > 1 else ""
            if not isinstance(r.topic, str):
                raise ValidationError(f"{where}topic must be a string")
            _valid_topic(r.topic)
            checked.append(r if r.plain else check_request(r, where))
        refs = await resolve_requests(self.blobs, checked) if any(r.payload is not None for r in checked) else None
        keys = {r.key for r in checked if r.key is not None}
        existing: dict[str, Job] = {}
        if keys:
            existing = {k: j for k, j in self._adding_keys.items() if k in keys}
            missing = [k for k in keys if k not in existing]
            if missing:
                existing.update(self.store.open_with_keys(missing, self.node_name))
        out: list[tuple[Job, bool]] = []
        jobs: list[Job] = []
        texts: list[str] = []
        task_opts: dict[str, Any] = {}  # topic -> its task options, once per call
        for i, r in enumerate(checked):
            if r.key is not None and r.key in existing:
                job = existing[r.key]
                live = self.engine.snapshot(job.id)  # type: ignore[attr-defined]
                out.append((live if live is not None else job.snapshot(), False))
                continue
            props = r.properties
            texts.append("{}" if props is None or props == {} else _check_properties(props))
            opts = task_opts.get(r.topic, task_opts)
            if opts is task_opts:
                opts = task_opts[r.topic] = self._task_options(r.topic)
            if opts is None:
                q = self.matcher.match(r.topic)
                qname, retries, prio = q.name, q.retries, 0
            else:
                qname, retries, prio = opts
            if r.plain:
                job = Job(id=self.ids.next(), topic=r.topic, properties=props if props is not None else {},
                          queue=qname, origin=self.node_name, created=now, max_retries=retries, priority=prio)
            else:
                job = Job(id=self.ids.next(), topic=r.topic, properties=props if props is not None else {},
                          queue=qname, origin=self.node_name, created=now, max_retries=retries,
                          not_before=not_before(r, now), key=r.key, timeout=r.timeout,
                          priority=r.priority if r.priority is not None else prio)
                if refs is not None and refs[i]:
                    job.payload = dict(refs[i])
            jobs.append(job)
            out.append((job, True))
            if r.key is not None:
                existing[r.key] = job
        if not jobs:
            return out
        if refs is not None:  # the jobs' references before the jobs (a crash in between: GC drops them)
            self.blobs.set_inputs({j.id: j.payload for j in jobs if j.payload})
        for job in jobs:
            if job.key is not None:
                self._adding_keys[job.key] = job
        try:
            added = await self._request(ev.JobsAdded(jobs, texts))
        finally:
            for job in jobs:
                if job.key is not None and self._adding_keys.get(job.key) is job:
                    del self._adding_keys[job.key]
        self._on_added(added)
        committed = {j.id: j for j in added}  # the engine's snapshots of what it committed
        return [(committed.get(j.id, j), created) if created else (j, created) for j, created in out]

    def _task_options(self, topic: str) -> tuple[str, int, int] | None:
        """(queue, retries, priority) for a topic whose consumer here is a task with options, else None
        (the queue that matches the topic decides). Read where the job is recorded: its origin."""
        index = self.consumers
        if index is None:
            return None
        spec = index.find(topic)
        if spec is None or (spec.retries is None and spec.queue is None and not spec.priority):
            return None
        q = self.matcher.match(topic)
        if spec.queue is not None and spec.queue != q.name:
            configured = self._queue_config(spec.queue)
            if configured is not None:
                q = configured
            elif spec.queue not in self._warned_queues:
                self._warned_queues.add(spec.queue)
                self.log.warning("a task names a queue this node does not configure; its jobs go to the "
                                 "queue that matches their topic", task=spec.name, queue=spec.queue, used=q.name)
        return q.name, spec.retries if spec.retries is not None else q.retries, spec.priority or 0

    def _queue_config(self, name: str) -> Any:
        for q in self.matcher.queues:
            if q.name == name:
                return q
        return None

    def _on_added(self, jobs: list[Job]) -> None:
        per_topic: dict[tuple[str, str], int] = {}
        for job in jobs:
            key = (job.queue, job.topic)
            per_topic[key] = per_topic.get(key, 0) + 1
        for (queue, topic), n in per_topic.items():
            for st in self._scopes(queue, topic):
                st.queued += n
        if self.on_added is not None:
            self.on_added()
        if self.events.wants(JOB_ADDED):
            now = self.clock()
            for job in jobs:
                self.events.publish(Notification.of(JOB_ADDED, job, self.node_name, now))

    async def get(self, job_id: str) -> Job | None:
        if not isinstance(job_id, str):
            return None
        live = self.engine.snapshot(job_id)  # type: ignore[attr-defined]
        if live is not None:  # running: its progress lives in memory
            return with_payload(self.blobs, [live])[0]
        job = self.store.get(job_id)  # what is committed (a just-decided outcome may not be yet)
        return None if job is None else with_payload(self.blobs, [job])[0]

    async def payload(self, job_id: str, name: str) -> "os.PathLike[str]":
        """The local file of a job's output (``name``) or, failing that, its input; ``NotFound``."""
        job = await self._get_or_404(await self.resolve_id(job_id) if isinstance(job_id, str) else job_id)
        return payload_file(self.blobs, job, name)

    async def _get_or_404(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job is None:
            raise self.not_found(job_id)
        return job

    async def find(self, state: str | JobState | None = None, topic: str | None = None,
                   queue: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first; ``limit`` between 1 and 10,000."""
        st: str | None = None
        if state is not None:
            st = state.value if isinstance(state, JobState) else str(state).upper()
            if st not in _STATE_NAMES:
                raise ValidationError(f"unknown state {state!r}; one of {', '.join(_STATE_NAMES)}")
        try:
            limit = int(limit)
        except (TypeError, ValueError):
            raise ValidationError("limit must be an integer") from None
        if not 1 <= limit <= 10_000:
            raise ValidationError("limit must be between 1 and 10000")
        if topic is not None and "*" in topic and self.queries is not None:  # a pattern: 'demo/*'
            jobs = await self.queries.find(st, topic, queue, limit)
        else:
            jobs = await self.store.find_async(st, topic, queue, limit)
        snapshot = self.engine.snapshot  # type: ignore[attr-defined]
        out = []
        for j in jobs:
            live = snapshot(j.id) if j.state is _ACTIVE else None
            out.append(live if live is not None and live.state is j.state else j)
        return with_payload(self.blobs, out)

    async def find_page(self, state: str | JobState | None = None, topic: str | None = None,
                        queue: str | None = None, limit: int = 100) -> tuple[list[Job], int]:
        """``find`` and how many jobs match in all (counted only when the page is full)."""
        jobs = await self.find(state, topic, queue, limit)
        if len(jobs) < int(limit) or self.queries is None:
            return jobs, len(jobs)
        st = state.value if isinstance(state, JobState) else (str(state).upper() if state is not None else None)
        return jobs, max(len(jobs), await self.queries.count(st, topic, queue))

    async def resolve_id(self, job_id: str) -> str:
        """``job_id`` itself when this node knows it, else the one job id it is a prefix of;
        NotFound says where the job went when it ran here for another node."""
        if await self.get(job_id) is not None:
            return job_id
        if self.queries is not None and all(c in "0123456789abcdef-" for c in job_id):
            try:
                return await self.queries.resolve_prefix(job_id)
            except NotFound:
                pass
        raise self.not_found(job_id)

    def not_found(self, job_id: str) -> NotFound:
        """A NotFound that points to the job's origin when this node ran it as a target."""
        origin = self._ran_here.get(job_id)
        if origin is None:
            return NotFound(f"job {job_id} not found")
        err = NotFound(f"job {job_id} is not kept here: it ran here for its origin {origin}, which keeps "
                       f"its record; ask {origin}")
        err.origin = origin  # type: ignore[attr-defined]
        return err

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is final (asyncio.TimeoutError after ``timeout``); NotFound if unknown."""
        job = await self._get_or_404(job_id)
        if job.state in FINAL_STATES:
            return job
        fut: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(fut)
        try:
            return with_payload(self.blobs, [await asyncio.wait_for(fut, timeout)])[0]
        except asyncio.TimeoutError:  # say where the job is: a bare TimeoutError explains nothing
            now_job = await self.get(job_id) or job
            raise asyncio.TimeoutError(f"job {job_id} is not final after {timeout:g} s: {describe_state(now_job)}") from None
        finally:
            lst = self._waiters.get(job_id)
            if lst is not None and fut in lst:
                lst.remove(fut)
                if not lst:
                    del self._waiters[job_id]

    async def join(self, timeout: float | None = None, poll: float = 0.01) -> None:
        """Return once nothing is QUEUED or ACTIVE on this node (delayed jobs count: they are
        QUEUED); asyncio.TimeoutError saying what is left after ``timeout`` seconds. What a test
        awaits after sending jobs (Dramatiq's ``broker.join``)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.overall.queued <= 0 and self.overall.active <= 0 and not self._adding_keys:
                counts = self.store.open_counts()  # the statistics said idle: the store agrees?
                if not counts:
                    return
            if deadline is not None and loop.time() >= deadline:
                left: dict[str, int] = {}
                for _, _, state, n in self.store.open_counts():
                    left[state] = left.get(state, 0) + n
                raise asyncio.TimeoutError(
                    f"node {self.node_name} is not idle after {timeout:g} s: {left.get('QUEUED', 0)} jobs queued, "
                    f"{left.get('ACTIVE', 0)} active")
            await asyncio.sleep(poll)

    async def stop(self, job_id: str) -> Job:
        """QUEUED -> STOPPED now; ACTIVE: the consumer is asked to stop (returns the job as it is)."""
        return await self._cancel(job_id, JobState.STOPPED)

    async def remove(self, job_id: str) -> Job | None:
        """Queued/active -> DROPPED (returned); a final job is deleted (None)."""
        job = await self._get_or_404(job_id)
        if job.state in FINAL_STATES:
            await self._request(ev.RemoveRequested(job_id), self.REQUEST_TIMEOUT)
            return None
        return await self._cancel(job_id, JobState.DROPPED)

    async def _cancel(self, job_id: str, state: JobState) -> Job:
        job = await self._get_or_404(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state.value}")
        res = await self._request(ev.StopRequested(job_id, state), self.REQUEST_TIMEOUT)
        if isinstance(res, Job):
            return res
        return await self._get_or_404(job_id)  # it ended meanwhile: as recorded

    async def retry(self, job_id: str) -> Job:
        """A final job that did not succeed goes back to QUEUED with retry_count 0 (same id)."""
        job = await self._get_or_404(job_id)
        if job.state not in FINAL_STATES or job.state is JobState.SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.state.value}; only failed, stopped or dropped jobs can be retried")
        res = await self._request(ev.RetryRequested(job_id), self.REQUEST_TIMEOUT)
        if res is None:
            raise Conflict(f"job {job_id} changed meanwhile; try again")
        return res

    def processing_times(self) -> dict[str, float]:
        """Average processing time per topic, in seconds (the offloader's estimate of a job's
        length; read often, so no statistics JSON is built for it)."""
        return {t: s.processing_total / s.processing_n / 1000.0 for t, s in self._by_topic.items()
                if s.processing_n and s.processing_total > 0}

    async def statistics(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_json(),
            "queues": {name: s.to_json() for name, s in self._by_queue.items()},
            "topics": {name: s.to_json() for name, s in self._by_topic.items()},
        }

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue's configuration, suspension and statistics."""
        out = await self._request(ev.InfoRequested(), self.REQUEST_TIMEOUT)
        for info in out:
            info["statistics"] = self._queue_stats(info["name"]).to_json()
        return out

    async def suspend_queue(self, name: str) -> dict[str, Any]:
        return await self._suspend(name, True)

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self._suspend(name, False)

    async def _suspend(self, name: str, suspended: bool) -> dict[str, Any]:
        info = await self._request(ev.SuspendRequested(name, suspended), self.REQUEST_TIMEOUT)
        info["statistics"] = self._queue_stats(name).to_json()
        return info

    def running_jobs(self) -> list[Job]:
        """Jobs running in this node's slots now (any thread may call: a copy of the list)."""
        return self.engine.running_jobs()  # type: ignore[attr-defined,no-any-return]

    def queued_count(self) -> int:
        return self.overall.queued

    # -- history retention ---------------------------------------------------
    async def _cleanup_loop(self) -> None:
        """Delete finished jobs past their TTL, in bounded rounds (keep_jobs queues keep theirs)."""
        interval = max(1.0, min(60.0, self.config.history_ttl / 4, self.config.failed_history_ttl / 4))
        keep = [q.name for q in self.config.all_queues() if q.keep_jobs]
        while True:
            await asyncio.sleep(interval)
            await self.purge_history(keep)

    async def purge_history(self, keep: list[str] | None = None, rounds: int = 20) -> int:
        if keep is None:
            keep = [q.name for q in self.config.all_queues() if q.keep_jobs]
        from .engine.actor import PurgeRequested

        now = self.clock()
        total = 0
        for _ in range(rounds):
            try:
                task = await self.engine.ask(PurgeRequested(now - self.config.history_ttl,
                                                            now - self.config.failed_history_ttl, keep))
                n = await task
            except Exception as exc:
                self.log.warning("history clean-up failed", error=repr(exc))
                return total
            total += n
            if n < 5000:
                break
        if total:
            self.log.debug("history cleaned", removed=total)
        return total


def describe_state(job: Job) -> str:
    """One phrase for where a job is: ``QUEUED, retry 3/10, last error: NameError: ...``."""
    parts = [job.state.value]
    if job.target and job.target != job.origin:
        parts.append(f"at {job.target}")
    if job.retry_count:
        parts.append(f"retry {_retries(job)}")
    if job.result_message:
        parts.append(f"last error: {job.result_message}" if job.state is not _SUCCEEDED else job.result_message)
    return ", ".join(parts)


__all__ = ["JobManager", "Stats"]
