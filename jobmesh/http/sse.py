"""``GET /api/v1/events``: the node's notifications as server-sent events.

One ``data:`` line of JSON per notification (``Notification.to_json()``, whose ``topic``
field says which transition it is), so a browser's ``EventSource.onmessage`` sees them
all without registering a listener per type. A comment line every ``heartbeat``
seconds keeps proxies from closing an idle stream and lets the server notice a
client that went away. The stream ends cleanly when the node stops (the app's
``CLOSING`` event) instead of holding up the shutdown.

A client too slow to keep up loses the oldest notifications (the node never waits
for it) and then gets ``{"topic": "stream/overflow", "dropped": N}``: its picture is
stale and should be re-read from the API. ``id:`` numbers the messages of one
connection (there is no replay on reconnect).

Query: ``topics=job/finished,job/failed`` to filter; ``heartbeat=SECONDS`` (0.1-60).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import structlog
from aiohttp import web

from .keys import CLOSING, NODE, SETTINGS
from .validation import parse_event_topics, parse_float

log = structlog.get_logger("jobmesh.http.sse")

SUBSCRIBER_QUEUE = 10_000  # a slow client loses the oldest notifications, never blocks the node


def format_event(payload: dict[str, Any], event_id: int | None = None) -> bytes:
    """One SSE message. JSON never contains a raw newline, so one data line is enough."""
    data = json.dumps(payload, separators=(",", ":"), default=str)
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {data}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    closing = request.app[CLOSING]
    topics = parse_event_topics(request.query.get("topics"))
    hb_text = request.query.get("heartbeat")
    heartbeat = (
        parse_float(hb_text, "heartbeat", 0.1, 60.0) if hb_text else request.app[SETTINGS]["sse_heartbeat"]
    )

    sub = node.events.subscribe(topics=topics, maxsize=request.app[SETTINGS].get("sse_queue", SUBSCRIBER_QUEUE))
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        }
    )
    closing_task: asyncio.Task[Any] = asyncio.ensure_future(closing.wait())
    next_task: asyncio.Task[Any] | None = None
    sent = 0
    reported_drops = 0
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n: connected\n\n")
        iterator = sub.__aiter__()
        while not closing.is_set():
            if next_task is None:
                next_task = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait(
                {next_task, closing_task}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if next_task in done:
                task, next_task = next_task, None
                try:
                    notification = task.result()
                except StopAsyncIteration:  # the bus closed the subscription: node stopping
                    break
                sent += 1
                chunks = [format_event(notification.to_json(), sent)]
                drain = getattr(sub, "get_nowait", None)
                while drain is not None and len(chunks) < 1000:  # a burst goes out as one write
                    more = drain()
                    if more is None:
                        break
                    sent += 1
                    chunks.append(format_event(more.to_json(), sent))
                dropped = getattr(sub, "dropped", 0)
                if dropped > reported_drops:  # tell the client it missed some: time to re-read
                    sent += 1
                    chunks.append(format_event({"topic": "stream/overflow", "dropped": dropped - reported_drops}, sent))
                    reported_drops = dropped
                await resp.write(b"".join(chunks))
            elif not done:
                await resp.write(b": keep-alive\n\n")
    except (ConnectionResetError, ConnectionError) as e:
        log.debug("event stream client went away", error=repr(e), sent=sent)
    finally:
        for t in (next_task, closing_task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        sub.close()
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp
