"""The consumer pool: ``capacity`` long-lived slot workers that run jobs.

Why slot workers instead of a task per job: for fast consumers, creating and
scheduling an asyncio task per job costs more than the job. Each worker loops:
take the next dispatched job (higher-priority queues first), commit it ACTIVE
(a job never starts before its ACTIVE row is durable, so a crash counts the run
as a retry), run the consumer, report the outcome to the job's queue actor.

Async consumers run on the loop, sync ones on daemon threads (``threads.SyncThreads``).
A stopped job's ``ctx.is_stopped()`` turns true; an async consumer still running
``stop_grace`` seconds later is cancelled (the outcome is STOPPED either way).

Shutdown ends: when a drain's grace is over (or cut short by a second signal), every
run still going is interrupted — an async consumer is cancelled, a sync one's thread is
left behind — and reported ABORTED (QUEUED again, not a retry) before the queues stop.
A consumer that returns after that is ignored (its run was already reported). So a run
may happen twice: execution is at-least-once.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import json
import threading
from .. import clock as _clock
import traceback
from functools import partial
from collections import deque
from typing import Any, Callable

from ..actor import Actor
from ..errors import ActorStopped, TimeLimitExceeded
from ..job import Job, JobResult, JobState, ResultKind, check_transition
from ..queues.core import Outcome
from .context import ExecutionContext
from .registry import ConsumerIndex, ConsumerSpec
from .threads import SyncThreads

_OK = Outcome("OK")


class _Run:
    """One job in a slot: its stop flag and how to cancel it."""

    __slots__ = ("job", "queue", "stop_state", "task", "executing", "is_async", "abort", "timer", "waiting_ms",
                 "ended", "limit", "timed_out", "limit_timer", "thread_id")

    def __init__(self, job: Job, queue: str) -> None:
        self.job = job
        self.queue = queue
        self.stop_state: JobState | None = None  # STOPPED or DROPPED once stop/remove was asked
        self.task: asyncio.Task[Any] | None = None
        self.executing = False
        self.is_async = True
        self.abort = False  # node shutdown cancelled it: back to QUEUED, not a retry
        self.timer: asyncio.TimerHandle | None = None
        self.waiting_ms = 0.0
        self.ended = False  # its outcome was reported: anything the consumer says later is ignored
        self.limit: float | None = None  # its time limit (s): the job's, else the consumer's, else the queue's
        self.timed_out = False  # the limit passed: whatever the consumer does, the run FAILED
        self.limit_timer: asyncio.TimerHandle | None = None
        self.thread_id: int | None = None  # a sync consumer's thread while it runs the job

    def stopped(self) -> bool:
        return self.stop_state is not None or self.abort


class ConsumerPool(Actor):
    """Runs jobs handed over by the queue actors. Messages:

    ``("dispatch", queue, priority, jobs)`` (tell), ``("cancel", job_id, state)`` (ask:
    "buffered" / "running" / None), ``("drain", grace)`` (ask: returns when idle).
    """

    def __init__(self, node_name: str, capacity: int, store: Any, stop_grace: float = 5.0,
                 clock: Callable[[], float] = _clock.wall) -> None:
        super().__init__("consumer-pool")
        self.node_name = node_name
        self.capacity = capacity
        self.store = store
        self.stop_grace = stop_grace
        self.clock = clock
        self.index = ConsumerIndex()
        self.manager: Actor | None = None
        self.queues: dict[str, Actor] = {}
        self._buffers: list[tuple[int, str, deque[Job]]] = []  # (priority, queue, jobs), priority desc
        self._buffer_of: dict[str, deque[Job]] = {}
        self._buffered = 0
        self._active: dict[str, int] = {}  # reserved/running jobs per queue (max_parallel)
        self._limit: dict[str, int] = {}
        self._runs: dict[str, _Run] = {}
        self._ready: deque[_Run] = deque()  # ACTIVE committed, waiting for a worker
        self._idle_workers: list[asyncio.Future[None]] = []
        self._idle = asyncio.Event()
        self._draining = False
        self._threads: SyncThreads | None = None
        self._workers: list[asyncio.Task[Any]] = []
        self._done_per_second: deque[list[float]] = deque()  # [second, count] for the last ~10 s
        self.finished_total = 0
        self._started_fut: asyncio.Future[Any] | None = None
        self._started: list[_Run] = []
        self._finished: dict[str, list[tuple[Job, Outcome]]] = {}
        self._flush_scheduled = False
        self._hurry = False
        # Time limits of the queues' configurations (set by the node; a job's or consumer's own beats them).
        self.queue_timeouts: dict[str, float | None] = {}
        self._thread_lock = threading.Lock()  # a sync run's thread id against a time limit's interrupt
        # Offloading hooks (the transfer actor): another node's job started here / reported progress.
        self.foreign_started: Callable[[list[Job]], None] | None = None
        self.foreign_progress: Callable[[Job], None] | None = None
        self.blobs: Any = None  # the node's BlobStore (job payload), set by the node

    def bind(self, manager: Actor, queues: dict[str, Actor]) -> None:
        self.manager = manager
        self.queues = queues

    def add_spec(self, spec: ConsumerSpec) -> None:
        if spec.actor is not None and spec.semaphore is None:
            spec.semaphore = asyncio.Semaphore(max(1, int(getattr(spec.actor, "max_concurrency", 1))))
        self.index.add(spec)

    # -- lifecycle ---------------------------------------------------------
    async def on_start(self) -> None:
        # After a crash: runs that were in the slots will never report; hand them back to
        # their queues as interrupted (QUEUED again, not counted as a retry) to free the slots.
        for run in list(self._runs.values()):
            self._end(run, Outcome("ABORTED", "consumer pool restarted"))
        self._ready.clear()
        self._draining = False
        self._hurry = False
        self._threads = SyncThreads("jobmesh-consumer")
        self._idle_workers = []
        self._workers = [self.spawn(self._worker(), name=f"slot-{i}") for i in range(self.capacity)]

    async def on_stop(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()  # never waits: a stuck consumer's thread is not ours to join
            self._threads = None

    # -- messages ----------------------------------------------------------
    def receive(self, msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        if kind == "dispatch":
            _, queue, priority, parallelism, jobs = msg
            self._limit[queue] = parallelism
            if self._draining:  # not started: they stay QUEUED in the store
                self.queues[queue].tell(("returned", jobs))
                return None
            buf = self._buffer_of.get(queue)
            if buf is None:
                buf = deque()
                self._buffer_of[queue] = buf
                self._buffers.append((priority, queue, buf))
                self._buffers.sort(key=lambda b: -b[0])
            buf.extend(jobs)
            self._buffered += len(jobs)
            self._reserve()
            return None
        if kind == "recall":  # the queue was suspended: hand back what has not started
            buf = self._buffer_of.get(msg[1])
            if buf:
                self._buffered -= len(buf)
                self.queues[msg[1]].tell(("returned", list(buf)))
                buf.clear()
            return None
        if kind == "cancel":
            return self._cancel(msg[1], msg[2])
        if kind == "drain":
            return self._drain(msg[1])
        raise ValueError(f"consumer pool: unknown message {kind!r}")

    def _cancel(self, job_id: str, state: JobState) -> str | None:
        for _, queue, buf in self._buffers:
            for job in buf:
                if job.id == job_id:
                    buf.remove(job)
                    self._buffered -= 1
                    self.queues[queue].tell(("finished", [(job, Outcome("STOPPED", stop_state=state))]))
                    return "buffered"
        run = self._runs.get(job_id)
        if run is None:
            return None
        if run.stop_state is None:
            run.stop_state = state
            if run.executing and run.is_async:
                loop = asyncio.get_running_loop()
                run.timer = loop.call_later(self.stop_grace, self._cancel_run, run)
        return "running"

    def hurry(self) -> None:
        """Cut a drain's grace short (a second SIGINT/SIGTERM). Safe to call from a signal handler."""
        self._hurry = True
        self._idle.set()

    def _cancel_run(self, run: _Run) -> None:
        """Grace is over: cancel an async consumer that ignored is_stopped()."""
        if self._runs.get(run.job.id) is run and run.executing and run.task is not None:
            run.task.cancel()

    async def _drain(self, grace: float) -> int:
        """Stop taking jobs; let running ones finish for ``grace`` s, then interrupt them (back to
        QUEUED, not a retry). Returns within about ``grace`` + 2 s whatever the consumers do."""
        self._draining = True
        for _, queue, buf in self._buffers:
            if buf:
                self.queues[queue].tell(("returned", list(buf)))
                self._buffered -= len(buf)
                buf.clear()
        deadline = _clock.monotonic() + grace
        while self._runs and not self._hurry and _clock.monotonic() < deadline:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - _clock.monotonic()))
            except asyncio.TimeoutError:
                break
        left = list(self._runs.values())
        for run in left:
            run.abort = True
            if run.executing and run.task is not None:
                if not run.is_async:  # a thread cannot be cancelled: stop waiting for it
                    self.log.warning("sync consumer still running at shutdown; its thread is left behind "
                                     "and its result will be ignored", job_id=run.job.id, topic=run.job.topic)
                run.task.cancel()
        # give cancelled consumers a moment to unwind (bounded)
        end = _clock.monotonic() + 2.0
        while self._runs and _clock.monotonic() < end:
            await asyncio.sleep(0.02)
        for run in list(self._runs.values()):  # ignored the cancellation, or its start is not committed yet
            self.log.warning("run did not end when interrupted; reported back to QUEUED, a late result "
                             "will be ignored", job_id=run.job.id, topic=run.job.topic)
            self._end(run, Outcome("ABORTED", "interrupted by node shutdown"))
        return len(left)

    # -- the slots ---------------------------------------------------------
    def _reserve(self) -> None:
        """Fill free slots: mark the next jobs ACTIVE (one shared commit); they start once it is durable.

        Higher-priority queues' jobs are reserved first. A slot stays reserved from
        here until the run's outcome is reported, so ``capacity`` bounds the
        ACTIVE jobs of this node.
        """
        runs, cap = self._runs, self.capacity
        if self._draining or not self._buffered or len(runs) >= cap:
            return
        store, now, node = self.store, self.clock(), self.node_name
        active, limits = self._active, self._limit
        for _, queue, buf in self._buffers:
            n, limit = active.get(queue, 0), limits.get(queue, cap)
            while buf and len(runs) < cap and n < limit:
                n += 1
                active[queue] = n
                job = buf.popleft()
                self._buffered -= 1
                check_transition(job.state, JobState.ACTIVE)
                run = _Run(job, queue)
                run.waiting_ms = (now - max(job.created, job.not_before)) * 1000.0
                runs[job.id] = run
                job.state = JobState.ACTIVE
                job.attempt += 1
                job.started = now
                job.finished = None
                job.target = node
                fut = store.update_started(job)
                if fut is not self._started_fut:  # one callback per transaction
                    self._started_fut = fut
                    self._started = []
                    fut.add_done_callback(partial(self._committed_started, self._started))
                self._started.append(run)
            if len(runs) >= cap:
                break

    def _committed_started(self, started: list[_Run], fut: asyncio.Future[Any]) -> None:
        """ACTIVE rows are durable: announce the starts and hand the jobs to idle workers."""
        started = [r for r in started if not r.ended]  # given up by a drain meanwhile
        if not started:
            return
        if fut.cancelled() or fut.exception() is not None:
            err = "cancelled" if fut.cancelled() else repr(fut.exception())
            for run in started:
                self._end(run, Outcome("ABORTED", f"could not record the start: {err}"))
            return
        self.manager.tell(("started", [(r.job, r.waiting_ms) for r in started]))  # type: ignore[union-attr]
        if self.foreign_started is not None:
            me = self.node_name
            foreign = [r.job for r in started if r.job.origin != me]
            if foreign:
                self.foreign_started(foreign)
        self._ready.extend(started)
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake one idle worker if jobs are waiting. A worker runs ready jobs one after the
        other for as long as their consumers finish without waiting; a consumer that does
        wait wakes the next worker (see ``_execute``). So fast jobs cost no wake-up each,
        and slow ones still fan out over all slots."""
        if self._ready and self._idle_workers:
            w = self._idle_workers.pop()
            if not w.done():
                w.set_result(None)

    async def _worker(self) -> None:
        me = asyncio.current_task()
        ready, loop = self._ready, asyncio.get_running_loop()
        while True:
            if not ready:
                waiter = loop.create_future()
                self._idle_workers.append(waiter)
                await waiter
                continue
            run = ready.popleft()
            run.task = me
            if run.abort:
                outcome = Outcome("ABORTED", "interrupted by node shutdown")
            elif run.stop_state is not None:
                outcome = Outcome("STOPPED", stop_state=run.stop_state)
            else:
                outcome = await self._execute(run)
            self._end(run, outcome)

    def _end(self, run: _Run, outcome: Outcome) -> None:
        if run.ended:  # already reported (given up at shutdown): never report a run twice
            return
        run.ended = True
        job = run.job
        if self._runs.get(job.id) is run:
            del self._runs[job.id]
            self._active[run.queue] -= 1
        if run.timer is not None:
            run.timer.cancel()
        if run.limit_timer is not None:
            run.limit_timer.cancel()
        if not self._runs:
            self._idle.set()
        self._count_done()
        self._report(run.queue, job, outcome)
        self._reserve()

    def _report(self, queue: str, job: Job, outcome: Outcome) -> None:
        """Outcomes go to their queue in one message per loop iteration, not one per job."""
        lst = self._finished.get(queue)
        if lst is None:
            self._finished[queue] = lst = []
        lst.append((job, outcome))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_finished)

    def _flush_finished(self) -> None:
        self._flush_scheduled = False
        finished, self._finished = self._finished, {}
        for queue, lst in finished.items():
            try:
                self.queues[queue].tell(("finished", lst))
            except ActorStopped:  # late, after the node stopped: the store keeps what it recorded
                self.log.warning("outcomes reported after their queue stopped; not recorded "
                                 "(a restart recovers the jobs)",
                                 queue=queue, jobs=[j.id for j, _ in lst][:20], count=len(lst))

    async def _execute(self, run: _Run) -> Outcome:
        job = run.job
        spec = self.index.find(job.topic)
        if spec is None:
            return Outcome("FAILED", f"no consumer for topic {job.topic}")
        run.is_async = spec.is_async
        on_progress = self.foreign_progress if job.origin != self.node_name else None
        blobs = self.blobs
        if blobs is not None and blobs.has_refs:  # job payload: the consumer sees its names (and files)
            job.payload, job.output_payload = blobs.payloads([job.id]).get(job.id, ({}, {}))
        ctx = ExecutionContext(job, run.stopped, self.clock, on_progress, blobs) if spec.takes_context else None
        limit = job.timeout or spec.timeout or self.queue_timeouts.get(run.queue)
        if limit:
            run.limit = limit
            run.limit_timer = asyncio.get_running_loop().call_later(limit, self._time_up, run)
        run.executing = True
        try:
            if spec.actor is not None:
                assert spec.semaphore is not None
                self._wake_one()
                async with spec.semaphore:
                    result = await spec.actor.process(job, ctx)
            elif spec.is_async:
                coro = spec.fn(job, ctx) if ctx is not None else spec.fn(job)  # type: ignore[misc]
                # Its own copy of the context, as a task per job would have: a contextvar a
                # consumer sets (structlog's bind_contextvars...) must not leak to the next job.
                cvars = contextvars.copy_context()
                try:
                    yielded = cvars.run(coro.send, None)  # run it inline up to its first real wait
                except StopIteration as done:
                    result = done.value  # finished without waiting: no task switch at all
                else:
                    self._wake_one()  # this one waits: the next ready job gets another worker
                    result = await _resume(coro, yielded, cvars)
            else:
                self._wake_one()
                fn = spec.fn
                assert fn is not None
                call = (lambda: fn(job, ctx)) if ctx is not None else (lambda: fn(job))
                if limit:
                    call = self._interruptible(run, call)
                assert self._threads is not None
                result = await self._threads.run(call)
        except asyncio.CancelledError:
            if self._stopping or (run.stop_state is None and not run.abort and not run.timed_out) or run.task is None:
                raise  # the pool itself is being torn down
            run.task.uncancel()
            if run.abort:
                return Outcome("ABORTED", "interrupted by node shutdown")
            if run.stop_state is None:  # timed out
                return self._over_limit(run)
            return Outcome("STOPPED", "cancelled after the stop grace period", stop_state=run.stop_state)  # type: ignore[arg-type]
        except TimeLimitExceeded as exc:  # raised in a sync consumer's thread by _time_up
            if run.stop_state is not None:
                return Outcome("STOPPED", stop_state=run.stop_state)
            return self._over_limit(run, "".join(traceback.format_exception(exc)))
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc))
            if run.stop_state is not None:
                return Outcome("STOPPED", stop_state=run.stop_state, log=(tb,))
            if spec.throws and isinstance(exc, spec.throws):  # declared: ends the job ERROR, no retry
                return Outcome("CANCEL", f"{type(exc).__name__}: {exc} (listed in throws: not retried)", log=(tb,))
            return Outcome("FAILED", f"{type(exc).__name__}: {exc}", spec.retry_delay, log=(tb,))
        finally:
            run.executing = False
        if run.stop_state is not None:
            return Outcome("STOPPED", stop_state=run.stop_state)
        if run.abort:
            return Outcome("ABORTED", "interrupted by node shutdown")
        if run.timed_out:  # it caught the interruption and returned: the run is over its limit all the same
            return self._over_limit(run)
        outcome = _outcome_of(result)
        if ctx is not None and ctx.output and outcome.kind == "OK" and outcome.result is None:
            outcome = Outcome("OK", outcome.message, result=dict(ctx.output))  # ctx.output[...] = v
        return outcome

    # -- time limits ----------------------------------------------------------
    def _time_up(self, run: _Run) -> None:
        """A run reached its time limit: an async consumer is cancelled; a sync one gets
        ``TimeLimitExceeded`` raised in its thread (as Dramatiq does), and is given up
        ``stop_grace`` seconds later if it still runs (blocked in C code, or it swallowed it)."""
        if self._runs.get(run.job.id) is not run or not run.executing or run.task is None or run.ended:
            return
        run.timed_out = True
        if run.is_async:
            run.task.cancel()
            return
        with self._thread_lock:
            tid = run.thread_id
            if tid is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(TimeLimitExceeded))
        loop = asyncio.get_running_loop()
        run.limit_timer = loop.call_later(self.stop_grace, self._abandon_thread, run)

    def _abandon_thread(self, run: _Run) -> None:
        if self._runs.get(run.job.id) is run and run.executing and run.task is not None and not run.ended:
            self.log.warning("sync consumer still running past its time limit; its thread is left behind and "
                             "its result will be ignored", job_id=run.job.id, topic=run.job.topic, limit=run.limit)
            run.task.cancel()

    def _interruptible(self, run: _Run, call: Callable[[], Any]) -> Callable[[], Any]:
        """``call`` for a sync consumer's thread that says which thread runs it while it does."""
        lock = self._thread_lock

        def in_thread() -> Any:
            run.thread_id = threading.get_ident()
            try:
                return call()
            finally:
                with lock:  # from here on no interrupt is sent; one sent before is raised right here
                    run.thread_id = None
        return in_thread

    @staticmethod
    def _over_limit(run: _Run, tb: str | None = None) -> Outcome:
        return Outcome("FAILED", f"time limit {run.limit:g} s exceeded", log=(tb,) if tb else ())

    def _count_done(self) -> None:
        self.finished_total += 1
        sec = int(self.clock())
        d = self._done_per_second
        if d and d[-1][0] == sec:
            d[-1][1] += 1
        else:
            d.append([sec, 1])
            while d and d[0][0] < sec - 10:
                d.popleft()

    # -- observation (read-only, for node.capacity_snapshot) -------------------
    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        recent = sum(c for s, c in self._done_per_second if s >= now - 10)
        return {
            "slots": self.capacity,
            "active": len(self._runs),
            "buffered": self._buffered,
            "throughput": round(recent / 10.0, 2),
        }

    def free_slots(self) -> int:
        """Slots neither reserved nor running (read by the queues' watchdogs)."""
        return 0 if self._draining else max(0, self.capacity - len(self._runs))

    def running_job(self, job_id: str) -> Job | None:
        run = self._runs.get(job_id)
        return run.job if run is not None else None


async def _resume(coro: Any, yielded: Any, cvars: contextvars.Context | None = None) -> Any:
    """Drive a consumer coroutine that ``_execute`` started inline, from its first wait on.

    Does what an asyncio Task does for it: wait for the future it yielded, then resume
    it; the future's result or exception (or cancellation, when the slot is cancelled
    after the stop grace) reaches the coroutine through the future itself. Each step
    runs in ``cvars`` (the job's own context copy).
    """
    run = cvars.run if cvars is not None else (lambda fn, *a: fn(*a))
    while True:
        try:
            if yielded is None:  # a bare yield (asyncio.sleep(0)): just let the loop run once
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # as Task.__step does before waiting on it
                await yielded
        except BaseException as exc:
            if yielded is None or not yielded.done():
                try:  # cancelled while not waiting on the coroutine's own future: tell it
                    yielded = run(coro.throw, exc)
                except StopIteration as done:
                    return done.value
                continue
        try:
            yielded = run(coro.send, None)
        except StopIteration as done:
            return done.value


MAX_RESULT_BYTES = 1_000_000  # a result is stored with its job and travels back in one message


def _outcome_of(result: Any) -> Outcome:
    """A consumer's return value as an outcome: None/True = OK, False = FAILED, JobResult as said;
    any other value is the job's result (a task's return value), which must be JSON-compatible:
    one that is not fails the run, saying so (it could be neither stored nor sent to the origin)."""
    if result is None or result is True:
        return _OK
    if isinstance(result, JobResult):
        if result.kind is ResultKind.OK:
            if result.output:
                return Outcome("OK", result.message, result=dict(result.output))
            return _OK if result.message is None else Outcome("OK", result.message)
        if result.kind is ResultKind.CANCEL:
            return Outcome("CANCEL", result.message)
        return Outcome("FAILED", result.message, result.retry_delay)
    if result is False:
        return Outcome("FAILED", "consumer returned False")
    try:
        text = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as e:
        return Outcome("FAILED", f"the consumer's return value is not JSON-compatible ({e}); return str, int, "
                                 f"float, bool, None, or lists and dicts of them")
    if len(text) > MAX_RESULT_BYTES:
        return Outcome("FAILED", f"the consumer's return value is {len(text)} bytes as JSON, more than "
                                 f"{MAX_RESULT_BYTES}; store large results elsewhere and return a reference")
    return Outcome("OK", result=result if type(result) is not tuple else list(result))
