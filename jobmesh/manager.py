"""The job manager (``node.jobs``): the API facade of DESIGN §5.3.

It validates input, writes new jobs, hands them to their queue actors and answers
queries from the store (overlaid with the live state of running jobs). As an actor
it receives the engine's transitions (``started`` from the pool, ``transition``
from the queues, always after the write committed) and turns them into
statistics, ``wait`` results and notifications.
"""

from __future__ import annotations

import asyncio
import copy
import json
from . import clock as _clock
from functools import lru_cache
from typing import Any, Callable


from .actor import Actor
from .config import NodeConfig
from .consumers.context import failure_entries
from .errors import Conflict, NotFound, ValidationError
from .events import JOB_ADDED, EventBus, Notification, notification_topic
from .job import FINAL_STATES, Job, JobIdGenerator, JobState, Progress, iso
from .job_options import JobRequest, check_request, not_before, request_from
from .job_queries import JobQueries
from .queues.core import QueueMatcher
from .topics import TopicError, validate_topic

MAX_PROPERTIES_BYTES = 1_000_000
MAX_BATCH = 10_000
MAX_TOPIC_STATS = 10_000  # per-topic statistics kept for at most this many distinct topics
_STATE_NAMES = {s.value: s for s in JobState}
_QUEUED, _ACTIVE, _SUCCEEDED = JobState.QUEUED, JobState.ACTIVE, JobState.SUCCEEDED


class Stats:
    """Sling's statistics for one scope (overall, a queue, a topic)."""

    __slots__ = ("start_time", "last_activated", "last_finished", "queued", "active", "finished",
                 "failed", "cancelled", "waiting_total", "waiting_n", "processing_total", "processing_n")

    def __init__(self, start_time: float) -> None:
        self.start_time = start_time
        self.last_activated: float | None = None
        self.last_finished: float | None = None
        self.queued = self.active = self.finished = self.failed = self.cancelled = 0
        self.waiting_total = self.processing_total = 0.0
        self.waiting_n = self.processing_n = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "start_time": iso(self.start_time),
            "last_activated": iso(self.last_activated),
            "last_finished": iso(self.last_finished),
            "queued": self.queued,
            "active": self.active,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "processed": self.finished + self.cancelled,
            "average_waiting_time": round(self.waiting_total / self.waiting_n, 3) if self.waiting_n else 0.0,
            "average_processing_time": round(self.processing_total / self.processing_n, 3) if self.processing_n else 0.0,
        }


@lru_cache(maxsize=16384)
def _valid_topic(topic: str) -> None:
    """validate_topic, remembered: most nodes see a handful of distinct topics."""
    try:
        validate_topic(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None


try:
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring_ascii as _ascii  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
    _c_make_encoder = None
_json_default = json.JSONEncoder().default


def _strict_json(obj: Any) -> str:
    """``json.dumps(obj, allow_nan=False)``, the same text and errors, without ``JSONEncoder``'s
    per-call set-up (half the cost for a small dict; it runs once per added job)."""
    if _c_make_encoder is None:  # pragma: no cover
        return json.dumps(obj, allow_nan=False)
    return "".join(_c_make_encoder({}, _json_default, _ascii, None, ": ", ", ", False, False, False)(obj, 0))


def _check_properties(props: Any) -> str:
    """JSON text of ``props``; ValidationError when it is not a JSON-compatible dict."""
    if props is None:
        return "{}"
    if not isinstance(props, dict):
        raise ValidationError("properties must be a JSON object (a dict)")
    try:
        text = _strict_json(props)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"properties are not JSON-compatible: {e}") from None
    if len(text) > MAX_PROPERTIES_BYTES:
        raise ValidationError(f"properties are larger than {MAX_PROPERTIES_BYTES} bytes")
    return text


class JobManager(Actor):
    """``node.jobs``. Public coroutine methods are the API; ``tell`` carries the engine's transitions."""

    def __init__(self, config: NodeConfig, store: Any, events: EventBus, clock: Callable[[], float] = _clock.wall) -> None:
        super().__init__("job-manager")
        self.config = config
        self.node_name = config.name
        self.store = store
        self.events = events
        self.clock = clock
        self.matcher = QueueMatcher(config.all_queues())
        self.ids = JobIdGenerator(clock)
        self._queue_actors: dict[str, Actor] = {}
        self.pool: Any = None
        self._live: dict[str, Job] = {}
        self._failures_logged: dict[str, int] = {}  # job id -> the last failed attempt logged
        self._ran_here: dict[str, str] = {}  # other nodes' jobs that ran here: id -> origin (bounded)
        self.queries = JobQueries(store.path) if hasattr(store, "path") else None
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self.blobs: Any = None  # the node's BlobStore (job payload), set by the node
        self._adding_keys: dict[str, Job] = {}  # keyed jobs being committed: a second add finds them
        self._warned_queues: set[str] = set()
        self._started_at = clock()
        self.overall = Stats(self._started_at)
        self._by_queue: dict[str, Stats] = {}
        self._by_topic: dict[str, Stats] = {}
        self.accepting = True
        # called after new jobs were committed (the node kicks its offloader: no waiting for a tick)
        self.added_hook: Callable[[], None] | None = None
        self.log = self.log.bind(node=self.node_name)

    def bind(self, pool: Any, queues: dict[str, Actor]) -> None:
        self.pool = pool
        self._queue_actors = queues

    async def on_start(self) -> None:
        """Statistics gauges from the store (what is QUEUED/ACTIVE survives restarts); start clean-up."""
        self.accepting = True
        self.overall = Stats(self._started_at)
        self._by_queue.clear()
        self._by_topic.clear()
        for queue, topic, state, n in self.store.open_counts():
            for s in self._scopes(queue, topic):
                if state == "QUEUED":
                    s.queued += n
                else:
                    s.active += n
        self.spawn(self._cleanup_loop(), name="job-manager:cleanup")

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
        """(topic, properties) pairs, no options: the hot path."""
        self._check_accepting(items)
        now = self.clock()
        jobs: list[Job] = []
        texts: list[str] = []
        nid, match, node, valid = self.ids.next, self.matcher.match, self.node_name, _valid_topic
        tasky = self._task_options
        seen: dict[str, Any] = {}  # topic -> its task options (few topics per call, many jobs)
        for i, item in enumerate(items):
            try:
                topic, props = item
            except (TypeError, ValueError):
                raise ValidationError(f"item {i}: expected (topic, properties)") from None
            if not isinstance(topic, str):
                raise ValidationError(f"item {i}: topic must be a string")
            valid(topic)
            texts.append("{}" if props is None or props == {} else _check_properties(props))
            opts = seen.get(topic, seen)
            if opts is seen:
                opts = seen[topic] = tasky(topic)
            if opts is None:
                q = match(topic)
                jobs.append(Job(id=nid(), topic=topic, properties=props if props is not None else {},
                                queue=q.name, origin=node, created=now, max_retries=q.retries))
            else:
                qname, retries, prio = opts
                jobs.append(Job(id=nid(), topic=topic, properties=props if props is not None else {},
                                queue=qname, origin=node, created=now, max_retries=retries, priority=prio))
        if not jobs:
            return []
        await self.store.insert(jobs, texts)
        self._on_added(jobs)
        return jobs

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
        refs = await self._resolve_payloads(checked) if any(r.payload is not None for r in checked) else None
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
                live = self._live.get(job.id)
                out.append((_snapshot(live if live is not None else job), False))
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
            await self.store.insert(jobs, texts)
        finally:
            for job in jobs:
                if job.key is not None and self._adding_keys.get(job.key) is job:
                    del self._adding_keys[job.key]
        self._on_added(jobs)
        return out

    async def _resolve_payloads(self, requests: list[JobRequest]) -> list[dict[str, Any]]:
        """Each request's payload as ``{name: BlobRef}``: files and bytes stored (once per payload
        object, so a payload shared by many requests is stored once), blob ids checked."""
        from .blobs.payload import resolve_payload

        if self.blobs is None:
            raise ValidationError("this node has no blob store")
        done: dict[int, dict[str, Any]] = {}
        out: list[dict[str, Any]] = []
        for i, r in enumerate(requests):
            if r.payload is None:
                out.append({})
                continue
            refs = done.get(id(r.payload))
            if refs is None:
                where = f"item {i}: " if len(requests) > 1 else ""
                refs = done[id(r.payload)] = await resolve_payload(self.blobs, r.payload, where)
            out.append(refs)
        return out

    def _task_options(self, topic: str) -> tuple[str, int, int] | None:
        """(queue, retries, priority) for a topic whose consumer here is a task with options, else None
        (the queue that matches the topic decides). Read where the job is recorded: its origin."""
        index = getattr(self.pool, "index", None)
        if index is None:
            return None
        spec = index.find(topic)
        if spec is None or (spec.retries is None and spec.queue is None and not spec.priority):
            return None
        q = self.matcher.match(topic)
        if spec.queue is not None and spec.queue != q.name:
            if spec.queue in self._queue_actors:
                q = self._queue_config(spec.queue) or q
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
        by_queue: dict[str, list[Job]] = {}
        per_topic: dict[tuple[str, str], int] = {}
        for job in jobs:
            lst = by_queue.get(job.queue)
            if lst is None:
                by_queue[job.queue] = lst = []
            lst.append(job)
            key = (job.queue, job.topic)
            per_topic[key] = per_topic.get(key, 0) + 1
        for (queue, topic), n in per_topic.items():
            for st in self._scopes(queue, topic):
                st.queued += n
        for qname, lst in by_queue.items():
            actor = self._queue_actors.get(qname)
            if actor is not None:
                actor.tell(("enqueue", lst))
        if self.added_hook is not None:
            self.added_hook()
        if self.events.wants(JOB_ADDED):
            now = self.clock()
            for job in jobs:
                self.events.publish(Notification.of(JOB_ADDED, job, self.node_name, now))

    async def get(self, job_id: str) -> Job | None:
        if not isinstance(job_id, str):
            return None
        live = self._live.get(job_id)
        if live is not None and live.state is _ACTIVE:
            return self._with_payload([_snapshot(live)])[0]  # running: its progress lives in memory
        job = self.store.get(job_id)  # what is committed (a just-decided outcome may not be yet)
        return None if job is None else self._with_payload([job])[0]

    def _with_payload(self, jobs: list[Job]) -> list[Job]:
        """The jobs' payload and output payload, from the blob store's references."""
        blobs = self.blobs
        if blobs is None or not blobs.has_refs or not jobs:
            return jobs
        found = blobs.payloads([j.id for j in jobs])
        for j in jobs:
            ins, outs = found.get(j.id, ({}, {}))
            j.payload, j.output_payload = ins, outs
        return jobs

    async def payload(self, job_id: str, name: str) -> "Path":
        """The local file of a job's output (``name``) or, failing that, its input; ``NotFound``."""
        job = await self._get_or_404(await self.resolve_id(job_id) if isinstance(job_id, str) else job_id)
        ref = job.output_payload.get(name) or job.payload.get(name)
        if ref is None:
            raise NotFound(f"job {job.id} has no payload named {name!r}")
        path = self.blobs.path(ref.id)
        if not path.is_file():
            raise NotFound(f"payload {name!r} of job {job.id} ({ref.id}) is not on this node")
        return path

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
        live = self._live
        return self._with_payload(
            [_snapshot(live[j.id]) if j.id in live and live[j.id].state.value == j.state.value else j for j in jobs])

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
            return self._with_payload([await asyncio.wait_for(fut, timeout)])[0]
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
            await self.store.delete([job_id])
            return None
        return await self._cancel(job_id, JobState.DROPPED)

    async def _cancel(self, job_id: str, state: JobState) -> Job:
        job = await self._get_or_404(job_id)
        if job.state in FINAL_STATES:
            raise Conflict(f"job {job_id} is already {job.state.value}")
        actor = self._queue_actors.get(job.queue)
        if actor is None:
            raise Conflict(f"job {job_id} belongs to queue {job.queue}, which is not configured here")
        res = await actor.ask(("cancel", job_id, state))
        if isinstance(res, Job):
            return _snapshot(res)
        if res == "buffered":  # it was about to start: the queue records it in a moment
            return await self.wait(job_id, timeout=10.0)
        return await self._get_or_404(job_id)

    async def retry(self, job_id: str) -> Job:
        """A final job that did not succeed goes back to QUEUED with retry_count 0 (same id)."""
        job = await self._get_or_404(job_id)
        if job.state not in FINAL_STATES or job.state is JobState.SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.state.value}; only failed, stopped or dropped jobs can be retried")
        old = job.state
        if job.queue not in self._queue_actors:
            job.queue = self.matcher.match(job.topic).name
        job.state = JobState.QUEUED
        job.retry_count = 0
        job.not_before = 0.0
        job.finished = None
        job.result_message = None
        job.result = None
        job.target = None  # it may have run at another node: back in this node's windows
        job.progress = Progress()
        await self.store.update(job)
        self._transition(job, old, JobState.QUEUED, None, "RETRY")
        self._queue_actors[job.queue].tell(("requeue", job))
        return _snapshot(job)

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
        out = []
        for name, actor in self._queue_actors.items():
            info = await actor.ask(("info",))
            info["statistics"] = self._queue_stats(name).to_json()
            out.append(info)
        return out

    async def suspend_queue(self, name: str) -> dict[str, Any]:
        return await self._queue_cmd(name, "suspend")

    async def resume_queue(self, name: str) -> dict[str, Any]:
        return await self._queue_cmd(name, "resume")

    async def _queue_cmd(self, name: str, cmd: str) -> dict[str, Any]:
        actor = self._queue_actors.get(name)
        if actor is None:
            raise NotFound(f"queue {name} not found")
        info = await actor.ask((cmd,))
        info["statistics"] = self._queue_stats(name).to_json()
        return info

    def running_jobs(self) -> list[Job]:
        """Jobs ACTIVE in this node's consumer pool now (a copy of the list: any thread may call)."""
        return [j for j in list(self._live.values()) if j.state is _ACTIVE]

    def queued_count(self) -> int:
        return self.overall.queued

    # -- transitions from the engine ---------------------------------------
    def receive(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "started":
            self._started(msg[1])
        elif kind == "transitions":
            self._transitions(msg[1])
        elif kind == "foreign_added":
            self._foreign_added(msg[1])
        elif kind == "foreign_done":
            self._foreign_done(msg[1])
        else:
            raise ValueError(f"job manager: unknown message {kind!r}")

    def _foreign_added(self, jobs: list[Job]) -> None:
        """Copies of other nodes' jobs, committed here by the transfer actor: they queue and
        count like local jobs while here (no job/added: their origin announced them)."""
        by_queue: dict[str, list[Job]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
            for s in self._scopes(job.queue, job.topic):
                s.queued += 1
        for qname, lst in by_queue.items():
            actor = self._queue_actors.get(qname)
            if actor is not None:
                actor.tell(("copies", lst))

    def _foreign_done(self, done: list[tuple[Job, JobState]]) -> None:
        """Copies that ended here (their outcome went to the transfer outbox; the origin records it)."""
        ran = self._ran_here
        for job, old in done:
            ran[job.id] = job.origin
            if len(ran) > MAX_TOPIC_STATS:  # bounded: forget the oldest
                ran.pop(next(iter(ran)))
            for s in self._scopes(job.queue, job.topic):
                if old is JobState.QUEUED:
                    s.queued -= 1
                elif old is JobState.ACTIVE:
                    s.active -= 1
            self._live.pop(job.id, None)

    def _started(self, started: list[tuple[Job, float]]) -> None:
        """Jobs whose ACTIVE row committed. Statistics are summed per (queue, topic) first:
        a batch usually holds many jobs of few topics."""
        now = self.clock()
        live, wants = self._live, self.events.wants("job/started")
        agg: dict[tuple[str, str], list[float]] = {}
        for job, waiting_ms in started:
            live[job.id] = job
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

    def _transitions(self, transitions: list[tuple[Any, ...]]) -> None:
        now = self.clock()
        agg: dict[tuple[str, str, JobState, JobState, bool], list[float]] = {}
        live, waiters, events = self._live, self._waiters, self.events
        for job, old, new, processing_ms, how in transitions:
            if how == "FAILED" and old is _ACTIVE:
                self._log_failure(job, new, now)
            key = (job.queue, job.topic, old, new, how == "ABORTED")
            a = agg.get(key)
            if a is None:
                agg[key] = a = [0, 0.0, 0]
            a[0] += 1
            if processing_ms is not None:
                a[1] += processing_ms
                a[2] += 1
            if new is not _ACTIVE:
                live.pop(job.id, None)
            if new in FINAL_STATES and job.id in waiters:
                snap = _snapshot(job)
                for fut in waiters.pop(job.id):
                    if not fut.done():
                        fut.set_result(snap)
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
        traceback (unless it repeats the previous attempt's), as Celery and Dramatiq workers do.
        Read from the job's log entries: by the time this transition arrives the engine may
        already be running the next attempt of the same job object."""
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

    def _transition(self, job: Job, old: JobState, new: JobState, processing_ms: float | None, how: str) -> None:
        self._transitions([(job, old, new, processing_ms, how)])

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
        now = self.clock()
        total = 0
        for _ in range(rounds):
            try:
                n = await self.store.purge(now - self.config.history_ttl, now - self.config.failed_history_ttl, keep)
            except Exception as exc:
                self.log.warning("history clean-up failed", error=repr(exc))
                return total
            total += n
            if n < 5000:
                break
        if total:
            self.log.debug("history cleaned", removed=total)
        return total


def _retries(job: Job) -> str:
    return f"{job.retry_count}/forever" if job.max_retries < 0 else f"{job.retry_count}/{job.max_retries}"


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


def _snapshot(job: Job) -> Job:
    """A copy a caller may keep: the engine goes on mutating its own job objects."""
    j = copy.copy(job)
    p = job.progress
    j.progress = Progress(p.steps, p.step, p.eta, list(p.log))
    return j


__all__ = ["JobManager", "Stats"]
