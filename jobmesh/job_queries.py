"""Read-only job queries the store does not answer: topic patterns, totals, id prefixes.

``jobmesh jobs --topic 'demo/*'`` and "showing 100 of 2,345" need a topic *pattern* filter and
a count; ``jobmesh job 1a230d8928e`` needs an id prefix. The SQL is built by pure functions;
``JobQueries`` runs it on a worker thread with its own read-only connection to the store's
file (WAL: readers never block the writer), so a count over a big table never stalls the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import NotFound, ValidationError
from .job import Job
from .topics import TopicError, validate_pattern

MIN_PREFIX = 4  # characters of an id prefix (an id is ~30): fewer would match too much to be useful
MAX_AMBIGUOUS = 5


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def topic_filter(topic: str) -> tuple[str, list[Any]]:
    """SQL condition and arguments for a topic or topic pattern (``a/b``, ``a/*``, ``a/**``, ``**``)."""
    if "*" not in topic:
        return "topic=?", [topic]
    try:
        validate_pattern(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None
    if topic == "**":
        return "1", []
    if topic == "*":
        return "topic NOT LIKE '%/%'", []
    base = _like_escape(topic.rsplit("/", 1)[0]) + "/%"
    if topic.endswith("/**"):
        return "topic LIKE ? ESCAPE '\\'", [base]
    return "topic LIKE ? ESCAPE '\\' AND topic NOT LIKE ? ESCAPE '\\'", [base, base + "/%"]


def where_clause(state: str | None, topic: str | None, queue: str | None) -> tuple[str, list[Any]]:
    parts: list[str] = ["outbox IS NULL"]  # not the results of other nodes' copies waiting for their origin
    args: list[Any] = []
    if state is not None:
        parts.append("state=?")
        args.append(state)
    if topic is not None:
        cond, targs = topic_filter(topic)
        parts.append(cond)
        args.extend(targs)
    if queue is not None:
        parts.append("queue=?")
        args.append(queue)
    return " WHERE " + " AND ".join(parts), args


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """``id >= lo AND id < hi`` selects the ids starting with ``prefix`` (uses the id index)."""
    return prefix, prefix + "\U0010ffff"


class JobQueries:
    """Runs the queries above against ``path`` (the node's jobs.db) on one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    async def _run(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobmesh-queries")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self._conn().execute(sql, args).fetchall())

    async def find(self, state: str | None, topic: str | None, queue: str | None, limit: int) -> list[Job]:
        from .store.sqlite import JOB_COLUMNS, row_to_job

        where, args = where_clause(state, topic, queue)
        rows = await self._run(f"SELECT {JOB_COLUMNS} FROM jobs{where} ORDER BY seq DESC LIMIT ?", [*args, int(limit)])
        return [row_to_job(r) for r in rows]

    async def count(self, state: str | None, topic: str | None, queue: str | None) -> int:
        where, args = where_clause(state, topic, queue)
        rows = await self._run(f"SELECT count(*) FROM jobs{where}", args)
        return int(rows[0][0])

    async def resolve_prefix(self, prefix: str) -> str:
        """The one id starting with ``prefix``; NotFound when none, ValidationError when several."""
        if len(prefix) < MIN_PREFIX:
            raise NotFound(f"job {prefix} not found (an id prefix needs at least {MIN_PREFIX} characters)")
        lo, hi = prefix_bounds(prefix)
        rows = await self._run("SELECT id FROM jobs WHERE id >= ? AND id < ? AND outbox IS NULL ORDER BY id LIMIT ?",
                               [lo, hi, MAX_AMBIGUOUS + 1])
        if not rows:
            raise NotFound(f"job {prefix} not found")
        if len(rows) > 1:
            ids = ", ".join(r[0] for r in rows[:MAX_AMBIGUOUS]) + (", ..." if len(rows) > MAX_AMBIGUOUS else "")
            raise ValidationError(f"job id prefix {prefix} is ambiguous: {ids}; give more characters")
        return str(rows[0][0])

    def close(self) -> None:
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass
        self._conns.clear()
        self._local = threading.local()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
