"""Runs the consumers of the runs the engine starts, and reports how each ended, once.

The engine core decides what runs (it reserves the slots); this is the I/O part the
engine actor uses for it: async consumers on the loop (stepped inline until they wait,
``stepping.py``), sync ones on daemon threads (``threads.SyncThreads``, inline in a
simulation), ``ConsumerActor`` classes under their concurrency bound. A stopped run's
``ctx.is_stopped()`` turns true at once; an async consumer still running ``stop_grace``
seconds later is cancelled (the outcome is STOPPED either way). At shutdown a run is
interrupted: an async consumer cancelled, a sync one's thread left behind (logged).

A consumer gets a copy of the job (``job.copy_fields``). One with a context gets the run's own
``progress`` (``Run.own_progress``): the context writes progress there, nobody else does; the
engine makes it the job's when the run ends. One without a context cannot report progress and
sees the job's. An async consumer without a time limit or payload takes a short path (no
``_Exec`` and no ``_execute`` coroutine unless it waits after its first step).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import ctypes
import json
import threading
import traceback
from collections import deque
from typing import Any, Callable

import msgpack

from ..errors import TimeLimitExceeded
from ..job import Job, JobResult, ResultKind, copy_fields
from ..queues.core import Outcome
from .context import ExecutionContext
from .registry import ConsumerIndex, ConsumerSpec
from .stepping import first_step, resume
from .threads import SyncThreads

_OK = Outcome("OK")
Report = Callable[[Any, Outcome], None]


class _Exec:
    """The runner's side of a run: the worker task running it, a sync call's future, the
    stop grace timer, its time limit (s; job > consumer > queue), the limit's timer and
    whether it passed, and a sync consumer's thread while it runs the job."""

    __slots__ = ("task", "future", "is_async", "timer", "executing", "limit", "limit_timer", "timed_out",
                 "thread_id")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.future: asyncio.Future[Any] | None = None  # a sync consumer's thread call
        self.is_async = True
        self.timer: asyncio.TimerHandle | None = None
        self.executing = False
        self.limit: float | None = None
        self.limit_timer: asyncio.TimerHandle | None = None
        self.timed_out = False  # the limit passed: whatever the consumer does, the run FAILED
        self.thread_id: int | None = None


class Runner:
    """``start(runs)``, ``stop(run)``, ``cancel(run)``; outcomes go to ``report(run, outcome)``.

    ``slots`` long-lived worker tasks (made with ``spawn``, owned by the engine actor) run the
    started runs: a worker runs ready jobs one after the other for as long as their consumers
    finish without waiting; a consumer that does wait wakes the next worker. So fast jobs
    cost no task switch each, slow ones still fan out over all slots, and a consumer runs
    from its first step to its end inside one task (``asyncio.timeout``, ``current_task``
    and aiohttp work as in a task of its own). A worker cancelled because the actor stops
    ends; a run interrupted that way is not an outcome (the next start recovers the job)."""

    def __init__(self, index: ConsumerIndex, report: Report, progress: Callable[[Any], None],
                 spawn: Callable[..., asyncio.Task[Any]], node: str, stop_grace: float,
                 clock: Callable[[], float], log: Any, slots: int,
                 idle: Callable[[], None] | None = None, blobs: Any = None) -> None:
        self.index = index
        self.blobs = blobs  # the node's BlobStore: a job's payload (ctx.payload, ctx.output_payload)
        self.report = report
        self.idle = idle  # called when a worker found nothing more to run (its outcomes may go now)
        self.progress = progress
        self.node = node
        self.stop_grace = stop_grace
        self.clock = clock
        self.log = log
        self.threads = SyncThreads("jobmesh-consumer")
        self._ready: deque[Any] = deque()
        self._idle: list[asyncio.Future[None]] = []
        self._stopping = False
        self._thread_lock = threading.Lock()  # a sync run's thread id against a time limit's interrupt
        self._workers = [spawn(self._worker(), name=f"slot-{i}") for i in range(max(1, slots))]

    def shutdown(self) -> None:
        self._stopping = True
        self.threads.shutdown()  # never waits: a stuck consumer's thread is not ours to join

    # -- the runs ------------------------------------------------------------------
    def start(self, runs: list[Any]) -> None:
        self._ready.extend(runs)
        self._wake_one()

    def _wake_one(self) -> None:
        if self._ready and self._idle:
            w = self._idle.pop()
            if not w.done():
                w.set_result(None)

    async def _worker(self) -> None:
        me = asyncio.current_task()
        ready, loop, index, report = self._ready, asyncio.get_running_loop(), self.index, self.report
        while True:
            if not ready:
                if self.idle is not None:
                    self.idle()  # the batch this worker ran is reported: no loop turn lost waiting
                waiter = loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            run = ready.popleft()
            if run.ended:
                continue
            if not (run.abort or run.stop_state is not None or run.time_limit or run.queue_timeout):
                spec = index.find(run.job.topic)
                if spec is not None and spec.is_async and spec.actor is None and not spec.timeout and (
                        self.blobs is None or not self.blobs.has_refs):
                    # the hot path: an async consumer without a time limit or payload, stepped
                    # inline; only one that waits gets an _Exec and the general path below
                    job = run.job
                    view, ctx = self._view_and_context(run, spec)
                    cvars = contextvars.copy_context()
                    try:
                        coro = spec.fn(view, ctx) if ctx is not None else spec.fn(view)  # type: ignore[misc]
                        done, value = first_step(coro, cvars)
                    except Exception as exc:  # noqa: BLE001 - the consumer's exception is its outcome
                        report(run, self._failed(run, exc, spec))
                        continue
                    if done:
                        if value is None and run.stop_state is None and not run.abort and not (ctx and ctx.output):
                            report(run, _OK)
                        else:
                            report(run, self._outcome(run, value, ctx))
                        continue
                    ex = run.handle = _Exec(me)
                    ex.executing = True
                    self._wake_one()  # this one waits: the next ready job gets another worker
                    outcome = await self._resumed(run, ex, me, spec, coro, value, cvars, ctx)
                    if ex.timer is not None:
                        ex.timer.cancel()
                        ex.timer = None
                    report(run, outcome)
                    continue
            ex = run.handle = _Exec(me)
            if run.abort:
                outcome = Outcome("ABORTED", "interrupted by node shutdown")
            elif run.stop_state is not None:
                outcome = Outcome("STOPPED", stop_state=run.stop_state)
            else:
                outcome = await self._execute(run, ex, me)
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None
            if ex.limit_timer is not None:
                ex.limit_timer.cancel()
                ex.limit_timer = None
            self.report(run, outcome)

    async def _execute(self, run: Any, ex: _Exec, me: Any) -> Outcome:
        job = run.job
        spec = self.index.find(job.topic)
        if spec is None:
            return Outcome("FAILED", f"no consumer for topic {job.topic}")
        view, ctx = self._view_and_context(run, spec)
        blobs = self.blobs
        if blobs is not None and blobs.has_refs:  # job payload: the consumer sees its names (and files)
            view.payload, view.output_payload = blobs.payloads([job.id]).get(job.id, ({}, {}))
        ex.is_async = spec.is_async or spec.actor is not None
        limit = run.time_limit or spec.timeout or run.queue_timeout
        if limit:
            ex.limit = limit
            ex.limit_timer = asyncio.get_running_loop().call_later(limit, self._time_up, run)
        ex.executing = True
        try:
            if spec.actor is not None:
                self._wake_one()
                result = await self._actor_call(spec, view, ctx)
            elif spec.is_async:
                coro = spec.fn(view, ctx) if ctx is not None else spec.fn(view)  # type: ignore[misc]
                # its own copy of the context, as a task per job would have: a contextvar a consumer
                # sets (structlog's bind_contextvars...) must not leak into the next job
                cvars = contextvars.copy_context()
                done, value = first_step(coro, cvars)
                if done:
                    result = value  # finished without waiting: no task switch at all
                else:
                    self._wake_one()  # this one waits: the next ready job gets another worker
                    result = await resume(coro, value, cvars)
            else:
                self._wake_one()
                fn = spec.fn
                assert fn is not None
                call = (lambda: fn(view, ctx)) if ctx is not None else (lambda: fn(view))
                if limit:
                    call = self._interruptible(ex, call)
                fut = ex.future = self.threads.run(call)
                result = await fut
        except asyncio.CancelledError:
            if self._stopping or not (run.stopped() or ex.timed_out) or me is None:
                raise  # the engine itself is stopping: not an outcome
            me.uncancel()
            if run.abort:
                return Outcome("ABORTED", "interrupted by node shutdown")
            if run.stop_state is None:  # timed out
                return _over_limit(ex)
            return Outcome("STOPPED", "cancelled after the stop grace period", stop_state=run.stop_state)
        except TimeLimitExceeded as exc:  # raised in a sync consumer's thread by _time_up
            if run.stop_state is not None:
                return Outcome("STOPPED", stop_state=run.stop_state)
            return _over_limit(ex, "".join(traceback.format_exception(exc)))
        except Exception as exc:  # noqa: BLE001 - the consumer's exception is its outcome
            return self._failed(run, exc, spec)
        finally:
            ex.executing = False
        if ex.timed_out and run.stop_state is None and not run.abort:
            return _over_limit(ex)  # it caught the interruption and returned: over its limit all the same
        outcome = self._outcome(run, result, ctx)
        if outcome.kind == "OK" and job.origin != self.node and blobs is not None and blobs.has_refs:
            outs = blobs.payloads([job.id]).get(job.id, ({}, {}))[1]  # a copy's outputs go back with its result
            if outs:
                outcome = dataclasses.replace(outcome, output_payload={n: r.to_json() for n, r in outs.items()})
        return outcome

    def _view_and_context(self, run: Any, spec: ConsumerSpec) -> tuple[Job, ExecutionContext | None]:
        """The consumer's copy of the job and its ``ctx``. A consumer with a context writes the run's
        own progress (a copy's goes back to its origin as it changes); one without cannot report
        any and sees the job's (it is the engine's record: read, never written, while it runs)."""
        job = run.job
        view = copy_fields(job)
        if not spec.takes_context:
            return view, None
        view.progress = run.own_progress()
        on_progress = (lambda _job, _run=run: self.progress(_run)) if job.origin != self.node else None
        return view, ExecutionContext(view, run.stopped, self.clock, on_progress, self.blobs)

    async def _resumed(self, run: Any, ex: _Exec, me: Any, spec: ConsumerSpec, coro: Any, value: Any,
                       cvars: contextvars.Context, ctx: Any) -> Outcome:
        """The hot path's consumer waited after its first step: the rest as ``_execute`` runs it."""
        try:
            result = await resume(coro, value, cvars)
        except asyncio.CancelledError:
            if self._stopping or not run.stopped() or me is None:
                raise  # the engine itself is stopping: not an outcome
            me.uncancel()
            if run.abort:
                return Outcome("ABORTED", "interrupted by node shutdown")
            return Outcome("STOPPED", "cancelled after the stop grace period", stop_state=run.stop_state)
        except Exception as exc:  # noqa: BLE001 - the consumer's exception is its outcome
            return self._failed(run, exc, spec)
        finally:
            ex.executing = False
        return self._outcome(run, result, ctx)

    @staticmethod
    async def _actor_call(spec: ConsumerSpec, job: Job, ctx: Any) -> Any:
        assert spec.semaphore is not None and spec.actor is not None
        async with spec.semaphore:
            return await spec.actor.process(job, ctx)

    # -- time limits ---------------------------------------------------------------------
    def _time_up(self, run: Any) -> None:
        """A run reached its time limit: an async consumer is cancelled; a sync one gets
        ``TimeLimitExceeded`` raised in its thread (as Dramatiq does), and is given up
        ``stop_grace`` seconds later if it still runs (blocked in C code, or it swallowed it)."""
        ex = run.handle
        if ex is None or not ex.executing or ex.task is None or run.ended:
            return
        ex.timed_out = True
        if ex.is_async:
            ex.task.cancel()
            return
        with self._thread_lock:
            tid = ex.thread_id
            if tid is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(TimeLimitExceeded))
        ex.limit_timer = asyncio.get_running_loop().call_later(self.stop_grace, self._abandon_thread, run)

    def _abandon_thread(self, run: Any) -> None:
        ex = run.handle
        if ex is not None and ex.executing and ex.task is not None and not run.ended:
            self.log.warning("sync consumer still running past its time limit; its thread is left behind and "
                             "its result will be ignored", job_id=run.job.id, topic=run.job.topic, limit=ex.limit)
            ex.task.cancel()

    def _interruptible(self, ex: _Exec, call: Callable[[], Any]) -> Callable[[], Any]:
        """``call`` for a sync consumer's thread that says which thread runs it while it does."""
        lock = self._thread_lock

        def in_thread() -> Any:
            ex.thread_id = threading.get_ident()
            try:
                return call()
            finally:
                with lock:  # from here on no interrupt is sent; one sent before is raised right here
                    ex.thread_id = None
        return in_thread

    # -- stop and shutdown -------------------------------------------------------------
    def stop(self, run: Any) -> None:
        """``run.stop_state`` is set: cancel an async consumer that ignores it for ``stop_grace`` s."""
        ex = run.handle
        if ex is None or not ex.executing or not ex.is_async or ex.timer is not None:
            return
        ex.timer = asyncio.get_running_loop().call_later(self.stop_grace, self._cancel_task, run)

    def _cancel_task(self, run: Any) -> None:
        ex = run.handle
        if ex is not None and ex.executing and ex.task is not None and not run.ended:
            ex.task.cancel()

    def cancel(self, run: Any) -> None:
        """Shutdown: interrupt the run now (an async consumer is cancelled; a thread cannot be)."""
        ex = run.handle
        if ex is None or not ex.executing or ex.task is None:
            return
        if not ex.is_async:
            self.log.warning("sync consumer still running at shutdown; its thread is left behind "
                             "and its result will be ignored", job_id=run.job.id, topic=run.job.topic)
        ex.task.cancel()

    # -- outcomes ------------------------------------------------------------------------
    @staticmethod
    def _outcome(run: Any, value: Any, ctx: Any) -> Outcome:
        if run.stop_state is not None:
            return Outcome("STOPPED", stop_state=run.stop_state)
        if run.abort:
            return Outcome("ABORTED", "interrupted by node shutdown")
        outcome = outcome_of(value)
        if ctx is not None and ctx.output and outcome.kind == "OK" and outcome.result is None:
            outcome = Outcome("OK", outcome.message, result=dict(ctx.output))  # ctx.output[...] = v
        return outcome

    @staticmethod
    def _failed(run: Any, exc: BaseException, spec: ConsumerSpec) -> Outcome:
        tb = "".join(traceback.format_exception(exc))
        if run.stop_state is not None:
            return Outcome("STOPPED", stop_state=run.stop_state, log=(tb,))
        if spec.throws and isinstance(exc, spec.throws):  # declared: ends the job ERROR, no retry
            return Outcome("CANCEL", f"{type(exc).__name__}: {exc} (listed in throws: not retried)", log=(tb,))
        return Outcome("FAILED", f"{type(exc).__name__}: {exc}", spec.retry_delay, log=(tb,))


def _over_limit(ex: _Exec, tb: str | None = None) -> Outcome:
    return Outcome("FAILED", f"time limit {ex.limit:g} s exceeded", log=(tb,) if tb else ())


MAX_RESULT_BYTES = 1_000_000  # a result is stored with its job and travels back in one message


def outcome_of(result: Any) -> Outcome:
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
    if type(result) in _PLAIN:
        return Outcome("OK", result=result)
    # As the job keeps it: read back from its JSON (dict keys become text, tuples lists), so the
    # record here, the stored row and the origin of a copy all hold the same value ...
    value = json.loads(text)
    try:  # ... and as it travels to the origin of a copy: the wire (msgpack) takes no wider int
        msgpack.packb(value, use_bin_type=True)
    except (OverflowError, ValueError) as e:  # an int beyond 64 bits; text with a lone surrogate
        return Outcome("FAILED", f"the consumer's return value cannot be sent between nodes ({e}); integers "
                                 f"must fit in 64 bits and text must be valid Unicode")
    return Outcome("OK", result=value)


_PLAIN = (float, bool)  # results whose JSON reads back the same and that msgpack always takes
