"""One small SQLite file of a node's own (the scheduler's, the workflow actor's).

WAL with ``synchronous=NORMAL``: a committed write survives kill -9 of the process
(only a power loss may take the last transactions). Autocommit (``isolation_level=None``)
and one connection shared by the worker threads behind a lock: the owning actor
serialises its calls, the lock makes that true even when it does not.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class SqliteFile:
    """Opens ``path`` (creating its folder), sets up WAL and runs ``schema`` (idempotent DDL)."""

    def __init__(self, path: str | Path, schema: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()
