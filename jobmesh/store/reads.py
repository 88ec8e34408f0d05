"""The store's reads: the second connection's view of the committed state (``StoreReads``).

Reads never block the writer (WAL): the window refills, the watchdog's scans, ``get``/``find``
for the API, and the recovery reads at start. A mixin of ``Store``, apart from the group
commit (``sqlite.py``) because the two share nothing but the file and ``local_name``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from ..job import Job
from .rows import _NOT_HELD, JOB_COLUMNS, row_to_job


class StoreReads:
    """Reads of ``Store`` (its reader connection, and reader threads for scans that may be long)."""

    path: Path
    local_name: str | None
    _rconn: sqlite3.Connection | None
    _read_executor: ThreadPoolExecutor | None
    _thread_local: threading.local
    _thread_conns: list[sqlite3.Connection]

    @property
    def reader(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise RuntimeError("store is not open")
        return self._rconn

    def get(self, job_id: str) -> Job | None:
        # a copy whose result waits for its origin (``jobs.outbox``) is not a job kept here
        row = self.reader.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=? AND outbox IS NULL",
                                  (job_id,)).fetchone()
        return row_to_job(row) if row else None

    def find(self, state: str | None = None, topic: str | None = None, queue: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first. Filters are exact matches."""
        sql, args = self._find_sql(state, topic, queue, limit)
        return [row_to_job(r) for r in self.reader.execute(sql, args)]

    async def find_async(self, state: str | None = None, topic: str | None = None, queue: str | None = None,
                         limit: int = 100) -> list[Job]:
        """``find`` on a reader thread: a filter without an index may scan a big table (a
        million rows take ~0.5 s), and that must not stall the node's event loop."""
        sql, args = self._find_sql(state, topic, queue, limit)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._read_executor, self._thread_read, sql, args)
        return [row_to_job(r) for r in rows]

    def _thread_read(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        conn = getattr(self._thread_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._thread_local.conn = conn
            self._thread_conns.append(conn)
        return conn.execute(sql, args).fetchall()

    def _find_sql(self, state: str | None, topic: str | None, queue: str | None, limit: int) -> tuple[str, list[Any]]:
        where: list[str] = ["outbox IS NULL"]  # not the results of copies waiting for their origin
        args: list[Any] = []
        if state is not None:
            where.append("state=?")
            args.append(state)
        if topic is not None:
            where.append("topic=?")
            args.append(topic)
        if queue is not None:
            where.append("queue=?")
            args.append(queue)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE " + " AND ".join(where) + " ORDER BY seq DESC LIMIT ?"
        args.append(int(limit))
        return sql, args

    def ready(self, queue: str, after_seq: int, limit: int, due_by: float = math.inf) -> list[Job]:
        """The next QUEUED jobs of ``queue`` in arrival order (the window refill; uses jobs_ready),
        leaving out those not due by ``due_by`` (delayed further: ``due`` reads them later)."""
        if self.local_name is not None:
            rows = self.reader.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE queue=? AND state='QUEUED' AND seq>? AND not_before<=? "
                f"AND (target IS NULL OR target=?) AND {_NOT_HELD} ORDER BY seq LIMIT ?",
                (queue, after_seq, due_by, self.local_name, self.local_name, limit),
            ).fetchall()
        else:
            rows = self.reader.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE queue=? AND state='QUEUED' AND seq>? AND not_before<=? "
                "ORDER BY seq LIMIT ?",
                (queue, after_seq, due_by, limit),
            ).fetchall()
        return [row_to_job(r) for r in rows]

    def due(self, queue: str, after: tuple[float, int], until: float, limit: int) -> list[Job]:
        """QUEUED jobs of ``queue`` that come due after ``after`` (a (not_before, seq) cursor) and by
        ``until``, in due order (jobs_due): the delayed jobs the refill left on disk."""
        nb, seq = after
        held = f"AND (target IS NULL OR target=?) AND {_NOT_HELD} " if self.local_name is not None else ""
        args: tuple[Any, ...] = (queue, nb, nb, seq, until)
        if self.local_name is not None:
            args += (self.local_name, self.local_name)
        rows = self.reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE queue=? AND state='QUEUED' AND not_before>0 "
            f"AND (not_before>? OR (not_before=? AND seq>?)) AND not_before<=? {held}"
            "ORDER BY not_before, seq LIMIT ?", (*args, limit)).fetchall()
        return [row_to_job(r) for r in rows]

    def ready_refs(self, queue: str, limit: int, due_by: float) -> list[tuple[int, str, float]]:
        """(seq, id, not_before) of the first QUEUED jobs of ``queue`` that may run here and are due
        by ``due_by``: the engine's watchdog compares them with its windows and due cursors."""
        if self.local_name is not None:
            return self.reader.execute(
                f"SELECT seq, id, not_before FROM jobs WHERE queue=? AND state='QUEUED' AND not_before<=? "
                f"AND (target IS NULL OR target=?) AND {_NOT_HELD} ORDER BY seq LIMIT ?",
                (queue, due_by, self.local_name, self.local_name, limit),
            ).fetchall()
        return self.reader.execute(
            "SELECT seq, id, not_before FROM jobs WHERE queue=? AND state='QUEUED' AND not_before<=? "
            "ORDER BY seq LIMIT ?", (queue, due_by, limit),
        ).fetchall()

    def open_with_keys(self, keys: Iterable[str], origin: str) -> dict[str, Job]:
        """The open (QUEUED or ACTIVE) jobs of ``origin`` that carry one of ``keys``, by key (jobs_key)."""
        out: dict[str, Job] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            rows = self.reader.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE key IN ({','.join('?' * len(chunk))}) AND origin=? "
                f"AND state IN ('QUEUED','ACTIVE') ORDER BY seq", (*chunk, origin)).fetchall()
            for r in rows:
                job = row_to_job(r)
                out.setdefault(job.key, job)  # type: ignore[arg-type]
        return out

    def open_counts(self) -> list[tuple[str, str, str, int]]:
        """(queue, topic, state, count) of QUEUED and ACTIVE jobs: the statistics gauges at start."""
        return self.reader.execute(
            "SELECT queue, topic, state, count(*) FROM jobs WHERE state IN ('QUEUED','ACTIVE') AND outbox IS NULL "
            "GROUP BY queue, topic, state"
        ).fetchall()

    def queued_queues(self) -> list[tuple[str, str]]:
        """Distinct (queue, topic) of QUEUED jobs: to re-home jobs of queues no longer configured."""
        return self.reader.execute(
            "SELECT DISTINCT queue, topic FROM jobs WHERE state='QUEUED'"
        ).fetchall()

    def count(self) -> int:
        return self.reader.execute("SELECT count(*) FROM jobs").fetchone()[0]

    # -- recovery reads at start ---------------------------------------------
    def active_rows(self) -> list[Job]:
        """Rows ACTIVE now: at start, the runs a crash interrupted (this node's own, and other
        nodes' copies, but not a copy whose result waits for its origin in its row; with
        ``local_name`` set, not this node's jobs running at another node).
        The engine decides what becomes of them (``engine.events.Recovered``)."""
        if self.local_name is not None:
            sql = (f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='ACTIVE' AND outbox IS NULL AND (origin!=? "
                   "OR target IS NULL OR target=?) ORDER BY seq")
            rows = self.reader.execute(sql, (self.local_name, self.local_name)).fetchall()
        else:
            rows = self.reader.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE state='ACTIVE' AND outbox IS NULL "
                                       "ORDER BY seq").fetchall()
        return [row_to_job(r) for r in rows]

    def handed_off(self) -> list[Job]:
        """This node's jobs handed to another node and not final (QUEUED or ACTIVE there)."""
        if self.local_name is None:
            return []
        me = self.local_name
        return [row_to_job(r) for r in self.reader.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE origin=? AND target IS NOT NULL AND target!=? "
            "AND state IN ('QUEUED','ACTIVE') ORDER BY seq", (me, me))]
