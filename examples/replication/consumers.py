"""The replication agent: pushes one content item per job to a receiver over HTTP.

Job topic ``replication/push``, properties ``{"receiver": URL, "id": item id, "seq": n,
"path": "/content/...", "payload": {...}}``. Run it on a node whose configuration has
the ordered, retry-forever ``replication`` queue (``examples/replication/jobmesh.toml``):

    jobmesh node --config examples/replication/jobmesh.toml --consumers examples.replication.consumers

An unreachable receiver or a 5xx answer fails the job (the queue retries it, head of
line, with backoff); a 4xx answer other than 408/429 means the item itself is refused,
which no retry can fix: the job is cancelled (ERROR) and the queue moves on.
"""

from __future__ import annotations

from typing import Any

import aiohttp

import jobmesh

TOPIC = "replication/push"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=5.0, connect=2.0)
RETRYABLE_4XX = {408, 425, 429}


class ReplicationAgent(jobmesh.ConsumerActor):
    """One HTTP session per node (connection reuse), one item at a time (the queue is ordered anyway)."""

    topics = [TOPIC]

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self._session: aiohttp.ClientSession | None = None

    async def on_start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=REQUEST_TIMEOUT)

    async def on_stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def process(self, job: jobmesh.Job, ctx: Any) -> Any:
        props = job.properties
        receiver = props.get("receiver")
        if not isinstance(receiver, str) or not receiver.startswith(("http://", "https://")):
            return ctx.result().message("no valid 'receiver' URL in the job").cancelled()
        item = {"id": props.get("id", job.id), "seq": props.get("seq"), "path": props.get("path"),
                "payload": props.get("payload")}
        if self._session is None:  # pragma: no cover - on_start always ran
            self._session = aiohttp.ClientSession(timeout=REQUEST_TIMEOUT)
        try:
            async with self._session.post(receiver.rstrip("/") + "/replicate", json=item) as resp:
                text = (await resp.text())[:200]
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            ctx.log("receiver unreachable: %s", type(e).__name__)
            return ctx.result().message(f"receiver unreachable: {type(e).__name__}: {e}"[:300]).failed()
        if 200 <= status < 300:
            return ctx.result().message(f"delivered {item['path']} ({status})").succeeded()
        if 400 <= status < 500 and status not in RETRYABLE_4XX:
            return ctx.result().message(f"receiver refused the item: HTTP {status} {text}").cancelled()
        return ctx.result().message(f"receiver answered HTTP {status}").failed()
