"""The engine of one node as a pure state machine: events in, instructions out.

In the style of dask's ``worker_state_machine``: ``EngineCore.handle(event)`` looks at
the event, changes the core's state and returns the instructions (``instructions.py``)
that the engine actor (``actor.py``, the shell) carries out: writes to the store, runs
to start, messages to the job manager and the transfer actor. No I/O, no asyncio, no
clock but the one it is given; a test feeds events and compares the instruction lists.

What it holds (and nobody else writes):

- every queue's window of ready jobs (``queues.core``), refilled through ``ReadReady``;
- the node's slots: ``capacity`` runs at most, each queue at most its ``max_parallel``,
  higher-priority queues first; a slot is reserved when a job's ACTIVE row is written
  and freed when its outcome is reported;
- the retry decision (``queues.core.decide``) for every outcome: local runs, results of
  jobs run at another node, runs a crash interrupted;
- this node's jobs handed to other nodes (``away``) and other nodes' copies here
  (``copies``);
- the story of recent transitions (``job.Story``): every change of a job's state goes
  through ``Story.transition`` and the one table ``job.TRANSITIONS``.

One writer per job row: every write of a ``jobs`` row is a ``Commit`` this core emits.
Jobs leave it only as snapshots (``Job.snapshot``).

A job's path, locally (events -> instructions):
``JobsAdded`` -> ``Commit(inserts)``; ``InsertsCommitted`` -> (window) ``Commit(starts)``;
``StartsCommitted`` -> ``JobsStarted``, ``Start``; ``RunsFinished`` -> ``Commit(successes,
then=[JobsTransitioned])`` (and the next ``Commit(starts)`` in the same transaction).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

from ..config import QueueConfig
from ..consumers.context import append_log
from ..job import FINAL_STATES, Job, JobState, Progress, Story
from ..job import ResultKind
from ..queues.core import Outcome, QueueMatcher, Window, decide, make_window
from ..transfer.messages import JobSpec, ResultItem
from . import events as ev
from . import instructions as ins

WINDOW = 16384  # jobs held in memory per queue
REFILL_CHUNK = 1024  # rows read from the store per refill
WATCHDOG_SCAN = 256  # ready rows compared per round
AWAY_CHECK_ROUNDS = 3  # watchdog rounds between two checks of the handed-off records (CheckAway)
MAX_LOG_LINES = 1000
# A job due later than this (a delay, an ``at``) stays on disk, out of the window, until it is
# nearly due: a million jobs delayed until tomorrow must not fill the window and hold back the
# ones ready now. Read back in due order (``ReadDue``) every DUE_SCAN s, from the watchdog round.
# An ordered queue defers nothing: its head holds the line, delayed or not.
DEFER_AFTER = 60.0
DUE_SCAN = DEFER_AFTER / 2

_QUEUED, _ACTIVE, _SUCCEEDED = JobState.QUEUED, JobState.ACTIVE, JobState.SUCCEEDED
_STOPPED, _DROPPED = JobState.STOPPED, JobState.DROPPED
_RESULT_KINDS = {"OK": ResultKind.OK, "FAILED": ResultKind.FAILED, "CANCEL": ResultKind.CANCEL,
                 "STOPPED": ResultKind.CANCEL}


class Run:
    """A job in a slot: reserved when its ACTIVE row is written, until its outcome is in.

    The core sets ``stop_state`` (stop or remove asked), ``abort`` (shutdown), ``ended``
    (its outcome is recorded: anything reported later is dropped) and ``superseded`` (a
    copy its origin no longer wants: the outcome is dropped). ``progress`` belongs to the
    consumer's context while it runs (one writer) and becomes the job's at the end; it is made
    (``own_progress``, a copy of the job's) only for a consumer that has a context to report with,
    None otherwise (the job's own then stands: three objects less per run of a plain consumer).
    ``handle`` is the runner's (the shell's) own. ``time_limit`` is the job's own limit and
    ``queue_timeout`` its queue's; the runner applies job > consumer > queue (the consumer's
    limit is in the consumer index, which only the shell holds).
    """

    __slots__ = ("job", "queue", "stop_state", "abort", "ended", "started", "superseded", "waiting_ms",
                 "progress", "lines_sent", "handle", "time_limit", "queue_timeout")

    def __init__(self, job: Job, queue: str, waiting_ms: float) -> None:
        self.job = job
        self.queue = queue
        self.stop_state: JobState | None = None
        self.abort = False
        self.ended = False
        self.started = False  # Start issued: its consumer runs
        self.superseded = False
        self.waiting_ms = waiting_ms
        self.progress: Progress | None = None
        self.lines_sent = len(job.progress.log)
        self.handle: Any = None
        self.time_limit: float | None = job.timeout
        self.queue_timeout: float | None = None

    def own_progress(self) -> Progress:
        """The run's own progress for a consumer's context, made on first use from the job's."""
        p = self.progress
        if p is None:
            q = self.job.progress
            p = self.progress = Progress(q.steps, q.step, q.eta, list(q.log))
        return p

    def stopped(self) -> bool:
        """What ``ctx.is_stopped()`` says (any thread may ask)."""
        return self.stop_state is not None or self.abort

    def __repr__(self) -> str:
        return f"<Run {self.job.id} {self.queue}>"


class _Queue:
    """One queue's part of the core: its window, its slots in use, what the store still has."""

    __slots__ = ("config", "name", "window", "parallelism", "priority", "ordered", "active", "suspended",
                 "last_seq", "store_has_more", "reading", "window_size", "refill_below", "suspects",
                 "due_cursor", "reading_due")

    def __init__(self, config: QueueConfig, cores: int | None, window: int, now: float = 0.0) -> None:
        self.config = config
        self.name = config.name
        self.window: Window = make_window(config.type)
        self.parallelism = config.parallelism(cores)
        self.priority = config.priority
        self.ordered = config.type == "ordered"
        self.active = 0
        self.suspended = False
        self.last_seq = 0
        self.store_has_more = True  # until a read proves otherwise
        self.reading = False  # a ReadReady is out
        self.window_size = window
        self.refill_below = max(1, window // 4)
        self.suspects: dict[str, int] = {}  # watchdog: job id -> seq missing at the last round
        # Delayed jobs due up to here were read into the window (refills read what is due by then;
        # ``ReadDue`` moves it on): the (not_before, seq) cursor of the due-order reads. A QUEUED
        # row past it waits on disk by design: the watchdog never takes it for lost.
        self.due_cursor: tuple[float, int] = (math.inf if self.ordered else now + DEFER_AFTER, 0)
        self.reading_due = False  # a ReadDue is out

    def info(self) -> dict[str, Any]:
        c = self.config
        return {"name": c.name, "type": c.type, "topics": list(c.topics), "max_parallel": self.parallelism,
                "retries": c.retries, "retry_delay": c.retry_delay, "retry_backoff": c.retry_backoff,
                "priority": c.priority, "ranking": c.ranking, "keep_jobs": c.keep_jobs,
                "suspended": self.suspended, "in_memory": len(self.window), "in_flight": self.active}


def waiting_ms(job: Job, started: float) -> float:
    """Waiting time of a start (Sling's): since it was added, or since its retry delay ended."""
    return max(0.0, (started - max(job.created, job.not_before)) * 1000.0)


def _remote_run_ms(r: Any, begun: float | None, now: float) -> float | None:
    """A remote run's processing time (ms): the target's own start and end when it sent both,
    else from the start this node recorded (None without one)."""
    if r.started is not None and r.finished is not None:
        return max(0.0, (r.finished - r.started) * 1000.0)
    return max(0.0, (now - begun) * 1000.0) if begun is not None else None


class EngineCore:
    """See the module docstring. ``handle`` is the only entry point that changes state; the
    other public methods only read (snapshots, counts) for the node and the job manager."""

    def __init__(self, node: str, queues: list[QueueConfig], capacity: int, runnable: Callable[[str], bool],
                 clock: Callable[[], float], cores: int | None = None, window: int = WINDOW,
                 matcher: QueueMatcher | None = None) -> None:
        self.node = node
        self.capacity = capacity
        self.runnable = runnable
        self.clock = clock
        self.matcher = matcher or QueueMatcher(queues)
        now = clock()
        self.queues: dict[str, _Queue] = {q.name: _Queue(q, cores, window, now) for q in queues}
        # slots go to higher-priority queues first; equal ones in configuration order
        self._by_priority = sorted(self.queues.values(), key=lambda q: -q.priority)
        self.running: dict[str, Run] = {}  # reserved or running, by job id
        self.away: dict[str, Job] = {}  # own jobs handed to another node, not final
        self._away_active = 0  # of them ACTIVE there
        self.stop_wanted: dict[str, JobState] = {}  # away and ACTIVE: how to record their stop
        self.copies: dict[str, Job] = {}  # other nodes' jobs here (queued, running or waiting)
        self.committing: set[str] = set()  # of them, accepted but not durable yet (nobody counted them)
        self.after_run: dict[str, Job] = {}  # a newer copy waiting for its superseded run to end
        self.verify: set[str] = set()
        self.unsynced: set[str] = set()  # jobs whose last write failed: their next end is written whole
        self.story = Story()
        self.draining = False
        self.open = False  # Restored seen: windows may be filled (recovery is durable)
        self.finished_total = 0
        self._done: deque[list[float]] = deque()  # [second, count] of the last ~10 s
        self._timer_at: float | None = None
        self._watchdog_rounds = 0
        self._now = 0.0
        self._out: list[Any] = []
        self._commit: ins.Commit | None = None
        self._new_runs: list[Run] = []

    # ------------------------------------------------------------------ the entry point
    def handle(self, event: Any) -> list[Any]:
        """Take one event; return what to do, in order."""
        return self.handle_burst((event,))

    def handle_burst(self, events: Any) -> list[Any]:
        """Take events that arrived together (``BURST`` kinds: the adds of one group commit, the
        messages of one transfer batch, the outcomes of a commit), each as ``handle`` would, then
        pump once and write one ``Commit`` for them all: one dispatch per burst, not per event."""
        self._now = self.clock()
        self._out = out = []
        self._commit = None
        for event in events:
            handler = _HANDLERS.get(type(event))
            if handler is None:
                raise TypeError(f"engine core: no handler for {type(event).__name__}")
            handler(self, event)
        self._pump()
        c = self._commit
        if c is not None:
            if self.unsynced and (c.updates or c.deletes):  # written whole or gone: nothing left to
                # put right once this commits (WritesFailed says so again if it does not)
                self.unsynced.difference_update([j.id for j in (*c.updates, *c.deletes)])
            if self._new_runs:
                runs, self._new_runs = self._new_runs, []
                c.done.append(ev.StartsCommitted(runs))
                c.failed.append(ev.StartsFailed(runs, ""))
            out.append(c)
        return out

    # ------------------------------------------------------------------ reads (no state change)
    def snapshot(self, job_id: str) -> Job | None:
        """The live record of a job ACTIVE here or at a peer (its progress as it is now)."""
        run = self.running.get(job_id)
        if run is not None and run.started and not run.ended:  # its ACTIVE row is durable
            snap = run.job.snapshot()
            p = run.progress
            if p is not None:
                snap.progress = Progress(p.steps, p.step, p.eta, list(p.log))
            return snap
        job = self.away.get(job_id)
        if job is not None and job.state is _ACTIVE:
            return job.snapshot()
        return None

    def running_jobs(self) -> list[Job]:
        """Jobs running here now (any thread may call: a copy of the list, records read only)."""
        return [r.job for r in list(self.running.values()) if r.started and not r.ended]

    def load(self) -> dict[str, Any]:
        """The node's figures for its heartbeat and the offloader. ``active`` counts runs whose
        consumer started: a slot reserved while its start is being written is still QUEUED in the
        job manager's count (``JobsStarted`` moves it), and counting it in both would show the
        offloader one job more than there is (90 jobs read as 91: one job too many moved away)."""
        now = self.clock()
        recent = sum(c for s, c in self._done if s >= now - 10)
        active = sum(1 for r in list(self.running.values()) if r.started)
        return {"slots": self.capacity, "active": active, "throughput": round(recent / 10.0, 2),
                "waiting_elsewhere": len(self.away) - self._away_active, "copies": len(self.copies)}

    def free_slots(self) -> int:
        return 0 if self.draining else max(0, self.capacity - len(self.running))

    def info(self) -> list[dict[str, Any]]:
        return [q.info() for q in self.queues.values()]

    # ------------------------------------------------------------------ helpers
    def _c(self) -> ins.Commit:
        c = self._commit
        if c is None:
            c = self._commit = ins.Commit()
        return c

    def _queue_of(self, job: Job) -> _Queue:
        q = self.queues.get(job.queue)
        if q is None:  # a queue no longer configured: the one that matches now
            q = self.queues[self.matcher.match(job.topic).name]
            job.queue = q.name
        return q

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self._out.append(ins.Log(level, event, fields))

    def _count_done(self, n: int = 1) -> None:
        self.finished_total += n
        sec = int(self._now)
        d = self._done
        if d and d[-1][0] == sec:
            d[-1][1] += n
        else:
            d.append([sec, n])
            while d and d[0][0] < sec - 10:
                d.popleft()

    def _enter_window(self, job: Job) -> None:
        """A QUEUED job that may run here goes (back) into its queue's window."""
        if self.draining:
            return
        q = self._queue_of(job)
        if job.id not in q.window and job.id not in self.running:
            q.window.add(job, self._now)

    # ------------------------------------------------------------------ slots
    def _pump(self) -> None:
        """Reserve free slots for the next runnable jobs; refill low windows; arm the timer."""
        if not self.open or self.draining:
            return
        free = self.capacity - len(self.running)
        now = self._now
        wake: float | None = None
        runnable = self.runnable
        if free > 0:  # one answer per topic for this pump (consumers and settings do not change in it)
            known: dict[str, bool] = {}
            ask = runnable

            def runnable(topic: str) -> bool:
                r = known.get(topic)
                if r is None:
                    r = known[topic] = ask(topic)
                return r
        for q in self._by_priority:
            if q.suspended:
                continue
            if q.store_has_more and not q.reading and len(q.window) < q.refill_below:
                self._read(q)
            room = q.parallelism - q.active
            window = q.window
            if room > 0 and free > 0:
                want = min(room, free)
                taken = window.take_many(now, runnable, want)
                if len(taken) < want and q.store_has_more and not q.reading:
                    self._read(q)  # the window ran out of jobs that may start
                if taken:
                    free -= len(taken)
                    self._reserve(taken, q)
            w = window.next_wakeup()
            if w is not None and w > now and (wake is None or w < wake):
                wake = w
        if wake is not None and (self._timer_at is None or wake < self._timer_at):
            self._timer_at = wake
            self._out.append(ins.SetTimer(wake))

    def _read(self, q: _Queue) -> None:
        want = min(q.window_size - len(q.window), REFILL_CHUNK)
        if want > 0:
            q.reading = True
            self._out.append(ins.ReadReady(q.name, q.last_seq, want, q.due_cursor[0]))

    def _reserve(self, jobs: list[Job], q: _Queue) -> None:
        """QUEUED -> ACTIVE: the starts are written; the consumers start once they are durable."""
        now, me, name, timeout = self._now, self.node, q.name, q.config.timeout
        move, running, new_runs = self.story.move, self.running, self._new_runs
        for job in jobs:
            move(job, _ACTIVE)  # from QUEUED: the table has no other way into ACTIVE
            run = Run(job, name, waiting_ms(job, now))
            run.queue_timeout = timeout
            running[job.id] = run
            if job.origin == me:
                job.attempt += 1  # a copy keeps the attempt its origin gave it (its result names it)
            job.target = me
            job.started = now
            job.finished = None
            new_runs.append(run)
        q.active += len(jobs)
        self.story.line(tuple([j.id for j in jobs]), now, _QUEUED, _ACTIVE, "reserved a slot")
        self._c().starts.extend(jobs)

    # ------------------------------------------------------------------ new jobs
    def _on_jobs_added(self, e: ev.JobsAdded) -> None:
        self.story.line(tuple([job.id for job in e.jobs]), self._now, _QUEUED, _QUEUED, "added")
        c = self._c()
        c.texts = e.texts if not c.inserts else [*(c.texts or ()), *e.texts]  # two adds in one burst
        c.inserts.extend(e.jobs)
        c.done.append(ev.InsertsCommitted(e.jobs, e.reply))  # answered there, with the jobs as added
        if e.reply is not None:
            c.failed.append(ev.InsertsNotCommitted(e.reply, ""))

    def _on_inserts_committed(self, e: ev.InsertsCommitted) -> None:
        """Jobs just committed go straight into their windows while nothing older waits in the store.
        The adder gets a copy of each job kept here and the job itself of each one let go."""
        now = self._now
        answer: list[Job] | None = [] if e.reply is not None else None
        for job in e.jobs:
            q = self.queues.get(job.queue)
            if q is None or q.store_has_more or job.seq <= q.last_seq:
                pass  # read in order by the next refill
            elif job.not_before > q.due_cursor[0]:  # due after the horizon: ``ReadDue`` reads it in time
                q.last_seq = job.seq
            elif len(q.window) >= q.window_size:
                q.store_has_more = True
            else:
                if answer is not None:
                    answer.append(job.snapshot())
                q.window.add(job, now)
                q.last_seq = job.seq
                continue
            if answer is not None:
                answer.append(job)  # not held here: nobody else changes it
        if answer is not None:
            self._out.append(ins.Reply(e.reply, answer))

    def _on_inserts_not_committed(self, e: ev.InsertsNotCommitted) -> None:
        from ..errors import ActorStopped

        self._out.append(ins.Reply(e.reply, error=ActorStopped(f"not recorded: {e.error}")))

    def _on_ready_read(self, e: ev.ReadyRead) -> None:
        q = self.queues.get(e.queue)
        if q is None:
            return
        q.reading = False
        if e.after_seq != q.last_seq:
            return  # a stale answer (the window was reset meanwhile): the next pump reads again
        now, window, running, copies = self._now, q.window, self.running, self.copies
        for job in e.jobs:
            if job.id in running or job.id in window or job.id in self.after_run:
                continue
            if job.origin != self.node:
                copies.setdefault(job.id, job)
            window.add(job, now)
        if e.jobs:
            q.last_seq = max(q.last_seq, e.jobs[-1].seq)
        if len(e.jobs) < e.limit:
            q.store_has_more = False

    # ------------------------------------------------------------------ runs
    def _on_starts_committed(self, e: ev.StartsCommitted) -> None:
        started: list[tuple[ins.JobFacts, float]] = []
        copies: list[tuple[str, int, float]] = []
        runs: list[Run] = []
        me = self.node
        for run in e.runs:
            if run.ended:
                continue
            if run.abort or run.stop_state is not None or run.superseded:
                kind = "ABORTED" if run.abort else "STOPPED"
                self._finish([(run, Outcome(kind, "interrupted by node shutdown" if run.abort else None,
                                            stop_state=run.stop_state or _STOPPED))])
                continue
            run.started = True
            job = run.job
            started.append((ins.JobFacts.of(job), run.waiting_ms))
            if job.origin != me:
                copies.append((job.id, job.attempt, job.started or self._now))
            runs.append(run)
        if started:
            self._out.append(ins.JobsStarted(started))
        if copies:
            self._out.append(ins.CopiesStarted(copies))
        if runs:
            self._out.append(ins.Start(runs))

    def _on_writes_failed(self, e: ev.WritesFailed) -> None:
        self.unsynced.update(e.job_ids)

    def _on_starts_failed(self, e: ev.StartsFailed) -> None:
        self._finish([(r, Outcome("ABORTED", f"could not record the start: {e.error}")) for r in e.runs
                      if not r.ended])

    def _on_runs_finished(self, e: ev.RunsFinished) -> None:
        self._finish(e.items)

    def _finish(self, items: list[tuple[Run, Outcome]]) -> None:
        transitions: list[tuple[ins.JobFacts, JobState, JobState, float | None, str]] = []
        results: list[Any] = []
        final_progress: list[ins.CopyProgress] = []
        left: list[tuple[ins.JobFacts, JobState]] = []
        me, now = self.node, self._now
        c: ins.Commit | None = None
        running, queues, after_run, transition, facts = self.running, self.queues, self.after_run, \
            self.story.transition, ins.JobFacts.of
        move, unsynced = self.story.move, self.unsynced
        ok: list[str] = []  # ids of the runs that ended OK: one story line for them
        ended = 0
        for run, outcome in items:
            if run.ended:
                continue  # reported already (given up at shutdown): a run is reported once
            if c is None:
                c = self._c()
            # the slot is free
            run.ended = True
            ended += 1
            job = run.job
            q = queues.get(run.queue)
            if running.get(job.id) is run:
                del running[job.id]
                if q is not None:
                    q.active -= 1
            if after_run:
                waiting = after_run.pop(job.id, None)
                if waiting is not None and self.copies.get(job.id) is waiting:
                    self._enter_window(waiting)
            if run.superseded:
                self._log("info", "run of a superseded copy ended; not reported", job_id=job.id)
                c.deletes.append(job)  # its row, unless a newer copy's replaced it already
                left.append((ins.JobFacts.of(job), _ACTIVE))
                continue
            if run.progress is not None:
                job.progress = run.progress
            if job.origin != me and outcome.kind != "ABORTED":
                self._copy_result(run, outcome, c, results, final_progress, left)
                continue
            kind = outcome.kind
            if kind == "OK":  # the common case: what decide() and _record() do for it, inline
                old = move(job, _SUCCEEDED)  # from ACTIVE: the table has no other way into SUCCEEDED
                ok.append(job.id)
                job.finished = now
                job.result_message = outcome.message
                job.result = outcome.result
                for line in outcome.log:
                    append_log(job, line)
                new = _SUCCEEDED
                if job.queue == run.queue and not (unsynced and job.id in unsynced):
                    c.successes.append(job)  # the rest of the row is as the start wrote it
                else:  # its queue changed, or a write of its row failed: the whole record goes
                    c.updates.append(job)
            else:
                d = decide(job, outcome, q.config if q is not None else self.matcher.main, now)
                old = transition(job, d.state, f"run ended: {kind}", now)
                self._record(job, d, outcome)
                new = d.state
                self._log_outcome(job, new, outcome)
                c.updates.append(job)
            started = job.started
            transitions.append((facts(job, kind == "FAILED"), old, new,
                                (now - started) * 1000.0 if started else None, kind))
            if new is _QUEUED:
                self._enter_window(job)
        if ended:
            self._count_done(ended)
        self.story.line(tuple(ok), now, _ACTIVE, _SUCCEEDED, "run ended: OK")
        if c is None:
            return
        if transitions:
            c.then.append(ins.JobsTransitioned(transitions))
        if results:
            self._out.append(ins.CopiesEnded([(r.id, r.attempt) for r in results]))  # now, not after the commit
            c.then.append(ins.CopyResults(results, final_progress))
        if left:
            c.then.append(ins.CopiesLeft(left))

    def _record(self, job: Job, d: Any, outcome: Outcome) -> None:
        """A decision's values on the record; the outcome's log lines (tracebacks) after it."""
        job.finished = d.finished
        job.retry_count = d.retry_count
        job.not_before = d.not_before
        if d.message is not None or d.state is _SUCCEEDED:
            job.result_message = d.message
        if d.state is _SUCCEEDED:
            job.result = outcome.result
        for line in outcome.log:
            append_log(job, line)

    def _log_outcome(self, job: Job, new: JobState, outcome: Outcome) -> None:
        """Failures are worth a line; a failed attempt that will retry is the manager's to log."""
        if new is _QUEUED:
            return
        if new in (JobState.GIVEN_UP, JobState.ERROR):
            self._log("warning", "job given up" if new is JobState.GIVEN_UP else "job cancelled by its consumer",
                      job_id=job.id, topic=job.topic, retries=job.retry_count, reason=outcome.message)
        else:
            self._log("info", "job ended", job_id=job.id, topic=job.topic, state=new.value)

    def _copy_result(self, run: Run, outcome: Outcome, c: ins.Commit, results: list[Any],
                     final_progress: list[ins.CopyProgress], left: list[tuple[ins.JobFacts, JobState]]) -> None:
        """A copy ended here: its result goes to the durable outbox (its row goes), then to its origin."""
        job = run.job
        self.copies.pop(job.id, None)
        message, kind = outcome.message, outcome.kind
        if kind == "STOPPED" and message is None:
            message = "stopped"
        lines = job.progress.log
        log = tuple([*lines, *outcome.log][-MAX_LOG_LINES:]) if lines or outcome.log else ()
        ok = kind == "OK"
        item = ResultItem.of_run(job.id, job.attempt, _RESULT_KINDS.get(kind, ResultKind.FAILED), message,
                                 outcome.retry_delay, job.started, self._now, log,
                                 outcome.result if ok else None, outcome.output_payload if ok else None)
        self.story.note(job.id, job.state, "copy ended: " + kind + "; result to " + job.origin, self._now)
        c.outbox.append((job, item))
        results.append(item)
        p = job.progress
        if p.steps is not None or p.step or p.eta is not None:
            final_progress.append(ins.CopyProgress(job.id, job.attempt, p.steps, p.step, p.eta, ()))
        left.append((ins.JobFacts.of(job), _ACTIVE))

    def _on_progress(self, e: ev.ProgressReported) -> None:
        run = e.run
        if run.ended or run.superseded or self.running.get(run.job.id) is not run:
            return
        p, job = run.progress, run.job
        if p is None:
            return
        lines = p.log
        new = tuple(lines[run.lines_sent:]) if run.lines_sent <= len(lines) else tuple(lines[-10:])
        run.lines_sent = len(lines)
        self._out.append(ins.CopyProgress(job.id, job.attempt, p.steps, p.step, p.eta, new))

    # ------------------------------------------------------------------ stop, remove, retry
    def _on_stop(self, e: ev.StopRequested) -> None:
        self._stop(e.job_id, e.state, e.reply, e.stored)

    def _stop(self, job_id: str, state: JobState, reply: Any, stored: Job | None) -> None:
        run = self.running.get(job_id)
        if run is not None:  # reserved or running: its consumer is asked to stop; its outcome records it
            if run.stop_state is None:
                run.stop_state = state
                if run.started:
                    self._out.append(ins.StopRun(run))
            self._reply(reply, run.job.snapshot())
            return
        job = self.away.get(job_id)
        if job is not None:
            self._stop_away(job, state, reply)
            return
        copy = self.copies.get(job_id)
        q = None
        if copy is not None:
            job = copy
        elif stored is not None:
            job = stored
        else:
            self._reply(reply, None)
            return
        q = self._queue_of(job)
        live = q.window.remove(job_id) or self.after_run.pop(job_id, None)
        if live is not None:
            job = live
        elif job.state is not _QUEUED or job is copy:
            self._reply(reply, None)  # between a run's end and its record: the caller reads again
            return
        if job.origin != self.node:  # another node's copy: its origin records the stop
            self.copies.pop(job.id, None)
            run = Run(job, q.name, 0.0)
            self._finish_copy_unrun(run, Outcome("STOPPED", stop_state=state))
            self._reply(reply, job.snapshot())
            return
        self._record_stop(job, state, reply)

    def _finish_copy_unrun(self, run: Run, outcome: Outcome) -> None:
        c = self._c()
        results: list[Any] = []
        progress: list[ins.CopyProgress] = []
        left: list[tuple[ins.JobFacts, JobState]] = []
        if run.progress is not None:
            run.job.progress = run.progress
        self._copy_result(run, outcome, c, results, progress, left)
        left[:] = [(facts, _QUEUED) for facts, _ in left]
        c.then.append(ins.CopyResults(results, progress))
        c.then.append(ins.CopiesLeft(left))

    def _record_stop(self, job: Job, state: JobState, reply: Any, how: str = "STOPPED") -> None:
        old = self.story.transition(job, state, "stop requested" if state is _STOPPED else "removed", self._now)
        job.finished = self._now
        c = self._c()
        c.updates.append(job)
        snap = job.snapshot()
        c.then.append(ins.JobsTransitioned([(ins.JobFacts.of(job), old, state, None, how)]))
        if reply is not None:
            c.then.append(ins.Reply(reply, snap))

    def _stop_away(self, job: Job, state: JobState, reply: Any) -> None:
        """A job handed to another node: not started there, it is recorded stopped now; running
        there, the stop travels and its result records it."""
        if job.state is _QUEUED:
            del self.away[job.id]
            self._out.append(ins.StopRemote(job.id, withdraw=True))  # final here: the attempt goes
            self._record_stop(job, state, reply)
        else:
            self.stop_wanted[job.id] = state
            self._out.append(ins.StopRemote(job.id))
            self._reply(reply, job.snapshot())

    def _on_remove(self, e: ev.RemoveRequested) -> None:
        job = e.stored
        if job is not None and job.state in FINAL_STATES and job.id not in self.running:
            self.story.note(job.id, job.state, "deleted", self._now)
            c = self._c()
            c.deletes.append(job)
            if e.reply is not None:
                c.then.append(ins.Reply(e.reply, None))
            return
        self._stop(e.job_id, _DROPPED, e.reply, e.stored)

    def _on_retry(self, e: ev.RetryRequested) -> None:
        job = e.stored
        if job is None or job.id in self.running or job.id in self.away:
            self._reply(e.reply, None)
            return
        from ..errors import Conflict

        if job.state is _SUCCEEDED or job.state not in FINAL_STATES:
            self._out.append(ins.Reply(e.reply, error=Conflict(
                f"job {job.id} is {job.state.value}; only failed, stopped or dropped jobs can be retried")))
            return
        old = self.story.transition(job, _QUEUED, "retry requested", self._now)
        self._queue_of(job)  # a queue no longer configured: the one its topic matches now
        job.retry_count = 0
        job.not_before = 0.0
        job.finished = None
        job.result_message = None
        job.result = None
        job.target = None  # it may have run at another node: back in this node's windows
        job.progress = Progress()
        c = self._c()
        c.updates.append(job)
        snap = job.snapshot()
        c.then.append(ins.JobsTransitioned([(ins.JobFacts.of(job), old, _QUEUED, None, "RETRY")]))
        if e.reply is not None:
            c.then.append(ins.Reply(e.reply, snap))
        self._enter_window(job)

    def _reply(self, reply: Any, value: Any) -> None:
        if reply is not None:
            self._out.append(ins.Reply(reply, value))

    # ------------------------------------------------------------------ queues, consumers, shutdown
    def _on_suspend(self, e: ev.SuspendRequested) -> None:
        q = self.queues.get(e.queue)
        if q is None:
            from ..errors import NotFound

            self._out.append(ins.Reply(e.reply, error=NotFound(f"queue {e.queue} not found")))
            return
        q.suspended = e.suspended
        self._reply(e.reply, q.info())

    def _on_info(self, e: ev.InfoRequested) -> None:
        self._reply(e.reply, self.info())

    def _on_consumers_changed(self, e: ev.ConsumersChanged) -> None:
        for q in self.queues.values():
            q.window.unpark(self.runnable)

    def _on_drain(self, e: ev.DrainStarted) -> None:
        self.draining = True

    def _on_abort(self, e: ev.AbortRuns) -> None:
        items: list[tuple[Run, Outcome]] = []
        for run in list(self.running.values()):
            if run.ended:
                continue
            if e.force:
                self._log("warning", "run did not end when interrupted; reported back to QUEUED, a late result "
                                     "will be ignored", job_id=run.job.id, topic=run.job.topic)
                items.append((run, Outcome("ABORTED", "interrupted by node shutdown")))
            elif not run.abort:
                run.abort = True
                if run.started:
                    self._out.append(ins.CancelRun(run))
        if items:
            self._finish(items)

    def _on_tick(self, e: ev.Tick) -> None:
        self._timer_at = None

    # ------------------------------------------------------------------ the watchdog (DESIGN §3)
    def _on_watchdog(self, e: ev.WatchdogDue) -> None:
        """Level-triggered repair: every QUEUED job of a queue that may run here belongs in the
        window or in a slot. The store is read only while slots are free (or for copies a
        reconcile round asked about), so an idle or a busy node does no O(all jobs) work."""
        self._watchdog_rounds += 1
        if self.away and self._watchdog_rounds % AWAY_CHECK_ROUNDS == 0:
            self._out.append(ins.CheckAway(sorted((j.id, j.target or "", j.attempt) for j in self.away.values())))
        scan: list[str] = []
        free = self.free_slots()
        if not self.draining and self.open:
            for q in self.queues.values():
                self._read_due(q)
        for q in self.queues.values():
            if q.suspended or self.draining:
                q.suspects.clear()
                continue
            q.window.unpark(self.runnable)  # a missed ConsumersChanged costs a round, not forever
            if free > 0 and q.active < q.parallelism:
                scan.append(q.name)
        # only the copies a round asked about that this core does not hold are looked up
        verify = sorted(i for i in self.verify if i not in self.copies and i not in self.running)
        self.verify.clear()
        if scan or verify:
            self._out.append(ins.ScanReady(scan, WATCHDOG_SCAN, verify, self._now))
        else:
            for q in self.queues.values():
                q.suspects.clear()

    def _read_due(self, q: _Queue, until: float | None = None) -> None:
        """Delayed jobs left on disk that come due within ``DEFER_AFTER`` s are read into the
        window (its delay heap starts them on time), in due order from the cursor; a round starts
        once the horizon moved ``DUE_SCAN`` past the cursor and reads on (``until``: the round's
        horizon) while the window has room."""
        if until is None:
            until = self._now + DEFER_AFTER
            if until - q.due_cursor[0] < DUE_SCAN:
                return
        if q.ordered or q.reading_due:
            return
        limit = min(REFILL_CHUNK, q.window_size - len(q.window))
        if limit <= 0:
            return
        q.reading_due = True
        self._out.append(ins.ReadDue(q.name, q.due_cursor, until, limit))

    def _on_due_read(self, e: ev.DueRead) -> None:
        q = self.queues.get(e.queue)
        if q is None:
            return
        q.reading_due = False
        if e.after != q.due_cursor:
            return  # stale (the cursor moved meanwhile)
        now, window, running = self._now, q.window, self.running
        for job in e.jobs:
            if job.id in window or job.id in running or job.id in self.after_run or job.id in self.away:
                continue
            if job.origin != self.node:
                self.copies.setdefault(job.id, job)
            window.add(job, now)
        if len(e.jobs) < e.limit:
            q.due_cursor = (e.until, 0)
            return
        last = e.jobs[-1]
        q.due_cursor = (last.not_before, last.seq)
        self._read_due(q, e.until)  # more are due by then: read on while the window has room

    def _held_here(self, job_id: str, q: _Queue) -> bool:
        return (job_id in q.window or job_id in self.running or job_id in self.after_run
                or job_id in self.away)

    def _on_scanned(self, e: ev.ReadyScanned) -> None:
        found: dict[str, dict[str, int]] = {name: {} for name in self.queues}
        for name, rows in e.rows.items():
            q = self.queues.get(name)
            if q is None:
                continue
            f = found[name]
            now, cursor = self._now, q.due_cursor
            for seq, job_id, not_before in rows:
                if not_before > now or (not_before, seq) > cursor:
                    continue  # waiting by design: delayed, or deferred on disk until nearly due
                if not self._held_here(job_id, q) and not (q.store_has_more and seq > q.last_seq):
                    f[job_id] = seq
        for job_id in sorted(e.verified):
            stored = e.verified[job_id]
            if stored is None or stored.state is not _QUEUED or stored.queue not in self.queues:
                continue
            q = self.queues[stored.queue]
            if not self._held_here(job_id, q):
                found[stored.queue].setdefault(job_id, stored.seq)
        repair: list[str] = []
        for name, f in found.items():
            q = self.queues[name]
            again = [i for i, seq in f.items() if q.suspects.get(i) == seq]
            q.suspects = {i: seq for i, seq in f.items() if i not in again}
            repair += again
        if repair:
            self._out.append(ins.LoadJobs(repair, "repair"))

    def _on_loaded(self, e: ev.JobsLoaded) -> None:
        if e.purpose == "away":  # records read again after a failed commit of their results
            for job in e.jobs:
                if job.state not in (_QUEUED, _ACTIVE):
                    continue
                if job.target is not None and job.target != self.node and job.origin == self.node:
                    if job.id not in self.away:
                        self.away[job.id] = job
                        self._away_active += job.state is _ACTIVE
                elif job.state is _QUEUED:
                    self._enter_window(job)
            return
        jobs = [j for j in e.jobs if j.state is _QUEUED and j.queue in self.queues
                and not self._held_here(j.id, self.queues[j.queue])]
        for job in jobs:
            if job.origin != self.node:
                self.copies.setdefault(job.id, job)
            self.story.note(job.id, _QUEUED, f"{e.purpose}: back in its window", self._now)
            self.queues[job.queue].window.add(job, self._now)
        if jobs and e.purpose == "repair":
            self._out.append(ins.Repaired("watchdog_requeue", len(jobs)))
            self._log("warning", "repaired: queued jobs no queue was dispatching are back in their window "
                                 "(a missed transition; please report it)", count=len(jobs),
                      job_ids=[j.id for j in jobs[:10]], topics=sorted({j.topic for j in jobs})[:5])

    # ------------------------------------------------------------------ start-up
    def _on_recovered(self, e: ev.Recovered) -> None:
        """Rows ACTIVE at a crash: an own run counts as a retry (or ends GIVEN_UP: a poison job
        stops), the same rule as a failed run; a copy is QUEUED again (its origin counts)."""
        given_up = 0
        c = self._c()
        for job in e.jobs:
            if job.origin != self.node:
                self.story.transition(job, _QUEUED, "interrupted by a crash (a copy: not counted)", self._now)
            else:
                cfg = self._queue_of(job).config
                d = decide(job, Outcome("INTERRUPTED", "interrupted by a node crash; no retries left"), cfg, self._now)
                self.story.transition(job, d.state, "interrupted by a crash", self._now)
                self._record(job, d, Outcome("INTERRUPTED"))
                given_up += d.state is not _QUEUED
            c.updates.append(job)
        if e.jobs:
            self._log("warning", "recovered jobs interrupted by a crash", jobs=len(e.jobs), given_up=given_up)

    def _on_restored(self, e: ev.Restored) -> None:
        for job in e.jobs:
            self.away[job.id] = job
            if job.state is _ACTIVE:
                self._away_active += 1
        self.open = True

    # ------------------------------------------------------------------ offloading: origin side
    def _movable(self, job: Job, now: float) -> bool:
        """This node's own job, ready now, not a workflow's local step."""
        if job.origin != self.node or job.not_before > now:
            return False
        props = job.properties
        return not (isinstance(props, dict) and props.get("jobmesh:local") is True)

    def _on_summary(self, e: ev.SummaryRequested) -> None:
        # ``_movable`` written out: this reads the whole window every offloader round (16k jobs)
        now, me = self._now, self.node
        out: list[tuple[str, str, int, float, bool]] = []
        for q in self.queues.values():
            counts: dict[str, list[float]] = {}
            get = counts.get
            for job in q.window.view():
                if job.origin != me or job.not_before > now:
                    continue
                props = job.properties
                if props and isinstance(props, dict) and props.get("jobmesh:local") is True:
                    continue
                c = get(job.topic)
                if c is None:
                    counts[job.topic] = [1, job.created]
                else:
                    c[0] += 1
                    if job.created < c[1]:
                        c[1] = job.created
            out += [(q.name, t, int(c[0]), max(0.0, now - c[1]), q.ordered) for t, c in counts.items()]
        self._reply(e.reply, out)

    def _candidates(self, q: _Queue, topic: str, count: int, keep: frozenset[str]) -> list[Job]:
        """Up to ``count`` movable jobs of ``topic`` in ``q``'s window, newest first (the oldest
        keep their place in line here), none of ``keep``."""
        out: list[Job] = []
        if count <= 0:
            return out
        now = self._now
        for job in q.window.newest():  # no copy of the window per take (16k jobs): nothing changes it here
            if job.topic != topic or not self._movable(job, now) or (keep and job.id in keep):
                continue
            out.append(job)
            if len(out) >= count:
                break
        return out

    def _on_candidates(self, e: ev.CandidatesRequested) -> None:
        q = self.queues.get(e.queue)
        self._reply(e.reply, [] if q is None else [j.id for j in self._candidates(q, e.topic, e.count, e.keep)])

    def _on_take(self, e: ev.TakeForOffload) -> None:
        """Newest first, or the ones named (placed for their payload); recorded before offered."""
        q = self.queues.get(e.queue)
        taken: list[Job] = []
        if q is not None and e.count > 0:
            if e.ids:
                now = self._now
                for job_id in e.ids[:e.count]:
                    job = q.window.get(job_id)
                    if job is not None and job.topic == e.topic and self._movable(job, now):
                        taken.append(job)
            else:
                taken = self._candidates(q, e.topic, e.count, e.keep)
            for job in taken:
                q.window.remove(job.id)
        if not taken:
            self._out.append(ins.OfferJobs(e.peer, [], e.count))
            return
        taken.sort(key=lambda j: j.seq)  # handed over in arrival order (an ordered queue stays ordered)
        for job in taken:
            job.attempt += 1  # every handoff is a new attempt
            job.target = e.peer
            self.story.note(job.id, _QUEUED, f"handed to {e.peer} (attempt {job.attempt})", self._now)
            self.away[job.id] = job
        c = self._c()
        c.handoffs.extend(taken)  # only target and attempt change: the narrow write
        c.done.append(ev.HandoffCommitted(e.peer, taken, e.count))
        c.failed.append(ev.HandoffNotCommitted(e.peer, taken, e.count, ""))

    def _on_handoff_committed(self, e: ev.HandoffCommitted) -> None:
        jobs = [JobSpec.of(j) for j in e.jobs if self.away.get(j.id) is j and j.state is _QUEUED
                and j.target == e.peer]
        self._out.append(ins.OfferJobs(e.peer, jobs, e.pledged))

    def _on_handoff_not_committed(self, e: ev.HandoffNotCommitted) -> None:
        self._log("error", "could not record the handoff; jobs stay here", jobs=len(e.jobs), error=e.error)
        for job in e.jobs:
            if self.away.get(job.id) is job:
                del self.away[job.id]
                job.target = None
                job.attempt -= 1  # as the row has it: that attempt was never offered (the offer waits for the commit)
                self._enter_window(job)
        self._out.append(ins.OfferJobs(e.peer, [], e.pledged))

    def _start_away(self, job: Job, peer: str, at: float, started: list[tuple[ins.JobFacts, float]]) -> None:
        """The job runs at ``peer`` (a start message, progress or its result said so)."""
        now = self._now
        self.story.transition(job, _ACTIVE, f"started at {peer}", now)
        job.started = at if 0 < at <= now + 60 else now
        job.finished = None
        self._away_active += 1
        started.append((ins.JobFacts.of(job), waiting_ms(job, job.started)))

    def _away_match(self, peer: str, job_id: str, attempt: int) -> Job | None:
        job = self.away.get(job_id)
        if job is None or job.target != peer or job.attempt != attempt:
            return None
        return job

    def _on_remote_started(self, e: ev.RemoteStarted) -> None:
        job = self._away_match(e.peer, e.job_id, e.attempt)
        if job is None or job.state is not _QUEUED:
            return
        started: list[tuple[ins.JobFacts, float]] = []
        self._start_away(job, e.peer, e.at, started)
        c = self._c()
        if self.unsynced and job.id in self.unsynced:
            c.updates.append(job)
        else:
            c.starts.append(job)  # ACTIVE, started, attempt, target: the rest of its row is as the handoff left it
        c.then.append(ins.JobsStarted(started))

    def _on_remote_progress(self, e: ev.RemoteProgress) -> None:
        job = self._away_match(e.peer, e.job_id, e.attempt)
        if job is None:
            return
        c = self._c()
        if job.state is _QUEUED:  # progress before the (delayed or lost) start message proves the start
            started: list[tuple[ins.JobFacts, float]] = []
            self._start_away(job, e.peer, self._now, started)
            c.then.append(ins.JobsStarted(started))
        p = job.progress
        if e.steps is not None:
            p.steps = e.steps
        if e.step is not None:
            p.step = e.step
        if e.eta is not None:
            p.eta = e.eta
        for line in e.log:
            append_log(job, line)
        c.updates.append(job)  # best effort, like the message itself

    def _on_remote_results(self, e: ev.RemoteResults) -> None:
        """Results go through the same retry decision as local outcomes; acknowledged after the commit."""
        now = self._now
        refs: list[tuple[str, int]] = []
        started: list[tuple[ins.JobFacts, float]] = []
        transitions: list[tuple[ins.JobFacts, JobState, JobState, float | None, str]] = []
        stale = 0
        c = self._c()
        away, stop_wanted, unsynced, move, facts = self.away, self.stop_wanted, self.unsynced, self.story.move, \
            ins.JobFacts.of
        ok: dict[str, list[str]] = {}  # peer -> ids of the jobs its OK results ended: one story line each
        for r in e.results:
            refs.append((r.job_id, r.attempt))
            job = away.get(r.job_id)
            if job is None or job.state in FINAL_STATES or job.target != r.peer or job.attempt != r.attempt:
                stale += 1
                self._log("info", "result not applied", job_id=r.job_id, attempt=r.attempt, peer=r.peer,
                          reason="unknown job" if job is None else f"job is {job.state.value}")
                continue
            if job.state is _QUEUED:  # no start message (yet, or lost): the result proves the start
                self._start_away(job, r.peer, r.started or now, started)
            del away[job.id]
            self._away_active -= 1
            if r.kind == "OK" and (not stop_wanted or job.id not in stop_wanted):
                # the common case: what decide() and _record() do for an OK outcome, inline (as _finish)
                queue = job.queue
                self._queue_of(job)  # a queue no longer configured (a restart since): the one that matches now
                begun = job.started
                old = move(job, _SUCCEEDED)
                ids = ok.get(r.peer)
                if ids is None:
                    ok[r.peer] = [job.id]
                else:
                    ids.append(job.id)
                job.finished = now
                job.result_message = r.message
                job.result = r.result
                if r.log:
                    job.progress.log = list(r.log)[-MAX_LOG_LINES:]
                if r.output_payload:
                    c.outputs.append((job.id, job.attempt, r.output_payload))  # the job's outputs, before its row
                if job.queue == queue and not (unsynced and job.id in unsynced):
                    # the rest of the row is as the handoff (target, attempt) or the remote start left it;
                    # a start the result overtook (the usual case: a target announces only starts
                    # that last) is the success's own start time
                    c.successes.append(job)
                else:  # its queue changed, or a write of its row failed: the whole record goes
                    c.updates.append(job)
                transitions.append((facts(job), old, _SUCCEEDED, _remote_run_ms(r, begun, now), "OK"))
                continue
            stop_state = stop_wanted.pop(job.id, None)
            if stop_state is not None and r.kind != "OK":
                outcome = Outcome("STOPPED", r.message, stop_state=stop_state)
            else:
                outcome = Outcome(r.kind, r.message, r.retry_delay, result=r.result)
            d = decide(job, outcome, self._queue_of(job).config, now)
            begun = job.started
            old = self.story.transition(job, d.state, f"result from {r.peer}: {r.kind}", now)
            self._record(job, d, outcome)
            if r.log:
                job.progress.log = list(r.log)[-MAX_LOG_LINES:]
            if d.state is _SUCCEEDED and r.output_payload:
                c.outputs.append((job.id, job.attempt, r.output_payload))  # the job's outputs, before its row
            if d.state is _QUEUED:
                job.target = None  # back in this node's windows; the next start is a new attempt
                self._enter_window(job)
            elif d.state is not _SUCCEEDED:
                self._log_outcome(job, d.state, outcome)
            c.updates.append(job)
            transitions.append((ins.JobFacts.of(job, outcome.kind == "FAILED"), old, d.state,
                                _remote_run_ms(r, begun, now), outcome.kind))
        for peer, ids in ok.items():
            self.story.line(tuple(ids), now, _ACTIVE, _SUCCEEDED, f"result from {peer}: OK")
        if started:
            c.then.append(ins.JobsStarted(started))
        if transitions:
            c.then.append(ins.JobsTransitioned(transitions))
        c.then.append(ins.ResultsRecorded(refs, stale))
        c.failed.append(ev.ResultsNotCommitted([j for j, _, _, _, _ in transitions], refs, ""))

    def _on_results_not_committed(self, e: ev.ResultsNotCommitted) -> None:
        """The results' commit failed: what is in memory is not what the store has. The jobs are
        read again (they are ACTIVE or QUEUED there, still handed off); the target resends."""
        for snap in e.jobs:
            live = self.queues[snap.queue].window.remove(snap.id) if snap.queue in self.queues else None
            if live is None:
                self.away.pop(snap.id, None)
                run = self.running.get(snap.id)
                if run is not None and not run.started:
                    # a retry reserved here in the same burst: its start failed with the results, and
                    # the job read back is the only record (else two: one away, one run again here)
                    run.ended = True
                    del self.running[snap.id]
                    q = self.queues.get(run.queue)
                    if q is not None:
                        q.active -= 1
        self._out.append(ins.ResultsNotRecorded(e.refs, e.error))
        self._out.append(ins.LoadJobs([j.id for j in e.jobs], "away"))

    def _on_handoff_returned(self, e: ev.HandoffReturned) -> None:
        transitions: list[tuple[ins.JobFacts, JobState, JobState, float | None, str]] = []
        back: list[Job] = []
        for job_id, attempt in e.refs:
            job = self.away.get(job_id)
            if (job is None or job.state not in (_QUEUED, _ACTIVE) or job.attempt != attempt
                    or (e.peer is not None and job.target != e.peer)):
                continue  # ended here, or handed off again since
            del self.away[job_id]
            self.stop_wanted.pop(job_id, None)
            job.target = None
            if job.state is _ACTIVE:
                self._away_active -= 1
                self.story.transition(job, _QUEUED, f"back home: {e.reason}", self._now)
                job.started = None
                transitions.append((ins.JobFacts.of(job), _ACTIVE, _QUEUED, None, "ABORTED"))
            else:
                self.story.note(job_id, _QUEUED, f"back home: {e.reason}", self._now)
            back.append(job)
            self._enter_window(job)
        if not back:
            return
        self._log("info", "jobs back home", jobs=len(back), peer=e.peer, reason=e.reason)
        c = self._c()
        c.updates.extend(back)
        if transitions:
            c.then.append(ins.JobsTransitioned(transitions))

    # ------------------------------------------------------------------ offloading: target side
    def _on_copies_accepted(self, e: ev.CopiesAccepted) -> None:
        now, origin = self._now, e.origin
        # one row per job id: a later attempt of a job in this same batch supersedes the earlier
        # one (the last spec wins); both in one INSERT failed on UNIQUE jobs.id (main's sim seed 7)
        jobs: dict[str, Job] = {}
        left: list[tuple[ins.JobFacts, JobState]] = []
        inputs: dict[str, dict[str, Any]] = {}
        for i, s in enumerate(e.specs):
            old = self.copies.get(s.id)
            if old is not None:  # a newer attempt supersedes the copy we hold
                state = self._forget_copy(old, "superseded by a newer attempt")
                if state is not None:
                    left.append((ins.JobFacts.of(old), state))
            q = self.queues[self.matcher.match(s.topic).name]
            job = Job(id=s.id, topic=s.topic, properties=dict(s.properties), queue=q.name, origin=origin,
                      created=s.created or now, retry_count=s.retry_count, max_retries=s.max_retries,
                      attempt=s.attempt, seq=e.first_seq + i, timeout=s.timeout, priority=s.priority)
            self.story.note(s.id, _QUEUED, f"copy of {origin}'s job accepted (attempt {s.attempt})", now)
            inputs.pop(s.id, None)
            if s.payload:
                inputs[s.id] = s.payload  # the copy's references to its inputs, before its row
            self.copies[s.id] = job
            self.committing.add(s.id)
            jobs.pop(s.id, None)
            jobs[s.id] = job
        c = self._c()
        if c.copies:  # an earlier event of this burst accepted one of them: its row is superseded too
            c.copies[:] = [(o, j) for o, j in c.copies if j.id not in jobs]
            c.inputs[:] = [(i, p) for i, p in c.inputs if i not in jobs]
        if left:
            c.then.append(ins.CopiesLeft(left))
        accepted = list(jobs.values())
        c.copies.extend((origin, j) for j in accepted)
        c.inputs.extend(inputs.items())
        c.done.append(ev.CopiesCommitted(origin, accepted))
        c.failed.append(ev.CopiesNotCommitted(origin, accepted, ""))

    def _on_copies_committed(self, e: ev.CopiesCommitted) -> None:
        arrived: list[ins.JobFacts] = []
        for job in e.jobs:
            if self.copies.get(job.id) is not job:
                continue  # forgotten or superseded meanwhile
            self.committing.discard(job.id)
            arrived.append(ins.JobFacts.of(job))
            run = self.running.get(job.id)
            if run is not None:  # its superseded copy still runs: one run per job id at a time
                self.after_run[job.id] = job
            else:
                self._enter_window(job)
        if arrived:
            self._out.append(ins.CopiesArrived(arrived))
        self._out.append(ins.CopiesRecorded(e.origin, [(j.id, j.attempt) for j in e.jobs]))

    def _on_copies_not_committed(self, e: ev.CopiesNotCommitted) -> None:
        for job in e.jobs:
            if self.copies.get(job.id) is job:
                del self.copies[job.id]
                self.committing.discard(job.id)
        self._log("error", "could not commit accepted copies; refused", origin=e.origin, jobs=len(e.jobs),
                  error=e.error)
        self._out.append(ins.CopiesNotRecorded(e.origin, [(j.id, j.attempt) for j in e.jobs], e.error))

    def _on_copies_released(self, e: ev.CopiesReleased) -> None:
        attempts = dict(e.refs)
        for job in e.jobs:
            if job.state is not _QUEUED or job.origin != e.origin or job.id not in attempts:
                continue
            job.attempt = attempts[job.id]
            self.story.note(job.id, _QUEUED, "restored copy confirmed by its origin", self._now)
            if job.id not in self.copies and job.id not in self.running:
                self.copies[job.id] = job
                self._enter_window(job)

    def _forget_copy(self, job: Job, reason: str) -> JobState | None:
        """The copy goes; a run of it stops and its outcome is dropped. Returns the state it left
        from when it was counted as queued here (for the statistics), else None."""
        del self.copies[job.id]
        if job.id in self.committing:  # not durable yet: never counted, nothing else to undo
            self.committing.discard(job.id)
            return None
        self.story.note(job.id, job.state, f"copy forgotten: {reason}", self._now)
        run = self.running.get(job.id)
        if run is not None and run.job is job:
            run.superseded = True
            if run.stop_state is None:
                run.stop_state = _STOPPED
                if run.started:
                    self._out.append(ins.StopRun(run))
            return None  # counted when its run ends (``_finish``: a superseded run)
        self.after_run.pop(job.id, None)
        q = self.queues.get(job.queue)
        if q is not None:
            q.window.remove(job.id)
        return _QUEUED

    def _on_copy_stop(self, e: ev.CopyStopRequested) -> None:
        job = self.copies.get(e.job_id)
        if job is None or job.attempt != e.attempt:
            return
        self._stop(e.job_id, _STOPPED, None, None)

    def _on_copies_forgotten(self, e: ev.CopiesForgotten) -> None:
        left: list[tuple[ins.JobFacts, JobState]] = []
        for job_id, attempt in e.refs:
            job = self.copies.get(job_id)
            if job is not None and job.attempt == attempt:
                state = self._forget_copy(job, e.reason)
                if state is not None:
                    left.append((ins.JobFacts.of(job), state))
        for job_id, topic in e.held:
            left.append((ins.JobFacts(job_id, topic, self.matcher.match(topic).name, "?", 0, None), _QUEUED))
        c = self._c()
        c.forget.extend(e.refs)
        if left:
            c.then.append(ins.CopiesLeft(left))

    def _on_verify(self, e: ev.VerifyCopies) -> None:
        self.verify.update(e.job_ids)


# Events that may share one ``handle_burst``: none reads the store first (``CopiesAccepted`` only
# reserves seqs) or answers with the core's state (info, summaries), so a pump between them would
# change nothing they see; any other event is handled on its own, after a pump.
BURST: frozenset[type] = frozenset({
    ev.JobsAdded, ev.InsertsCommitted, ev.StartsCommitted, ev.RunsFinished, ev.RemoteStarted,
    ev.RemoteProgress, ev.RemoteResults, ev.CopiesAccepted, ev.CopiesCommitted, ev.CopiesForgotten,
    ev.HandoffCommitted,
})

_HANDLERS: dict[type, Callable[[EngineCore, Any], None]] = {
    ev.JobsAdded: EngineCore._on_jobs_added,
    ev.InsertsCommitted: EngineCore._on_inserts_committed,
    ev.InsertsNotCommitted: EngineCore._on_inserts_not_committed,
    ev.ReadyRead: EngineCore._on_ready_read,
    ev.DueRead: EngineCore._on_due_read,
    ev.StartsCommitted: EngineCore._on_starts_committed,
    ev.StartsFailed: EngineCore._on_starts_failed,
    ev.WritesFailed: EngineCore._on_writes_failed,
    ev.RunsFinished: EngineCore._on_runs_finished,
    ev.ProgressReported: EngineCore._on_progress,
    ev.StopRequested: EngineCore._on_stop,
    ev.RemoveRequested: EngineCore._on_remove,
    ev.RetryRequested: EngineCore._on_retry,
    ev.SuspendRequested: EngineCore._on_suspend,
    ev.InfoRequested: EngineCore._on_info,
    ev.ConsumersChanged: EngineCore._on_consumers_changed,
    ev.DrainStarted: EngineCore._on_drain,
    ev.AbortRuns: EngineCore._on_abort,
    ev.Tick: EngineCore._on_tick,
    ev.WatchdogDue: EngineCore._on_watchdog,
    ev.ReadyScanned: EngineCore._on_scanned,
    ev.JobsLoaded: EngineCore._on_loaded,
    ev.Recovered: EngineCore._on_recovered,
    ev.Restored: EngineCore._on_restored,
    ev.SummaryRequested: EngineCore._on_summary,
    ev.TakeForOffload: EngineCore._on_take,
    ev.CandidatesRequested: EngineCore._on_candidates,
    ev.HandoffCommitted: EngineCore._on_handoff_committed,
    ev.HandoffNotCommitted: EngineCore._on_handoff_not_committed,
    ev.RemoteStarted: EngineCore._on_remote_started,
    ev.RemoteProgress: EngineCore._on_remote_progress,
    ev.RemoteResults: EngineCore._on_remote_results,
    ev.ResultsNotCommitted: EngineCore._on_results_not_committed,
    ev.HandoffReturned: EngineCore._on_handoff_returned,
    ev.CopiesAccepted: EngineCore._on_copies_accepted,
    ev.CopiesCommitted: EngineCore._on_copies_committed,
    ev.CopiesNotCommitted: EngineCore._on_copies_not_committed,
    ev.CopiesReleased: EngineCore._on_copies_released,
    ev.CopyStopRequested: EngineCore._on_copy_stop,
    ev.CopiesForgotten: EngineCore._on_copies_forgotten,
    ev.VerifyCopies: EngineCore._on_verify,
}
