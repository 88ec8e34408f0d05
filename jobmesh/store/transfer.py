"""The transfer tables' SQL (``TransferStore``): copies of other nodes' jobs, the result outbox.

Schema (``schema.py``, versions 3, 4 and 8): a copy this node accepted is its row in ``jobs``
(``origin`` another node, ``attempt`` the one its origin handed over); ``transfer_copies
(job_id, origin, attempt, held)`` marks the copies restored after a restart that wait for their
origin's word (``held`` = 1; written at start, gone once confirmed) — rows with ``held`` = 0 are
what nodes before this version wrote for every copy, and mean nothing now. A copy's final result
(the protocol's ``ResultItem`` in its wire form: msgpack, or JSON text for a result with a
consumer's value) is kept in the copy's own row, ``jobs.outbox``, until the origin acknowledged
it; the row stays ACTIVE with no end time meanwhile, and the reads of runs and copies to restore
leave such rows out. ``transfer_outbox (job_id, origin, attempt, body)`` holds what nodes before
version 8 wrote, and a result whose row a newer copy of its job replaced in the same commit. A
copy costs its job row: an insert, a start, the result's update and the delete at the ack.

Who writes: a change that goes with a job's row (a copy accepted, a copy's result, a copy
forgotten) runs inside the engine's commit of that row (``write`` below, the engine
actor's ``Commit``), so both land in one transaction; at start, the node holds every restored
copy (``hold_restored``) and the transfer actor lets go of those their origin confirms
(``release``). Reads are for the transfer actor's restore after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable

import msgpack

from ..job import Job
from ..plants import PLANTS
from .rows import _INSERT_COPY, copy_row, grouped_by

# A copy's result kept in its row until its origin acknowledges it (schema version 8). A copy
# stopped before it ran is QUEUED: ACTIVE takes it out of the ready index, so it never runs.
_KEEP_RESULT = "UPDATE jobs SET state='ACTIVE', finished=NULL, outbox=? WHERE seq=? AND origin!=?"
# An older copy's row of a job goes before a newer copy's insert (the id is unique).
_DELETE_COPY = "DELETE FROM jobs WHERE id=? AND origin!=?"
_DELETE_COPIES = "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND origin!=?"
# A forgotten copy's row: one its origin let go of before it ended here, or one whose result the
# origin acknowledged. It carries the attempt its origin gave it: a newer copy of the same job stays.
_FORGET_COPY_WHERE = "AND origin!=? AND (outbox IS NOT NULL OR state IN ('QUEUED','STOPPED','DROPPED'))"
_FORGET_COPY = "DELETE FROM jobs WHERE id=? AND attempt=? " + _FORGET_COPY_WHERE
_FORGET_COPIES = "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND attempt=? " + _FORGET_COPY_WHERE


def outbox_body(wire: dict[str, Any]) -> bytes | str:
    """A result's outbox body: its wire form in msgpack (~2.4 µs a result, where JSON took ~10: the
    two times' float text) when it carries no value of the consumer's; JSON text otherwise, as
    before: a value JSON accepts may not round-trip through msgpack (a dict with int keys comes
    back refused, an int beyond 64 bits or a lone surrogate is not packed at all)."""
    if wire.get("result") is None and not wire.get("output_payload"):
        try:
            return msgpack.packb(wire, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):  # a lone surrogate in a message or a log line
            pass
    return json.dumps(wire)


def read_outbox_body(body: bytes | str) -> dict[str, Any]:
    """An outbox body back: msgpack (a BLOB), or JSON text as nodes before this version wrote it."""
    if isinstance(body, bytes):
        wire = msgpack.unpackb(body, raw=False, strict_map_key=True)
    else:
        wire = json.loads(body)
    if not isinstance(wire, dict):
        raise ValueError("an outbox body is not a map")
    return wire


class TransferStore:
    """SQL of the transfer tables for the node named ``me`` (the engine's and the transfer's)."""

    def __init__(self, me: str) -> None:
        self.me = me

    # -- inside the engine's transactions (with the job rows they go with) ----------------
    def write(self, conn: sqlite3.Connection, copies: list[tuple[str, Job]], outbox: list[tuple[Job, Any]],
              forget: list[tuple[str, int]], grouped: bool = True) -> None:
        """One engine commit's share, in order: accepted copies, copies' results, forgotten copies.
        ``grouped``: SQLite has JSON functions (``Store.grouped``): the deletes by id are one
        statement over a JSON list of ids (per attempt), not one per row (~2 µs where ~6-10)."""
        me = self.me
        # Held markers exist only between ``hold_restored`` (at start) and their release: while the
        # table is empty (nearly always), one look per commit skips two lookups per copy that find
        # nothing. Looked at each time, inside this transaction: a remembered answer would go stale
        # when a transaction that deleted the last marker rolls back.
        held = bool(copies or forget) and conn.execute("SELECT 1 FROM transfer_copies LIMIT 1").fetchone() is not None
        if copies:
            # an older copy's row of the same job goes first (the id is unique), then the new rows
            if grouped:
                conn.execute(_DELETE_COPIES, (json.dumps([j.id for _, j in copies]), me))
            else:
                conn.executemany(_DELETE_COPY, [(j.id, me) for _, j in copies])
            conn.executemany(_INSERT_COPY, [copy_row(j) for _, j in copies])
            if held:  # a held marker of an older attempt goes: this newer copy is its origin's word
                conn.executemany("DELETE FROM transfer_copies WHERE job_id=?", [(j.id,) for _, j in copies])
        if outbox:
            # the result goes into the copy's own row (``jobs.outbox``; ACTIVE, out of the ready index)
            bodies = [(outbox_body(item.to_wire()), j.seq, me) for j, item in outbox]
            if conn.executemany(_KEEP_RESULT, bodies).rowcount != len(bodies):
                self._outbox_rows_gone(conn, outbox, bodies)
        if forget:
            # outbox rows are what nodes before schema version 8 wrote (and results whose row was
            # gone): nearly always none, so one look per commit skips a lookup per copy
            if conn.execute("SELECT 1 FROM transfer_outbox LIMIT 1").fetchone() is not None:
                conn.executemany("DELETE FROM transfer_outbox WHERE job_id=? AND attempt=?", forget)
            if held:
                conn.executemany("DELETE FROM transfer_copies WHERE job_id=? AND attempt=?", forget)
            if grouped:
                for attempt, ids in grouped_by((attempt, job_id) for job_id, attempt in forget).items():
                    conn.execute(_FORGET_COPIES, (json.dumps(ids), attempt, me))
            else:
                conn.executemany(_FORGET_COPY, [(job_id, attempt, me) for job_id, attempt in forget])

    @staticmethod
    def _outbox_rows_gone(conn: sqlite3.Connection, outbox: list[tuple[Job, Any]],
                          bodies: list[tuple[bytes | str, int, str]]) -> None:
        """Results whose copy's row is gone (a newer copy of the job replaced it in this same
        commit): kept in ``transfer_outbox`` instead, until their origin has done with them."""
        for (job, item), (body, seq, me) in zip(outbox, bodies):
            if conn.execute("SELECT 1 FROM jobs WHERE seq=? AND origin!=? AND outbox IS NOT NULL",
                            (seq, me)).fetchone() is None:
                conn.execute("INSERT OR REPLACE INTO transfer_outbox (job_id, origin, attempt, body) VALUES (?,?,?,?)",
                             (job.id, job.origin, item.attempt, body))

    # -- the transfer actor's own writes ---------------------------------------------------
    @staticmethod
    def release(conn: sqlite3.Connection, refs: Iterable[tuple[str, int]]) -> None:
        """Restored copies their origin confirmed: no longer held."""
        conn.executemany("DELETE FROM transfer_copies WHERE job_id=? AND attempt=?", list(refs))

    def hold_restored(self, conn: sqlite3.Connection) -> None:
        """At start, before any window fills: every copy waits for its origin's word (it may have
        given the job to another node, or run it itself, while this node was down)."""
        if PLANTS.active("run-superseded-copy"):
            return
        conn.execute("DELETE FROM transfer_copies")  # the markers of the run before, rebuilt from the rows
        conn.execute("INSERT INTO transfer_copies (job_id, origin, attempt, held) "
                     "SELECT id, origin, attempt, 1 FROM jobs WHERE origin!=? AND outbox IS NULL", (self.me,))

    # -- reads (restore after a restart) -----------------------------------------------------
    @staticmethod
    def copies(reader: sqlite3.Connection, me: str) -> list[tuple[str, str, int, str, dict[str, Any]]]:
        """(job id, origin, attempt, topic, properties) of the copies that are not final here."""
        return [(job_id, origin, attempt, topic, json.loads(props)) for job_id, origin, attempt, topic, props in
                reader.execute("SELECT id, origin, attempt, topic, properties FROM jobs "
                               "WHERE origin!=? AND state IN ('QUEUED','ACTIVE') AND outbox IS NULL ORDER BY seq",
                               (me,))]

    @staticmethod
    def outbox(reader: sqlite3.Connection) -> list[tuple[str, str, int, bytes | str]]:
        """(job id, origin, attempt, body: ``read_outbox_body``) of the results not acknowledged yet:
        those kept in their copy's row, and the outbox table's."""
        return sorted([*reader.execute("SELECT id, origin, attempt, outbox FROM jobs WHERE outbox IS NOT NULL"),
                       *reader.execute("SELECT job_id, origin, attempt, body FROM transfer_outbox")],
                      key=lambda row: (row[0], row[2]))

