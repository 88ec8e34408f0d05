"""The job store's schema and its migrations, applied in order on open.

``schema_version`` holds the number of the last migration applied; a store opened
by newer code is migrated forward inside one transaction, and a store written by a
newer jobmesh (a version we do not know) is refused instead of being damaged.
"""

from __future__ import annotations

import sqlite3

# Each entry is one migration: the list of statements that takes the schema from
# version i to i+1. Never edit a released entry; append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,          -- arrival order (ordered queues), rowid alias
            id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            queue TEXT NOT NULL,
            state TEXT NOT NULL,
            properties TEXT NOT NULL,         -- JSON
            origin TEXT NOT NULL,
            target TEXT,
            created REAL NOT NULL,
            started REAL,
            finished REAL,
            retry_count INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            progress TEXT,                    -- JSON or NULL (no progress reported)
            result_message TEXT
        )""",
        # The queue actors' window refill: ready jobs of one queue in arrival order.
        "CREATE INDEX jobs_ready ON jobs(queue, seq) WHERE state = 'QUEUED'",
        # History clean-up by age (dropped again in schema version 9: the clean-up sweeps by seq).
        # Find-by-state and the restart recovery of ACTIVE jobs scan instead (rare; newest first
        # with LIMIT).
        "CREATE INDEX jobs_finished ON jobs(finished) WHERE finished IS NOT NULL",
    ],
    [
        # A successful job's output properties (JSON or NULL): a workflow merges them into
        # the next step's input, so they must survive restarts with the result.
        "ALTER TABLE jobs ADD COLUMN output TEXT",
    ],
    [
        # Offloading (transfer actor). A target's copies of other nodes' jobs: the attempt the
        # origin handed over (the jobs row's own attempt counts local starts).
        """CREATE TABLE transfer_copies (
            job_id TEXT PRIMARY KEY,
            origin TEXT NOT NULL,
            attempt INTEGER NOT NULL
        )""",
        # The durable outbox: final results of copies, kept until the origin acknowledged them.
        """CREATE TABLE transfer_outbox (
            job_id TEXT PRIMARY KEY,
            origin TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            body TEXT NOT NULL                -- JSON of the protocol's ResultItem
        )""",
    ],
    [
        # A copy restored after a restart is held (1) until its origin confirms it still wants
        # it (a reconcile round or a resent handoff): held copies stay out of the queue windows,
        # so a copy the origin superseded while this node was down never runs (DESIGN §3).
        "ALTER TABLE transfer_copies ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
    ],
    [
        # Per-job options of a producer (issue 12). ``key``: one open job per key and origin (a
        # second add with the key returns the open job); ``timeout``: the job's time limit in
        # seconds; ``priority``: within a queue, higher starts first. A delay or ``at`` is the
        # existing ``not_before``; the consumer's return value (``result``, any JSON) is kept in
        # the ``output`` column, which held a workflow step's output object before: the same value.
        "ALTER TABLE jobs ADD COLUMN key TEXT",
        "ALTER TABLE jobs ADD COLUMN timeout REAL",
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_key ON jobs(key) WHERE key IS NOT NULL",
    ],
    [
        # Jobs delayed beyond the queues' horizon stay on disk until they are nearly due: the
        # queue actor reads them back by due time (Store.due), not with its arrival-order refill.
        "CREATE INDEX jobs_due ON jobs(queue, not_before, seq) WHERE state = 'QUEUED' AND not_before > 0",
    ],
    # No statement: ``transfer_outbox.body`` may now be msgpack (a BLOB) as well as JSON text. A
    # jobmesh before this version would read such a body as unreadable and drop the result: the
    # version it does not know makes it refuse the store instead.
    [],
    [
        # A copy's final result (the ``transfer_outbox`` body: msgpack, or JSON text) is kept in the
        # copy's own row until its origin acknowledges it: one row update where the row's delete
        # and an outbox insert were, one delete at the ack where two were. Such a row stays ACTIVE
        # with ``finished`` NULL (out of the ready, due and history indexes); the reads that mean
        # runs or copies to restore leave it out. ``transfer_outbox`` keeps what older versions
        # wrote, and a result whose row is gone (its copy superseded in the same commit).
        "ALTER TABLE jobs ADD COLUMN outbox BLOB",
    ],
    [
        # The history clean-up sweeps the rows in seq order instead (``Store.purge``: bounded ranges
        # of the key): an index of end times cost every run that ended an index insert and a commit
        # ~2 more WAL pages (of ~7), for a read that runs once a minute.
        "DROP INDEX jobs_finished",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The store file was written by a jobmesh newer than this one."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring ``conn``'s schema to ``SCHEMA_VERSION``; returns the version found before."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"job store has schema version {found}, this jobmesh knows up to {SCHEMA_VERSION}"
        )
    if found == SCHEMA_VERSION:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(found, SCHEMA_VERSION):
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
