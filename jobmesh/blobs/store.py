"""The node's content-addressed blob store (job payload), in its data directory.

Layout under ``<data>/blobs/``::

    sha256/ab/<64 hex>     a blob, named by the sha256 of its content (read-only once there)
    partial/<64 hex>       a transfer from a peer that has not finished (resumed from its size)
    tmp/<random>           an upload or a local copy being hashed
    index.sqlite           what the node knows of its blobs: sizes, references, GC marks

A blob is written to a temporary file, hashed while it is written, and renamed into place
only once its hash is known (and, for a transfer, matches the id it was asked for), so a
blob at its final path is always whole and correct; a crash leaves at most a temporary or
partial file behind (partial files resume, temporary ones are removed at the next open).

References (the reference counts of the issue): a job's inputs and outputs are rows of
``refs`` keyed by the job id (``owner``). A reference counts while its owner exists in the
node's job store (a job row: the node's own job, or a copy of another node's) or in its
transfer outbox (a copy's result waiting for its origin's acknowledgement). Deleting a
job, purging its history or forgetting a copy therefore needs no hook here: the
collector (``gc``) compares the references with those facts, the way the rest of jobmesh
repairs beliefs (DESIGN §3), drops references whose owner is gone, and deletes blobs
that no reference, no pin (an upload or transfer in progress, a running consumer) and no
fresh arrival (the grace period) keeps.

Quota and full disks: ``quota`` bytes at most (0: the disk's size); a write that would
exceed it, or that meets ENOSPC, raises ``BlobStoreFull`` (HTTP 507), never crashes.

Pure-ish: files and one SQLite file, no sockets, no asyncio. Thread-safe (a consumer in
a thread calls ``put_bytes``/``put_file``/``add_output``/``inputs``): one lock around the
index connection. Time through ``jobmesh.clock``.

The ids, names, refs and errors are in ``refs.py`` and the write path (``BlobWriter``,
``PartialBlob``) in ``writers.py``; this module re-exports them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .. import clock as _clock
from ..errors import NotFound, ValidationError
from .refs import (_ID, EMPTY_SHA, PREFIX, BlobMismatch, BlobRef, BlobStoreFull, BlobTooLarge, _hex, check_id,
                   check_name)
from .writers import IO_CHUNK, BlobWriter, PartialBlob, _full

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS blobs (
        id TEXT PRIMARY KEY,              -- sha256:<hex>
        size INTEGER NOT NULL,
        created REAL NOT NULL,            -- when it arrived (wall clock)
        unreferenced REAL                 -- when GC first saw it without a reference (NULL: referenced)
    )""",
    """CREATE TABLE IF NOT EXISTS refs (
        owner TEXT NOT NULL,              -- a job id (own job or a copy), or its outbox entry
        role TEXT NOT NULL,               -- 'in' (payload) or 'out' (output payload)
        name TEXT NOT NULL,
        blob TEXT NOT NULL,
        size INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,  -- outputs: the run that made them (the latest counts)
        created REAL NOT NULL,
        PRIMARY KEY (owner, role, name, attempt)
    )""",
    "CREATE INDEX IF NOT EXISTS refs_blob ON refs(blob)",
]


class BlobStore:
    """Files and their index. ``open()`` first; every method may be called from any thread."""

    def __init__(self, root: str | os.PathLike[str], quota: int = 0, grace: float = 600.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.root = Path(root)
        self.quota = int(quota or 0)
        self.grace = float(grace)
        self.clock = clock or _clock.wall
        self.blob_dir = self.root / "sha256"
        self.partial_dir = self.root / "partial"
        self.tmp_dir = self.root / "tmp"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pins: dict[str, int] = {}
        self._used = 0  # bytes of whole blobs (kept in step with the index)
        self._count = 0
        self._has_refs = False  # no reference yet: the job paths skip the index entirely
        self.removed_total = 0
        self._partial_busy: dict[str, int] = {}  # hex of partial files a transfer is writing
        self._partial_idle: dict[str, float] = {}  # hex -> when GC first saw it idle
        self.removed_bytes_total = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> "BlobStore":
        for d in (self.blob_dir, self.partial_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # uploads a crash interrupted
            try:
                leftover.unlink()
            except OSError:
                pass
        conn = sqlite3.connect(str(self.root / "index.sqlite"), check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        self._conn = conn
        self._reconcile_files()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("blob store is not open")
        return self._conn

    def _reconcile_files(self) -> None:
        """The index says what the files say: a file without a row gets one, a row without a file goes."""
        conn = self._db()
        on_disk: dict[str, int] = {}
        for sub in sorted(self.blob_dir.iterdir()) if self.blob_dir.exists() else []:
            if not sub.is_dir():
                continue
            for f in sorted(sub.iterdir()):
                if len(f.name) == 64:
                    on_disk[PREFIX + f.name] = f.stat().st_size
        known = dict(conn.execute("SELECT id, size FROM blobs").fetchall())
        now = self.clock()
        with self._lock:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO blobs (id, size, created) VALUES (?,?,?)",
                             [(i, s, now) for i, s in sorted(on_disk.items()) if i not in known])
            conn.executemany("DELETE FROM blobs WHERE id=?", [(i,) for i in sorted(known) if i not in on_disk])
            conn.execute("COMMIT")
            self._used = sum(on_disk.values())
            self._count = len(on_disk)
            self._has_refs = conn.execute("SELECT 1 FROM refs LIMIT 1").fetchone() is not None

    # -- paths and presence ------------------------------------------------------------------
    def path(self, blob_id: str) -> Path:
        h = _hex(blob_id)
        return self.blob_dir / h[:2] / h

    def has(self, blob_id: str) -> bool:
        try:
            return self.path(blob_id).is_file()
        except ValidationError:
            return False

    def missing(self, ids: Iterable[str]) -> list[str]:
        return sorted({i for i in ids if not self.has(i)})

    def size_of(self, blob_id: str) -> int | None:
        try:
            return self.path(blob_id).stat().st_size
        except (OSError, ValidationError):
            return None

    def ref_of(self, blob_id: str) -> BlobRef:
        """The blob as a reference; ``NotFound`` if this node does not have it."""
        check_id(blob_id)
        size = self.size_of(blob_id)
        if size is None:
            raise NotFound(f"blob {blob_id} is not on this node")
        return BlobRef(blob_id, size)

    def partial_offset(self, blob_id: str) -> int:
        try:
            return (self.partial_dir / _hex(blob_id)).stat().st_size
        except OSError:
            return 0

    # -- writing -----------------------------------------------------------------------------
    def check_room(self, n: int) -> None:
        if self.quota and self._used + self._partial_guess() + n > self.quota:
            raise BlobStoreFull(f"blob store quota of {self.quota} bytes reached "
                                f"({self._used} bytes in {self._count} blobs)")

    def _partial_guess(self) -> int:
        return 0  # partial files count once they are whole (cheap; the quota is a soft bound by a chunk)

    def writer(self, limit: int | None = None) -> BlobWriter:
        try:
            return BlobWriter(self, limit)
        except OSError as e:
            if _full(e):
                raise BlobStoreFull(f"blob store is full (disk): {e.strerror}") from None
            raise

    def put_bytes(self, data: bytes | bytearray | memoryview) -> BlobRef:
        w = self.writer()
        w.write(data)
        return w.commit()

    def put_file(self, src: str | os.PathLike[str]) -> BlobRef:
        """Copy a file in (hashing it on the way). A file already here by content costs a read."""
        w = self.writer()
        try:
            with open(src, "rb") as f:
                while True:
                    b = f.read(IO_CHUNK)
                    if not b:
                        break
                    w.write(b)
        except (BlobStoreFull, BlobTooLarge):
            raise
        except OSError:
            w.abort()
            raise
        return w.commit()

    def put(self, value: Any) -> BlobRef:
        """``bytes`` / ``Path`` (or a path string is refused: a str is ambiguous) / ``BlobRef`` / blob id."""
        if isinstance(value, BlobRef):
            return self.ref_of(value.id)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.put_bytes(value)
        if isinstance(value, os.PathLike):
            p = Path(value)
            if not p.is_file():
                raise ValidationError(f"payload file not found: {p}")
            return self.put_file(p)
        if isinstance(value, str) and _ID.match(value):
            return self.ref_of(value)
        raise ValidationError("a payload value is bytes, a pathlib.Path, a BlobRef or a blob id "
                              f"('sha256:...'), not {type(value).__name__}")

    def partial(self, blob_id: str, size: int) -> PartialBlob:
        try:
            return PartialBlob(self, blob_id, size)
        except OSError as e:
            if _full(e):
                raise BlobStoreFull(f"blob store is full (disk): {e.strerror}") from None
            raise

    def _install(self, tmp: Path, blob_id: str, size: int) -> BlobRef:
        final = self.path(blob_id)
        with self._lock:
            if final.is_file():  # content already here (dedup): the new copy goes
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                self._touch(blob_id)
                return BlobRef(blob_id, size)
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o444)  # read-only: ctx.payload hands out the path itself
            os.replace(tmp, final)
            self._db().execute("INSERT OR REPLACE INTO blobs (id, size, created, unreferenced) VALUES (?,?,?,NULL)",
                               (blob_id, size, self.clock()))
            self._used += size
            self._count += 1
        return BlobRef(blob_id, size)

    def _touch(self, blob_id: str) -> None:
        """A blob used again (or arriving again): the grace period starts over."""
        self._db().execute("UPDATE blobs SET created=?, unreferenced=NULL WHERE id=?", (self.clock(), blob_id))

    # -- pins (in memory: an upload, a transfer, a run in progress) ----------------------------
    def pin(self, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                self._pins[i] = self._pins.get(i, 0) + 1

    def unpin(self, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                n = self._pins.get(i, 0) - 1
                if n > 0:
                    self._pins[i] = n
                else:
                    self._pins.pop(i, None)

    # -- references --------------------------------------------------------------------------
    @property
    def has_refs(self) -> bool:
        return self._has_refs

    def set_inputs(self, owners: Mapping[str, Mapping[str, BlobRef]]) -> None:
        """``{job id: {name: ref}}``: the jobs' payload (replacing what they had)."""
        rows = [(owner, name, r.id, r.size, self.clock()) for owner, refs in owners.items()
                for name, r in sorted(refs.items())]
        if not rows:
            return
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            conn.executemany("DELETE FROM refs WHERE owner=? AND role='in'", [(o,) for o in owners])
            conn.executemany("INSERT INTO refs (owner, role, name, blob, size, attempt, created) "
                             "VALUES (?, 'in', ?, ?, ?, 0, ?)", rows)
            conn.executemany("UPDATE blobs SET unreferenced=NULL WHERE id=?", sorted({(r[2],) for r in rows}))
            conn.execute("COMMIT")
            self._has_refs = True

    def add_output(self, owner: str, attempt: int, name: str, ref: BlobRef) -> None:
        with self._lock:
            conn = self._db()
            conn.execute("INSERT OR REPLACE INTO refs (owner, role, name, blob, size, attempt, created) "
                         "VALUES (?, 'out', ?, ?, ?, ?, ?)", (owner, name, ref.id, ref.size, attempt, self.clock()))
            conn.execute("UPDATE blobs SET unreferenced=NULL WHERE id=?", (ref.id,))
            self._has_refs = True

    def set_outputs(self, owner: str, refs: Mapping[str, BlobRef], attempt: int = 0) -> None:
        """The job's outputs as a result brought them (replacing every earlier run's)."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            conn.execute("DELETE FROM refs WHERE owner=? AND role='out'", (owner,))
            conn.executemany("INSERT INTO refs (owner, role, name, blob, size, attempt, created) "
                             "VALUES (?, 'out', ?, ?, ?, ?, ?)",
                             [(owner, n, r.id, r.size, attempt, self.clock()) for n, r in sorted(refs.items())])
            conn.executemany("UPDATE blobs SET unreferenced=NULL WHERE id=?", sorted({(r.id,) for r in refs.values()}))
            conn.execute("COMMIT")
            if refs:
                self._has_refs = True

    def clear_outputs(self, owner: str) -> None:
        if not self._has_refs:
            return
        with self._lock:
            self._db().execute("DELETE FROM refs WHERE owner=? AND role='out'", (owner,))

    def inputs(self, owner: str) -> dict[str, BlobRef]:
        return self.payloads([owner]).get(owner, ({}, {}))[0]

    def outputs(self, owner: str) -> dict[str, BlobRef]:
        return self.payloads([owner]).get(owner, ({}, {}))[1]

    def payloads(self, owners: Iterable[str]) -> dict[str, tuple[dict[str, BlobRef], dict[str, BlobRef]]]:
        """``{owner: (inputs, outputs)}`` for the owners that have any; outputs of the latest run only."""
        ids = list(dict.fromkeys(owners))
        if not self._has_refs or not ids:
            return {}
        out: dict[str, tuple[dict[str, BlobRef], dict[str, BlobRef]]] = {}
        latest: dict[str, int] = {}
        with self._lock:
            conn = self._db()
            rows: list[tuple[Any, ...]] = []
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                rows += conn.execute(
                    f"SELECT owner, role, name, blob, size, attempt FROM refs WHERE owner IN ({','.join('?' * len(part))})",
                    part).fetchall()
        for owner, role, name, blob, size, attempt in rows:
            if role == "out":
                latest[owner] = max(latest.get(owner, attempt), attempt)
        for owner, role, name, blob, size, attempt in sorted(rows):
            ins, outs = out.setdefault(owner, ({}, {}))
            if role == "in":
                ins[name] = BlobRef(blob, size)
            elif attempt == latest.get(owner):
                outs[name] = BlobRef(blob, size)
        return out

    def referencing(self, blob_id: str) -> int:
        with self._lock:
            return self._db().execute("SELECT COUNT(*) FROM refs WHERE blob=?", (blob_id,)).fetchone()[0]

    # -- garbage collection --------------------------------------------------------------------
    def gc(self, alive: Callable[[list[str]], set[str]], now: float | None = None,
           limit: int = 10_000) -> list[str]:
        """Drop references whose owner is gone (older than the grace period: an owner may be
        about to be committed) and outputs of superseded runs, then delete blobs nobody references,
        pins or received within the grace period. ``alive(owner_ids)`` says which owners still
        exist (job rows, outbox entries). Returns the ids removed."""
        now = self.clock() if now is None else now
        cutoff = now - self.grace
        with self._lock:
            conn = self._db()
            owners = [r[0] for r in conn.execute("SELECT DISTINCT owner FROM refs WHERE created<=? LIMIT ?",
                                                 (cutoff, limit))]
        live = alive(owners) if owners else set()
        gone = sorted(o for o in owners if o not in live)
        removed: list[str] = []
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            if gone:
                conn.executemany("DELETE FROM refs WHERE owner=? AND created<=?", [(o, cutoff) for o in gone])
            # outputs of a run that a later run of the same job superseded
            conn.execute("DELETE FROM refs WHERE role='out' AND attempt < "
                         "(SELECT MAX(r2.attempt) FROM refs r2 WHERE r2.owner=refs.owner AND r2.role='out')")
            conn.execute("UPDATE blobs SET unreferenced=NULL WHERE unreferenced IS NOT NULL AND id IN "
                         "(SELECT blob FROM refs)")
            conn.execute("UPDATE blobs SET unreferenced=? WHERE unreferenced IS NULL AND id NOT IN "
                         "(SELECT blob FROM refs)", (now,))
            doomed = conn.execute(
                "SELECT id, size FROM blobs WHERE unreferenced IS NOT NULL AND unreferenced<=? AND created<=? "
                "ORDER BY id LIMIT ?", (cutoff, cutoff, limit)).fetchall()
            doomed = [(i, s) for i, s in doomed if i not in self._pins]
            for blob_id, size in doomed:
                try:
                    os.chmod(self.path(blob_id), 0o644)
                    self.path(blob_id).unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                removed.append(blob_id)
                self._used -= size
                self._count -= 1
            conn.executemany("DELETE FROM blobs WHERE id=?", [(i,) for i in removed])
            conn.execute("COMMIT")
            self._has_refs = conn.execute("SELECT 1 FROM refs LIMIT 1").fetchone() is not None
            self.removed_total += len(removed)
            gone_ids = set(removed)
            self.removed_bytes_total += sum(s for i, s in doomed if i in gone_ids)
        # partial transfers nobody continued within the grace period (idle time seen by this
        # process: a restart resumes them, so it starts counting again)
        busy = set(self._partial_busy)
        for f in sorted(self.partial_dir.iterdir()) if self.partial_dir.exists() else []:
            if f.name in busy:
                self._partial_idle.pop(f.name, None)
                continue
            since = self._partial_idle.setdefault(f.name, now)
            if since <= cutoff:
                try:
                    f.unlink()
                except OSError:
                    pass
                self._partial_idle.pop(f.name, None)
        return removed

    # -- observation ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            conn = self._db()
            referenced = conn.execute("SELECT COUNT(DISTINCT blob) FROM refs").fetchone()[0]
            refs = conn.execute("SELECT COUNT(*) FROM refs").fetchone()[0]
        partial = 0
        try:
            partial = sum(f.stat().st_size for f in self.partial_dir.iterdir())
        except OSError:
            pass
        try:
            disk = shutil.disk_usage(self.root)
            free = disk.free
        except OSError:
            free = None
        return {"blobs": self._count, "bytes": self._used, "referenced_blobs": referenced, "refs": refs,
                "partial_bytes": partial, "quota": self.quota, "disk_free": free, "pins": len(self._pins),
                "removed_total": self.removed_total, "removed_bytes_total": self.removed_bytes_total}


__all__ = ["BlobMismatch", "BlobRef", "BlobStore", "BlobStoreFull", "BlobTooLarge", "BlobWriter", "EMPTY_SHA",
           "IO_CHUNK", "PREFIX", "PartialBlob", "check_id", "check_name"]
