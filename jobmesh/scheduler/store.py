"""Durable schedule state: ``schedules.sqlite`` in the node's data directory.

Two small tables: the replicated definitions (records with their version, tombstones
included) and the last fired slot per schedule. Kept apart from the job store: the
scheduler writes a few rows a second at most, and its file can be inspected or
deleted on its own. Synchronous sqlite3, meant to be called from a worker thread
(``asyncio.to_thread``) by the scheduler actor, which serialises every call.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from ..errors import ValidationError
from ..sqlite_file import SqliteFile
from .schedule import ScheduleRecord

log = structlog.get_logger("jobmesh.scheduler.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_records (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_fired (
    id TEXT PRIMARY KEY,
    slot REAL NOT NULL
);
"""


class ScheduleStore(SqliteFile):
    """The scheduler's SQLite file (WAL; survives kill -9 with synchronous=NORMAL)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    def load(self) -> tuple[dict[str, ScheduleRecord], dict[str, float]]:
        """Every record and last-fired slot; a row that no longer parses is logged and skipped."""
        with self._lock:
            rows = self._db.execute("SELECT id, record FROM schedule_records").fetchall()
            fired_rows = self._db.execute("SELECT id, slot FROM schedule_fired").fetchall()
        records: dict[str, ScheduleRecord] = {}
        for sid, raw in rows:
            try:
                rec = ScheduleRecord.from_wire(json.loads(raw))
            except (ValueError, ValidationError) as e:
                log.error("unreadable schedule row skipped", schedule_id=sid, error=str(e))
                continue
            records[rec.id] = rec
        return records, {sid: float(slot) for sid, slot in fired_rows}

    def save(
        self,
        records: list[ScheduleRecord] | tuple[ScheduleRecord, ...] = (),
        fired: dict[str, float] | None = None,
        forget: list[str] | tuple[str, ...] = (),
    ) -> None:
        """Upsert records and fired slots and delete ``forget`` ids, in one transaction."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    "INSERT INTO schedule_records(id, record) VALUES(?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                    [(r.id, json.dumps(r.to_wire(), separators=(",", ":"))) for r in records],
                )
                if fired:
                    cur.executemany(
                        "INSERT INTO schedule_fired(id, slot) VALUES(?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET slot = MAX(slot, excluded.slot)",
                        list(fired.items()),
                    )
                for sid in forget:
                    cur.execute("DELETE FROM schedule_records WHERE id = ?", (sid,))
                    cur.execute("DELETE FROM schedule_fired WHERE id = ?", (sid,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
