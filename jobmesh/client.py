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

This module holds the async ``Client``, ``JobHandle`` and ``NodeProducer``; the blocking client is in
``client_sync.py``, what both share (URL, bodies, answers and errors) in ``client_http.py`` and
the payload helpers in ``client_payload.py``. Every name is importable from here as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Iterable, Iterator

from .client_batch import AddCoalescer, request_text
# the shared parts and the blocking client live beside this module; every name stays importable from here
from .client_http import DEFAULT_URL, JOBS_PATH, WAIT_STEP, R, _Api, _answer, _as_job, _final, _job_path, \
    _json_or_none, _outcome, enqueue_body, item_body, job_body, normalize_url, raise_for
from .client_payload import BLOB_TIMEOUT, PAYLOAD_PATH, _blob_source, _save_stream, payload_values, with_blob_ids
from .client_sync import SyncClient, SyncJobHandle
from .errors import NodeUnreachable
from .job import Job, JobState

if TYPE_CHECKING:
    from .tasks import Task


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


def as_producer(p: Any) -> Any:
    """A Node (or NodeProducer) or a Client: something with async ``add/get/wait/stop``."""
    if isinstance(p, (Client, NodeProducer)):
        return p
    if hasattr(p, "jobs") and hasattr(p, "add_consumer"):
        return NodeProducer(p)
    raise TypeError(f"{p!r} cannot send jobs: give a jobmesh.Node or a jobmesh.Client")


__all__ = ["Client", "JobHandle", "NodeProducer", "SyncClient", "SyncJobHandle", "as_producer", "job_body"]
