"""Exclusive ownership of a node's data directory: ``<data>/jobmesh.lock``.

Why ``flock`` on a descriptor kept open for the node's life: the kernel drops the
lock when the process exits in any way, kill -9 included, so a dead holder's lock is
taken over without any stale-pid guessing. Two descriptors (two ``Node`` objects in one
process) conflict as well, since a flock belongs to the open file, not the process.
The file itself stays: unlinking a lock file lets two processes lock two different
inodes. The pid, name and start time written into it only name the holder in the
error a second node gets.

Linux and other POSIX systems; where ``fcntl`` is missing the directory is not locked
(logged once).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import structlog

from .errors import DataDirInUse
from .job import iso

log = structlog.get_logger("jobmesh.datadir")

LOCK_NAME = "jobmesh.lock"

try:  # POSIX only; the package still imports elsewhere
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


class DataDirLock:
    """``acquire()`` or raise ``DataDirInUse`` naming the holder; ``release()`` (idempotent)."""

    def __init__(self, data_dir: str | os.PathLike[str], node: str = "") -> None:
        self.data_dir = str(data_dir)
        self.path = Path(data_dir) / LOCK_NAME
        self.node = node
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, started: float | None = None) -> None:
        if self._fd is not None:
            return
        if _fcntl is None:  # pragma: no cover - Windows
            log.warning("data directory lock not supported on this platform", data=self.data_dir)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the file may be the holder's, and its contents name it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(self.data_dir, holder.get("pid"), holder.get("node")) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            info = {"pid": os.getpid(), "node": self.node, "started": iso(started)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as exc:  # the lock is what matters; the contents only name us
            log.warning("could not write the data directory lock file", path=str(self.path), error=str(exc))
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # nobody holds it now
        except OSError:
            pass
        try:
            _fcntl.flock(fd, _fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's pid and name from the lock file. A holder that has just taken the lock
    may not have written them yet: look again for up to ~0.1 s (error path only)."""
    raw = b""
    for _ in range(5):
        try:
            raw = os.pread(fd, 4096, 0)
        except OSError:
            return {}
        if raw.strip():
            break
        time.sleep(0.02)
    try:
        info = json.loads(raw.decode() or "{}")
    except ValueError:
        return {}
    if not isinstance(info, dict):
        return {}
    pid = info.get("pid")
    node = info.get("node")
    return {"pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            "node": node if isinstance(node, str) and node else None}
