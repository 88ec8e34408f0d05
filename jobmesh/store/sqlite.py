"""The node's embedded durable job store: SQLite, one writer with group commit.

Why this shape: a commit is the expensive part of a write (a WAL append, and an
fsync with ``durability="full"``), so every write call only enqueues an operation
and gets a future; one writer takes everything queued since the last commit (on the
next loop turn after the first write; inline on the loop's thread at normal durability,
in the writer thread otherwise) and writes it as ONE transaction (``executemany``), then
resolves all the futures. While a commit runs in the
thread, the next batch accumulates: under load, hundreds of jobs share one commit. Several updates of the same job in one batch collapse to
the last one (a job's final state overwrites its ACTIVE row when both wait).

Reads use a second connection on the event loop's thread; in WAL mode they see
the last committed state and never block the writer.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import threading
from itertools import chain
from .. import clock as _clock
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog

from ..actor import Actor
from ..errors import ActorStopped
from ..job import FINAL_STATES, Job, JobState
from .reads import StoreReads
from .rows import (  # noqa: F401  (re-exported: the names other modules import from here)
    _DELETE, _DELETE_SEQ, _HANDOFF, _INSERT, _INSERT_PLAIN, _INSERT_PLAIN_MANY, _NOT_HELD, _START, _START_RANGE,
    _START_SEQS, _STATES, _SUCCEED, _SUCCEED_RANGE, _SUCCEED_SEQS, _UPDATE, JOB_COLUMNS, PLAIN_ROWS,
    add_insert_row, grouped_by, insert_row, progress_json, result_json, row_to_job, seq_range, update_row,
)
from .schema import migrate

log = structlog.get_logger("jobmesh.store")


def _start_row(job: Job) -> tuple[Any, ...]:
    """A start's values (``_write_starts``)."""
    return (job.started, job.attempt, job.target, job.seq)


def _handoff_row(job: Job) -> tuple[Any, ...]:
    """``_HANDOFF``'s parameters."""
    return (job.target, job.attempt, job.seq)


def _success_row(job: Job) -> tuple[Any, ...]:
    """``_SUCCEED``'s parameters."""
    return (job.started, job.finished, progress_json(job.progress), job.result_message, result_json(job.result),
            job.seq)


def _insert_plain(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """``_INSERT_PLAIN`` rows, PLAIN_ROWS to a statement while there are that many, the rest one by one."""
    whole = len(rows) - len(rows) % PLAIN_ROWS
    for i in range(0, whole, PLAIN_ROWS):
        conn.execute(_INSERT_PLAIN_MANY, list(chain.from_iterable(rows[i:i + PLAIN_ROWS])))
    if whole < len(rows):
        conn.executemany(_INSERT_PLAIN, rows[whole:] if whole else rows)


def _write_group(conn: sqlite3.Connection, values: tuple[Any, ...], seqs: list[int], grouped: bool,
                 statements: tuple[str, str, str], between: tuple[Any, ...]) -> None:
    """Rows ``seqs`` that take the same ``values``: one statement over their range when it has no gap
    (``statements[0]``), else one over a JSON list of them (``[1]``, where SQLite has JSON functions),
    else one each (``[2]``, whose parameters are ``values``, ``between`` and the seq)."""
    span = seq_range(seqs)
    if span is not None:
        conn.execute(statements[0], (*values, *span))
    elif grouped:
        conn.execute(statements[1], (*values, json.dumps(seqs)))
    else:
        conn.executemany(statements[2], [(*values, *between, seq) for seq in seqs])


def _write_starts(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]], grouped: bool = True) -> None:
    """Starts (``_start_row``), one ``_write_group`` for each (started, attempt, target) they share
    (``grouped``: SQLite has JSON functions)."""
    rows = list(rows)
    first = rows[0][:3] if rows else None
    if all(row[:3] == first for row in rows):  # one reservation's starts: one time, target, attempt
        groups = {first: [row[3] for row in rows]} if rows else {}
    else:
        groups = grouped_by(((started, attempt, target), seq) for started, attempt, target, seq in rows)
    for key, seqs in groups.items():
        _write_group(conn, key, seqs, grouped, (_START_RANGE, _START_SEQS, _START), ())


def _write_successes(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]], grouped: bool = True) -> None:
    """``_SUCCEED`` rows: those with nothing but their start and end times, one statement for each
    pair of times (as for starts: a range, a JSON list, or one by one); the others one by one."""
    ends: list[tuple[tuple[Any, Any], int]] = []  # ((started, finished), seq) of those with nothing more
    other: list[tuple[Any, ...]] = []
    for row in rows:
        started, finished, progress, message, output, seq = row
        if progress is None and message is None and output is None:
            ends.append(((started, finished), seq))
        else:
            other.append(row)
    for times, seqs in grouped_by(ends).items():
        _write_group(conn, times, seqs, grouped, (_SUCCEED_RANGE, _SUCCEED_SEQS, _SUCCEED), (None, None, None))
    if other:
        conn.executemany(_SUCCEED, other)


# A commit of more rows than this runs in the writer thread even at normal durability: a few ms of
# SQLite work (an add_many of 1,000 jobs: ~10 ms) during which the loop goes on parsing and
# answering requests, since SQLite releases the GIL while it steps. Smaller commits stay inline.
INLINE_MAX_ROWS = 256
# ... unless runs wait for it: the batch holds starts (the job cycle's writes: no consumer of them
# runs before the commit), or other writes had to wait for the last commit that ran in the thread
# less than HELD_UP_FOR s ago.
# Then the loop needs the store itself (no run starts before the commit), and the thread's SQLite,
# which takes the GIL back for every row, fights the busy loop for it: a 1,000-row insert took
# ~18 ms there against ~7.5 ms inline (benchmarks/throughput.py at the node defaults).
HELD_UP_FOR = 1.0
# The history clean-up deletes by ranges of this many seqs, one transaction each (a scan of the
# key range: ~1 ms on the loop's thread at most, between the job cycle's commits).
PURGE_CHUNK = 5000


@dataclass
class _Batch:
    inserts: list[tuple[Any, ...]]  # full rows (_INSERT)
    plain_inserts: list[tuple[Any, ...]]  # rows with defaults in the other columns (_INSERT_PLAIN)
    updates: dict[int, tuple[Any, ...]]  # by seq: the last snapshot of a job wins
    starts: dict[int, tuple[Any, ...]]  # by seq: QUEUED -> ACTIVE, written before ``updates``
    handoffs: dict[int, tuple[Any, ...]]  # by seq: a QUEUED job's target and attempt, before ``updates``
    successes: dict[int, tuple[Any, ...]]  # by seq: a run's OK end (its final columns), before ``updates``
    deletes: list[str]
    delete_seqs: list[int]
    calls: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]]
    futures: list[asyncio.Future[Any]]


class Store(StoreReads, Actor):
    """SQLite job store. Writes: group-committed by one writer; reads: a second connection.

    Every write method returns an awaitable resolved after the transaction holding
    the write committed.
    """

    def __init__(self, path: str | os.PathLike[str], durability: str = "normal", clock: Callable[[], float] = _clock.wall) -> None:
        super().__init__("store")
        self.path = Path(path)
        self.durability = durability
        self.clock = clock
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending = self._new_batch()
        self._pending_count = 0
        self._commit_scheduled = False  # a commit of the pending batch is due next loop turn
        self._held_up_at = -math.inf  # loop time when writes last waited for a commit in the thread
        self._next_seq = 1
        self._purge_from = 0  # the history clean-up's sweep: rows above this seq are next (purge)
        self._purge_lock = asyncio.Lock()  # one sweep at a time: they share the cursor
        self._opened = False
        self._inflight: asyncio.Future[list[Any]] | None = None
        self.commits = 0  # transactions committed (for tests and metrics)
        # With synchronous=NORMAL a commit does no fsync and takes well under a millisecond:
        # running it on the loop's thread beats a thread hop (no GIL hand-offs per row).
        # With durability="full" each commit fsyncs, so it runs in the writer thread.
        self.inline_commits = durability != "full"
        self._grouped = True  # SQLite has json_each: starts and plain successes go one statement per group
        # The node's name, set by the node when it offloads: QUEUED jobs handed to another
        # node (``target`` set to it) stay out of the queue windows, and a crash recovery
        # leaves them and other nodes' copies to the transfer actor.
        self.local_name: str | None = None
        self.checkpoint_interval = 0.5
        self._last_ckpt_commits = 0
        self._ckpt_executor: ThreadPoolExecutor | None = None
        self._read_executor: ThreadPoolExecutor | None = None
        self._thread_local = threading.local()
        self._thread_conns: list[sqlite3.Connection] = []

    @staticmethod
    def _new_batch() -> _Batch:
        return _Batch([], [], {}, {}, {}, {}, [], [], [], [])

    # -- lifecycle -------------------------------------------------------
    async def on_start(self) -> None:
        """Open (or reopen after a crash) the file; SQLite's WAL recovery makes it consistent."""
        if self._opened:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobmesh-store")
        self._ckpt_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobmesh-checkpoint")
        self._read_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="jobmesh-read")
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._executor, self._open_writer)
        self._rconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._rconn.execute("PRAGMA query_only=ON")
        self._rconn.execute("PRAGMA busy_timeout=5000")
        row = self._rconn.execute("SELECT max(seq) FROM jobs").fetchone()
        self._next_seq = (row[0] or 0) + 1
        self._opened = True
        self.spawn(self._checkpointer(), name="store:checkpointer")

    @property
    def grouped(self) -> bool:
        """SQLite has JSON functions (``json_each``): rows that share their values are written by
        one statement over a JSON list of their keys (the engine's starts and successes, the
        transfer tables' deletes)."""
        return self._grouped

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=" + ("FULL" if self.durability == "full" else "NORMAL"))
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-16000")  # 16 MB page cache: bounded memory
        # No checkpoint inside a commit (it would stall the loop for milliseconds, the p99):
        # the checkpointer copies the WAL back from its own thread (see _checkpointer).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        migrate(conn)
        try:  # built in since SQLite 3.38; a build without JSON1 writes grouped rows one by one
            conn.execute("SELECT value FROM json_each('[1]')").fetchall()
        except sqlite3.OperationalError:
            self._grouped = False
        return conn

    async def on_stop(self) -> None:
        """Commit what is pending, then close; a crashed writer restarts through on_start."""
        if not self._opened:
            return
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        if self._pending_count:
            batch, self._pending = self._pending, self._new_batch()
            self._pending_count = 0
            # Shielded: stopping the store must not orphan a commit already running.
            await asyncio.shield(asyncio.ensure_future(self._commit_and_resolve(batch)))
        self._opened = False
        loop = asyncio.get_running_loop()
        wconn, self._wconn = self._wconn, None
        if wconn is not None:
            await loop.run_in_executor(self._executor, self._close_writer, wconn)
        if self._rconn is not None:
            self._rconn.close()
            self._rconn = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._ckpt_executor is not None:
            self._ckpt_executor.shutdown(wait=True)
            self._ckpt_executor = None
        if self._read_executor is not None:
            self._read_executor.shutdown(wait=True)
            self._read_executor = None
        for conn in self._thread_conns:
            conn.close()
        self._thread_conns.clear()

    @staticmethod
    def _close_writer(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    async def receive(self, msg: Any) -> Any:  # the store is driven by its write methods
        raise NotImplementedError(f"store: unknown message {msg!r}")

    # -- writes (group-committed) -----------------------------------------
    def _enqueue(self) -> asyncio.Future[Any]:
        """The pending batch's future: every write in one transaction shares it (cheap under load)."""
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        futs = self._pending.futures
        if not futs:
            futs.append(asyncio.get_running_loop().create_future())
            self._schedule_commit()
        self._pending_count += 1
        return futs[0]


    def insert(self, jobs: Iterable[Job], properties_json: list[str] | None = None) -> asyncio.Future[Any]:
        """Add new jobs; assigns each ``job.seq`` now (arrival order), durable when the future resolves."""
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        full, plain = self._pending.inserts, self._pending.plain_inserts
        seq = self._next_seq
        for i, job in enumerate(jobs):
            job.seq = seq
            seq += 1
            add_insert_row(job, properties_json[i] if properties_json is not None else None, full, plain)
        self._next_seq = seq
        return self._enqueue()

    def update(self, job: Job) -> asyncio.Future[Any]:
        """Persist the job's current state, progress and counters (a snapshot taken now).

        The returned future is shared by every write of the same transaction: callers
        may await it, or add one done-callback per transaction (see ``EngineActor._do_commit``).
        """
        return self.update_many((job,))

    def update_many(self, jobs: Iterable[Job]) -> asyncio.Future[Any]:
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        pending = self._pending
        updates, starts, handoffs, successes = pending.updates, pending.starts, pending.handoffs, pending.successes
        for job in jobs:
            updates[job.seq] = update_row(job)  # the full snapshot is newer than any narrow write waiting
            if starts:
                starts.pop(job.seq, None)
            if handoffs:
                handoffs.pop(job.seq, None)
            if successes:
                successes.pop(job.seq, None)
        return self._enqueue()

    def update_started(self, job: Job) -> asyncio.Future[Any]:
        """Record the start of a run (ACTIVE, started, attempt, target): the hot path's write."""
        return self.start_many((job,))

    def start_many(self, jobs: Iterable[Job]) -> asyncio.Future[Any]:
        """``update_started`` for each of ``jobs`` (the engine's starts of one transaction)."""
        pending = self._pending
        return self._narrow(jobs, pending.starts, (pending.handoffs, pending.successes), _start_row)

    def handoff_many(self, jobs: Iterable[Job]) -> asyncio.Future[Any]:
        """Record that these QUEUED jobs are handed to a peer (their target and attempt only)."""
        pending = self._pending
        return self._narrow(jobs, pending.handoffs, (pending.starts, pending.successes), _handoff_row)

    def succeed_many(self, jobs: Iterable[Job]) -> asyncio.Future[Any]:
        """Record runs that ended OK: their state, start and end times, progress, message and result
        only. The caller vouches that the rest of each row is as the run's start wrote it (or, for a
        job run at a peer, its handoff: the target and attempt)."""
        pending = self._pending
        return self._narrow(jobs, pending.successes, (pending.starts, pending.handoffs), _success_row)

    def _narrow(self, jobs: Iterable[Job], narrow: dict[int, tuple[Any, ...]],
                others: tuple[dict[int, tuple[Any, ...]], dict[int, tuple[Any, ...]]],
                row: Callable[[Job], tuple[Any, ...]]) -> asyncio.Future[Any]:
        """Narrow writes (``row(job)`` into ``narrow``: the batch's starts, handoffs or successes),
        unless another write of the same row waits in the batch (a full one, or one of the ``others``
        narrow kinds): then one full write keeps their order. A row is in one of them at most, so
        the commit may write the kinds in any order."""
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        updates = self._pending.updates
        first, second = others
        if not (updates or first or second):  # the common case: nothing else of these rows waits
            for job in jobs:
                narrow[job.seq] = row(job)
            return self._enqueue()
        for job in jobs:
            seq = job.seq
            if seq in updates or seq in first or seq in second:
                updates[seq] = update_row(job)
                first.pop(seq, None)
                second.pop(seq, None)
            else:
                narrow[seq] = row(job)
        return self._enqueue()

    def delete(self, job_ids: Iterable[str]) -> asyncio.Future[Any]:
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        self._pending.deletes.extend(job_ids)
        return self._enqueue()

    def delete_rows(self, seqs: Iterable[int]) -> asyncio.Future[Any]:
        """Delete rows by their seq (a row of an id that a newer row may have replaced)."""
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        pending = self._pending
        for seq in seqs:
            pending.delete_seqs.append(seq)
            pending.updates.pop(seq, None)
            pending.starts.pop(seq, None)
            pending.handoffs.pop(seq, None)
            pending.successes.pop(seq, None)
        return self._enqueue()

    def pending_future(self) -> asyncio.Future[Any]:
        """The future of the transaction being gathered (the one the last write joined)."""
        if not self._opened:
            raise ActorStopped("the job store is closed (node stopped)")
        futs = self._pending.futures
        if not futs:
            return self._enqueue()
        return futs[0]

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
        """Run ``fn(conn)`` on the writer connection inside the next transaction; its result resolves the future."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue()
        self._pending.calls.append((fn, fut))
        return fut

    async def flush(self) -> None:
        """Wait until everything requested so far is committed."""
        if self._pending_count:
            await self._pending.futures[0]
        elif self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)

    async def _checkpointer(self) -> None:
        """Copy the WAL back into the database from a thread (SQLite releases the GIL there)."""
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(self._ckpt_executor, self._open_checkpointer)
        try:
            while True:
                await asyncio.sleep(self.checkpoint_interval)
                if self.commits == self._last_ckpt_commits:
                    continue
                self._last_ckpt_commits = self.commits
                try:
                    await loop.run_in_executor(self._ckpt_executor, conn.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy or I/O: the next round tries again
                    log.warning("WAL checkpoint failed", error=repr(exc))
        finally:
            await asyncio.shield(loop.run_in_executor(self._ckpt_executor, conn.close))

    def _open_checkpointer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=1000")
        return conn

    # -- the writer: one transaction at a time, the next one gathering meanwhile --------------
    def _schedule_commit(self) -> None:
        """The pending batch commits on the next loop turn: the callbacks and tasks ready now add
        their writes to it first. While a commit runs in the writer thread, the next waits for it."""
        if not self._commit_scheduled and self._inflight is None:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_pending)

    def _inline(self, batch: _Batch) -> bool:
        if not self.inline_commits:
            return False
        rows = len(batch.inserts) + len(batch.plain_inserts) + len(batch.updates) + len(batch.starts)
        if rows + len(batch.handoffs) + len(batch.successes) <= INLINE_MAX_ROWS:
            return True
        if batch.starts:
            return True
        return asyncio.get_running_loop().time() - self._held_up_at < HELD_UP_FOR

    def _commit_pending(self) -> None:
        self._commit_scheduled = False
        if not self._opened or self._inflight is not None or not self._pending_count:
            return
        batch, self._pending = self._pending, self._new_batch()
        self._pending_count = 0
        if self._inline(batch):
            try:
                results = self._commit(batch)
            except Exception as exc:
                self._resolve(batch, None, exc)
            else:
                self._resolve(batch, results, None)
            return
        assert self._executor is not None
        fut = self._inflight = asyncio.get_running_loop().run_in_executor(self._executor, self._commit, batch)
        fut.add_done_callback(partial(self._thread_done, batch))

    def _thread_done(self, batch: _Batch, fut: asyncio.Future[Any]) -> None:
        self._inflight = None
        if self._pending_count:
            self._held_up_at = asyncio.get_running_loop().time()
        if fut.cancelled():
            self._resolve(batch, None, ActorStopped("the store's commit was cancelled"))
        elif fut.exception() is not None:
            self._resolve(batch, None, fut.exception())  # type: ignore[arg-type]
        else:
            self._resolve(batch, fut.result(), None)
        if self._pending_count:
            self._schedule_commit()

    async def _commit_and_resolve(self, batch: _Batch) -> None:
        """A batch committed now (at stop), inline or in the writer thread."""
        loop = asyncio.get_running_loop()
        try:
            if self._inline(batch):
                results = self._commit(batch)
            else:
                results = await loop.run_in_executor(self._executor, self._commit, batch)
        except Exception as exc:
            self._resolve(batch, None, exc)
            return
        self._resolve(batch, results, None)

    def _resolve(self, batch: _Batch, results: list[Any] | None, exc: BaseException | None) -> None:
        """Every waiter of a transaction learns how it ended."""
        if exc is not None or results is None:  # disk full, I/O error: every waiter learns it, the store lives on
            log.error("store commit failed", error=repr(exc), writes=len(batch.futures))
            for fut in batch.futures:
                if not fut.done():
                    fut.set_exception(exc)  # type: ignore[arg-type]
            for _, fut in batch.calls:
                if not fut.done():
                    fut.set_exception(exc)  # type: ignore[arg-type]
        else:
            self.commits += 1
            for fut in batch.futures:
                if not fut.done():
                    fut.set_result(None)
            for (_, fut), res in zip(batch.calls, results):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _commit(self, batch: _Batch) -> list[Any]:
        conn = self._wconn
        assert conn is not None, "store is closed"
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            if batch.inserts:
                conn.executemany(_INSERT, batch.inserts)
            if batch.plain_inserts:
                _insert_plain(conn, batch.plain_inserts)
            if batch.starts:
                _write_starts(conn, batch.starts.values(), self._grouped)
            if batch.handoffs:
                conn.executemany(_HANDOFF, batch.handoffs.values())
            if batch.successes:
                _write_successes(conn, batch.successes.values(), self._grouped)
            if batch.updates:
                conn.executemany(_UPDATE, batch.updates.values())
            if batch.deletes:
                conn.executemany(_DELETE, ((i,) for i in batch.deletes))
            if batch.delete_seqs:
                conn.executemany(_DELETE_SEQ, ((i,) for i in batch.delete_seqs))
            for fn, _ in batch.calls:
                conn.execute("SAVEPOINT call")
                try:
                    results.append(fn(conn))
                    conn.execute("RELEASE call")
                except Exception as e:  # one bad call must not lose the batch's other writes
                    conn.execute("ROLLBACK TO call")
                    conn.execute("RELEASE call")
                    results.append(e)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return results

    def reserve_seqs(self, n: int) -> int:
        """The first of ``n`` fresh sequence numbers, for rows written through ``call``."""
        first = self._next_seq
        self._next_seq += max(0, n)
        return first

    # -- maintenance (run inside a write transaction) ---------------------
    async def purge(self, succeeded_before: float, others_before: float, keep_queues: list[str], limit: int = 5000) -> int:
        """Delete finished jobs past their history TTL; returns how many. Bounded work: the rows are
        swept in seq order, PURGE_CHUNK seqs per transaction (a range of the key: no index of end
        times to keep up on every run), from where the last call stopped, until the sweep reaches the
        newest row (the next call starts again from the oldest) or ``limit`` rows went (the next call
        goes on from there). Fewer than ``limit`` back means the whole table was swept once. Calls at
        the same time take turns (one cursor)."""
        keep = tuple(keep_queues)
        marks = ",".join("?" * len(keep)) or "''"
        others = ",".join(f"'{s.value}'" for s in sorted(FINAL_STATES - {JobState.SUCCEEDED}))
        sql = (f"DELETE FROM jobs WHERE seq > ? AND seq <= ? AND queue NOT IN ({marks}) AND ("
               f"(state='SUCCEEDED' AND finished < ?) OR (state IN ({others}) AND finished < ?))")
        total = 0
        async with self._purge_lock:  # the manager's loop and a purge_history() call may overlap
            while total < limit:
                lo = self._purge_from
                newest = self._next_seq - 1
                if lo >= newest:
                    self._purge_from = 0
                    break
                hi = min(lo + PURGE_CHUNK, newest)
                args = (lo, hi, *keep, succeeded_before, others_before)
                total += await self.call(lambda conn, a=args: conn.execute(sql, a).rowcount)
                self._purge_from = hi
        return total

    @staticmethod
    def rehome_rows(conn: sqlite3.Connection, moves: list[tuple[str, str, str]]) -> None:
        """Move QUEUED rows of (old queue, topic) to a new queue (the configuration changed);
        run inside a transaction (the engine's ``Commit.rehome``)."""
        conn.executemany(
            "UPDATE jobs SET queue=? WHERE state='QUEUED' AND queue=? AND topic=?",
            [(new, old, topic) for old, topic, new in moves],
        )
