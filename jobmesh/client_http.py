"""What both producer clients (``Client``, ``SyncClient``) share: the node's URL and token, the
request bodies they send (``job_body``, ``item_body``, ``enqueue_body``) and how an answer
becomes its JSON or the library error its status stands for (``raise_for``). It lives apart
from ``jobmesh/client.py`` so that the async client and the blocking one
(``jobmesh/client_sync.py``) each import it without importing each other.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import Conflict, JobFailed, JobmeshError, NotFound, Unauthorized, ValidationError
from .job import FINAL_STATES, Job, JobState

if TYPE_CHECKING:
    from .tasks import Task

R = TypeVar("R")

DEFAULT_URL = "http://127.0.0.1:8471"
JOBS_PATH = "/api/v1/jobs"
WAIT_STEP = 20.0  # seconds one long-poll (GET /jobs/{id}?wait=) may take; the server caps requests at 30 s
_ERRORS: dict[int, type[JobmeshError]] = {400: ValidationError, 401: Unauthorized, 404: NotFound,
                                          409: Conflict, 413: ValidationError}


def normalize_url(url: str | None) -> str:
    """``$JOBMESH_URL`` or the default when None; a bare port or ``HOST:PORT`` as people type them."""
    url = (url or os.environ.get("JOBMESH_URL") or DEFAULT_URL).strip()
    if url.isdigit() or (url.startswith(":") and url[1:].isdigit()):
        url = "127.0.0.1:" + url.lstrip(":")
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def job_body(topic: str, properties: dict[str, Any] | None = None, delay: float | None = None, at: Any = None,
             key: str | None = None, timeout: float | None = None, priority: int | None = None,
             payload: Any = None) -> dict[str, Any]:
    """The ``POST /api/v1/jobs`` body of one job (options only when given). ``payload`` is kept as
    given (files and bytes are uploaded and replaced by blob ids before the body is sent)."""
    body: dict[str, Any] = {"topic": topic}
    if properties is not None:
        body["properties"] = properties
    if delay is not None:
        body["delay"] = delay
    if at is not None:
        body["at"] = _iso(at)
    if key is not None:
        body["key"] = key
    if timeout is not None:
        body["timeout"] = timeout
    if priority is not None:
        body["priority"] = priority
    if payload is not None:
        body["payload"] = payload
    return body


def _iso(at: Any) -> Any:
    if isinstance(at, datetime):
        return (at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        return datetime.fromtimestamp(at, tz=timezone.utc).isoformat()
    return at


def item_body(item: Any) -> dict[str, Any]:
    """An ``add_many`` item as a body: ``(topic, properties)`` or a dict like the HTTP body."""
    if isinstance(item, dict):
        return {**item, "at": _iso(item["at"])} if item.get("at") is not None else item
    topic, props = item
    return job_body(topic, props)


def enqueue_body(task: "Task[Any, Any]", args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``enqueue(task, *args, _delay=..., **kwargs)``: the options (leading underscore) taken out,
    the rest bound to the task's signature (TypeError here, in the producer, when it does not fit)."""
    opts = {name: kwargs.pop("_" + name, None) for name in ("delay", "at", "key", "timeout", "priority", "payload")}
    if opts["priority"] is None and task.priority:
        opts["priority"] = task.priority
    return job_body(task.topic, task.properties(*args, **kwargs), **opts)


def raise_for(status: int, data: Any, url: str) -> None:
    """A library error for an HTTP error answer (its ``{"error": ...}`` message)."""
    message = data.get("error") if isinstance(data, dict) else None
    cls = _ERRORS.get(status, JobmeshError)
    err = cls(message or f"HTTP {status} from {url}")
    err.http_status = status  # type: ignore[misc]
    raise err


def _job_path(job_id: str, action: str | None = None) -> str:
    path = "/api/v1/jobs/" + urllib.parse.quote(job_id, safe="")
    return path + "/" + action if action else path


def _final(job: Job) -> bool:
    return job.state in FINAL_STATES


def _outcome(job: Job) -> Any:
    if job.state is JobState.SUCCEEDED:
        return job.result
    raise JobFailed(job)


def _as_job(job: Job | dict[str, Any] | None) -> Job | None:
    return Job.from_json(job) if isinstance(job, dict) else job


class _Api:
    """What both clients share: the URL, the token, the paths and how answers are read."""

    def __init__(self, url: str | None, token: str | None, timeout: float) -> None:
        self.url = normalize_url(url)
        self.token = token if token is not None else (os.environ.get("JOBMESH_TOKEN") or None)
        self.timeout = timeout
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"invalid node URL {self.url!r}: expected http://HOST:PORT")
        self._parts = parts
        self._base_path = parts.path.rstrip("/")
        self.headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if self.token:
            self.headers["Authorization"] = f"Bearer {self.token}"

    @staticmethod
    def _query(path: str, query: dict[str, Any] | None) -> str:
        if query:
            q = {k: (v.value if isinstance(v, JobState) else v) for k, v in query.items() if v is not None}
            if q:
                path += "?" + urllib.parse.urlencode(q)
        return path

    @staticmethod
    def _jobs(data: Any) -> list[Job]:
        return [Job.from_json(j) for j in data]


def _answer(raw: bytes, status: int, url: Any) -> Any:
    """The JSON of an answer, or the library error an error status stands for. An answer that
    is not JSON did not come from a jobmesh node."""
    answer = None
    if raw:
        try:
            answer = json.loads(raw)
        except ValueError:
            raise JobmeshError(f"{url} answered HTTP {status} that is not JSON: is it a jobmesh node's "
                               "HTTP address (jobmesh node --http)?") from None
    if status >= 400:
        raise_for(status, answer, url)
    return answer


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
