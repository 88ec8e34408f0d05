"""Errors jobmesh raises on purpose. A ``JobmeshError`` is an answer, not a crash."""

from __future__ import annotations


class JobmeshError(Exception):
    """Base of every error that is an expected answer (bad input, unknown id, ...)."""

    http_status = 400


class ValidationError(JobmeshError):
    """Input that jobmesh cannot accept; the message says what and why."""

    http_status = 400


class NotFound(JobmeshError):
    http_status = 404


class Conflict(JobmeshError):
    """The request is valid but not in the object's current state (e.g. retry a running job)."""

    http_status = 409


class ActorStopped(JobmeshError):
    http_status = 503


class ActorCrashed(JobmeshError):
    http_status = 500


class Unauthorized(JobmeshError):
    http_status = 401


class DataDirInUse(JobmeshError):
    """Another live node holds this data directory (its lock file): two nodes on one store
    would both run its jobs and race on its records (DESIGN §3)."""

    http_status = 409

    def __init__(self, path: str, pid: int | None = None, node: str | None = None) -> None:
        holder = ", ".join(p for p in (f"pid {pid}" if pid is not None else None,
                                       f"node {node}" if node else None) if p) or "holder unknown"
        super().__init__(f"data directory {path} is in use by another jobmesh node ({holder}); "
                         f"stop it or choose another --data")
        self.path = path
        self.pid = pid
        self.node = node


class NameInUse(JobmeshError):
    """This node's name belongs to another live member of the topology (``jobmesh node`` exits 2)."""

    http_status = 409
