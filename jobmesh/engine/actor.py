"""The engine actor: the I/O shell around ``EngineCore`` (one per node).

It takes the engine's events from its mailbox (other actors' requests) and from its own
I/O (commits done, consumers finished, rows read, timers), feeds each to the core, and
carries out the instructions that come back through one table, ``DISPATCH``; an
instruction it does not know is a bug and raises. What it does itself:

- writes: each ``Commit`` goes to the store's group commit (``store.sqlite``; the transfer
  tables' part through ``store.transfer.TransferStore`` in the same transaction); once the
  transaction is durable, the commit's ``then`` instructions run and its ``done`` events go
  back to the core (``failed`` ones if it failed);
- runs: ``Start``/``StopRun``/``CancelRun`` go to the consumer runner (``consumers.runner``);
  every outcome comes back as one ``RunsFinished`` per loop turn;
- reads: ``ReadReady``, ``ScanReady``, ``LoadJobs`` read the store at once and feed the rows
  back before any other event (so what was read and the core agree);
- messages: the job manager's and the transfer actor's go to them through the host;
- timers (retry delays, the watchdog), shutdown's drain, history clean-up.

The core never waits, so neither does ``receive``: events that arrive while one is being
handled (a consumer finishing inline, say) queue and are handled right after it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Protocol

from .. import clock as _clock
from ..actor import Actor
from ..config import NodeConfig
from ..consumers.registry import ConsumerIndex, ConsumerSpec
from ..consumers.runner import Runner
from ..errors import ActorStopped
from ..queues.core import Outcome
from ..store.sqlite import Store
from ..store.transfer import TransferStore
from . import events as ev
from . import instructions as ins
from .core import BURST, WINDOW, EngineCore

WATCHDOG_PERIOD = 1.5  # s between the watchdog's comparisons of the store with the windows


class EngineHost(Protocol):
    """What the engine needs from its node (given at construction, as ``DiscoveryHost`` is)."""

    name: str

    def runnable(self, topic: str) -> bool: ...  # a consumer here, and the topic allowed here

    def notify(self, message: Any) -> None: ...  # the job manager's messages (``instructions.TO_MANAGER``)

    def to_transfer(self, message: Any) -> None: ...  # the transfer actor's (``instructions.TO_TRANSFER``)


@dataclass(slots=True)
class DrainRequested:
    """Node shutdown (ask): answered with a future that resolves with the number of runs that
    were interrupted, within about ``grace`` + 2 s."""

    grace: float


@dataclass(slots=True)
class PurgeRequested:
    """History clean-up (ask): delete final jobs past their TTL, at most ``limit``; answers the count."""

    succeeded_before: float
    others_before: float
    keep: list[str]
    limit: int = 5000


EXTERNAL = (ev.JobsAdded, ev.StopRequested, ev.RetryRequested, ev.RemoveRequested, ev.SuspendRequested,
            ev.InfoRequested, ev.ConsumersChanged, ev.SummaryRequested, ev.TakeForOffload, ev.CandidatesRequested,
            ev.RemoteStarted,
            ev.RemoteProgress, ev.RemoteResults, ev.HandoffReturned, ev.CopiesAccepted, ev.CopiesReleased,
            ev.CopyStopRequested, ev.CopiesForgotten, ev.VerifyCopies)


class QueueView:
    """One queue of the engine as tests and tools look at it (what ``node.queue_actor(name)``
    was before the engine): its window, the window's size and refill mark, the watchdog's
    period (the engine's, for every queue). Reads the engine's current core each time."""

    def __init__(self, engine: "EngineActor", name: str) -> None:
        self._engine = engine
        self.name = name

    def _q(self) -> Any:
        return self._engine.core.queues[self.name]

    @property
    def config(self) -> Any:
        return self._q().config

    @property
    def window(self) -> Any:
        return self._q().window

    @property
    def window_size(self) -> int:
        return int(self._q().window_size)

    @window_size.setter
    def window_size(self, value: int) -> None:
        self._q().window_size = value

    @property
    def refill_below(self) -> int:
        return int(self._q().refill_below)

    @refill_below.setter
    def refill_below(self, value: int) -> None:
        self._q().refill_below = value

    @property
    def watchdog_period(self) -> float:
        return self._engine.watchdog_period

    @watchdog_period.setter
    def watchdog_period(self, value: float) -> None:
        self._engine.watchdog_period = value

    @property
    def suspended(self) -> bool:
        return bool(self._q().suspended)


class EngineActor(Actor):
    """Messages: the ``EXTERNAL`` events, ``DrainRequested``, ``PurgeRequested``."""

    def __init__(self, host: EngineHost, config: NodeConfig, store: Store, consumers: ConsumerIndex,
                 clock: Callable[[], float] = _clock.wall, offloading: bool = False, window: int = WINDOW,
                 blobs: Any = None) -> None:
        super().__init__("engine")
        self.host = host
        self.config = config
        self.store = store
        self.consumers = consumers
        self.clock = clock
        self.offloading = offloading
        self.window = window
        self.blobs = blobs  # the node's BlobStore (job payload): consumers' files, a commit's references
        self.transfer_store = TransferStore(config.name)
        self.repairs = 0  # watchdog requeues (each a missed transition)
        self.watchdog_period = WATCHDOG_PERIOD
        self.core = self._new_core()
        self.runner: Runner | None = None
        self._events: deque[Any] = deque()
        self._finished: list[tuple[Any, Outcome]] = []
        self._busy = False
        self._scheduled = False
        self._commits: dict[asyncio.Future[Any], list[tuple[ins.Commit, list[asyncio.Future[Any]]]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._idle = asyncio.Event()
        self._hurry = False
        self._evloop: asyncio.AbstractEventLoop | None = None
        self._started_once = False

    def _new_core(self) -> EngineCore:
        cfg = self.config
        return EngineCore(cfg.name, cfg.all_queues(), cfg.capacity, self.host.runnable, self.clock,
                          window=self.window)

    # -- consumers ----------------------------------------------------------------
    def add_spec(self, spec: ConsumerSpec) -> None:
        if spec.actor is not None and spec.semaphore is None:
            spec.semaphore = asyncio.Semaphore(max(1, int(getattr(spec.actor, "max_concurrency", 1))))
        self.consumers.add(spec)

    # -- reads for other parts (no state change) ----------------------------------------
    @property
    def index(self) -> ConsumerIndex:
        """The consumers registered here (what ``pool.index`` was)."""
        return self.consumers

    def queue_view(self, name: str) -> QueueView | None:
        return QueueView(self, name) if name in self.core.queues else None

    def snapshot(self, job_id: str) -> Any:
        return self.core.snapshot(job_id)

    def running_jobs(self) -> list[Any]:
        return self.core.running_jobs()

    def load(self) -> dict[str, Any]:
        return self.core.load()

    def free_slots(self) -> int:
        """Slots neither reserved nor running (0 while draining)."""
        return self.core.free_slots()

    def hurry(self) -> None:
        """Cut a drain's grace short (a second SIGINT/SIGTERM). Safe to call from a signal handler."""
        self._hurry = True
        self._idle.set()

    # -- lifecycle -------------------------------------------------------------------------
    async def on_start(self) -> None:
        """(Re)build the core from the store: runs a crash interrupted, jobs at other nodes."""
        old = self.core
        interrupted = [r for r in old.running.values() if not r.ended]  # an actor restart: runs left behind
        for run in interrupted:
            run.ended = True  # whatever their consumers report now is dropped
        self.core = self._new_core()
        self._events.clear()
        self._finished.clear()
        self._commits.clear()
        self._busy = self._scheduled = False
        self._hurry = False
        log = self.log
        self.runner = Runner(self.consumers, self._report, self._progress, self.spawn, self.config.name,
                             self.config.stop_grace, self.clock, log, self.config.capacity, self._runner_idle,
                             self.blobs)
        self._evloop = asyncio.get_running_loop()
        store = self.store
        restarted = self._started_once
        if not self._started_once:
            self._started_once = True
            if self.offloading:  # restored copies wait for their origin's word (not on an actor restart)
                await store.call(self.transfer_store.hold_restored)
            # QUEUED jobs of a queue that is no longer configured go to the queue that matches now
            moves = [(q, topic, self.core.matcher.match(topic).name) for q, topic in store.queued_queues()
                     if q not in self.core.queues]
            if moves:
                self._do_commit(ins.Commit(rehome=moves))
                log.warning("jobs moved from unconfigured queues", moves=len(moves))
        self._feed(ev.Recovered(store.active_rows()))
        if interrupted:  # an actor restart, not a process start: their runs end as interrupted
            for run in interrupted:
                run.ended = False
            self._feed(ev.RunsFinished([(r, Outcome("ABORTED", "engine restarted")) for r in interrupted]))
        await store.flush()
        self._feed(ev.Restored(store.handed_off()))
        if restarted and self.offloading:
            self._resend_results()
        self.tell_later(self.watchdog_period, ev.WatchdogDue())

    def _resend_results(self) -> None:
        """An actor restart dropped the pending commits' ``then``: a copy's result committed just
        before it never reached the transfer actor, whose protocol would hold the copy as running
        until the next process start (which reads the store). Every result the store holds goes
        to it again, once everything requested before is durable; the protocol takes each once."""
        from ..transfer.restore import stored_results

        results = [item for _, item in stored_results(self.store.reader, self.log)]
        if results:
            self.log.info("copies' results handed to the transfer again after a restart", results=len(results))
            self.host.to_transfer(ins.CopyResults(results, []))

    async def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.runner is not None:
            self.runner.shutdown()

    # -- the mailbox -----------------------------------------------------------------------
    def receive(self, msg: Any) -> Any:
        handler = _MAILBOX.get(type(msg))
        if handler is None:
            raise TypeError(f"engine: unknown message {type(msg).__name__}")
        return handler(self, msg)

    def _external(self, msg: Any) -> None:
        """Queued: the mailbox's burst is handled at once when it is empty (``on_idle``)."""
        self._events.append(msg)

    def on_idle(self) -> None:
        if (self._events or self._finished) and not self._busy:
            self._drain()

    def _watchdog_due(self, msg: ev.WatchdogDue) -> None:
        self.tell_later(self.watchdog_period, ev.WatchdogDue())
        self._feed(msg)

    # -- feeding the core --------------------------------------------------------------------
    def _feed(self, event: Any) -> None:
        self._events.append(event)
        if not self._busy:
            self._drain()

    def _feed_first(self, event: Any) -> None:
        """An answer to a read: handled before anything else that is waiting."""
        self._events.appendleft(event)

    def _drain(self) -> None:
        self._busy = True
        try:
            events, core, store = self._events, self.core, self.store
            while events or self._finished:
                if events:
                    event = events.popleft()
                else:
                    event, self._finished = ev.RunsFinished(self._finished), []
                self._prepare(event, store)
                if type(event) in BURST and events and type(events[0]) in BURST:
                    burst = [event]  # one pump and one commit for the events that came together
                    while events and type(events[0]) in BURST:
                        e = events.popleft()
                        self._prepare(e, store)
                        burst.append(e)
                    if self._finished:  # outcomes reported meanwhile go with them
                        burst.append(ev.RunsFinished(self._finished))
                        self._finished = []
                    instructions = core.handle_burst(burst)
                else:
                    instructions = core.handle(event)
                for instruction in instructions:
                    handler = DISPATCH.get(type(instruction))
                    if handler is None:
                        raise TypeError(f"engine: no handler for instruction {type(instruction).__name__}")
                    handler(self, instruction)
        except Exception as exc:  # a bug: crash the actor (supervision restarts it from the store)
            self._crash = exc
            self._wakeup.set()
        finally:
            self._busy = False
        if core.draining and not core.running:
            self._idle.set()

    def _prepare(self, event: Any, store: Store) -> None:
        """What the core needs read or reserved for an event, filled in just before it is handled."""
        t = type(event)
        if t in (ev.StopRequested, ev.RetryRequested, ev.RemoveRequested):
            core = self.core
            job_id = event.job_id
            if job_id not in core.running and job_id not in core.away and job_id not in core.copies:
                event.stored = store.get(job_id)
        elif t is ev.CopiesAccepted:
            event.first_seq = store.reserve_seqs(len(event.specs))
        elif t is ev.CopiesReleased:
            event.jobs = [j for j in (store.get(i) for i, _ in event.refs) if j is not None]

    def _soon(self) -> None:
        """Outcomes reported outside a drain (tasks, threads): one ``RunsFinished`` per loop turn."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._later)

    def _later(self) -> None:
        self._scheduled = False
        if not self._busy and (self._events or self._finished):
            self._drain()

    def _runner_idle(self) -> None:
        """A worker ran what was ready and waits: the outcomes it reported go to the core now,
        one loop turn earlier than ``_soon`` would (a start cycle of no-op jobs is a few turns)."""
        if self._finished and not self._busy and not self._stopping:
            self._drain()

    def _report(self, run: Any, outcome: Outcome) -> None:
        if run.ended or self._stopping:
            return
        self._finished.append((run, outcome))
        if not self._busy:
            self._soon()

    def _progress(self, run: Any) -> None:
        """From a consumer's context (maybe in its thread): a copy's progress changed."""
        loop = self._evloop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._feed, ev.ProgressReported(run))
        except RuntimeError:
            pass  # the loop is closed (shutdown)

    # -- instructions ------------------------------------------------------------------------
    def _do_commit(self, c: ins.Commit) -> None:
        if c.inputs or c.outputs:
            try:
                self._payload_refs(c)
            except Exception as e:  # the rows are not written without their references
                self._after(c, repr(e))
                return
        if c.empty():
            self._after(c, None)
            return
        store = self.store
        try:
            calls: list[asyncio.Future[Any]] = []
            if c.inserts:
                store.insert(c.inserts, c.texts)
            if c.starts:
                store.start_many(c.starts)
            if c.handoffs:
                store.handoff_many(c.handoffs)
            if c.updates:
                store.update_many(c.updates)
            if c.successes:
                store.succeed_many(c.successes)
            if c.deletes:
                store.delete_rows([j.seq for j in c.deletes])
            if c.copies or c.outbox or c.forget or c.rehome:
                calls.append(store.call(partial(self._transfer_rows, c.copies, c.outbox, c.forget, c.rehome)))
            fut = store.pending_future()
        except ActorStopped as e:
            self._after(c, repr(e))
            return
        entries = self._commits.get(fut)
        if entries is None:
            entries = self._commits[fut] = []
            # through the future, a loop turn after the commit: running the outcomes inside the
            # commit's own turn (a synchronous hook, tried) let the offloader see a start not yet
            # announced and move one job too many (offload makespan 1.08 -> 1.17)
            fut.add_done_callback(self._committed)
        entries.append((c, calls))

    def _payload_refs(self, c: ins.Commit) -> None:
        """A commit's blob references (``jobmesh.blobs``), written before its rows."""
        from ..blobs.transfer import record_copy_payload, record_outputs

        blobs = self.blobs
        if blobs is None:
            raise RuntimeError("job payload on a node without a blob store")
        if c.inputs:
            record_copy_payload(blobs, c.inputs)
        for job_id, attempt, payload in c.outputs:
            record_outputs(blobs, job_id, attempt, payload)

    def _transfer_rows(self, copies: Any, outbox: Any, forget: Any, rehome: Any, conn: Any) -> None:
        if copies or outbox or forget:
            self.transfer_store.write(conn, copies, outbox, forget, self.store.grouped)
        if rehome:
            Store.rehome_rows(conn, rehome)

    def _committed(self, fut: asyncio.Future[Any]) -> None:
        entries = self._commits.pop(fut, [])
        if self._stopping and not self._running:
            return
        error = None if not fut.cancelled() and fut.exception() is None else (
            "cancelled" if fut.cancelled() else repr(fut.exception()))
        for c, calls in entries:
            e = error
            if e is None:
                for call in calls:
                    if call.cancelled() or call.exception() is not None:
                        e = "cancelled" if call.cancelled() else repr(call.exception())
            self._after(c, e)
        if not self._busy:
            self._drain()

    def _after(self, c: ins.Commit, error: str | None) -> None:
        """A commit is durable (error None): its ``then`` now, its ``done`` events next; or it failed."""
        if error is None:
            for instruction in c.then:
                DISPATCH[type(instruction)](self, instruction)
            self._events.extend(c.done)
            return
        replies = [i for i in c.then if isinstance(i, ins.Reply)]
        for r in replies:
            if r.reply is not None and not r.reply.done():
                r.reply.set_exception(ActorStopped(f"not recorded: {error}"))
        if c.updates or c.successes or c.starts or c.handoffs:  # their rows may differ from the records now
            self._events.append(ev.WritesFailed([j.id for j in (*c.updates, *c.successes, *c.starts, *c.handoffs)]))
        if c.failed:
            for event in c.failed:
                event.error = error
            self._events.extend(c.failed)
        else:
            self.log.error("could not record job changes; they are redone after a restart", error=error,
                           jobs=len(c.inserts) + len(c.starts) + len(c.handoffs) + len(c.updates)
                           + len(c.successes))

    def _do_start(self, i: ins.Start) -> None:
        assert self.runner is not None
        self.runner.start(i.runs)

    def _do_stop_run(self, i: ins.StopRun) -> None:
        assert self.runner is not None
        self.runner.stop(i.run)

    def _do_cancel_run(self, i: ins.CancelRun) -> None:
        assert self.runner is not None
        self.runner.cancel(i.run)

    def _do_reply(self, i: ins.Reply) -> None:
        fut = i.reply
        if fut is None or fut.done():
            return
        if i.error is not None:
            fut.set_exception(i.error)
        else:
            fut.set_result(i.value)

    def _do_read_ready(self, i: ins.ReadReady) -> None:
        self._feed_first(ev.ReadyRead(i.queue, i.after_seq, i.limit,
                                      self.store.ready(i.queue, i.after_seq, i.limit, i.due_by)))

    def _do_read_due(self, i: ins.ReadDue) -> None:
        self._feed_first(ev.DueRead(i.queue, i.after, i.until, i.limit,
                                    self.store.due(i.queue, i.after, i.until, i.limit)))

    def _do_scan_ready(self, i: ins.ScanReady) -> None:
        store = self.store
        rows = {q: store.ready_refs(q, i.limit, i.due_by) for q in i.queues}
        self._feed_first(ev.ReadyScanned(rows, {job_id: store.get(job_id) for job_id in i.verify}))

    def _do_load_jobs(self, i: ins.LoadJobs) -> None:
        store = self.store
        self._feed_first(ev.JobsLoaded(i.purpose, [j for j in (store.get(x) for x in i.ids) if j is not None]))

    def _do_set_timer(self, i: ins.SetTimer) -> None:
        if self._timer_at is not None and self._timer_at <= i.at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = i.at
        self._timer = self.tell_later(max(0.0, i.at - self.clock()) + 0.001, ev.Tick())

    def _tick(self, msg: ev.Tick) -> None:
        self._timer = None
        self._timer_at = None
        self._feed(msg)

    def _do_log(self, i: ins.Log) -> None:
        getattr(self.log, i.level if i.level in ("debug", "info", "warning", "error") else "info")(i.event, **i.fields)

    def _do_repaired(self, i: ins.Repaired) -> None:
        self.repairs += i.count

    def _do_to_manager(self, message: Any) -> None:
        self.host.notify(message)

    def _do_to_transfer(self, message: Any) -> None:
        self.host.to_transfer(message)

    # -- shutdown ------------------------------------------------------------------------------
    def _drain_requested(self, msg: DrainRequested) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.spawn(self._drain_runs(msg.grace, fut), name="engine:drain")
        return fut

    async def drain(self, grace: float) -> int:
        """Stop starting jobs; let running ones finish for ``grace`` s, then interrupt them (back to
        QUEUED, not a retry). Returns within about ``grace`` + 2 s whatever the consumers do."""
        fut = await self.ask(DrainRequested(grace), timeout=5.0)
        return await fut

    async def _drain_runs(self, grace: float, fut: asyncio.Future[int]) -> None:
        core = self.core
        self._feed(ev.DrainStarted())
        deadline = _clock.monotonic() + grace
        while core.running and not self._hurry and _clock.monotonic() < deadline:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - _clock.monotonic()))
            except asyncio.TimeoutError:
                break
        left = len(core.running)
        self._feed(ev.AbortRuns())
        end = _clock.monotonic() + 2.0  # cancelled consumers get a moment to unwind (bounded)
        while core.running and _clock.monotonic() < end:
            await asyncio.sleep(0.02)
        self._feed(ev.AbortRuns(force=True))
        if not fut.done():
            fut.set_result(left)

    def _purge(self, msg: PurgeRequested) -> asyncio.Future[int]:
        """Answered with a future (the mailbox does not wait for the commit)."""
        return asyncio.ensure_future(self.store.purge(msg.succeeded_before, msg.others_before, msg.keep, msg.limit))


_MAILBOX: dict[type, Callable[[EngineActor, Any], Any]] = {
    **{t: EngineActor._external for t in EXTERNAL},
    ev.Tick: EngineActor._tick,
    ev.WatchdogDue: EngineActor._watchdog_due,
    DrainRequested: EngineActor._drain_requested,
    PurgeRequested: EngineActor._purge,
}

DISPATCH: dict[type, Callable[[EngineActor, Any], None]] = {
    ins.Commit: EngineActor._do_commit,
    ins.Start: EngineActor._do_start,
    ins.StopRun: EngineActor._do_stop_run,
    ins.CancelRun: EngineActor._do_cancel_run,
    ins.Reply: EngineActor._do_reply,
    ins.ReadReady: EngineActor._do_read_ready,
    ins.ReadDue: EngineActor._do_read_due,
    ins.ScanReady: EngineActor._do_scan_ready,
    ins.LoadJobs: EngineActor._do_load_jobs,
    ins.SetTimer: EngineActor._do_set_timer,
    ins.Log: EngineActor._do_log,
    ins.Repaired: EngineActor._do_repaired,
    **{t: EngineActor._do_to_manager for t in ins.TO_MANAGER},
    **{t: EngineActor._do_to_transfer for t in ins.TO_TRANSFER},
}
