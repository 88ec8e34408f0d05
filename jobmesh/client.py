"""Producing from anywhere: ``jobmesh.Client`` (asyncio, aiohttp) and ``jobmesh.SyncClient``
(blocking, for Django, Flask and scripts), both over a node's HTTP API, and the ``JobHandle``
they return.

::

    async with jobmesh.Client("http://127.0.0.1:8471") as client:
        h = await client.enqueue(send_mail, "a@b.c", "hi", _delay=5, _key="welcome:a@b.c")
        print(await h.result(timeout=60))

    with jobmesh.SyncClient() as client:              # $JOBMESH_URL, else http://127.0.0.1:8471
        h = client.add("reports/pdf", {"id": 7}, priority=5)
        print(h.result(timeout=60))

The same methods on both: ``add``, ``add_many``, ``enqueue``, ``get``, ``find``, ``wait``,
``stop``, ``retry``, ``remove``, ``close``, and for job payload (issue 14) ``upload`` and
``payload``. ``add(..., payload={"image": Path("cat.png") | bytes | "sha256:..."})`` (and
``_payload=`` of ``enqueue``, ``payload`` of an ``add_many`` item) uploads each file or bytes
first (``POST /api/v1/blobs``, a file streamed from disk; a payload object shared by several
items is uploaded once) and names the blobs in the job; a blob id is passed as it is.
``payload(job_id, name, path=None)`` downloads a job's input or output (bytes, or into ``path``). Errors are the library's own: ``ValidationError``
(400), ``NotFound`` (404), ``Conflict`` (409), ``NodeUnreachable`` (connection refused, timed
out), ``JobmeshError`` otherwise; ``handle.result()`` raises ``JobFailed`` for a job that ended
without success and ``TimeoutError`` when it is not final in time.

``aiohttp`` is imported when an async client first sends, not with ``jobmesh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator, TypeVar

from .client_batch import AddCoalescer, request_text
from .errors import Conflict, JobFailed, JobmeshError, NodeUnreachable, NotFound, Unauthorized, ValidationError
from .job import FINAL_STATES, Job, JobState

if TYPE_CHECKING:
    import http.client

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


PAYLOAD_PATH = "/api/v1/blobs"
BLOB_TIMEOUT = 600.0  # seconds an upload or download may go without a byte moving


def payload_values(bodies: list[dict[str, Any]]) -> list[Any]:
    """The values of the bodies' payloads that need an upload (files and bytes), each once."""
    seen: dict[int, Any] = {}
    for body in bodies:
        payload = body.get("payload")
        if payload is None:
            continue
        if not isinstance(payload, dict):
            raise ValidationError(f"payload must be a map of names to files, bytes or blob ids, got "
                                  f"{type(payload).__name__}")
        for name, value in payload.items():
            if not isinstance(name, str):
                raise ValidationError(f"payload names must be strings, got {type(name).__name__}")
            if isinstance(value, str):
                continue  # a blob id: the node checks it
            if not isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
                raise ValidationError(f"payload {name!r}: a file (pathlib.Path), bytes or a blob id, "
                                      f"not {type(value).__name__}")
            seen.setdefault(id(value), value)
    return list(seen.values())


def with_blob_ids(bodies: list[dict[str, Any]], ids: dict[int, str]) -> list[dict[str, Any]]:
    """The bodies with every uploaded payload value replaced by its blob id."""
    out = []
    for body in bodies:
        payload = body.get("payload")
        if payload:
            body = {**body, "payload": {n: v if isinstance(v, str) else ids[id(v)] for n, v in payload.items()}}
        out.append(body)
    return out


def _blob_source(value: Any) -> tuple[Any, int]:
    """An upload's body: (an open file or the bytes, its size)."""
    if isinstance(value, os.PathLike):
        try:
            f = open(value, "rb")
            return f, os.fstat(f.fileno()).st_size
        except OSError as e:
            raise ValidationError(f"cannot read payload file {os.fspath(value)}: {e.strerror}") from None
    data = bytes(value)
    return data, len(data)


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


class JobHandle(Generic[R]):
    """A job that was added: ``.id``, ``await .result(timeout)``, ``await .job()``, ``await .stop()``."""

    __slots__ = ("id", "_producer", "_job")

    def __init__(self, job_id: str, producer: Any, job: Job | dict[str, Any] | None = None) -> None:
        self.id = job_id
        self._producer = producer
        self._job = job  # its JSON until asked for: most producers never look

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}>"

    @property
    def added(self) -> Job | None:
        """The job as the add returned it (None for a handle made from an id)."""
        self._job = _as_job(self._job)
        return self._job

    async def job(self) -> Job:
        """The job now."""
        return await self._producer.get(self.id)

    async def wait(self, timeout: float | None = None) -> Job:
        """The job once it is final; TimeoutError after ``timeout`` seconds."""
        return await self._producer.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> R:
        """The job's result once it SUCCEEDED; ``JobFailed`` (``.job``) once it ended otherwise;
        TimeoutError when it is not final after ``timeout`` seconds (the job goes on)."""
        return _outcome(await self.wait(timeout))  # type: ignore[no-any-return]

    async def stop(self) -> Job:
        return await self._producer.stop(self.id)


class SyncJobHandle(Generic[R]):
    """``JobHandle``'s blocking twin (from a ``SyncClient``)."""

    __slots__ = ("id", "_client", "_job")

    def __init__(self, job_id: str, client: "SyncClient", job: Job | dict[str, Any] | None = None) -> None:
        self.id = job_id
        self._client = client
        self._job = job

    def __repr__(self) -> str:
        return f"<SyncJobHandle {self.id}>"

    @property
    def added(self) -> Job | None:
        self._job = _as_job(self._job)
        return self._job

    def job(self) -> Job:
        return self._client.get(self.id)

    def wait(self, timeout: float | None = None) -> Job:
        return self._client.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> R:
        return _outcome(self.wait(timeout))  # type: ignore[no-any-return]

    def stop(self) -> Job:
        return self._client.stop(self.id)


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


class Client(_Api):
    """The asyncio producer client (aiohttp). ``async with Client(url, token) as client: ...``;
    without ``async with``, ``await client.close()`` when done."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 coalesce: bool = True, _per_call: bool = False) -> None:
        super().__init__(url, token, timeout)
        self._session: Any = None
        self._jobs_url: Any = None
        self._per_call = _per_call  # the default producer's: a session per call, nothing left open
        # adds issued in one turn of the loop go as one list (jobmesh/client_batch.py); each call
        # still returns its own job once committed, or raises its own error
        self._adds: AddCoalescer | None = AddCoalescer(self._post_jobs) if coalesce else None

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._adds is not None:
            await self._adds.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _new_session(self) -> Any:
        import aiohttp

        return aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=self.timeout + WAIT_STEP),
                                     connector=aiohttp.TCPConnector(limit=0))

    @contextlib.contextmanager
    def _unreachable(self, timed_out: str) -> Iterator[None]:
        """aiohttp's failures as the library's: a timeout (``node at URL <timed_out>``) or a
        connection error is ``NodeUnreachable``."""
        import aiohttp

        try:
            yield
        except asyncio.TimeoutError:
            raise NodeUnreachable(f"node at {self.url} {timed_out}") from None
        except aiohttp.ClientError as e:
            raise NodeUnreachable(f"cannot reach node at {self.url} ({e})") from None

    async def _post_jobs(self, raw: bytes) -> Any:
        return await self.request("POST", JOBS_PATH, raw=raw)

    async def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                      raw: bytes | None = None) -> Any:
        """One API call: its JSON answer, or the library error it stands for. ``raw``: a body
        already encoded as JSON."""
        if query or path != JOBS_PATH:
            url: Any = self.url + self._query(path, query)
        else:  # POST /api/v1/jobs, the hot one: its URL parsed once, not per call
            url = self._jobs_url
            if url is None:
                import yarl

                url = self._jobs_url = yarl.URL(self.url + JOBS_PATH)
        data = raw if raw is not None else None if body is None else request_text(body).encode()
        session = self._session
        own = False
        if session is None:
            session = self._new_session()
            if self._per_call:
                own = True
            else:
                self._session = session
        try:
            with self._unreachable(f"did not answer within {self.timeout:g} s"):
                async with session.request(method, url, data=data) as resp:
                    raw = await resp.read()
                    status = resp.status
        finally:
            if own:
                await session.close()
        return _answer(raw, status, url)

    # -- the producer API ---------------------------------------------------------------------
    async def add(self, topic: str, properties: dict[str, Any] | None = None, *, delay: float | None = None,
                  at: Any = None, key: str | None = None, timeout: float | None = None,
                  priority: int | None = None, payload: dict[str, Any] | None = None) -> JobHandle[Any]:
        """One job; ``payload``: ``{name: Path | bytes | blob id}`` (files and bytes uploaded first)."""
        body = job_body(topic, properties, delay, at, key, timeout, priority, payload)
        if payload is not None:
            body = (await self._with_payload([body]))[0]
        return await self._add_body(body)

    async def _add_body(self, body: dict[str, Any]) -> JobHandle[Any]:
        if self._adds is not None:
            data = await self._adds.add(body)
        else:
            data = await self.request("POST", JOBS_PATH, body)
        return JobHandle(data["id"], self, data)

    async def add_many(self, items: Iterable[Any]) -> list[JobHandle[Any]]:
        """Many jobs in one request (one transaction at the node): ``(topic, properties)`` pairs or
        dicts like the HTTP body (``{"topic", "properties", "delay", "key", "payload", ...}``)."""
        bodies = await self._with_payload([item_body(i) for i in items])
        data = await self.request("POST", "/api/v1/jobs", bodies)
        return [JobHandle(j["id"], self, j) for j in data]

    async def enqueue(self, task: "Task[Any, R]", *args: Any, **kwargs: Any) -> JobHandle[R]:
        """A job for ``task``: arguments bound to its signature (TypeError here when they do not
        fit); options with a leading underscore: ``_delay``, ``_at``, ``_key``, ``_timeout``,
        ``_priority``, ``_payload``."""
        body = (await self._with_payload([enqueue_body(task, args, kwargs)]))[0]
        return await self._add_body(body)

    # -- job payload ----------------------------------------------------------------------------
    async def upload(self, data: "os.PathLike[str] | bytes") -> dict[str, Any]:
        """Store a file (streamed from disk) or bytes in the node's blob store: ``{"id", "size"}``."""
        import aiohttp

        body, size = await asyncio.to_thread(_blob_source, data)
        headers = {**self.headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = self.url + PAYLOAD_PATH
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=BLOB_TIMEOUT)
        try:
            with self._unreachable(f"did not take the upload within {BLOB_TIMEOUT:g} s"):
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.post(url, data=body, headers=headers) as resp:
                        raw = await resp.read()
                        status = resp.status
        finally:
            if not isinstance(body, bytes):
                body.close()
        return _answer(raw, status, url)

    async def payload(self, job_id: str, name: str, path: "os.PathLike[str] | str | None" = None) -> Any:
        """A job's input or output payload ``name``: its bytes, or written to ``path`` (returned as a Path)."""
        import aiohttp

        url = self.url + _job_path(job_id, "payload/" + urllib.parse.quote(name, safe=""))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=BLOB_TIMEOUT)
        with self._unreachable(f"sent nothing for {BLOB_TIMEOUT:g} s"):
            async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as session:
                async with session.get(url) as resp:
                    if resp.status >= 400:
                        raw = await resp.read()
                        raise_for(resp.status, _json_or_none(raw), url)
                    if path is None:
                        return await resp.read()
                    return await _save_stream(resp.content, Path(path))

    async def _with_payload(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        values = payload_values(bodies)
        if not values:
            return bodies
        ids = {id(v): (await self.upload(v))["id"] for v in values}
        return with_blob_ids(bodies, ids)

    async def get(self, job_id: str) -> Job:
        return Job.from_json(await self.request("GET", _job_path(job_id)))

    async def find(self, state: str | JobState | None = None, topic: str | None = None, queue: str | None = None,
                   limit: int = 100) -> list[Job]:
        data = await self.request("GET", "/api/v1/jobs", query={"state": state, "topic": topic, "queue": queue,
                                                                "limit": limit})
        return self._jobs(data["jobs"])

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is final (long polls of at most ``WAIT_STEP`` s); TimeoutError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            step = WAIT_STEP if deadline is None else max(0.0, min(WAIT_STEP, deadline - loop.time()))
            job = Job.from_json(await self.request("GET", _job_path(job_id), query={"wait": round(step, 3)}))
            if _final(job):
                return job
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"job {job_id} is not final after {timeout:g} s: {job.state.value}")

    async def stop(self, job_id: str) -> Job:
        return Job.from_json(await self.request("POST", _job_path(job_id, "stop")))

    async def retry(self, job_id: str) -> Job:
        return Job.from_json(await self.request("POST", _job_path(job_id, "retry")))

    async def remove(self, job_id: str) -> Job | None:
        """A queued or running job is dropped (returned); a final one deleted (None)."""
        data = await self.request("DELETE", _job_path(job_id))
        return None if data.get("deleted") else Job.from_json(data)

    def handle(self, job_id: str) -> JobHandle[Any]:
        """A handle for a job added elsewhere."""
        return JobHandle(job_id, self)


class SyncClient(_Api):
    """The blocking producer client (stdlib ``http.client``, one kept-alive connection per
    thread): for Django, Flask, Celery-style scripts. ``with SyncClient(url) as client: ...``."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        super().__init__(url, token, timeout)
        self._local = threading.local()
        self._conns: list["http.client.HTTPConnection"] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "SyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()

    def _conn(self) -> "http.client.HTTPConnection":
        conn = getattr(self._local, "conn", None)
        if conn is None:
            import http.client

            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            conn = cls(str(self._parts.hostname), self._parts.port, timeout=self.timeout + WAIT_STEP)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        import http.client

        target = self._base_path + self._query(path, query)
        data = None if body is None else request_text(body).encode()
        for attempt in (1, 2):
            conn = self._conn()
            reused = getattr(conn, "_jobmesh_used", False)
            try:
                conn.request(method, target, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                conn._jobmesh_used = True  # type: ignore[attr-defined]
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self._drop_conn()
                # a kept-alive connection the server closed while it was idle: once more, on a new one
                if attempt == 2 or not reused:
                    raise NodeUnreachable(f"node at {self.url} broke off the connection ({type(e).__name__})") from None
            except TimeoutError:
                self._drop_conn()
                raise NodeUnreachable(f"node at {self.url} did not answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop_conn()
                raise NodeUnreachable(f"cannot reach node at {self.url} ({e})") from None
        return _answer(raw, status, self.url + target)

    def add(self, topic: str, properties: dict[str, Any] | None = None, *, delay: float | None = None,
            at: Any = None, key: str | None = None, timeout: float | None = None,
            priority: int | None = None, payload: dict[str, Any] | None = None) -> SyncJobHandle[Any]:
        body = self._with_payload([job_body(topic, properties, delay, at, key, timeout, priority, payload)])[0]
        data = self.request("POST", "/api/v1/jobs", body)
        return SyncJobHandle(data["id"], self, data)

    def add_many(self, items: Iterable[Any]) -> list[SyncJobHandle[Any]]:
        data = self.request("POST", "/api/v1/jobs", self._with_payload([item_body(i) for i in items]))
        return [SyncJobHandle(j["id"], self, j) for j in data]

    def enqueue(self, task: "Task[Any, R]", *args: Any, **kwargs: Any) -> SyncJobHandle[R]:
        data = self.request("POST", "/api/v1/jobs", self._with_payload([enqueue_body(task, args, kwargs)])[0])
        return SyncJobHandle(data["id"], self, data)

    # -- job payload ----------------------------------------------------------------------------
    def _blob_conn(self) -> "http.client.HTTPConnection":
        import http.client

        cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
        return cls(self._parts.hostname or "127.0.0.1", self._parts.port, timeout=BLOB_TIMEOUT)

    def upload(self, data: "os.PathLike[str] | bytes") -> dict[str, Any]:
        """Store a file (streamed from disk) or bytes in the node's blob store: ``{"id", "size"}``."""
        body, size = _blob_source(data)
        headers = {**self.headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
        conn = self._blob_conn()
        try:
            conn.request("POST", self._base_path + PAYLOAD_PATH, body=body, headers=headers)
            resp = conn.getresponse()
            raw, status = resp.read(), resp.status
        except TimeoutError:
            raise NodeUnreachable(f"node at {self.url} did not take the upload within {BLOB_TIMEOUT:g} s") from None
        except OSError as e:
            raise NodeUnreachable(f"cannot reach node at {self.url} ({e})") from None
        finally:
            conn.close()
            if not isinstance(body, bytes):
                body.close()
        answer = _json_or_none(raw)
        if status >= 400:
            raise_for(status, answer, self.url + PAYLOAD_PATH)
        return answer  # type: ignore[no-any-return]

    def payload(self, job_id: str, name: str, path: "os.PathLike[str] | str | None" = None) -> Any:
        """A job's input or output payload ``name``: its bytes, or written to ``path`` (returned as a Path)."""
        target = self._base_path + _job_path(job_id, "payload/" + urllib.parse.quote(name, safe=""))
        conn = self._blob_conn()
        try:
            conn.request("GET", target, headers=self.headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise_for(resp.status, _json_or_none(resp.read()), self.url + target)
            if path is None:
                data = resp.read()
                conn.close()
                return data
        except TimeoutError:
            conn.close()
            raise NodeUnreachable(f"node at {self.url} sent nothing for {BLOB_TIMEOUT:g} s") from None
        except OSError as e:
            conn.close()
            raise NodeUnreachable(f"cannot reach node at {self.url} ({e})") from None
        except BaseException:
            conn.close()
            raise
        try:  # a local write error (disk full, no such folder) is the OSError it is, not the node's
            return self._save(resp, Path(path))
        finally:
            conn.close()

    def _save(self, resp: Any, dest: Path) -> Path:
        tmp = dest.with_name(dest.name + ".part")
        with open(tmp, "wb") as out:
            while True:
                try:
                    chunk = resp.read(1 << 20)
                except TimeoutError:
                    raise NodeUnreachable(f"node at {self.url} sent nothing for {BLOB_TIMEOUT:g} s") from None
                except OSError as e:
                    raise NodeUnreachable(f"the node at {self.url} broke off the download ({e})") from None
                if not chunk:
                    break
                out.write(chunk)
        os.replace(tmp, dest)
        return dest

    def _with_payload(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        values = payload_values(bodies)
        if not values:
            return bodies
        return with_blob_ids(bodies, {id(v): self.upload(v)["id"] for v in values})

    def get(self, job_id: str) -> Job:
        return Job.from_json(self.request("GET", _job_path(job_id)))

    def find(self, state: str | JobState | None = None, topic: str | None = None, queue: str | None = None,
             limit: int = 100) -> list[Job]:
        data = self.request("GET", "/api/v1/jobs", query={"state": state, "topic": topic, "queue": queue,
                                                          "limit": limit})
        return self._jobs(data["jobs"])

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = WAIT_STEP if deadline is None else max(0.0, min(WAIT_STEP, deadline - time.monotonic()))
            job = Job.from_json(self.request("GET", _job_path(job_id), query={"wait": round(step, 3)}))
            if _final(job):
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is not final after {timeout:g} s: {job.state.value}")

    def stop(self, job_id: str) -> Job:
        return Job.from_json(self.request("POST", _job_path(job_id, "stop")))

    def retry(self, job_id: str) -> Job:
        return Job.from_json(self.request("POST", _job_path(job_id, "retry")))

    def remove(self, job_id: str) -> Job | None:
        data = self.request("DELETE", _job_path(job_id))
        return None if data.get("deleted") else Job.from_json(data)

    def handle(self, job_id: str) -> SyncJobHandle[Any]:
        return SyncJobHandle(job_id, self)


class NodeProducer:
    """A Node in this process as a producer (what ``task.send`` uses when one runs here)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    async def add(self, topic: str, properties: dict[str, Any] | None = None, **options: Any) -> JobHandle[Any]:
        job = await self.node.jobs.add(topic, properties, **options)
        return JobHandle(job.id, self, job)

    async def get(self, job_id: str) -> Job:
        job = await self.node.jobs.get(job_id)
        if job is None:
            raise self.node.jobs.not_found(job_id)
        return job  # type: ignore[no-any-return]

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        try:
            return await self.node.jobs.wait(job_id, timeout)  # type: ignore[no-any-return]
        except asyncio.TimeoutError as e:
            raise TimeoutError(str(e)) from None

    async def stop(self, job_id: str) -> Job:
        return await self.node.jobs.stop(job_id)  # type: ignore[no-any-return]


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


async def _save_stream(content: Any, dest: Path) -> Path:
    """An aiohttp body into ``dest`` (a ``.part`` file renamed once complete; writes off the loop)."""
    tmp = dest.with_name(dest.name + ".part")
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        async for chunk in content.iter_chunked(1 << 20):
            await asyncio.to_thread(f.write, chunk)
    finally:
        await asyncio.to_thread(f.close)
    await asyncio.to_thread(os.replace, tmp, dest)
    return dest


def as_producer(p: Any) -> Any:
    """A Node (or NodeProducer) or a Client: something with async ``add/get/wait/stop``."""
    if isinstance(p, (Client, NodeProducer)):
        return p
    if hasattr(p, "jobs") and hasattr(p, "add_consumer"):
        return NodeProducer(p)
    raise TypeError(f"{p!r} cannot send jobs: give a jobmesh.Node or a jobmesh.Client")


__all__ = ["Client", "JobHandle", "NodeProducer", "SyncClient", "SyncJobHandle", "as_producer", "job_body"]
