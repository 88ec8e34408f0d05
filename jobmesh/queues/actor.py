"""One actor per queue: keeps a bounded window of ready jobs, decides what starts next.

The window is refilled from the store with an indexed query when it runs low;
newly added jobs go straight into it while there is room and nothing older waits
in the store, so under load the store is written but not re-read. The actor
dispatches at most ``parallelism`` jobs at a time to the consumer pool, applies
the pure retry decision to every outcome, writes it, and tells the job manager
once the write is committed (so notifications never run ahead of the disk).
"""

from __future__ import annotations

import asyncio
import math
from .. import clock as _clock
from functools import partial
from typing import Any, Callable

from ..actor import Actor
from ..config import QueueConfig
from ..job import Job, JobState, check_transition
from ..consumers.context import append_log
from .core import Outcome, decide, make_window

WINDOW = 16384  # jobs held in memory per queue
REFILL_BELOW = WINDOW // 4
REFILL_CHUNK = 1024  # rows read from the store per refill
WATCHDOG_PERIOD = 1.5  # s between the watchdog's comparisons of the store with the window
WATCHDOG_SCAN = 256  # ready rows compared per round (an index scan of two columns)
# A job due later than this (a delay, an ``at``) stays on disk, out of the window, until it is
# nearly due: a million jobs delayed until tomorrow must not fill the window and hold back the
# ones ready now. Read back by due time every DUE_SCAN s (from the watchdog's timer).
DEFER_AFTER = 60.0
DUE_SCAN = DEFER_AFTER / 2


class QueueActor(Actor):
    """Messages (tuples): ``enqueue`` (new jobs, committed), ``requeue`` (a job back to QUEUED),
    ``finished`` (from the pool), ``returned`` (dispatched but not started), ``cancel`` (ask),
    ``suspend`` / ``resume`` / ``info`` (ask), ``consumers_changed``, ``drain``, ``tick``."""

    def __init__(self, config: QueueConfig, store: Any, pool: Actor, manager: Actor,
                 runnable: Callable[[str], bool], clock: Callable[[], float] = _clock.wall,
                 cores: int | None = None, window: int = WINDOW) -> None:
        super().__init__(f"queue:{config.name}")
        self.config = config
        self.store = store
        self.pool = pool
        self.manager = manager
        self.runnable = runnable
        self.clock = clock
        self.parallelism = config.parallelism(cores)
        # Jobs handed to the pool ahead of a free slot, so a finishing job's slot is refilled
        # without a round trip through this actor; the pool enforces ``parallelism``.
        # Ordered queues never run ahead: a failed head must be retried before the next starts.
        self.dispatch_limit = self.parallelism if config.type == "ordered" else self.parallelism * 2
        self.window_size = window
        self.refill_below = max(1, window // 4)
        self.suspended = False
        # Offloading hooks (set by the node when it has a transfer actor): ``local_name`` tells
        # this node's own jobs from other nodes' copies; a copy's outcome goes to
        # ``foreign_sink`` (the origin decides about retries); a stop of a job handed to
        # another node goes to ``remote_stop``.
        self.local_name: str | None = None
        self.foreign_sink: Callable[[Job, Outcome], None] | None = None
        self.remote_stop: Callable[[Job, JobState], Any] | None = None
        # The watchdog (DESIGN §3): free slots of the node (set by the node), repairs made.
        self.free_slots: Callable[[], int] | None = None
        self.watchdog_period = WATCHDOG_PERIOD
        self.repairs = 0
        self._suspects: dict[str, int] = {}  # job id -> seq, missing at the last round
        self._verify: set[str] = set()  # ids a reconcile round says should be here
        self._after_run: dict[str, Job] = {}  # a copy that superseded one still running, by id
        self._reset()

    def _reset(self) -> None:
        self.window = make_window(self.config.type)
        self.in_flight: dict[str, Job] = {}
        self.last_seq = 0
        self.store_has_more = True  # until a refill proves otherwise
        self.draining = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pump_due = False  # jobs entered or left: a pump before the next message or idle wait
        self._notify_fut: asyncio.Future[Any] | None = None
        self._notify_msgs: list[tuple[Any, ...]] = []
        # delayed jobs due up to here were read into the window (the refill reads what is due by
        # then; ``_scan_due`` moves it on): the (not_before, seq) cursor of the due-order reads
        # (an ordered queue defers nothing: its head holds the line, delayed or not)
        self._due_cursor: tuple[float, int] = (
            math.inf if self.config.type == "ordered" else self.clock() + DEFER_AFTER, 0)

    async def on_start(self) -> None:
        """(Re)load from the store: whatever is QUEUED is this queue's durable state."""
        in_flight = getattr(self, "in_flight", {})
        self._reset()
        self.in_flight = in_flight
        self._refill()
        self._pump()
        self.tell_later(self.watchdog_period, ("watchdog",))

    async def on_stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- messages ----------------------------------------------------------
    def receive(self, msg: tuple[Any, ...]) -> Any:
        kind = msg[0]
        # Jobs added and runs ended arrive in bursts (the adds of one group commit, the outcomes
        # of one pool batch): one pump for the burst dispatches them in one batch, not one each.
        if kind == "finished":
            for job, outcome in msg[1]:
                self._finished(job, outcome)
            self._pump_due = True
            return None
        if kind == "enqueue":
            self._enqueue(msg[1])
            self._pump_due = True
            return None
        if self._pump_due:  # every other message sees the queue as after a pump, as it always did
            self._pump()
        if kind == "tick":
            self._timer = None
            self._timer_at = None
        elif kind == "requeue":
            job = msg[1]
            if job.id not in self.in_flight and job.id not in self.window and self._still_queued(job):
                self.window.add(job, self.clock())
        elif kind == "copies":
            # other nodes' jobs committed here by the transfer actor. Not through ``enqueue``:
            # their sequence numbers were reserved before a commit that may land after a local
            # add with higher ones was already taken in, so ``last_seq`` says nothing about them
            now = self.clock()
            for job in msg[1]:
                running = self.in_flight.get(job.id)
                if running is not None and running.seq != job.seq:
                    # a newer copy of a job whose superseded copy still runs here: it enters the
                    # window when that run ends (one run per job id at a time)
                    self._after_run[job.id] = job
                elif running is None and job.id not in self.window:
                    self.window.add(job, now)
        elif kind == "returned":
            for job in msg[1]:
                self.in_flight.pop(job.id, None)
                if not self.draining:
                    self.window.add(job, self.clock())
        elif kind == "cancel":
            return self._cancel(msg[1], msg[2])
        elif kind == "suspend":
            self.suspended = True
            self.pool.tell(("recall", self.config.name))  # jobs handed ahead must not start now
            return self.info()
        elif kind == "resume":
            self.suspended = False
            self._pump()
            return self.info()
        elif kind == "info":
            return self.info()
        elif kind == "consumers_changed":
            self.window.unpark(self.runnable)
        elif kind == "drain":
            self.draining = True
            return None
        elif kind == "verify":
            self._verify.update(msg[1])
            return None
        elif kind == "watchdog":
            self.tell_later(self.watchdog_period, ("watchdog",))
            self._scan_due()
            self._watchdog()
        elif kind == "offload_summary":
            self._pump()  # refills the window: jobs waiting in the store count (and move) too
            return self._offload_summary()
        elif kind == "take":  # ("take", topic, count[, ids to leave here])
            taken = self._take(msg[1], msg[2], msg[3] if len(msg) > 3 else ())
            self._pump()  # the window refills from the store behind what left
            return taken
        else:
            raise ValueError(f"{self.name}: unknown message {kind!r}")
        self._pump()
        return None

    def _still_queued(self, job: Job) -> bool:
        """A job sent back to its queue (a retry, a job home from a peer) is checked against its
        committed row first: another part may have ended it since (a stop that crossed the
        result of its last run — sim seed 1 with forget-before-ack found a STOPPED job run again
        from a stale object). Belief against fact, at the door of the window."""
        row = self.store.get(job.id)
        if row is None or row.state is not JobState.QUEUED or row.seq != job.seq:
            self.log.info("job sent back to its queue is no longer queued; not taken", job_id=job.id,
                          state=None if row is None else row.state.value)
            return False
        return True

    def _enqueue(self, jobs: list[Job]) -> None:
        """Jobs just committed. Ones at or below ``last_seq`` were already read by a refill."""
        if self.store_has_more:
            return  # older jobs wait in the store: these are read in order by the next refill
        window, now = self.window, self.clock()
        defer = self._due_cursor[0]
        for job in jobs:
            if job.seq <= self.last_seq:
                continue
            if job.not_before > defer:  # due after the horizon: read back by _scan_due in time
                self.last_seq = job.seq
                continue
            if len(window) >= self.window_size:
                self.store_has_more = True
                return
            window.add(job, now)
            self.last_seq = job.seq

    def _refill(self) -> None:
        if not self.store_has_more:
            return
        # In chunks: parsing rows runs on the event loop (~10 us each), so one refill must
        # not stall the node for long; the next pump reads more while the window is low.
        want = min(self.window_size - len(self.window), REFILL_CHUNK)
        if want <= 0:
            return
        jobs = self.store.ready(self.config.name, self.last_seq, want, self._due_cursor[0])
        now = self.clock()
        skip = self.in_flight
        for job in jobs:
            if job.id not in skip and job.id not in self.window:
                self.window.add(job, now)
        if jobs:
            self.last_seq = max(self.last_seq, jobs[-1].seq)
        if len(jobs) < want:
            self.store_has_more = False

    def on_idle(self) -> None:
        if self._pump_due:
            self._pump()

    def _pump(self) -> None:
        """Dispatch while slots allow; refill when the window runs low; arm the retry timer."""
        self._pump_due = False
        if self.suspended or self.draining:
            return
        if self.store_has_more and len(self.window) < self.refill_below:
            self._refill()
        free = self.dispatch_limit - len(self.in_flight)
        if free <= 0:
            return
        now = self.clock()
        batch: list[Job] = []
        window, runnable, in_flight = self.window, self.runnable, self.in_flight
        while free > 0:
            job = window.take(now, runnable)
            if job is None:
                if self.store_has_more:
                    self._refill()
                    job = window.take(now, runnable)
                if job is None:
                    break
            in_flight[job.id] = job
            batch.append(job)
            free -= 1
        if batch:
            self.pool.tell(("dispatch", self.config.name, self.config.priority, self.parallelism, batch))
        wake = window.next_wakeup()
        if wake is not None and wake > now and (self._timer_at is None or wake < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake
            self._timer = self.tell_later(wake - now + 0.001, ("tick",))

    def _finished(self, job: Job, outcome: Outcome) -> None:
        ran = self.in_flight.pop(job.id, None)
        waiting = self._after_run.pop(job.id, None) if self._after_run else None
        if waiting is not None:
            if ran is not None and ran.seq == waiting.seq:
                pass  # the newer copy is what ran
            elif not self.draining:
                self.window.add(waiting, self.clock())
        if self.foreign_sink is not None and job.origin != self.local_name and outcome.kind != "ABORTED":
            self.foreign_sink(job, outcome)  # another node's job: its origin applies the outcome
            return
        now = self.clock()
        old = job.state
        if old is JobState.QUEUED:  # stopped/removed before it started
            new, finished, message = outcome.stop_state, now, outcome.message
            retry_count, not_before = job.retry_count, job.not_before
        else:
            d = decide(job, outcome, self.config, now)
            new, finished, message = d.state, d.finished, d.message
            retry_count, not_before = d.retry_count, d.not_before
        check_transition(old, new)
        processing_ms = (now - job.started) * 1000.0 if old is JobState.ACTIVE and job.started else None
        job.state = new
        job.finished = finished
        job.retry_count = retry_count
        job.not_before = not_before
        if message is not None or new is JobState.SUCCEEDED:
            job.result_message = message
        if new is JobState.SUCCEEDED:
            job.result = outcome.result
        for line in outcome.log:
            append_log(job, line)
        if new is not JobState.SUCCEEDED:
            self._log_outcome(job, new, outcome)
        fut = self.store.update(job)
        if fut is not self._notify_fut:  # one callback per transaction, not per job
            self._notify_fut = fut
            self._notify_msgs = []
            fut.add_done_callback(partial(self._committed, self._notify_msgs))
        self._notify_msgs.append((job, old, new, processing_ms, outcome.kind))
        if new is JobState.QUEUED and not self.draining:
            self.window.add(job, now)

    def _log_outcome(self, job: Job, new: JobState, outcome: Outcome) -> None:
        """Failures are worth a line (bound to the job); successes are counted, not logged."""
        if new is JobState.QUEUED:
            pass  # a failed attempt that will retry: the manager logs it (with its traceback)
        elif new in (JobState.GIVEN_UP, JobState.ERROR):
            self.log.warning("job given up" if new is JobState.GIVEN_UP else "job cancelled by its consumer",
                             job_id=job.id, topic=job.topic, retries=job.retry_count, reason=outcome.message)
        else:
            self.log.info("job ended", job_id=job.id, topic=job.topic, state=new.value)

    def _committed(self, transitions: list[tuple[Any, ...]], fut: asyncio.Future[Any]) -> None:
        """The transaction holding these transitions committed: now the manager may announce them."""
        if fut.cancelled() or fut.exception() is not None:
            self.log.error("could not record job outcomes; they run again after a restart",
                           jobs=len(transitions), error=repr(None if fut.cancelled() else fut.exception()))
            return
        self.manager.tell(("transitions", transitions))

    async def _cancel(self, job_id: str, state: JobState) -> Any:
        """Stop (STOPPED) or remove (DROPPED) a job of this queue that is not final yet.

        Returns the job once recorded, "running" when a running consumer was asked to
        stop, or None when the job is not QUEUED/ACTIVE here.
        """
        job = self.window.remove(job_id)
        if job is not None:
            if self.foreign_sink is not None and job.origin != self.local_name:
                self.foreign_sink(job, Outcome("STOPPED", stop_state=state))
                return job
            return await self._record_cancel(job, state)
        if job_id in self.in_flight:
            res = await self.pool.ask(("cancel", job_id, state))
            if res == "running":
                return "running"
            if res == "buffered":
                return self.in_flight.get(job_id) or "buffered"
            # between pool and us: the pool already reported it finished; the queue catches up
            return None
        stored = self.store.get(job_id)
        if stored is None:
            return None
        if (self.remote_stop is not None and stored.target is not None and stored.target != self.local_name
                and stored.origin == self.local_name and stored.state in (JobState.QUEUED, JobState.ACTIVE)):
            # the stop travels to the target; recorded now if it had not started there, else
            # its result records it
            return await self.remote_stop(stored, state)
        if stored.state is not JobState.QUEUED:
            return None
        return await self._record_cancel(stored, state)

    async def _record_cancel(self, job: Job, state: JobState) -> Job:
        old = job.state
        check_transition(old, state)
        job.state = state
        job.finished = self.clock()
        await self.store.update(job)
        self.manager.tell(("transitions", [(job, old, state, None, "STOPPED")]))
        return job

    def _scan_due(self) -> None:
        """Delayed jobs left on disk that come due within ``DEFER_AFTER`` s go into the window
        (its delay heap starts them on time); the cursor moves on in due order."""
        now = self.clock()
        until = now + DEFER_AFTER
        if until - self._due_cursor[0] < DUE_SCAN or self.draining:
            return
        window, in_flight = self.window, self.in_flight
        while len(window) < self.window_size:
            limit = min(REFILL_CHUNK, self.window_size - len(window))
            jobs = self.store.due(self.config.name, self._due_cursor, until, limit)
            for job in jobs:
                if job.id not in window and job.id not in in_flight and job.id not in self._after_run:
                    window.add(job, now)
            if len(jobs) < limit:
                self._due_cursor = (until, 0)
                break
            self._due_cursor = (jobs[-1].not_before, jobs[-1].seq)
        self._pump()

    # -- the watchdog: belief (window, in flight) against fact (the store) -----------------
    def _waits_for_due_scan(self, not_before: float, seq: int) -> bool:
        """A delayed job after the due cursor in due order (not_before, seq) is on disk by design:
        the next ``_scan_due`` reads it, even when it is due at the cursor's very instant."""
        return not_before > 0 and (not_before, seq) > self._due_cursor

    def _watchdog(self) -> None:
        """Level-triggered repair (DESIGN §3). Every QUEUED job of this queue that may run here
        belongs in the window or is in flight; one that is in neither on two rounds in a row was
        lost by a transition nobody foresaw: log it, count it (it should stay 0), put it back.
        The store is read only while slots are free (two columns of an index scan), or for the
        copies a reconcile round asked about: an idle or a busy node does no O(all jobs) work."""
        if self.suspended or self.draining:
            self._suspects.clear()
            return
        self.window.unpark(self.runnable)  # a missed consumers_changed costs a round, not forever
        rows: list[tuple[int, str, float]] = []
        free = self.free_slots() if self.free_slots is not None else 0
        if free > 0 and len(self.in_flight) < self.parallelism:
            # due now, and read already: delayed jobs past the due cursor wait on disk by design
            rows = self.store.ready_ids(self.config.name, WATCHDOG_SCAN, min(self.clock(), self._due_cursor[0]))
        verify, self._verify = self._verify, set()
        found: dict[str, int] = {}
        window, in_flight = self.window, self.in_flight
        for seq, job_id, not_before in rows:
            if job_id in window or job_id in in_flight or (self.store_has_more and seq > self.last_seq):
                continue
            if not self._waits_for_due_scan(not_before, seq):
                found[job_id] = seq
        for job_id in verify:
            if job_id not in window and job_id not in in_flight and job_id not in found:
                stored = self.store.get(job_id)
                if stored is None or stored.state is not JobState.QUEUED or stored.queue != self.config.name:
                    continue
                if not self._waits_for_due_scan(stored.not_before, stored.seq):
                    found[job_id] = stored.seq
        repair = [i for i, seq in found.items() if self._suspects.get(i) == seq]
        self._suspects = {i: seq for i, seq in found.items() if i not in repair}
        if repair:
            now = self.clock()
            jobs = [j for j in (self.store.get(i) for i in repair) if j is not None and j.state is JobState.QUEUED]
            for job in jobs:
                if job.id not in self._after_run:
                    window.add(job, now)
            if jobs:
                self.repairs += len(jobs)
                self.log.warning("repaired: queued jobs no queue was dispatching are back in their window "
                                 "(a missed transition; please report it)", count=len(jobs),
                                 job_ids=[j.id for j in jobs[:10]], topics=sorted({j.topic for j in jobs})[:5])
        self._pump()

    # -- offloading ---------------------------------------------------------------
    def _movable(self, job: Job, now: float) -> bool:
        """This node's own job, ready now, not a workflow's local step."""
        if job.origin != self.local_name or job.not_before > now:
            return False
        props = job.properties
        return not (isinstance(props, dict) and props.get("jobmesh:local") is True)

    def _offload_summary(self) -> list[tuple[str, int, float, bool]]:
        """(topic, movable jobs in the window, age of the oldest, ordered) for the offloader."""
        now = self.clock()
        counts: dict[str, list[float]] = {}
        for job in self.window.jobs():
            if not self._movable(job, now):
                continue
            c = counts.get(job.topic)
            if c is None:
                counts[job.topic] = [1, job.created]
            else:
                c[0] += 1
                if job.created < c[1]:
                    c[1] = job.created
        ordered = self.config.type == "ordered"
        return [(t, int(c[0]), max(0.0, now - c[1]), ordered) for t, c in counts.items()]

    def _take(self, topic: str, count: int, keep: Any = ()) -> list[Job]:
        """Take up to ``count`` movable jobs of ``topic`` out of the window, newest first
        (the oldest keep their place in line here); the transfer actor hands them off.
        ``keep``: ids not to take (the offloader kept them home for their payload)."""
        now = self.clock()
        out: list[Job] = []
        if count <= 0:
            return out
        for job in reversed(list(self.window.jobs())):
            if job.topic != topic or not self._movable(job, now) or (keep and job.id in keep):
                continue
            self.window.remove(job.id)
            out.append(job)
            if len(out) >= count:
                break
        out.sort(key=lambda j: j.seq)  # handed over in arrival order (an ordered queue stays ordered there)
        return out

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "name": c.name,
            "type": c.type,
            "topics": list(c.topics),
            "max_parallel": self.parallelism,
            "retries": c.retries,
            "retry_delay": c.retry_delay,
            "retry_backoff": c.retry_backoff,
            "priority": c.priority,
            "ranking": c.ranking,
            "keep_jobs": c.keep_jobs,
            "suspended": self.suspended,
            "in_memory": len(self.window),
            "in_flight": len(self.in_flight),
        }


__all__ = ["QueueActor"]
