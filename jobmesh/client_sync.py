"""``jobmesh.SyncClient``, the blocking producer client (stdlib ``http.client``), and the
``SyncJobHandle`` it returns: for Django, Flask and scripts. It has the same methods as the
async ``Client`` (``jobmesh/client.py``) and shares its bodies and answers
(``jobmesh/client_http.py``) and payload helpers (``jobmesh/client_payload.py``); it is
imported from ``jobmesh.client`` as before.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Iterable

from .client_batch import request_text
from .client_http import WAIT_STEP, R, _Api, _answer, _as_job, _final, _job_path, _json_or_none, _outcome, enqueue_body, \
    item_body, job_body, raise_for
from .client_payload import BLOB_TIMEOUT, PAYLOAD_PATH, _blob_source, payload_values, with_blob_ids
from .errors import NodeUnreachable
from .job import Job, JobState

if TYPE_CHECKING:
    import http.client

    from .tasks import Task


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
