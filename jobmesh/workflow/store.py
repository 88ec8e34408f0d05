"""Durable workflow instances: ``workflows.sqlite`` in the node's data directory.

One row per instance with the whole instance as JSON (its definition included,
so a redefined workflow does not change instances already running). Kept apart
from the job store, like the scheduler's file: a few writes per step at most.
Synchronous sqlite3, called from a worker thread by the workflow actor, which
serialises every call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from ..errors import ValidationError
from ..sqlite_file import SqliteFile
from .core import WorkflowInstance

log = structlog.get_logger("jobmesh.workflow.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflow_instances (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workflow_instances_state ON workflow_instances(state, created);
"""


class WorkflowStore(SqliteFile):
    """The workflow actor's SQLite file (WAL, synchronous=NORMAL: survives kill -9)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    def save(self, inst: WorkflowInstance) -> None:
        record = json.dumps(inst.to_store())
        with self._lock:
            self._db.execute(
                "INSERT INTO workflow_instances(id, workflow, state, created, finished, record) "
                "VALUES(?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET state=excluded.state, "
                "finished=excluded.finished, record=excluded.record",
                (inst.id, inst.workflow.name, inst.state.value, inst.created, inst.finished, record),
            )

    def _rows_to_instances(self, rows: list[tuple[str, str]]) -> list[WorkflowInstance]:
        out = []
        for iid, raw in rows:
            try:
                out.append(WorkflowInstance.from_store(json.loads(raw)))
            except (ValueError, KeyError, TypeError, ValidationError) as e:
                log.error("unreadable workflow instance skipped", workflow_id=iid, error=str(e))
        return out

    def get(self, instance_id: str) -> WorkflowInstance | None:
        with self._lock:
            row = self._db.execute("SELECT id, record FROM workflow_instances WHERE id=?", (instance_id,)).fetchone()
        found = self._rows_to_instances([row]) if row else []
        return found[0] if found else None

    def running(self) -> list[WorkflowInstance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, record FROM workflow_instances WHERE state='RUNNING' ORDER BY created").fetchall()
        return self._rows_to_instances(rows)

    def find(self, state: str | None, workflow: str | None, limit: int) -> list[WorkflowInstance]:
        """Newest first."""
        sql = "SELECT id, record FROM workflow_instances"
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            where.append("state=?")
            args.append(state)
        if workflow is not None:
            where.append("workflow=?")
            args.append(workflow)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return self._rows_to_instances(rows)

    def purge(self, finished_before: float, limit: int = 5000) -> int:
        """Forget final instances that ended before ``finished_before`` (bounded per call)."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM workflow_instances WHERE id IN (SELECT id FROM workflow_instances "
                "WHERE state != 'RUNNING' AND finished IS NOT NULL AND finished < ? LIMIT ?)",
                (finished_before, limit),
            )
            return cur.rowcount
