"""Errors jobmesh raises on purpose. A ``JobmeshError`` is an answer, not a crash."""

from __future__ import annotations

from typing import Any


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


class JobFailed(JobmeshError):
    """``await handle.result()`` of a job that ended without success (GIVEN_UP, ERROR, STOPPED,
    DROPPED). ``.job`` is the final job: its state, ``result_message`` and log."""

    http_status = 409

    def __init__(self, job: Any) -> None:
        self.job = job
        state = getattr(getattr(job, "state", None), "value", getattr(job, "state", "?"))
        text = f"job {job.id} ({job.topic}) ended {state}"
        if job.result_message:
            text += f": {job.result_message}"
        tail = [line for line in (job.progress.log or [])][-1:]
        if tail:
            last = tail[0].strip().splitlines()
            if last and last[-1] not in text:
                text += f" (log: {last[-1][:300]})"
        super().__init__(text)


class TimeLimitExceeded(BaseException):
    """Raised in a sync consumer's thread when its run is over its time limit (as Dramatiq does).
    A ``BaseException``, like ``KeyboardInterrupt``: ``except Exception`` in the consumer does not
    swallow it. An async consumer is cancelled instead. The run counts FAILED."""


class NodeUnreachable(JobmeshError):
    """A client could not reach the node's HTTP API (refused, timed out, broke off)."""

    http_status = 503
