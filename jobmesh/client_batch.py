"""``Client.add`` calls issued together go to the node together: one ``POST /api/v1/jobs`` with a
list, as a Kafka producer lingers to fill a batch.

A web app that adds a job per request, or a script with 64 adds in flight, pays aiohttp's
client machinery (~300 µs of CPU a request here) and the server's (~250 µs) once per job; sent
as a list the node commits them in one transaction and the HTTP cost is shared. Measured with
``benchmarks/client.py`` (concurrency 64): the producer's CPU was the limit at ~2,300 adds a second.

The contract of each call is unchanged: it returns once *its* job is committed, with *its* job
(a ``key`` that belongs to an open job gives that job, in its place in the list), and raises
*its* error:
- the adds made in one turn of the event loop (up to ``MAX_JOBS`` jobs or ``MAX_BYTES`` of JSON)
  form a batch, sent at the end of that turn; nothing waits for a timer, so a lone add is sent
  at once;
- a 400 (the node validates the whole list before it writes any of it, so nothing was added)
  sends the batch's bodies again one by one, so each caller gets its own answer or error;
- any other failure (the node unreachable, 401, 409 while it shuts down, 5xx) is every
  caller's, as it would have been for each of their requests.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from .errors import JobmeshError, ValidationError

MAX_JOBS = 500  # jobs in one coalesced request
MAX_BYTES = 256 * 1024  # of request JSON; the node refuses bodies over 1 MiB (413)

Send = Callable[[bytes], Awaitable[Any]]  # a raw JSON body -> the node's JSON answer, or raises


def request_text(body: Any) -> str:
    """A request body as compact JSON; a value JSON cannot carry is the caller's TypeError, said
    plainly (``Client.add("t", {"when": datetime.now()})``)."""
    try:
        return json.dumps(body, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"job properties (and options) must be JSON-compatible: {e}") from None


class AddCoalescer:
    """Collects single adds for one turn of the loop and sends them as a list through ``send``."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[tuple[str, asyncio.Future[Any]]] = []
        self._bytes = 0
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.requests = 0  # POSTs made (for tests and curiosity)

    async def add(self, body: dict[str, Any]) -> Any:
        """The job JSON of ``body``'s job once it is committed (or the error the node gave)."""
        text = request_text(body)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self._pending and self._bytes + len(text) + 1 > MAX_BYTES:
            self._flush()  # what waits goes first: this body would take the request over the limit
        self._pending.append((text, fut))
        self._bytes += len(text) + 1
        if len(self._pending) >= MAX_JOBS or self._bytes >= MAX_BYTES:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the tasks already ready in this turn have added theirs
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        # a caller cancelled before its request left adds nothing (as a request never sent would)
        batch = [(t, f) for t, f in self._pending if not f.cancelled()]
        self._pending, self._bytes = [], 0
        if not batch:
            return
        task = asyncio.ensure_future(self._deliver(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: list[tuple[str, asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:
            text, fut = batch[0]
            await self._one(text.encode(), fut)
            return
        self.requests += 1
        try:
            answer = await self._send(("[" + ",".join(t for t, _ in batch) + "]").encode())
        except ValidationError:
            # Nothing of the list was written: each body on its own, each caller its own answer.
            await asyncio.gather(*(self._one(text.encode(), fut) for text, fut in batch if not fut.cancelled()))
            return
        except BaseException as e:  # the same failure each request would have met
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else JobmeshError(f"the request was {e!r}"))
            if not isinstance(e, Exception):
                raise
            return
        if not isinstance(answer, list) or len(answer) != len(batch):
            err = JobmeshError(f"the node answered {len(batch)} jobs with {type(answer).__name__}")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        for (_, fut), job in zip(batch, answer):
            if not fut.done():
                fut.set_result(job)

    async def _one(self, raw: bytes, fut: asyncio.Future[Any]) -> None:
        self.requests += 1
        try:
            answer = await self._send(raw)
        except BaseException as e:  # the caller learns it whatever it is; a cancel goes on up
            if not fut.done():
                fut.set_exception(e if isinstance(e, Exception) else JobmeshError(f"the request was {e!r}"))
            if not isinstance(e, Exception):
                raise
            return
        if not fut.done():
            fut.set_result(answer)

    async def close(self) -> None:
        """Let the requests on their way finish (their callers are waiting for them). Shielded:
        a close that is itself cancelled or timed out does not cancel those requests."""
        if self._pending:
            self._flush()
        if self._sending:
            await asyncio.shield(asyncio.gather(*self._sending, return_exceptions=True))


__all__ = ["AddCoalescer", "MAX_JOBS", "MAX_BYTES", "request_text"]
