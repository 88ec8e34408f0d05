"""The job rows: their columns, the SQL that writes them, and the codec between a row and a ``Job``.

Shared by the store's writes (``sqlite.py``), its reads (``reads.py``) and the transfer tables'
SQL (``transfer.py``), so a column added to ``jobs`` changes in one place.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..job import Job, JobState, Progress

JOB_COLUMNS = (
    "seq, id, topic, queue, state, properties, origin, target, created, started, finished, "
    "retry_count, max_retries, attempt, not_before, progress, result_message, output, key, timeout, priority"
)
_INSERT = f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 21)})"
# A new row whose other columns keep their defaults (most adds: no delay, key, time limit, priority,
# nor a start or a result yet) binds 9 values, not 21: half the insert's cost (~8.5 µs a row
# against ~16 here; the binding of the 12 NULLs and zeros is what the full one spends it on).
_INSERT_PLAIN = ("INSERT INTO jobs (seq, id, topic, queue, state, properties, origin, created, max_retries) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
# ... and PLAIN_ROWS of them in one statement (a multi-row VALUES): an add of many jobs binds the same
# values but steps one statement per PLAIN_ROWS rows, not one per row (~35 % less a row than
# ``executemany`` of the one-row insert; benchmarks/instructions.py).
PLAIN_ROWS = 100
_INSERT_PLAIN_MANY = _INSERT_PLAIN.replace("(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                           ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * PLAIN_ROWS))
# A copy of another node's job, as a target accepts it: the columns its origin's spec sets, the others
# at their defaults (13 values bound against the full insert's 21).
_INSERT_COPY = ("INSERT INTO jobs (seq, id, topic, queue, state, properties, origin, created, retry_count, "
                "max_retries, attempt, timeout, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# Every write of a job's row leaves a copy's row that holds its result for its origin alone
# (``outbox IS NOT NULL``, schema 8: ``store.transfer``): a late write of such a copy (one read
# before its result landed) must not make it a job to run again.
_LIVE = " AND outbox IS NULL"
_UPDATE = (
    "UPDATE jobs SET state=?, started=?, finished=?, retry_count=?, attempt=?, not_before=?, "
    "progress=?, result_message=?, target=?, queue=?, output=? WHERE seq=?" + _LIVE
)
# A QUEUED job handed to a peer: its state and queue stay, so its jobs_ready entry stays too (the
# full UPDATE names those columns, and SQLite then rewrites the entry: 3x the cost of this one).
_HANDOFF = "UPDATE jobs SET target=?, attempt=? WHERE seq=?" + _LIVE
# A group of rows that take the same values is written by one statement: over the range of their
# seqs when it has no gap (a reservation of jobs added together, taken in arrival order: the usual
# case; one seek and a scan, ~1 µs a row less than the JSON list), over a JSON list of their seqs
# otherwise, or one row each where SQLite has no JSON functions (a build without JSON1, before
# 3.38). The three WHERE forms; each grouped write below is its SET with one of them.
_BY_RANGE = "WHERE seq BETWEEN ? AND ?" + _LIVE
_BY_SEQS = "WHERE seq IN (SELECT value FROM json_each(?))" + _LIVE
_BY_SEQ = "WHERE seq=?" + _LIVE
# The start of a run writes only what changes (a narrower UPDATE binds and writes less), and starts
# that share their values (a reservation's jobs: one time, one target, mostly attempt 1) are one
# statement: ~4.8 µs a row over a JSON list against ~7 for one narrow UPDATE per row (executemany's
# per-row bind, step and reset are most of a narrow write).
_START_SET = "UPDATE jobs SET state='ACTIVE', started=?, finished=NULL, attempt=?, target=? "
_START_RANGE, _START_SEQS, _START = _START_SET + _BY_RANGE, _START_SET + _BY_SEQS, _START_SET + _BY_SEQ
# A run that ended OK: its start and final columns only, the rest of its row is as its start (or, for
# a job run at a peer whose start message the result overtook, its handoff) wrote it.
_SUCCEED = ("UPDATE jobs SET state='SUCCEEDED', started=?, finished=?, progress=?, result_message=?, output=? "
            + _BY_SEQ)
# ... and those with nothing more to say (no progress, message nor result) that started and ended at
# one time (a reservation's jobs), grouped: ~4.5 µs a row over a JSON list against ~10 for the
# full _UPDATE.
_SUCCEED_PLAIN_SET = ("UPDATE jobs SET state='SUCCEEDED', started=?, finished=?, progress=NULL, result_message=NULL, "
                      "output=NULL ")
_SUCCEED_RANGE, _SUCCEED_SEQS = _SUCCEED_PLAIN_SET + _BY_RANGE, _SUCCEED_PLAIN_SET + _BY_SEQS
_DELETE = "DELETE FROM jobs WHERE id=?"
_DELETE_SEQ = "DELETE FROM jobs WHERE seq=?"
# Other nodes' copies restored after a restart wait for their origin's word (schema version 4);
# the node's own jobs (origin = the bound name) never are held, so the sub-select is skipped.
_NOT_HELD = "(origin=? OR id NOT IN (SELECT job_id FROM transfer_copies WHERE held=1))"

_STATES = {s.value: s for s in JobState}


def no_progress(p: Progress) -> bool:
    """Nothing reported: the progress column stays NULL."""
    return not p.log and p.steps is None and p.eta is None and not p.step


def progress_json(p: Progress) -> str | None:
    """Progress as stored: NULL while nothing was reported (the common, cheap case)."""
    if no_progress(p):
        return None
    return json.dumps({"steps": p.steps, "step": p.step, "eta": p.eta, "log": p.log})


def result_json(result: Any) -> str | None:
    """The result column: JSON of the consumer's return value, NULL for none."""
    return None if result is None else json.dumps(result)


def row_to_job(row: tuple[Any, ...]) -> Job:
    (seq, id_, topic, queue, state, props, origin, target, created, started, finished,
     retry_count, max_retries, attempt, not_before, progress, result_message, output, key, timeout,
     priority) = row
    if progress:
        p = json.loads(progress)
        prog = Progress(steps=p.get("steps"), step=p.get("step", 0), eta=p.get("eta"), log=p.get("log", []))
    else:
        prog = Progress()
    return Job(
        id=id_, topic=topic, properties={} if props == "{}" else json.loads(props), state=_STATES[state], queue=queue,
        origin=origin, target=target, created=created, started=started, finished=finished,
        retry_count=retry_count, max_retries=max_retries, progress=prog,
        result_message=result_message, attempt=attempt, not_before=not_before, seq=seq,
        result=json.loads(output) if output is not None else None, key=key, timeout=timeout,
        priority=priority or 0,
    )


def properties_json(job: Job, props: str | None = None) -> str:
    """The properties column: ``props`` when the caller has the JSON already, else the job's."""
    if props is not None:
        return props
    return json.dumps(job.properties) if job.properties else "{}"


def insert_row(job: Job, props: str | None = None) -> tuple[Any, ...]:
    """A new row, in ``JOB_COLUMNS`` order (``props``: the properties as JSON, if known)."""
    return (
        job.seq, job.id, job.topic, job.queue, job.state._value_, properties_json(job, props), job.origin,
        job.target, job.created, job.started, job.finished, job.retry_count,
        job.max_retries, job.attempt, job.not_before, progress_json(job.progress),
        job.result_message, result_json(job.result), job.key,
        job.timeout, job.priority,
    )


def add_insert_row(job: Job, props: str | None, full: list[tuple[Any, ...]],
                   plain: list[tuple[Any, ...]]) -> None:
    """A new row for ``_INSERT_PLAIN`` (appended to ``plain``) when every column it leaves out holds
    its default, else for ``_INSERT`` (to ``full``)."""
    if (job.target is None and job.started is None and job.finished is None and not job.retry_count
            and not job.attempt and not job.not_before and job.result_message is None and job.result is None
            and job.key is None and job.timeout is None and not job.priority and no_progress(job.progress)):
        plain.append((job.seq, job.id, job.topic, job.queue, job.state._value_, properties_json(job, props),
                      job.origin, job.created, job.max_retries))
    else:
        full.append(insert_row(job, props))


def copy_row(job: Job) -> tuple[Any, ...]:
    """``_INSERT_COPY``'s values for an accepted copy (QUEUED, not started, no result yet)."""
    return (job.seq, job.id, job.topic, job.queue, job.state._value_, properties_json(job), job.origin,
            job.created, job.retry_count, job.max_retries, job.attempt, job.timeout, job.priority)


def update_row(job: Job) -> tuple[Any, ...]:
    """A snapshot of a job's mutable columns, taken when the write is requested."""
    return (
        job.state._value_, job.started, job.finished, job.retry_count, job.attempt, job.not_before,
        progress_json(job.progress), job.result_message, job.target, job.queue, result_json(job.result), job.seq,
    )


def seq_range(seqs: list[int]) -> tuple[int, int] | None:
    """(first, last) when ``seqs`` are every seq from their lowest to their highest, once each: rows
    a ``BETWEEN`` writes exactly (seq is the key), else None."""
    lo, hi = min(seqs), max(seqs)
    n = len(seqs)
    if hi - lo + 1 != n or (n > 1 and len(set(seqs)) != n):
        return None
    return lo, hi


def grouped_by(pairs: Iterable[tuple[Any, Any]]) -> dict[Any, list[Any]]:
    """(key, value) pairs as the values of each key, in order: one grouped statement per key (the
    rows' seqs, or the copies' ids, in a JSON list)."""
    groups: dict[Any, list[Any]] = {}
    for key, value in pairs:
        values = groups.get(key)
        if values is None:
            groups[key] = [value]
        else:
            values.append(value)
    return groups
